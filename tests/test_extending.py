"""Extending swimkit from outside the package: a method, a model, a dataset, a plugin.

Each is one registration in this file; select(), the workflows and the command line then
offer it like a built-in (see "How to add ..." in docs/architecture.md).
"""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch
from torch import nn

import swimkit
from swimkit.cli import main
from swimkit.data import DATASETS, Dataset, Split
from swimkit.models import MODELS
from swimkit.selection import METHODS


def last_layer_first(inputs):
    """A toy score: the weights of the last layer first, then by |w_hat|."""
    last = list(inputs.normalised)[-1]
    return {k: w.abs() + (10.0 if k == last else 0.0) for k, w in inputs.normalised.items()}


class Tiny(nn.Module):
    """A toy model for 1x8x8 images."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def stripes(data_dir, download):
    """A toy dataset: 8x8 images with a bright row whose position (mod 4) is the label."""
    gen = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.randint(0, 4, (n,), generator=gen)
        images = torch.randint(0, 50, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
        for k in range(4):
            images[labels == k, :, 2 * k] = 250
        return Split(images, labels)

    return Dataset("stripes", split(512), split(128), 4, (0.0,), (1.0,), None)


@pytest.fixture()
def toys():
    swimkit.register_method("lastfirst", last_layer_first, needs_sensitivity=False,
                            aliases=("lf",), help="the last layer first (a test's toy)")
    swimkit.register_model("tiny", Tiny, dataset="stripes", input_shape=(1, 8, 8),
                           num_classes=4, help="a test's toy")
    swimkit.register_dataset("stripes", stripes, help="a test's toy")
    yield
    METHODS.remove("lastfirst")
    MODELS.remove("tiny")
    DATASETS.remove("stripes")


def test_a_method_registered_from_outside_works_in_select(toys):
    model = Tiny()
    plan = swimkit.select(model, None, fraction=16 * 4 / (64 * 16 + 16 * 4), method="LF")
    assert plan.method == "lastfirst"
    assert bool(plan.masks["fc2.weight"].all()) and not bool(plan.masks["fc1.weight"].any())
    assert plan.programming is not None and plan.programming.speedup > 1


def test_model_dataset_and_method_from_outside_run_through_the_cli(toys, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sweep", "--model", "tiny", "--epochs", "4", "--batch-size", "16",
                 "--samples", "3", "--methods", "lastfirst,allocate", "--fractions", "0.1",
                 "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "sweep.json").read_text())
    assert result["settings"]["data"]["dataset"] == "stripes"
    assert {p["method"] for p in result["points"]} == {"lastfirst", "allocate"}
    assert result["clean_accuracy_percent"] > 50
    help_text = " ".join(main_help(["sweep", "--help"], capsys).split())  # unwrapped
    assert "lastfirst: the last layer first" in help_text and "tiny" in help_text


def main_help(args, capsys) -> str:
    with pytest.raises(SystemExit):
        main(args)
    return capsys.readouterr().out


def test_a_plugin_package_registers_through_its_entry_point(monkeypatch, capsys):
    """A package declaring [project.entry-points."swimkit.methods"] is seen by the CLI."""

    def register():
        swimkit.register_method("plugged", last_layer_first, needs_sensitivity=False,
                                help="from a plugin")

    class Point:
        name = "plugged"

        def load(self):
            return register

    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points",
                        lambda group=None: [Point()] if group == "swimkit.methods"
                        else real(group=group))
    monkeypatch.setattr(METHODS, "_plugins_loaded", False)
    try:
        assert "plugged" in METHODS.names()
        assert "plugged: from a plugin" in " ".join(main_help(["run", "--help"],
                                                              capsys).split())
    finally:
        METHODS.remove("plugged")


def test_a_device_model_from_outside_runs_through_select_and_evaluate():
    """A device model registered from outside is built by name with its own option and
    the common settings it lists, and a plan made for it is evaluated on it."""
    from toys import toy_problem

    from swimkit import ChipSpec, build_device_model, register_device_model
    from swimkit.devices import DEVICE_MODELS

    def noisier(factor=2.0, **common):
        base = swimkit.GaussianDevice(**common)
        return base.with_sigma(base.sigma * factor)

    register_device_model("noisier", noisier, settings=("sigma", "sigma_verified"),
                          options={"factor": 2.0}, help="gaussian, factor times the spread")
    try:
        chip = ChipSpec(build_device_model("noisier", sigma=0.2, factor=3.0))
        assert chip.device_model.sigma == pytest.approx(0.6)
        model, batches = toy_problem()
        plan = swimkit.select(model, None, method="magnitude", fraction=0.2, chip=chip)
        assert swimkit.evaluate(model, batches, chip, plan, samples=2).samples == 2
        with pytest.raises(swimkit.SwimkitError, match="takes no 'variation'"):
            build_device_model("noisier", variation="band:3")
    finally:
        DEVICE_MODELS.remove("noisier")


@pytest.mark.parametrize("option", ["sigma", "sigma_verified", "bits_per_device",
                                    "write_verify"])
def test_a_device_model_option_named_like_a_common_setting_is_refused(option):
    """An option named like a common setting would never be used (the common setting
    takes the name): refused at registration, and nothing is registered."""
    from swimkit import register_device_model
    from swimkit.devices import DEVICE_MODELS

    with pytest.raises(swimkit.SwimkitError, match="named like the common setting"):
        register_device_model("shadowing", swimkit.GaussianDevice, options={option: 0.5})
    assert "shadowing" not in DEVICE_MODELS
