"""Results are records: every way of changing a plan, a programming report or a
Monte-Carlo result is refused or leaves the result as it was made."""

from __future__ import annotations

import contextlib
import dataclasses
import pickle

import pytest
import torch
from toys import toy_problem

import swimkit
from swimkit.frozen import FrozenDict, FrozenList, TensorView, frozen, thawed

#: What refusing a change raises: a frozen mapping or list (TypeError), a frozen
#: attribute (AttributeError, FrozenInstanceError), a write into a broadcast copy.
REFUSED = (TypeError, AttributeError, RuntimeError)


def attempt(change) -> None:
    """Try ``change``: refused (one of REFUSED) or done on a copy; nothing else."""
    with contextlib.suppress(REFUSED):
        change()


def _set_levels(plan):
    plan.levels["0.weight"] = torch.zeros(1)


def _fill_levels(plan):
    plan.levels["0.weight"][...] = 0


def _zero_levels(plan):
    plan.levels["0.weight"].zero_()


def _zero_masks(plan):
    plan.masks["0.weight"].zero_()


def _set_meta(plan):
    plan.meta["plan_time_s"] = 1.0


def _clear_requested(plan):
    plan.requested.clear()


def _set_chip(plan):
    plan.chip["device_model"]["sigma"] = 9.0


def _delete_method(plan):
    del plan.method


def _set_method(plan):
    plan.method = "other"


def _set_speedup(plan):
    plan.programming.speedup = 99


def _zero_ranges(plan):
    plan.ranges["0.weight"].zero_()


PLAN_CHANGES = [_set_levels, _fill_levels, _zero_levels, _zero_masks, _set_meta,
                _clear_requested, _set_chip, _delete_method, _set_method, _set_speedup,
                _zero_ranges]


def snapshot(plan) -> dict:
    """Everything a plan reports: its levels, counts, time and record."""
    return {"levels": {k: v.clone() for k, v in plan.levels.items()},
            "summary": plan.summary(), "speedup": plan.programming.speedup,
            "devices": plan.devices_verified, "method": plan.method}


def same(a: dict, b: dict) -> bool:
    return (a["levels"].keys() == b["levels"].keys()
            and all(torch.equal(a["levels"][k], b["levels"][k]) for k in a["levels"])
            and {k: a[k] for k in a if k != "levels"} == {k: b[k] for k in b if k != "levels"})


@pytest.fixture(scope="module")
def plans():
    """A weight-level plan (levels broadcast over the devices), a device-level one and
    one on a crossbar (with ranges)."""
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    crossbar = swimkit.ChipSpec(crossbar=swimkit.Crossbar(ranges="column", signed="pair"))
    return {"weight": swimkit.select(model, sens, method="swim", speedup=3.0),
            "device": swimkit.select(model, sens, method="allocate", speedup=3.0),
            "crossbar": swimkit.select(model, sens, method="allocate", speedup=3.0,
                                       chip=crossbar)}


@pytest.mark.parametrize("kind,change", [
    (kind, change) for kind in ("weight", "device", "crossbar") for change in PLAN_CHANGES
    if kind == "crossbar" or change is not _zero_ranges],  # ranges: a crossbar's plans
    ids=lambda x: x if isinstance(x, str) else x.__name__.lstrip("_"))
def test_a_plan_cannot_be_changed(plans, kind, change):
    """Each mutation of the hardening round's list is refused or acts on a copy: the plan
    still reports the same levels, speedup, devices and record."""
    plan = plans[kind]
    before = snapshot(plan)
    attempt(lambda: change(plan))
    assert same(snapshot(plan), before)


def test_a_changed_copy_is_asked_for_by_name(plans):
    """recorded() gives a copy with a record changed (the levels shared), the plan as it
    was; the levels themselves cannot be recorded over."""
    plan = plans["device"]
    copy_ = plan.recorded(method="mine", meta={"note": 1})
    assert copy_.method == "mine" and copy_.meta == {"note": 1}
    assert plan.method == "allocate" and "note" not in plan.meta
    assert all(torch.equal(copy_.levels[k], plan.levels[k]) for k in plan.levels)
    with pytest.raises(swimkit.SwimkitError, match="records only"):
        plan.recorded(levels={})


def test_a_programming_report_is_frozen(plans):
    report = plans["weight"].programming
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.speedup = 99.0  # type: ignore[misc]
    assert plans["weight"].programming.speedup == report.speedup != 99.0


def test_a_monte_carlo_result_cannot_be_changed():
    """accuracies read as copies, meta refuses changes, fields cannot be set: the mean
    stays what the chips gave."""
    model, batches = toy_problem()
    result = swimkit.evaluate(model, batches, swimkit.GaussianDevice(sigma=1.0), samples=5)
    mean, accuracies, meta = result.mean, result.accuracies, dict(result.meta)
    attempt(lambda: result.accuracies.zero_())
    attempt(lambda: result.accuracies.__setitem__(0, 0.0))
    attempt(lambda: result.meta.__setitem__("plan", "all"))
    attempt(lambda: result.meta.pop("plan"))
    attempt(lambda: setattr(result, "accuracies", torch.zeros(5)))
    attempt(lambda: delattr(result, "seed"))
    assert result.mean == mean and torch.equal(result.accuracies, accuracies)
    assert result.meta == meta and result.to_dict()["mean_percent"] == mean
    given = torch.tensor([90.0, 80.0])
    made = swimkit.MCResult(given)
    given.zero_()  # the tensor it was made from is not the result's
    assert made.mean == 85.0


def test_frozen_containers_read_copy_and_pickle_like_plain_ones():
    """Frozen dicts and lists compare, copy, write to JSON and pickle as dicts and
    lists, refuse every change, and thaw to plain ones; a tensor view hands out copies."""
    value = frozen({"a": [1, {"b": (2, 3)}]})
    assert isinstance(value, FrozenDict) and isinstance(value["a"], FrozenList)
    assert value == {"a": [1, {"b": [2, 3]}]} and dict(value) == value
    for change in (lambda: value.__setitem__("c", 1), lambda: value.update(c=1),
                   lambda: value["a"].append(4), lambda: value["a"][1].pop("b"),
                   lambda: value.setdefault("c", 1), lambda: value["a"].sort()):
        with pytest.raises(TypeError, match="frozen"):
            change()
    assert pickle.loads(pickle.dumps(value)) == value
    plain = thawed(value)
    assert type(plain) is dict and type(plain["a"]) is list and type(plain["a"][1]) is dict
    view = TensorView({"w": torch.ones(3)})
    view["w"].zero_()
    assert torch.equal(view["w"], torch.ones(3)) and list(view) == ["w"] and len(view) == 1
