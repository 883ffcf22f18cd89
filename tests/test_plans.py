"""Plans on disk and for a programming flow: torch files of every version, NumPy arrays,
summaries, the chip a plan was made for, and every field of a plan file checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from plan_problems import lenet_problem
from toys import toy_problem

import swimkit
from swimkit import ChipSpec, Crossbar, GaussianDevice
from swimkit.plans import Plan
from swimkit.programming import WriteVerify


@pytest.fixture(scope="module")
def lenet_and_sens(reference):
    return lenet_problem(reference)


def test_plan_save_load_and_npz(lenet_and_sens, tmp_path):
    """A weight-level plan saves as masks, loads as it was, exports one uint8 array per
    layer (every device at the mask's level) and is not read back from its export."""
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, fraction=0.1,
                          chip=GaussianDevice(write_verify=WriteVerify(0.05, 100)))
    plan.save(tmp_path / "plan.pt")
    back = Plan.load(tmp_path / "plan.pt")
    assert all(torch.equal(back.masks[k], plan.masks[k]) for k in plan.masks)
    assert back.programming == plan.programming and back.method == "swim"
    plan.export_npz(tmp_path / "plan.npz")
    arrays = np.load(tmp_path / "plan.npz")
    assert set(arrays.files) == {*plan.masks, "menu", "chip"}
    assert arrays["menu"].tolist() == [] and plan.menu is None
    for k, mask in plan.masks.items():
        assert arrays[k].dtype == np.uint8 and arrays[k].shape == (*mask.shape, 8)
        assert (arrays[k] == mask.numpy()[..., None]).all()
    with pytest.raises(swimkit.SwimkitError, match="not a swimkit write-verify plan"):
        Plan.load(tmp_path / "plan.npz")


def test_plan_files_for_a_programming_flow(lenet_and_sens, tmp_path):
    """A device-level plan: levels and menu saved and exported, summaries as JSON and CSV
    counting every device, another suffix refused."""
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, method="allocate", speedup=6.0)
    back = Plan.load(plan.save(tmp_path / "plan.pt"))
    assert back.menu == plan.menu and back.programming == plan.programming
    assert all(torch.equal(back.levels[k], plan.levels[k]) for k in plan.levels)
    arrays = np.load(plan.export_npz(tmp_path / "plan.npz"))
    assert arrays["menu"].tolist() == list(plan.menu)
    assert arrays["fc1.weight"].shape == (120, 784, 8) and arrays["fc1.weight"].dtype == np.uint8
    summary = json.loads(plan.export_summary(tmp_path / "plan.json").read_text())
    layer = summary["layers"]["fc1.weight"]
    assert sum(layer["devices_per_option"]) == 120 * 784 * 8
    assert summary["devices_verified"] == plan.devices_verified
    rows = plan.export_summary(tmp_path / "plan.csv").read_text().splitlines()
    assert rows[0].startswith("layer,weights,weights_verified,devices,devices_plain")
    assert len(rows) == 1 + len(plan.levels)
    with pytest.raises(swimkit.SwimkitError, match=".json or .csv"):
        plan.export_summary(tmp_path / "plan.txt")


def test_first_release_plan_files_load(tmp_path):
    torch.save({"kind": "swimkit.plan", "masks": {"w": torch.tensor([True, False])},
                "method": "swim", "requested": {"fraction": 0.5},
                "programming": {"time_plan": 1e-6, "time_full_verify": 2e-6,
                                "time_no_verify": 5e-7, "speedup": 2.0,
                                "fraction_verified": 0.5}}, tmp_path / "old.pt")
    plan = Plan.load(tmp_path / "old.pt")
    assert plan.masks["w"].tolist() == [True, False] and plan.menu is None
    assert plan.programming.time_plan_s == 1e-6
    assert plan.programming.devices_fraction_verified == 0.5
    assert plan.chip is None  # made before plans recorded their chip: taken as it is


# --- the chip a plan was made for travels with it -----------------------------------------


@pytest.fixture(scope="module")
def crossbar_plan():
    """A plan made on a tiled crossbar of column ranges and device pairs."""
    model, batches = toy_problem()
    chip = ChipSpec(GaussianDevice(sigma=0.4, sigma_verified=0.04),
                    crossbar=Crossbar(tile_rows=16, tile_columns=16, ranges="column",
                                      signed="pair"))
    plan = swimkit.select(model, swimkit.sensitivity(model, batches), method="allocate",
                          speedup=3.0, chip=chip)
    return model, batches, chip, plan


def test_a_plan_keeps_its_chip_through_a_file(crossbar_plan, tmp_path):
    """Saved and loaded, the plan records the same chip and still evaluates on it only."""
    model, batches, chip, plan = crossbar_plan
    described = json.loads(json.dumps(chip.describe_all()))
    assert plan.chip == described
    back = Plan.load(plan.save(tmp_path / "plan.pt"))
    assert back.chip == described and back.meta == plan.meta
    assert all(torch.equal(back.ranges[k], plan.ranges[k]) for k in plan.ranges)
    assert swimkit.evaluate(model, batches, chip, back, samples=2).samples == 2
    with pytest.raises(swimkit.SwimkitError, match="another chip"):
        swimkit.evaluate(model, batches, chip.replace(crossbar=Crossbar()), back, samples=2)


def test_the_exports_carry_the_chip(crossbar_plan, tmp_path):
    """The summary (JSON) and the NumPy export name the chip the levels are for, with
    each weight's range and tiles."""
    model, _, chip, plan = crossbar_plan
    described = json.loads(json.dumps(chip.describe_all()))
    assert plan.summary()["chip"] == described
    summary = json.loads(plan.export_summary(tmp_path / "plan.json").read_text())
    assert summary["chip"] == described
    arrays = np.load(plan.export_npz(tmp_path / "plan.npz"))
    assert json.loads(str(arrays["chip"])) == described
    for name, weight in chip.weights(model).items():  # linear layers: (outputs, inputs)
        outputs, inputs = weight.value.shape
        assert arrays[f"{name}:range"].shape == (outputs, inputs)
        assert arrays[f"{name}:tile_row"].shape == (inputs,)
        assert arrays[f"{name}:tile_column"].shape == (outputs,)
    assert arrays["0.weight:tile_row"].tolist() == [0] * 8  # 8 inputs: one row tile
    assert arrays["0.weight:tile_column"].tolist() == [0] * 16 + [1] * 16


# --- every field of a plan file checked ---------------------------------------------------


@pytest.fixture(scope="module")
def plan_files(crossbar_plan, tmp_path_factory):
    """A weight-level plan on the idealised chip and a device-level plan on a crossbar,
    saved, with the model and the chip each was made for."""
    model, batches, chip, plan = crossbar_plan
    folder = tmp_path_factory.mktemp("plans")
    ideal = ChipSpec(GaussianDevice(sigma=0.4, sigma_verified=0.04))
    masks = swimkit.select(model, swimkit.sensitivity(model, batches), method="swim",
                           speedup=3.0, chip=ideal)
    return model, batches, [(masks.save(folder / "masks.pt"), ideal),
                            (plan.save(folder / "levels.pt"), chip)]


def test_every_field_of_a_plan_is_checked(plan_files, damages, tmp_path):
    """A plan file with any field of the wrong type, missing, NaN, empty or out of range
    loads and evaluates, or is refused with one line; never another exception."""
    model, batches, files = plan_files
    tried = 0
    for path, chip in files:
        original = torch.load(path, weights_only=True)
        fields = [p for p in damages.paths(original) if p[0] not in ("levels", "masks", "ranges")
                  or len(p) <= 2]
        for field in fields:
            for damage in damages.kinds:
                target = tmp_path / "damaged.pt"
                try:
                    torch.save(damages.damaged(original, field, damage), target)
                except Exception:  # noqa: BLE001 - a damage torch cannot even save
                    continue
                try:
                    swimkit.evaluate(model, batches, chip, Plan.load(target), samples=2)
                except swimkit.SwimkitError as refused:
                    assert "\n" not in str(refused), (field, damage, str(refused))
                tried += 1
    assert tried > 80
