"""The device model: one Gaussian per weight with the bit-sliced variance, by seed."""

from __future__ import annotations

import math

import pytest
import torch

import swimkit
from swimkit.devices import DeviceModel, generator_for, sample_seed


def test_slice_factor_matches_the_sum_over_devices():
    assert DeviceModel().slice_factor == pytest.approx(sum(4.0**-j for j in range(1, 9)))
    assert DeviceModel().slice_factor == pytest.approx(0.33333, abs=1e-5)
    two_bit = DeviceModel(bits_per_weight=8, bits_per_device=2)
    assert two_bit.devices_per_weight == 4
    assert two_bit.slice_factor == pytest.approx(sum(16.0**-j for j in range(1, 5)))


def test_sampled_std_matches_bit_sliced_sum():
    """One draw per weight has the variance of K independent device errors summed."""
    device = DeviceModel(sigma=0.3, sigma_verified=0.03)
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
    device = DeviceModel(sigma=0.3, sigma_verified=0.03)
    value = torch.ones(200_000)
    mask = torch.zeros(200_000, dtype=torch.bool)
    mask[:100_000] = True
    dw = device.sample({"w": value}, {"w": torch.tensor(2.0)}, {"w": mask},
                       torch.Generator().manual_seed(0))["w"]
    unit = 2.0 * math.sqrt(device.slice_factor)
    assert float(dw[mask].std()) == pytest.approx(0.03 * unit, rel=0.02)
    assert float(dw[~mask].std()) == pytest.approx(0.3 * unit, rel=0.02)


def test_draw_follows_device_and_dtype_and_seed():
    device = DeviceModel()
    values = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.randn(5)}
    scales = swimkit.mapping.weight_scales(values)
    one = device.sample(values, scales, generator=generator_for(7, 3))
    two = device.sample(values, scales, generator=generator_for(7, 3))
    other = device.sample(values, scales, generator=generator_for(7, 4))
    assert one["a"].dtype == torch.float64 and one["b"].dtype == torch.float32
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(one["a"], other["a"])


def test_common_random_numbers_across_masks():
    """Two plans with the same seed share the standard-normal draws (scaled differently)."""
    device = DeviceModel(sigma=0.3, sigma_verified=0.03)
    values = {"w": torch.ones(1000)}
    scales = {"w": torch.tensor(1.0)}
    mask = torch.rand(1000) < 0.5
    plain = device.sample(values, scales, None, generator_for(0, 0))["w"]
    mixed = device.sample(values, scales, {"w": mask}, generator_for(0, 0))["w"]
    torch.testing.assert_close(mixed[~mask], plain[~mask])
    torch.testing.assert_close(mixed[mask], plain[mask] * 0.1)


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(0, 0) == sample_seed(0, 0)
    assert len({sample_seed(s, i) for s in range(5) for i in range(50)}) == 250
    assert 0 <= sample_seed(123, 456) < 2**63


@pytest.mark.parametrize(
    "kwargs",
    [{"sigma": -0.1}, {"sigma_verified": -1}, {"bits_per_weight": 0},
     {"bits_per_weight": 8, "bits_per_device": 3}, {"variation": "nonsense"}],
)
def test_bad_settings_are_clear_errors(kwargs):
    with pytest.raises(swimkit.SwimkitError):
        DeviceModel(**kwargs)


def test_value_dependent_band_sigma():
    device = DeviceModel(sigma=0.3, variation="band:3")
    value = torch.tensor([0.1, 0.5, 0.9, 1.0])
    sigma = device.weight_sigma(value, torch.tensor(1.0))
    norm = math.sqrt(0.4 * 9 + 0.6)
    torch.testing.assert_close(sigma, torch.tensor([0.3, 0.9, 0.3, 0.3]) / norm)
    assert device.value_dependent and not DeviceModel().value_dependent
    verified = device.weight_sigma(value, torch.tensor(1.0), torch.tensor([1, 1, 0, 0]).bool())
    torch.testing.assert_close(verified[:2], torch.tensor([0.03, 0.03]))
