"""The registered device models: digits, variances against sampled chips, time, stuck
cells, multi-level cells, planning for a time, and a model added from a plugin package."""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass, replace
from importlib import metadata

import pytest
import torch
from toys import toy_problem

import swimkit
from swimkit.devices import (
    DEVICE_MODELS,
    PCM,
    CellModel,
    DeviceModel,
    MultiLevelGaussian,
    Stuck,
    build_device_model,
    parse_option,
)
from swimkit.devices.cells import cells_of
from swimkit.programming import WriteVerify
from swimkit.settings import Settings
from swimkit.slicing import BitSlicing


def layer(seed: int = 0, shape=(400, 20)) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    w = torch.randn(*shape)
    return {"w": w}, {"w": w.abs().max()}


def empirical_second_moment(dm, values, scales, time, plan=None, chips=300) -> float:
    draw = dm.sampler(values, scales, plan, (time,))
    total = 0.0
    for k in range(chips):
        dw = draw(torch.Generator().manual_seed(k))[0]["w"].double() / scales["w"]
        total += float(dw.square().mean())
    return total / chips


# --- the registry ---------------------------------------------------------------------------


def test_the_registry_builds_each_model_and_refuses_what_it_does_not_take():
    assert DEVICE_MODELS.names()[0] == "gaussian"
    assert {"gaussian", "band", "table", "pcm", "stuck"} <= set(DEVICE_MODELS.names())
    assert build_device_model("gaussian") == DeviceModel()
    assert isinstance(build_device_model("pcm", compensation=True), PCM)
    assert isinstance(build_device_model("stuck", base="pcm"), Stuck)
    assert isinstance(build_device_model("gaussian", levels="pcm"), MultiLevelGaussian)
    band = build_device_model("band", r=2.0)
    assert band.describe() == DeviceModel(variation="band:2").describe()
    with pytest.raises(swimkit.SwimkitError, match="takes no 'variation'"):
        build_device_model("pcm", variation="band:3")
    with pytest.raises(swimkit.SwimkitError, match="unknown device model 'rram'"):
        build_device_model("rram")
    with pytest.raises(swimkit.SwimkitError, match="needs its curve"):
        build_device_model("table")
    assert parse_option("pcm", "compensation", "on") is True
    assert parse_option("pcm", "t0", "10") == 10.0
    with pytest.raises(swimkit.SwimkitError, match="has no option 'drift'"):
        parse_option("pcm", "drift", "1")
    with pytest.raises(swimkit.SwimkitError, match="true or false"):
        parse_option("pcm", "compensation", "maybe")


def test_settings_take_any_model_that_follows_the_protocols():
    settings = Settings(device_model=build_device_model("stuck", low=0.02))
    assert settings.describe()["device_model"]["kind"] == "stuck"
    with pytest.raises(swimkit.SwimkitError, match="must draw chips and price programming"):
        Settings(device_model=object())


# --- devices and their digits ---------------------------------------------------------------


@pytest.mark.parametrize("bits_per_device", [1, 2, 4])
def test_digits_spell_each_weight_code(bits_per_device):
    values, scales = layer()
    slicing = BitSlicing(8, bits_per_device)
    cells = cells_of(values["w"], scales["w"], slicing)
    assert int(cells.digits.max()) <= 2**bits_per_device - 1 and int(cells.digits.min()) >= 0
    code = (cells.digits.double() * slicing.significances()).sum(-1)
    assert float((code - values["w"].abs() / scales["w"]).abs().max()) <= 2.0**-8 + 1e-12
    assert torch.equal(cells.sign, torch.where(values["w"] < 0, -1.0, 1.0).double())


def test_multilevel_with_uniform_levels_is_the_gaussian_model():
    values, scales = layer()
    gaussian = DeviceModel()
    cells = MultiLevelGaussian(levels="uniform")
    full = swimkit.Plan.uniform(values, True)
    for plan in (None, full):
        assert torch.allclose(cells.variance(values, scales, plan)["w"],
                              gaussian.variance(values, scales, plan)["w"].double(), rtol=1e-6)
    assert cells.reference_times(values, scales) == pytest.approx(
        gaussian.reference_times(values, scales), rel=1e-9)


def test_multilevel_levels_price_and_sample_device_by_device():
    values, scales = layer()
    dm = build_device_model("gaussian", levels="pcm", bits_per_device=2)
    table = dm.option_variances(values["w"], scales["w"], None)
    times = dm.option_times(values["w"], scales["w"], None)
    assert table.shape == (*values["w"].shape, 4, 2) and times.shape == table.shape
    cells = cells_of(values["w"], scales["w"], dm.slicing)
    low, high = cells.digits == 0, cells.digits == 3
    # the measured PCM shape: the lowest level lands 4x tighter than the top one
    assert float(table[..., 0][low].mean()) < float(table[..., 0][high].mean()) / 10
    # so verifying a device at the top level costs more attempts
    assert float(times[..., 1][high].mean()) > float(times[..., 1][low].mean())
    expected = float(dm.variance(values, scales)["w"].mean())
    assert empirical_second_moment(dm, values, scales, 0.0) == pytest.approx(expected, rel=0.03)


# --- time: drift, read noise, compensation --------------------------------------------------


@pytest.mark.parametrize("model", [
    {"name": "pcm"}, {"name": "pcm", "compensation": True},
    {"name": "stuck", "low": 0.03, "high": 0.01}, {"name": "stuck", "base": "pcm"},
])
@pytest.mark.parametrize("time", [0.0, 86400.0, 31536000.0])
def test_variance_at_a_time_is_what_the_chips_show(model, time):
    options = dict(model)
    dm = build_device_model(options.pop("name"), **options)
    values, scales = layer()
    analytic = float(dm.variance(values, scales, None, time)["w"].mean())
    # compensation's gain is calibrated per chip; the variance uses its expectation
    tolerance = 0.05 if dm.compensated else 0.03
    assert empirical_second_moment(dm, values, scales, time) == pytest.approx(
        analytic, rel=tolerance)


def test_write_verify_cannot_undo_drift():
    values, scales = layer()
    dm = PCM()
    full = swimkit.Plan.uniform(values, True)
    gain = {t: float((dm.variance(values, scales, None, t)["w"]
                      - dm.variance(values, scales, full, t)["w"]).mean())
            for t in (0.0, 31536000.0)}
    floor = float(dm.variance(values, scales, full, 31536000.0)["w"].mean())
    assert gain[31536000.0] < gain[0.0]          # drift shrinks the error verify removed ...
    assert floor > float(dm.variance(values, scales, full, 0.0)["w"].mean())  # ... and adds its own
    compensated = PCM(compensation=True)
    assert float(compensated.variance(values, scales, full, 31536000.0)["w"].mean()) < floor


def test_a_chip_read_at_a_time_is_the_same_whatever_else_is_read():
    values, scales = layer()
    for dm in (PCM(), build_device_model("stuck", base="pcm", low=0.05)):
        both = dm.sampler(values, scales, None, (1.0, 86400.0))(torch.Generator().manual_seed(3))
        late = dm.sampler(values, scales, None, (86400.0,))(torch.Generator().manual_seed(3))
        assert torch.equal(both[1]["w"], late[0]["w"])
        assert not torch.equal(both[0]["w"], both[1]["w"])


def test_evaluate_over_time_reads_the_same_chips_at_every_time():
    model, batches = toy_problem()
    frozen = swimkit.evaluate(model, batches, DeviceModel(sigma=0.5), samples=4,
                              times=[0, 3600])
    assert [r.meta["time_s"] for r in frozen] == [0.0, 3600.0]
    assert torch.equal(frozen[0].accuracies, frozen[1].accuracies)  # gaussian does not drift
    pcm = PCM(sigma=0.5, drift_scale=3.0)
    over = swimkit.evaluate(model, batches, pcm, samples=4, times=[1, 31536000])
    alone = swimkit.evaluate(model, batches, pcm, samples=4, times=[31536000])
    assert torch.equal(over[1].accuracies, alone[0].accuracies)
    single = swimkit.evaluate(model, batches, pcm, samples=4)
    assert isinstance(single, swimkit.MCResult)
    with pytest.raises(swimkit.SwimkitError, match="repeat"):
        swimkit.evaluate(model, batches, pcm, samples=2, times=[1, 1])


# --- stuck cells -----------------------------------------------------------------------------


def test_verifying_stuck_cells_burns_the_loop_and_is_reported():
    values, scales = layer()
    loop = WriteVerify(max_attempts=30, tolerance=0.1)
    base = MultiLevelGaussian(levels="uniform", write_verify=loop)
    stuck = Stuck(base, low=0.04, high=0.01)
    full = swimkit.Plan.uniform(values, True)
    report = stuck.programming_report(values, scales, full)
    plain = base.programming_report(values, scales, full)
    devices = values["w"].numel() * 8
    attempt = stuck.loop.attempt_time
    expected = 0.95 * plain.time_plan_s + 0.05 * devices * 30 * attempt
    assert report.time_plan_s == pytest.approx(expected, rel=1e-9)
    assert report.stuck_devices_verified == pytest.approx(0.05 * devices)
    assert report.time_stuck_s == pytest.approx(report.time_plan_s - 0.95 * plain.time_plan_s
                                                 - 0.05 * plain.time_plan_s, rel=1e-6)
    assert "stuck_devices_verified" not in DeviceModel().programming_report(
        values, scales, full).to_dict()
    # verify does not help a stuck cell: the variance it leaves has a floor
    assert float(stuck.variance(values, scales, full)["w"].mean()) > 3 * float(
        base.variance(values, scales, full)["w"].mean())


# --- planning for a time ----------------------------------------------------------------------


@dataclass(frozen=True)
class Fading(CellModel):
    """A toy device: after programming, cells at the top level lose what programming gave
    them (they re-randomise), so verifying them is wasted on a chip read later."""

    sigma: float = 0.4
    sigma_verified: float = 0.04

    def __post_init__(self) -> None:
        object.__setattr__(self, "slicing", BitSlicing(8, 1))

    @property
    def loop(self) -> WriteVerify:
        return WriteVerify().resolved(self.sigma, self.sigma_verified)

    def plain_sigmas(self, cells):
        return torch.full(cells.levels.shape, self.sigma, dtype=torch.float64)

    def with_sigma(self, sigma):
        return replace(self, sigma=sigma)

    def evolve(self, cells, programmed, times, generator, reads):
        fresh = cells.digits + self.sigma * torch.randn(programmed.shape, generator=generator,
                                                        dtype=torch.float64)
        return [programmed if t == 0 else torch.where(cells.digits > 0, fresh, programmed)
                for t in times]

    def second_moments(self, cells, variances, time):
        if time == 0:
            return variances
        faded = torch.full_like(variances, self.sigma**2)
        return torch.where((cells.digits > 0).unsqueeze(-1), faded, variances)

    def describe(self):
        return {"kind": "fading", "sigma": self.sigma}


def test_planning_for_a_day_beats_planning_for_now_when_judged_a_day_later():
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    device = Fading()
    plans = {t: swimkit.select(model, sens, method="allocate", speedup=4.0,
                               device_model=device, plan_time=t) for t in (0.0, 86400.0)}
    assert plans[86400.0].meta["plan_time_s"] == 86400.0
    judged = {t: swimkit.evaluate(model, batches, device, plan, samples=40, seed=2,
                                  times=[86400.0])[0] for t, plan in plans.items()}
    gap = judged[86400.0].paired_difference(judged[0.0])
    assert gap.ci95[0] > 0, f"planning for the day should win: {gap}"
    # and the predicted loss at that time agrees
    values = swimkit.mapping.effective_weights(plans[0.0].weights_in(model))
    scales = swimkit.mapping.weight_scales(values)
    h = sens.second
    predicted = {t: sum(float((h[k].double() * v).sum()) for k, v in device.variance(
        values, scales, p, 86400.0).items()) for t, p in plans.items()}
    assert predicted[86400.0] < predicted[0.0]


# --- noise-injection training through the protocol ---------------------------------------------


def test_noise_injection_trains_for_the_drifted_device():
    from swimkit.noise_injection import NoiseInjector
    from swimkit.training import TrainConfig

    model, _ = toy_problem()
    config = TrainConfig(sigma_train=0.1, noise_time=86400.0, scale_aware=True)
    injector = NoiseInjector.create(model, config, PCM(compensation=True))
    assert injector.noise_model == PCM(sigma=0.1, compensation=True)
    assert injector.describe()["time_s"] == 86400.0
    with injector.epoch(1) as redraw:
        redraw()  # draws the drifted chip without error


# --- a device model from a plugin package ---------------------------------------------------------


PLUGIN = '''
from dataclasses import dataclass, replace

import torch

from swimkit.devices import register_device_model
from swimkit.devices.cells import CellModel
from swimkit.programming import WriteVerify
from swimkit.settings import Settings
from swimkit.slicing import BitSlicing


@dataclass(frozen=True)
class Halving(CellModel):
    """Gaussian devices whose programming error doubles after a day."""

    sigma: float = 0.3
    sigma_verified: float = 0.03
    bits_per_weight: int = 8
    bits_per_device: int = 1
    write_verify: WriteVerify = WriteVerify()
    factor: float = 2.0

    def __post_init__(self):
        object.__setattr__(self, "slicing", BitSlicing(self.bits_per_weight,
                                                        self.bits_per_device))

    @property
    def loop(self):
        return self.write_verify.resolved(self.sigma, self.sigma_verified)

    def plain_sigmas(self, cells):
        return torch.full(cells.levels.shape, self.sigma, dtype=torch.float64)

    def with_sigma(self, sigma):
        return replace(self, sigma=sigma)

    def evolve(self, cells, programmed, times, generator, reads):
        return [programmed if t < 86400 else cells.digits + self.factor * (programmed -
                cells.digits) for t in times]

    def second_moments(self, cells, variances, time):
        return variances if time < 86400 else self.factor ** 2 * variances

    def describe(self):
        return {"kind": "halving", "sigma": self.sigma, "factor": self.factor}


def register():
    register_device_model("halving", Halving, options={"factor": 2.0},
                          help="a plug-in's toy: the error doubles after a day")
'''


@pytest.fixture()
def plugin_package(tmp_path, monkeypatch):
    """A real installed-looking package: module + dist-info with an entry point."""
    site = tmp_path / "site"
    (site / "swimkit_halving").mkdir(parents=True)
    (site / "swimkit_halving" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "swimkit_halving-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: swimkit-halving\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[swimkit.device_models]\n"
                                           "halving = swimkit_halving:register\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(DEVICE_MODELS, "_plugins_loaded", False)
    yield
    if "halving" in DEVICE_MODELS:
        DEVICE_MODELS.remove("halving")
    sys.modules.pop("swimkit_halving", None)
    assert metadata  # the lookup above went through importlib.metadata


def test_a_device_model_from_a_plugin_package_runs_through_the_cli(plugin_package, fmnist,
                                                                    tmp_path, capsys):
    from swimkit.cli import main

    path = tmp_path / "r.json"
    code = main(["run", "--model", "lenet", "--dataset", "fashion-mnist", "--data-dir",
                 str(fmnist), "--epochs", "1", "--samples", "3", "--out", str(tmp_path / "o"),
                 "--no-progress", "--device-model", "halving", "--device-option", "factor=3",
                 "--times", "0,86400", "--method", "allocate", "--speedup", "3",
                 "--plan-time", "86400", "--json", str(path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(path.read_text())
    assert result["settings"]["device_model"] == {"kind": "halving", "sigma": 0.3,
                                                  "factor": 3.0}
    over = result["selected"]["over_time"]
    assert [row["time_s"] for row in over] == [0.0, 86400.0]
    assert over[1]["mean_percent"] < over[0]["mean_percent"]
    assert result["selected"]["meta"]["plan_time_s"] == 86400.0
    assert "at 1 d" in captured.out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "halving: a plug-in's toy" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("build", [
    lambda: swimkit.DeviceModel(),
    lambda: swimkit.build_device_model("band", r=3.0),
    lambda: swimkit.build_device_model("pcm", compensation=True),
    lambda: swimkit.build_device_model("stuck", base="pcm", compensation=True),
    lambda: swimkit.build_device_model("gaussian", levels="pcm", bits_per_device=2),
])
def test_option_tables_in_pieces_are_the_rows_of_the_whole_tables(build):
    """A planner reads a layer's options in pieces of weights: the pieces, stacked, are
    the whole layer's tables to the bit (a compensation gain is the whole layer's)."""
    dm = build()
    value = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(0))
    scale = value.abs().amax()
    menu = dm.default_menu()
    for time in (0.0, 86400.0):
        whole = (dm.option_variances(value, scale, menu, time), dm.option_times(value, scale,
                                                                                 menu))
        pieces = list(dm.option_tables(value, scale, menu, time, 4))
        for got, want in zip(zip(*pieces, strict=True), whole, strict=True):
            if want.dim() == 1:  # every device alike: one piece stands for all
                assert len(got) == 1 and torch.equal(got[0], want)
            else:
                assert torch.equal(torch.cat(got), want.reshape(value.numel(), *want.shape[3:]))
