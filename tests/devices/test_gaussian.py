"""The Gaussian model of bit-sliced weights: its spread, what a plan does to it, its
write-verify options, and that it stays as programmed."""

from __future__ import annotations

import math

import pytest
import torch
from loop_simulation import simulate
from toys import toy_problem

import swimkit
from swimkit.devices import DeviceModel, GaussianDevice, NoiseModel
from swimkit.mapping import layer_ranges
from swimkit.plans import Plan
from swimkit.programming import WriteVerify
from swimkit.seeding import generator_for
from swimkit.slicing import BitSlicing


def test_the_old_name_is_the_gaussian_model_and_follows_the_protocol():
    assert DeviceModel is GaussianDevice
    assert isinstance(GaussianDevice(), NoiseModel)


def test_sampled_std_matches_bit_sliced_sum():
    """One draw per weight has the variance of K independent device errors summed."""
    device = GaussianDevice(sigma=0.3, sigma_verified=0.03)
    value = torch.linspace(-0.5, 0.5, 400_000)
    scale = value.abs().amax()
    gen = torch.Generator().manual_seed(1)
    dw = device.sample({"w": value}, {"w": scale}, generator=gen)["w"]
    devices = torch.randn(400_000, 8, generator=gen) * 0.3
    sliced = scale * (devices * 2.0 ** -torch.arange(1, 9)).sum(1)
    expected = float(scale) * 0.3 * math.sqrt(device.slice_factor)
    assert float(dw.std()) == pytest.approx(expected, rel=0.01)
    assert float(sliced.std()) == pytest.approx(expected, rel=0.01)


def test_verified_weights_get_the_residual_sigma():
    device = GaussianDevice(sigma=0.3, sigma_verified=0.03)
    value = torch.ones(200_000)
    mask = torch.zeros(200_000, dtype=torch.bool)
    mask[:100_000] = True
    dw = device.sample({"w": value}, {"w": torch.tensor(2.0)}, Plan(masks={"w": mask}),
                       torch.Generator().manual_seed(0))["w"]
    unit = 2.0 * math.sqrt(device.slice_factor)
    assert float(dw[mask].std()) == pytest.approx(0.03 * unit, rel=0.02)
    assert float(dw[~mask].std()) == pytest.approx(0.3 * unit, rel=0.02)


def legacy_std(device, value, scale, verified):
    """The weight-level formula of the first release, kept to pin its numbers."""
    unit = scale.to(value.dtype) * math.sqrt(device.slice_factor)
    if device.value_dependent:
        return device.weight_sigma(value, scale, verified) * (scale * math.sqrt(
            device.slice_factor))
    return torch.where(verified, unit * device.sigma_verified, unit * device.sigma)


@pytest.mark.parametrize("variation", [None, "band:3"])
def test_bool_mask_plans_keep_the_first_release_numbers_bit_for_bit(variation):
    device = GaussianDevice(variation=variation)
    gen = torch.Generator().manual_seed(5)
    values = {"a": torch.randn(40, 30, generator=gen), "b": torch.randn(7, generator=gen)}
    scales = layer_ranges(values)
    masks = {k: torch.rand(v.shape, generator=gen) < 0.3 for k, v in values.items()}
    stds = device.noise_stds(values, scales, Plan(masks=masks))
    for k, v in values.items():
        assert torch.equal(stds[k], legacy_std(device, v, scales[k], masks[k]).expand(v.shape))


def test_draw_follows_device_and_dtype_and_seed():
    device = GaussianDevice()
    values = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.randn(5)}
    scales = layer_ranges(values)
    one = device.sample(values, scales, generator=generator_for(7, 3))
    two = device.sample(values, scales, generator=generator_for(7, 3))
    other = device.sample(values, scales, generator=generator_for(7, 4))
    assert one["a"].dtype == torch.float64 and one["b"].dtype == torch.float32
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(one["a"], other["a"])


def test_common_random_numbers_across_plans():
    """Two plans with the same seed share the standard-normal draws (scaled differently)."""
    device = GaussianDevice(sigma=0.3, sigma_verified=0.03)
    values = {"w": torch.ones(1000)}
    scales = {"w": torch.tensor(1.0)}
    mask = torch.rand(1000) < 0.5
    plain = device.sample(values, scales, None, generator_for(0, 0))["w"]
    mixed = device.sample(values, scales, Plan(masks={"w": mask}), generator_for(0, 0))["w"]
    torch.testing.assert_close(mixed[~mask], plain[~mask])
    torch.testing.assert_close(mixed[mask], plain[mask] * 0.1)


@pytest.mark.parametrize(
    "kwargs",
    [{"sigma": -0.1}, {"sigma_verified": -1}, {"bits_per_weight": 0},
     {"bits_per_weight": 8, "bits_per_device": 3}, {"variation": "nonsense"},
     {"write_verify": 0.05}],
)
def test_bad_settings_are_clear_errors(kwargs):
    with pytest.raises(swimkit.SwimkitError):
        GaussianDevice(**kwargs)


def test_options_default_loop_lands_at_sigma_verified_others_at_the_closed_form():
    device = GaussianDevice()
    tight = device.loop.tolerance
    assert tight == pytest.approx(0.052, abs=1e-3)
    sigmas = device.option_sigmas(torch.ones(3), torch.tensor(1.0), (0.45, 0.2, tight))
    assert sigmas.shape == (4,)
    assert float(sigmas[0]) == 0.3 and float(sigmas[3]) == 0.03
    for i, tol in enumerate((0.45, 0.2), start=1):
        expected = WriteVerify(tol).residual_sigma(0.3)
        assert float(sigmas[i]) == pytest.approx(expected, rel=1e-12)
    hull = [round(float(s), 2) for s in sigmas]
    assert hull == [0.3, 0.22, 0.11, 0.03]  # the hull at sigma 0.3


def test_plan_variance_matches_a_direct_simulation_of_the_devices():
    """Per-device tolerances: the plan's Var(dw/s) against bit-sliced devices each run
    through the write-verify loop (the loop's own Monte-Carlo)."""
    device = GaussianDevice(bits_per_weight=4, bits_per_device=1)
    menu = (0.45, 0.2, 0.1)
    levels = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [3, 2, 1, 0], [3, 3, 3, 3],
                           [2, 1, 0, 3]], dtype=torch.uint8)
    values = {"w": torch.ones(5)}
    scales = {"w": torch.tensor(1.0)}
    predicted = device.variance(values, scales, Plan(levels={"w": levels}, menu=menu))["w"]
    gen = torch.Generator().manual_seed(11)
    n = 100_000
    errors = {0: torch.randn(n, 4, generator=gen, dtype=torch.float64) * 0.3}
    for k, tol in enumerate(menu, start=1):
        loop = WriteVerify(tol)
        errors[k] = torch.stack([simulate(loop, 0.3, n, gen)["error"] for _ in range(4)], 1)
    significance = BitSlicing(4, 1).significances()
    for i in range(5):
        per_device = torch.stack([errors[int(levels[i, j])][:, j] for j in range(4)], 1)
        weight_error = (per_device * significance).sum(1)
        sample_var = float(weight_error.var())
        se = sample_var * math.sqrt(2 / n)
        assert float(predicted[i]) == pytest.approx(sample_var, abs=5 * se), i
    # the Monte-Carlo draw of the plan has that variance too
    many = {"w": torch.ones(5, 20_000)}
    lv = levels[:, None, :].expand(5, 20_000, 4).contiguous()
    draw = device.sample(many, scales, Plan(levels={"w": lv}, menu=menu), gen)["w"]
    torch.testing.assert_close(draw.double().var(1), predicted, rtol=0.05, atol=0)


def test_a_plan_must_fit_the_device_model():
    device = GaussianDevice()  # K = 8
    levels = torch.ones(3, 4, dtype=torch.uint8)
    levels[0, 1] = 0
    with pytest.raises(swimkit.SwimkitError, match="devices per weight"):
        device.variance({"w": torch.ones(3)}, {"w": torch.tensor(1.0)},
                        Plan(levels={"w": levels}, menu=(0.1,)))
    with pytest.raises(swimkit.SwimkitError, match="no levels for"):
        device.variance({"v": torch.ones(3)}, {"v": torch.tensor(1.0)},
                        Plan(masks={"w": torch.ones(3, dtype=torch.bool)}))


def test_the_gaussian_chip_stays_as_programmed():
    """Every time reads the same chip, so reading it at other times is refused rather
    than recorded as if it mattered; time 0 alone is the chip as programmed."""
    model, batches = toy_problem()
    device = GaussianDevice(sigma=0.5)
    assert not device.changes_with_time
    values = {"w": torch.randn(30, 4)}
    both = device.sampler(values, layer_ranges(values), None, (0.0, 3600.0))(
        torch.Generator().manual_seed(2))
    assert torch.equal(both[0]["w"], both[1]["w"])
    at_zero = swimkit.evaluate(model, batches, device, samples=4, times=[0])
    assert [r.meta["time_s"] for r in at_zero] == [0.0]
    assert torch.equal(at_zero[0].accuracies,
                       swimkit.evaluate(model, batches, device, samples=4).accuracies)
    with pytest.raises(swimkit.SwimkitError, match="times \\[0.0, 3600.0\\] would have no "
                                                   "effect: device model 'gaussian'"):
        swimkit.evaluate(model, batches, device, samples=4, times=[0, 3600])
