"""swimkit and IBM's aihwkit: aihwkit's noise models as device models, plans applied inside
aihwkit, the crossbar translated both ways, aihwkit(-lightning) models taken in, and the
cross-checks (swimkit's own pcm against aihwkit's PCM model; one plan evaluated by both)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from chip_draws import empirical_second_moment, layer
from torch import nn
from toys import toy_problem

import swimkit
import swimkit.checkpoints
from swimkit.crossbar import Crossbar
from swimkit.devices import PCM, build_device_model
from swimkit.devices.cells import cells_of

# --- with aihwkit ---------------------------------------------------------------------------

pytestmark = pytest.mark.aihwkit
aihwkit = pytest.importorskip("aihwkit", reason="aihwkit is not installed (pip install "
                                                "\"swimkit[aihwkit]\"); "
                                                "tests/interop/test_aihwkit_plain.py runs "
                                                "without it")

from aihwkit.inference import (  # noqa: E402
    PCMLikeNoiseModel,
    ReRamCMONoiseModel,
)
from aihwkit.nn.conversion import convert_to_analog  # noqa: E402
from aihwkit.simulator.configs import TorchInferenceRPUConfig  # noqa: E402
from aihwkit.simulator.parameters.enums import BoundManagementType  # noqa: E402

from swimkit.interop.aihwkit import chip_of, device_model, device_model_of  # noqa: E402
from swimkit.interop.aihwkit.conductances import split_sizes, tile_blocks  # noqa: E402
from swimkit.interop.aihwkit.crossbar import crossbar_of, rpu_config_of  # noqa: E402
from swimkit.interop.aihwkit.models import to_torch  # noqa: E402
from swimkit.interop.aihwkit.planned import (  # noqa: E402
    aihwkit_chips,
    analog_tiles,
    apply_plan,
    tile_splits,
)

DAY, YEAR = 86400.0, 31536000.0


def perfect_config(**mapping) -> TorchInferenceRPUConfig:
    config = TorchInferenceRPUConfig()
    config.forward.is_perfect = True
    for key, value in mapping.items():
        setattr(config.mapping, key, value)
    return config


# --- device models ----------------------------------------------------------------------------


def test_the_registered_models_build_from_aihwkit():
    pcm = build_device_model("aihwkit-pcm", compensation=False, drift_scale=2.0)
    assert pcm.describe()["variances"] == "formulas"
    assert pcm.noise.drift_scale == 2.0 and not pcm.compensation
    assert pcm.sigma == pytest.approx(1.0554 / 25 * 255, rel=1e-4)  # aihwkit's sigma at g_max
    wan = build_device_model("aihwkit-reram-wan", samples=256)
    assert wan.describe()["variances"].startswith("sampled")
    cmo = build_device_model("aihwkit-reram-cmo", samples=256)
    assert cmo.converter == "single" and len(cmo.default_menu()) == 1
    anything = build_device_model("aihwkit", model="aihwkit.inference.PCMLikeNoiseModel",
                                  args='{"g_max": 40}')
    assert anything.noise.g_max == 40 and anything.analytic
    with pytest.raises(swimkit.SwimkitError, match="one conductance pair"):
        build_device_model("aihwkit-pcm", bits_per_device=1)
    with pytest.raises(swimkit.SwimkitError, match="needs its noise model"):
        build_device_model("aihwkit")
    with pytest.raises(swimkit.SwimkitError, match="cannot import"):
        build_device_model("aihwkit", model="aihwkit.inference.NoSuchModel")


def test_the_cmo_percent_trap_is_refused():
    """aihwkit's table keys are percent: acceptance_range=2e-2 silently programs the 0.2 %
    loop. The adapter compares what it asked for with what the model took."""
    assert ReRamCMONoiseModel(acceptance_range=2e-2).acceptance_range == 0.2  # the trap
    with pytest.raises(swimkit.SwimkitError, match="in percent"):
        build_device_model("aihwkit", model="aihwkit.inference.ReRamCMONoiseModel",
                           args='{"acceptance_range": 0.02}')
    # swimkit's CMO model: 2 % is the plain write, 0.2 % the verify option, each with the
    # spread aihwkit's table gives that range (sigma = c0 + c1 g, in uS)
    cmo = build_device_model("aihwkit-reram-cmo", compensation=False, samples=4096)
    m1, m2, _, attempts = cmo.level_table(None, 0.0)
    spread = (m2 - m1.square()).sqrt()
    g = cmo.grid
    for column, key in ((0, 2), (1, 0.2)):
        c0, c1 = cmo.noise.coeff_dict[key]
        expected = c0 + c1 * g
        assert torch.allclose(spread[:, column], expected, rtol=0.1), key
    assert bool((attempts[:, 1] > attempts[:, 0]).all())  # the tighter loop costs more


@pytest.mark.parametrize("compensation", [False, True])
def test_pcm_variance_from_aihwkits_formulas_is_what_its_chips_show(compensation):
    dm = build_device_model("aihwkit-pcm", compensation=compensation)
    values, scales = layer(shape=(40, 120))
    times = (0.0, 3600.0, DAY, YEAR)
    full = swimkit.Plan.uniform(values, True, devices_per_weight=1)
    for plan in (None, full):
        draw = dm.sampler(values, scales, plan, times)
        chips = [draw(torch.Generator().manual_seed(k)) for k in range(40)]
        for index, time in enumerate(times):
            shown = sum(float((chip[index]["w"].double() / scales["w"]).square().mean())
                        for chip in chips) / len(chips)
            analytic = float(dm.variance(values, scales, plan, time)["w"].mean())
            # the chips renormalise each tile at a read (aihwkit's re-conversion), which
            # the formulas leave out: a few percent of the read noise
            assert shown == pytest.approx(analytic, rel=0.05 if time else 0.03), (time, plan)


@pytest.mark.parametrize("name,time", [("aihwkit-reram-wan", 1.0), ("aihwkit-reram-wan", DAY),
                                       ("aihwkit-reram-cmo", 0.0), ("aihwkit-reram-cmo", DAY)])
def test_sampled_variances_are_what_the_chips_show(name, time):
    dm = build_device_model(name, compensation=False, samples=1024)
    values, scales = layer(shape=(40, 120))
    analytic = float(dm.variance(values, scales, None, time)["w"].mean())
    # aihwkit's Wan model re-draws a read from the targets, but its tile converts back with
    # the programmed weights' scale: every weight grows by max|w_prog| / max|w_target| (a
    # few percent; the chips have it, the per-level variances not)
    rel = 0.1 if "wan" in name else 0.05
    shown = empirical_second_moment(dm, values, scales, time, chips=30)
    assert shown == pytest.approx(analytic, rel=rel)


def test_wan_reads_only_at_its_fitted_times():
    dm = build_device_model("aihwkit-reram-wan", samples=256)
    values, scales = layer()
    with pytest.raises(swimkit.SwimkitError, match="cannot read at 3600 s"):
        dm.sampler(values, scales, None, (3600.0,))


def test_verify_narrows_programming_only_and_costs_more_for_tighter_tolerances():
    dm = build_device_model("aihwkit-pcm", compensation=False)
    values, scales = layer()
    menu = dm.default_menu()
    table = dm.option_variances(values["w"], scales["w"], menu, 0.0)
    times = dm.option_times(values["w"], scales["w"], menu)
    assert table.shape == (*values["w"].shape, 1, 1 + len(menu))
    assert bool((table.diff(dim=-1) <= 1e-12).all())  # tighter, smaller
    assert bool((times.diff(dim=-1) >= 0).all())       # tighter, dearer
    later = dm.option_variances(values["w"], scales["w"], menu, YEAR)
    # a year of drift and read noise adds what verify cannot take away (on weights away
    # from 0: at 0 both devices of the pair hold only what programming left, which drifts
    # toward 0 with them)
    held = (values["w"].abs() / scales["w"] > 0.1).unsqueeze(-1)
    assert float((later[..., -1] - table[..., -1])[held].min()) > 0


def test_a_chip_read_at_a_time_is_the_same_whatever_else_is_read():
    dm = build_device_model("aihwkit-pcm")
    values, scales = layer()
    both = dm.sampler(values, scales, None, (1.0, DAY))(torch.Generator().manual_seed(3))
    late = dm.sampler(values, scales, None, (DAY,))(torch.Generator().manual_seed(3))
    assert torch.equal(both[1]["w"], late[0]["w"])
    assert not torch.equal(both[0]["w"], both[1]["w"])


# --- the cross-check: swimkit's pcm against aihwkit's PCM model ---------------------------------


def aihwkit_devices(level: float, n: int, seed: int, time: float, nu_zero: bool = False):
    """Targets, programmed and read conductances of n devices at ``level`` by aihwkit."""
    noise = PCMLikeNoiseModel()
    torch.manual_seed(seed)
    target = torch.full((n,), level * 25.0, dtype=torch.float64)
    programmed = noise.apply_programming_noise_to_conductance(target.clone())
    nu = noise.generate_drift_coefficients(target.clone())
    if nu_zero:
        nu = torch.zeros_like(nu)
        read = noise.apply_drift_noise_to_conductance(target.clone(), nu, time)
    else:
        read = noise.apply_drift_noise_to_conductance(programmed.clone(), nu, time)
    return target, programmed, nu, read


LEVELS = [26, 64, 128, 191, 255]  # digits of an 8-bit device: x = 0.10, 0.25, 0.50, 0.75, 1


@pytest.mark.parametrize("digit", LEVELS)
def test_swimkit_pcm_and_aihwkit_pcm_program_and_drift_alike(digit):
    """Programming error and drift exponent of swimkit's pcm (sigma set to aihwkit's
    spread at g_max) and aihwkit's PCMLikeNoiseModel at the same conductance agree within
    sampling error: both are the fits of Nandakumar et al. (ICECS 2019)."""
    n, x = 40000, digit / 255
    target, programmed, nu, _ = aihwkit_devices(x, n, 0, 1.0)
    swim = PCM(sigma=1.0554 / 25 * 255, sigma_verified=1.0, bits_per_weight=8,
               bits_per_device=8)
    cells = cells_of(torch.full((1,), digit / 256 + 1e-9), torch.tensor(1.0), swim.slicing)
    assert int(cells.digits) == digit
    sigma_uS = float(swim.plain_sigmas(cells)) * 25 / 255
    spread = float((programmed - target).std())
    assert spread == pytest.approx(sigma_uS, abs=4 * sigma_uS / math.sqrt(2 * n))
    mean, s = (float(v) for v in swim.drift_exponent(cells.levels))
    assert float(nu.mean()) == pytest.approx(mean, abs=4 * s / math.sqrt(n))
    assert float(nu.std()) == pytest.approx(s, abs=4 * s / math.sqrt(2 * n))


@pytest.mark.parametrize("time", [1.0, 3600.0, DAY, YEAR])
@pytest.mark.parametrize("digit", [3, 26, 128, 255])
def test_swimkit_pcm_and_aihwkit_pcm_read_alike(digit, time):
    """Read noise (drift held at 0) and the whole chain (programming, drift, read) at 1 s,
    1 h, 1 day and 1 year: aihwkit's samples against swimkit's pcm formulas, and against
    aihwkit's rules as the aihwkit-pcm device model computes them. From x = 0.1 up the
    three agree; at x = 0.012 (digit 3) aihwkit's clamp of the programmed conductance at 0
    removes a third of the error that swimkit's pcm (negative conductances allowed) keeps,
    and the aihwkit-pcm formulas have it."""
    from swimkit.interop.aihwkit.conductances import pcm_moments

    n, x = 40000, digit / 255
    target, _, _, read = aihwkit_devices(x, n, 1, time, nu_zero=True)
    swim = PCM(sigma=1.0554 / 25 * 255, sigma_verified=1.0, bits_per_weight=8,
               bits_per_device=8)
    cells = cells_of(torch.full((1,), digit / 256 + 1e-9), torch.tensor(1.0), swim.slicing)
    relative = float(swim.read_noise(cells.levels, time))
    measured = float(((read - target) / target).std())
    if digit >= 26:  # (at digit 3 the clamp at 0 cuts a read noise of up to 110 %)
        assert measured == pytest.approx(relative, abs=4 * relative / math.sqrt(2 * n))
    target, _, _, read = aihwkit_devices(x, n, 2, time)
    error = read - target
    variances = swim.option_sigmas(cells, None)[..., :1].square()
    second = float(swim.second_moments(cells, variances, time)) * (25 / 255) ** 2
    m1, m2, _, _ = pcm_moments(PCMLikeNoiseModel(), target[:1], None, 100, time)
    g = float(target[0])
    rules_mean, rules_second = float(m1) - g, float(m2 - 2 * g * m1 + g * g)
    within = 4 * float(error.std()) / math.sqrt(n)
    assert float(error.mean()) == pytest.approx(rules_mean, abs=within)
    assert float(error.square().mean()) == pytest.approx(rules_second, rel=0.03)
    if digit >= 26:
        bias = float(swim.device_means(cells, time)) * 25 / 255
        assert float(error.mean()) == pytest.approx(bias, abs=within + 0.002 * abs(bias))
        assert float(error.square().mean()) == pytest.approx(second, rel=0.04)
    else:
        assert second > 1.3 * float(error.square().mean())


def test_where_swimkit_pcm_and_aihwkit_pcm_differ_it_is_the_clips():
    """At a low conductance aihwkit clamps the programmed conductance at 0 and folds a
    negative drift exponent (|nu|) where swimkit's pcm lets the conductance go negative and
    clips nu at 0; the measured differences are those the two rules predict."""
    n, x = 200000, 0.005
    target, programmed, nu, _ = aihwkit_devices(x, n, 3, 1.0)
    noise = PCMLikeNoiseModel()
    from swimkit.interop.aihwkit.conductances import _drift_fit
    from swimkit.interop.aihwkit.conductances import programming_sigma_pcm as _prog_sigma_pcm

    sigma = float(_prog_sigma_pcm(noise, target[:1]))
    a = float(target[0]) / sigma  # the clamp binds below -a sigma
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * math.erfc(-a / math.sqrt(2))
    clamped_mean = float(target[0]) * cdf + sigma * phi  # E[max(g + e, 0)]
    assert float(programmed.mean()) == pytest.approx(clamped_mean, abs=4 * sigma / math.sqrt(n))
    assert float(programmed.mean()) > float(target[0]) + 10 * sigma / math.sqrt(n)
    mu, s = (float(v) for v in _drift_fit(target[:1] / 25))
    b = mu / s
    below = 0.5 * math.erfc(b / math.sqrt(2))  # P(X < 0)
    folded = s * math.sqrt(2 / math.pi) * math.exp(-b * b / 2) + mu * (1 - 2 * below)
    assert float(nu.mean()) == pytest.approx(folded, abs=4 * s / math.sqrt(n))
    assert folded > mu  # swimkit's pcm (clipped at 0) has mean about mu


# --- plans out --------------------------------------------------------------------------------


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_aihwkits_tiling_and_conv_layout_are_the_plans_blocks():
    assert split_sizes(784, 512) == [392, 392] and split_sizes(100, 0) == [100]
    torch.manual_seed(0)
    model = Small()
    analog = convert_to_analog(copy.deepcopy(model), perfect_config(max_input_size=50,
                                                                   max_output_size=3))
    splits = tile_splits(analog)
    assert splits["fc"] == ([3, 2], [43, 43, 42])
    for name, tile, rows, cols in analog_tiles(analog):
        weight = getattr(model, name).weight.detach()
        matrix = weight.reshape(weight.shape[0], -1)
        assert torch.allclose(tile.tile.get_weights(), matrix[rows, cols])
    blocks = tile_blocks((5, 128), 50, 3)
    assert [(b[0].start, b[0].stop, b[1].start, b[1].stop) for b in blocks][:2] == [
        (0, 3, 0, 43), (0, 3, 43, 86)]


def test_a_plan_applied_in_aihwkit_verifies_only_its_devices():
    torch.manual_seed(0)
    model = Small()
    dm = device_model(PCMLikeNoiseModel(), compensation=False)
    values = {n: getattr(model, n.split(".")[0]).weight.detach() for n in ("conv.weight",
                                                                          "fc.weight")}
    verified = {n: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) < 0.5
                for n, v in values.items()}
    plan = swimkit.Plan(masks=verified, devices_per_weight=1)
    analog = convert_to_analog(copy.deepcopy(model), perfect_config(max_input_size=50,
                                                                   max_output_size=3))
    apply_plan(analog, plan, dm).eval()  # a plan that records no chip, the device alone
    torch.manual_seed(5)
    analog.program_analog_weights()
    tolerance = dm.loop.tolerance * dm.step  # uS, each device of the pair
    for name, tile, rows, cols in analog_tiles(analog):
        reference = tile.reference_combined_weights
        programmed = tile.programmed_weights
        scale = reference.abs().max() / 25.0  # weight per uS in this tile
        error = (programmed - reference).abs() / scale
        mask = verified[f"{name}.weight"]
        mask = mask.reshape(mask.shape[0], -1)[rows, cols]
        assert float(error[mask].max()) <= 2 * tolerance * 1.001  # both devices within it
        assert float((error[~mask] > 2 * tolerance).float().mean()) > 0.3
    # then aihwkit drifts and reads it as ever
    analog.drift_analog_weights(DAY)
    assert analog(torch.randn(2, 3, 6, 6)).shape == (2, 5)


def test_one_plan_evaluated_by_aihwkit_and_by_swimkit_gives_the_same_accuracy():
    """The toy MLP, a plan of `allocate` with aihwkit's PCM (drift compensation on, an
    ideal periphery), read at 1 s and a day: aihwkit's inference path (the plan applied
    to its tiles) and swimkit's chips agree within their confidence intervals."""
    model, batches = toy_problem()
    config = perfect_config(max_input_size=16)
    chip = chip_of(config, model)
    assert chip.device_model == device_model_of(config, tile_inputs=16)
    assert chip.crossbar.tile_rows == 16 and chip.crossbar.ranges == "tile"
    sens = swimkit.sensitivity(model, batches, chip=chip)
    plan = swimkit.select(model, sens, chip=chip, method="allocate", speedup=3.0)
    ours = swimkit.evaluate(model, batches, chip, plan, samples=40, seed=0, times=[1.0, DAY])
    analog = convert_to_analog(copy.deepcopy(model), rpu_config_of(chip))
    with pytest.raises(swimkit.SwimkitError, match="made for another chip"):
        apply_plan(analog, plan, chip.device_model)  # the plan is for the tiled chip
    analog = apply_plan(analog, plan, chip)
    theirs = aihwkit_chips(analog, batches, times=[1.0, DAY], samples=40, seed=0)
    none = swimkit.evaluate(model, batches, chip, "none", samples=40, seed=0, times=[DAY])[0]
    clean = swimkit.accuracy(model, batches)
    assert none.mean < clean - 1.0  # the noise matters on this model
    for a, b in zip(ours, theirs, strict=True):
        half = (a.ci95[1] - a.ci95[0]) / 2 + (b.ci95[1] - b.ci95[0]) / 2
        assert abs(a.mean - b.mean) <= half, (a.meta, a.mean, b.mean, half)


# --- the crossbar both ways --------------------------------------------------------------------


def test_the_crossbar_translates_both_ways_and_refuses_what_differs():
    lenet = swimkit.build_model("lenet", seed=0)
    config = TorchInferenceRPUConfig()
    with pytest.raises(swimkit.SwimkitError, match="bound_management"):
        crossbar_of(config, lenet)
    config.forward.bound_management = BoundManagementType.NONE
    with pytest.raises(swimkit.SwimkitError, match="weight_scaling_omega"):
        crossbar_of(config, lenet)
    config.mapping.weight_scaling_omega = 1.0
    crossbar = crossbar_of(config, lenet)
    # aihwkit's defaults: 7-bit DAC, 9-bit ADC over +-12, output noise 0.06, fc1's 784
    # inputs on two tiles of 392
    assert crossbar == Crossbar(tile_rows=392, tile_columns=512, ranges="tile", dac_bits=7,
                                adc_bits=9, adc_range=12.0, output_noise=0.06)
    assert crossbar_of(rpu_config_of(crossbar), lenet) == crossbar
    chip = chip_of(config, lenet)  # the noise model, the crossbar and the default placement
    assert chip.crossbar == crossbar and chip.placement == swimkit.Placement()
    assert chip_of(rpu_config_of(chip), lenet) == chip
    with pytest.raises(swimkit.SwimkitError, match="not an aihwkit noise model"):
        rpu_config_of(swimkit.ChipSpec(PCM(), crossbar))
    config.forward.w_noise = 0.02
    with pytest.raises(swimkit.SwimkitError, match="w_noise"):
        crossbar_of(config, lenet)
    with pytest.raises(swimkit.SwimkitError, match="hold signs themselves"):
        rpu_config_of(Crossbar(signed="pair"))
    with pytest.raises(swimkit.SwimkitError, match="one range per layer"):
        rpu_config_of(Crossbar(tile_rows=256))
    assert crossbar_of(perfect_config(), nn.Sequential(nn.Conv2d(64, 8, 3))).tile_rows == 288
    wide = nn.Sequential(nn.Conv2d(57, 8, 3))  # 513 rows: aihwkit 257 + 256, inside channels
    with pytest.raises(swimkit.SwimkitError, match="cannot follow"):
        crossbar_of(perfect_config(), wide)


def test_converters_of_the_translation_read_like_aihwkits():
    """One tile, aihwkit's default converters (bound management off, omega 1): swimkit's
    crossbar reads a layer as aihwkit's forward does, within the output noise's spread."""
    torch.manual_seed(0)
    layer_ = nn.Sequential(nn.Linear(40, 6))
    config = TorchInferenceRPUConfig()
    config.forward.bound_management = BoundManagementType.NONE
    config.forward.out_noise = 0.0
    config.mapping.weight_scaling_omega = 1.0
    analog = convert_to_analog(copy.deepcopy(layer_), config).eval()
    crossbar = crossbar_of(config, layer_)
    x = torch.randn(64, 40)
    from swimkit.converters import AnalogReads, mark_weights

    with torch.no_grad(), AnalogReads(crossbar) as reads:
        weight = layer_[0].weight
        mark_weights(reads, {"0.weight": weight}, {"0.weight": weight})
        ours = layer_(x)
    theirs = analog(x)
    # one ADC step (24 / 510 normalised) in output units, per input row's scale
    step = 24 / 510 * float(weight.abs().max()) * x.abs().amax(1, keepdim=True)
    assert float((ours - theirs).abs().div(step).max()) <= 1.0 + 1e-4


# --- models in -----------------------------------------------------------------------------------


def test_an_aihwkit_model_and_its_file_are_taken_as_plain_layers(tmp_path):
    model = swimkit.build_model("lenet", seed=0).eval()
    analog = convert_to_analog(copy.deepcopy(model), perfect_config()).eval()
    plain = to_torch(analog)
    assert type(plain.fc1) is nn.Linear and type(plain.conv1) is nn.Conv2d
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(plain(x), model(x), atol=1e-5)
    # a state dict (tiles with mapping scales) and a whole saved model
    config = perfect_config(weight_scaling_omega=1.0)
    scaled = convert_to_analog(copy.deepcopy(model), config).eval()
    path = tmp_path / "analog.pt"
    torch.save(scaled.state_dict(), path)
    with pytest.raises(swimkit.SwimkitError, match="trusted"):
        swimkit.checkpoints.load_checkpoint(path, model_name="lenet")
    with pytest.raises(swimkit.SwimkitError, match="give the model"):
        swimkit.checkpoints.load_checkpoint(path, trusted=True)
    loaded, info = swimkit.checkpoints.load_checkpoint(path, model_name="lenet", trusted=True)
    assert info["format"] == "aihwkit state dict"
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
    sequential = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    whole = tmp_path / "whole.pt"
    torch.save(convert_to_analog(copy.deepcopy(sequential), perfect_config()), whole)
    plain, info = swimkit.checkpoints.load_checkpoint(whole, model=copy.deepcopy(sequential),
                                                      trusted=True)
    assert info["format"] == "aihwkit model"
    assert torch.allclose(plain[1].weight, sequential[1].weight, atol=1e-6)


def test_an_aihwkit_lightning_model_is_taken_by_swimkits_steps(tmp_path, fmnist):
    lightning = pytest.importorskip("aihwkit_lightning", reason="aihwkit-lightning is not "
                                    "installed (pip install --no-deps aihwkit-lightning)")
    from aihwkit_lightning.nn.conversion import convert_to_analog as to_lightning
    from aihwkit_lightning.simulator.configs import TorchInferenceRPUConfig as LightningConfig
    from aihwkit_lightning.simulator.configs import WeightClipType

    assert lightning
    config = LightningConfig()
    config.clip.type = WeightClipType.LAYER_GAUSSIAN_PER_CHANNEL
    config.clip.sigma = 2.5
    config.pre_post.input_range.enable = True
    model = to_lightning(swimkit.build_model("lenet", seed=0), config)
    path = tmp_path / "lightning.pt"  # its tensors (aihwkit-lightning's own need --trusted)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    loaded, info = swimkit.checkpoints.load_checkpoint(path, model_name="lenet")
    assert info["format"] == "aihwkit-lightning state dict"
    assert torch.equal(loaded.fc1.weight, model.fc1.weight)
    assert type(to_torch(model).fc1) is nn.Linear
    from swimkit.cli import main

    out = tmp_path / "r.json"
    code = main(["evaluate", "--checkpoint", str(path), "--model", "lenet",
                 "--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--samples", "2",
                 "--verify", "none", "--device-model", "aihwkit-pcm", "--tile", "392x512",
                 "--ranges", "tile", "--times", "1,86400", "--no-progress", "--json", str(out)])
    assert code == 0


def test_the_command_line_lists_the_aihwkit_models(capsys):
    """Their help goes through argparse's formatting (no bare percent signs)."""
    from swimkit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("aihwkit-pcm:", "aihwkit-reram-wan:", "aihwkit-reram-cmo:", "aihwkit:"):
        assert name in text
