"""The chip spec: a device model, a crossbar and a placement as one frozen value, and a
plan that runs only on the chip it was made for unless moved explicitly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from plan_problems import toy_with_sensitivity

import swimkit
from swimkit import ChipSpec, Crossbar, GaussianDevice, Placement
from swimkit.chip import as_chip, placement_of
from swimkit.devices import build_device_model
from swimkit.devices.mapped import MappedDevice


def described(chip: ChipSpec) -> dict:
    """The chip's description as a plan file holds it."""
    return json.loads(json.dumps(chip.describe_all()))


# --- the value -------------------------------------------------------------------------------


def test_a_chip_is_its_three_siblings_frozen():
    """By default the Gaussian model on the idealised crossbar with every layer weight
    on devices; frozen, changed by copies; described as its device model unless the
    crossbar is another."""
    chip = ChipSpec()
    assert chip.device_model == GaussianDevice() and chip.crossbar.is_default
    assert chip.placement.is_default and chip.device is chip.device_model
    with pytest.raises(dataclasses.FrozenInstanceError):
        chip.crossbar = Crossbar(signed="pair")  # type: ignore[misc]
    pairs = chip.replace(crossbar=Crossbar(signed="pair"))
    assert chip.crossbar.is_default and isinstance(pairs.device, MappedDevice)
    assert chip.describe() == GaussianDevice().describe()
    assert pairs.describe() == {**GaussianDevice().describe(),
                                "crossbar": Crossbar(signed="pair").describe()}
    assert set(pairs.describe_all()) == {"device_model", "crossbar", "placement"}
    wider = pairs.with_sigma(0.5)
    assert wider.device_model.sigma == 0.5 and wider.crossbar == pairs.crossbar


def test_a_device_model_alone_stands_for_a_chip():
    dm = build_device_model("pcm")
    assert as_chip(dm) == ChipSpec(dm) and as_chip(None) == ChipSpec()
    chip = ChipSpec(dm, crossbar=Crossbar(signed="offset"))
    assert as_chip(chip) is chip
    for part in (Crossbar(), Placement()):
        with pytest.raises(swimkit.SwimkitError, match="must be a swimkit.ChipSpec"):
            as_chip(part)
    with pytest.raises(swimkit.SwimkitError, match="crossbar must be a swimkit.Crossbar"):
        ChipSpec(crossbar="pairs")
    with pytest.raises(swimkit.SwimkitError, match="placement must be a swimkit.Placement"):
        ChipSpec(placement=["conv1"])


def test_a_placement_chooses_the_weights_on_devices():
    """exclude keeps layers digital, layers keeps only those, params adds parameters;
    patterns are names, each given once."""
    model = swimkit.build_model("lenet", seed=0)
    assert list(ChipSpec().weights(model)) == ["conv1.weight", "conv2.weight", "fc1.weight",
                                               "fc2.weight", "fc3.weight"]
    digital = Placement(exclude="conv1")
    assert digital.exclude == ("conv1",) and not digital.is_default
    assert "conv1.weight" not in ChipSpec(placement=digital).weights(model)
    assert list(ChipSpec(placement=Placement(layers=["fc*"])).weights(model)) == [
        "fc1.weight", "fc2.weight", "fc3.weight"]
    assert placement_of(exclude=["conv1"]) == digital
    assert digital.describe() == {"exclude": ["conv1"]} and Placement().describe() == {}
    for bad in ([""], [" conv1"], 3, ["fc1", "fc1"]):
        with pytest.raises(swimkit.SwimkitError):
            Placement(exclude=bad)


def test_a_tile_smaller_than_a_kernel_is_refused_when_the_model_is_fitted():
    """A tile must hold one input channel of a kernel: said when a step fits the model,
    before any pass."""
    model = swimkit.build_model("lenet", seed=0)
    small = ChipSpec(crossbar=Crossbar(tile_rows=8, tile_columns=8, ranges="column"))
    with pytest.raises(swimkit.SwimkitError, match="conv1.weight: a tile of 8 rows cannot "
                                                   "hold one input channel"):
        small.fit(model)
    fits = ChipSpec(crossbar=Crossbar(tile_rows=64, tile_columns=64, ranges="column"))
    assert list(fits.fit(model)) == list(fits.weights(model))


# --- a plan on the chip it was made for ------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    return toy_with_sensitivity()


def allocated(toy, chip):
    model, _, sens = toy
    return swimkit.select(model, sens, method="allocate", speedup=3.0, chip=chip)


IDEAL = ChipSpec(GaussianDevice())
CROSSBAR = IDEAL.replace(crossbar=Crossbar(tile_rows=64, tile_columns=64, ranges="column",
                                           signed="pair"))
PCM = ChipSpec(build_device_model("pcm"))
CELLS = ChipSpec(build_device_model("gaussian", levels="pcm", bits_per_device=2))
TWO_BIT = ChipSpec(build_device_model("gaussian", bits_per_device=2))


@pytest.mark.parametrize("planned,other,difference", [
    (CROSSBAR, IDEAL, "chip.crossbar.ranges: 'column' when planned, 'layer' here"),
    (IDEAL, CROSSBAR, "chip.crossbar.ranges: 'layer' when planned, 'column' here"),
    (PCM, IDEAL, "chip.device_model.kind: 'pcm' when planned, 'gaussian' here"),
    (IDEAL, PCM, "chip.device_model.kind: 'gaussian' when planned, 'pcm' here"),
    (CELLS, TWO_BIT, "chip.device_model.levels: .* when planned, None here"),
    (IDEAL, ChipSpec(GaussianDevice(sigma=0.4)),
     "chip.device_model.sigma: 0.3 when planned, 0.4 here"),
    (IDEAL, ChipSpec(placement=Placement(exclude=("0",))),
     "chip.placement.exclude: None when planned, \\['0'\\] here"),
])
def test_a_plan_on_another_chip_is_refused_naming_the_difference(toy, planned, other,
                                                                  difference):
    """The plan evaluates on its own chip; on another, evaluate refuses it before work,
    naming the first setting that differs and how to move the plan."""
    model, batches, _ = toy
    plan = allocated(toy, planned)
    assert plan.chip == described(planned)
    assert swimkit.evaluate(model, batches, planned, plan, samples=2).samples == 2
    with pytest.raises(swimkit.SwimkitError, match=f"made for another chip \\({difference}"
                                                   f"\\).*ChipSpec.priced"):
        swimkit.evaluate(model, batches, other, plan, samples=2)


@pytest.mark.parametrize("planned,other", [(CROSSBAR, IDEAL), (IDEAL, CROSSBAR),
                                           (PCM, IDEAL), (IDEAL, PCM)])
def test_priced_moves_a_plan_to_another_chip_explicitly(toy, planned, other):
    """priced keeps the levels, prices them by the other chip's model, records that chip
    (and its crossbar's ranges where it has them), and evaluate then runs."""
    model, batches, _ = toy
    plan = allocated(toy, planned)
    moved = other.priced(plan, model)
    assert moved.chip == described(other) and plan.chip == described(planned)
    assert all(torch.equal(moved.levels[k], plan.levels[k]) for k in plan.levels)
    assert moved.menu == plan.menu and moved.method == plan.method
    values = swimkit.mapping.effective_weights(plan.weights_in(model))
    assert moved.programming == other.device.programming_report(values, other.scales(values),
                                                               plan)
    assert (moved.ranges is not None) == (not other.crossbar.is_default)
    assert ("crossbar" in moved.meta) == (not other.crossbar.is_default)
    assert swimkit.evaluate(model, batches, other, moved, samples=2).samples == 2


def test_a_plan_of_other_devices_per_weight_cannot_be_moved(toy):
    model, _, _ = toy
    with pytest.raises(swimkit.SwimkitError, match="8 devices per weight and this chip 4"):
        TWO_BIT.priced(allocated(toy, IDEAL), model)


def test_a_plan_without_a_chip_is_taken_as_it_is(toy):
    """A plan made by hand (or before plans recorded their chip) evaluates on any chip."""
    model, batches, _ = toy
    masks = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool)
             for n in swimkit.device_weights(model)}
    plan = swimkit.Plan(masks=masks)
    assert plan.chip is None
    for chip in (IDEAL, PCM, CROSSBAR):
        assert swimkit.evaluate(model, batches, chip, plan, samples=1).samples == 1
