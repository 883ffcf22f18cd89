"""The registry of device models: every entry's contract, building from settings and
options, and a model added from a plugin package."""

from __future__ import annotations

import json
import sys
import textwrap
from importlib import metadata

import pytest
import torch
from chip_draws import DrawsOnly, empirical_second_moment, layer

import swimkit
from swimkit import ChipSpec
from swimkit.devices import (
    DEVICE_MODELS,
    PCM,
    Device,
    GaussianDevice,
    MultiLevelGaussian,
    Stuck,
    build_device_model,
    parse_option,
    register_device_model,
)
from swimkit.devices.checked import CheckedDevice
from swimkit.devices.protocol import changes_with_time, missing
from swimkit.devices.registry import COMMON, DeviceModelSettings
from swimkit.settings import Settings

#: Every registered device model, read from the registry (a later entry is covered too).
EVERY_MODEL = DEVICE_MODELS.names()

#: Models whose planning variance is known to differ from their chips here, and why.
APPROXIMATE = {
    "aihwkit-reram-cmo": "aihwkit's one-device converter maps a tile's [w_min, w_max] onto "
                         "the conductances, the model [-s, s]: this layer's chips read 18 % "
                         "less variance a day on (docs/aihwkit.md)",
}


@pytest.fixture()
def required(tmp_path) -> dict[str, dict]:
    """The options a model cannot be built without (a model added later that needs one
    is listed here)."""
    curve = tmp_path / "curve.csv"
    curve.write_text("level,sigma\n0,1\n1,2\n")
    return {"table": {"path": str(curve)},
            "aihwkit": {"model": "aihwkit.inference.PCMLikeNoiseModel"}}  # with aihwkit


# --- every entry's contract -------------------------------------------------------------


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_every_model_follows_both_protocols_and_describes_itself(name, required):
    """Built with its defaults, a model draws chips and prices programming, describes
    itself JSON-ready with ``kind`` first, is built alike from settings, and is wrapped
    for checking only when it comes from outside swimkit."""
    entry = DEVICE_MODELS.get(name)
    dm = build_device_model(name, **required.get(name, {}))
    assert missing(dm, Device) == []
    described = dm.describe()
    assert next(iter(described)) == "kind"
    assert json.loads(json.dumps(described)) == described
    settings = DeviceModelSettings(name=name, options=required.get(name, {}))
    assert settings.build().describe() == described
    outside = not type(dm).__module__.startswith("swimkit.")
    assert isinstance(ChipSpec(dm).device, CheckedDevice) == outside
    assert not set(entry.options) & set(COMMON) and set(entry.settings) <= set(COMMON)


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_every_models_options_are_declared_with_their_defaults(name, required):
    """Giving every option at its declared default builds the model of no options; an
    option it does not declare is refused."""
    entry = DEVICE_MODELS.get(name)
    defaults = {**entry.options, **required.get(name, {})}
    assert build_device_model(name, **defaults).describe() == build_device_model(
        name, **required.get(name, {})).describe()
    with pytest.raises(swimkit.SwimkitError, match=f"device model '{name}' takes no 'zzz'"):
        build_device_model(name, zzz=1.0, **required.get(name, {}))


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(reason=APPROXIMATE[name], strict=True))
    if name in APPROXIMATE else name for name in EVERY_MODEL])
def test_every_models_variance_is_what_its_chips_show(name, required):
    """The variance a model reports, with and without a plan and at a time after
    programming where it changes, is the mean squared error of its sampled chips."""
    dm = build_device_model(name, **required.get(name, {}))
    values, scales = layer(shape=(100, 20))
    mask = torch.rand(values["w"].shape, generator=torch.Generator().manual_seed(1)) < 0.5
    plan = swimkit.Plan(masks={"w": mask}, devices_per_weight=dm.slicing.devices)
    times = (0.0, 86400.0) if changes_with_time(dm) else (0.0,)
    for time in times:
        for chosen in (None, plan):
            analytic = float(dm.variance(values, scales, chosen, time)["w"].mean())
            sampled = empirical_second_moment(dm, values, scales, time, chosen, chips=200)
            assert sampled == pytest.approx(analytic, rel=0.05), (time, chosen)


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_every_model_takes_another_sigma(name, required):
    """with_sigma gives the same model at another plain-write spread: the same model at
    its own sigma, more variance at a larger one."""
    dm = build_device_model(name, **required.get(name, {}))
    values, scales = layer(shape=(50, 10))
    assert dm.with_sigma(dm.sigma).describe() == dm.describe()
    wider = dm.with_sigma(dm.sigma + 0.1)
    assert wider.sigma == pytest.approx(dm.sigma + 0.1)
    assert float(wider.variance(values, scales)["w"].mean()) > float(
        dm.variance(values, scales)["w"].mean())
    assert missing(wider, Device) == []


# --- building models --------------------------------------------------------------------


def test_the_registry_builds_each_model_and_refuses_what_it_does_not_take():
    assert DEVICE_MODELS.names()[0] == "gaussian"
    assert {"gaussian", "band", "table", "pcm", "stuck"} <= set(DEVICE_MODELS.names())
    assert build_device_model("gaussian") == GaussianDevice()
    assert isinstance(build_device_model("pcm", compensation=True), PCM)
    assert isinstance(build_device_model("stuck", base="pcm"), Stuck)
    assert isinstance(build_device_model("gaussian", levels="pcm"), MultiLevelGaussian)
    with pytest.raises(swimkit.SwimkitError, match="takes no 'variation'"):
        build_device_model("pcm", variation="band:3")
    with pytest.raises(swimkit.SwimkitError, match="unknown device model 'rram'"):
        build_device_model("rram")
    assert parse_option("pcm", "compensation", "on") is True
    assert parse_option("pcm", "t0", "10") == 10.0
    with pytest.raises(swimkit.SwimkitError, match="has no option 'drift'"):
        parse_option("pcm", "drift", "1")
    with pytest.raises(swimkit.SwimkitError, match="true or false"):
        parse_option("pcm", "compensation", "maybe")


def test_settings_of_a_model_read_its_options_from_text():
    """The command line's text is typed like each option's default; the settings build
    the same model as the keywords."""
    settings = DeviceModelSettings(name="PCM", options={"compensation": "true", "t0": "10"},
                                   sigma=0.2)
    assert settings.name == "pcm" and settings.options == {"compensation": True, "t0": 10.0}
    assert settings.build() == build_device_model("pcm", compensation=True, t0=10.0, sigma=0.2)
    with pytest.raises(swimkit.SwimkitError, match="has no option 'r'"):
        DeviceModelSettings(name="pcm", options={"r": "3"})


def test_an_option_named_like_a_common_setting_is_refused():
    """A model's option named ``sigma`` would never be used: registering it is refused."""
    with pytest.raises(swimkit.SwimkitError, match="named like the common setting"):
        register_device_model("shadow", GaussianDevice, options={"sigma": 0.5})
    assert "shadow" not in DEVICE_MODELS


def test_settings_take_any_model_that_follows_the_protocols():
    """A run's chip takes any registered model; one that cannot draw chips, or cannot
    price programming, is refused before any work."""

    settings = Settings(chip=ChipSpec(build_device_model("stuck", low=0.02)))
    assert settings.describe()["device_model"]["kind"] == "stuck"
    with pytest.raises(swimkit.SwimkitError, match="must follow swimkit.devices.NoiseModel"):
        ChipSpec(object())
    with pytest.raises(swimkit.SwimkitError, match="must draw chips and price programming"):
        Settings(chip=ChipSpec(DrawsOnly()))


# --- a device model from a plugin package -------------------------------------------------


PLUGIN = '''
from dataclasses import dataclass, replace

import torch

from swimkit.devices import register_device_model
from swimkit.devices.cells import CellModel
from swimkit.programming import WriteVerify
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

    @property
    def changes_with_time(self):
        return True

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


@pytest.mark.slow
def test_a_device_model_from_a_plugin_package_runs_through_the_cli(plugin_package, fmnist,
                                                                    tmp_path, capsys):
    """Its option, its times and a plan for a day act; --help lists it."""
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
