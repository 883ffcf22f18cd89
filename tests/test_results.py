"""Result types: frozen (a later step adds to a copy), a sweep file of 0.2.0 read back to
the same JSON, and every field of a sweep result checked as it is read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import swimkit
from swimkit.montecarlo import MCResult
from swimkit.results import PlanCounts, Point, SweepResult
from swimkit.selection import BudgetKind

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sweep-0.2.0"


def point(mean: float) -> Point:
    return Point("swim", "m", "speedup", 2.0, PlanCounts(1, 10, 8, 80), None,
                 MCResult(torch.tensor([mean, mean + 1.0])))


def test_a_sweep_file_of_0_2_0_reads_back_to_the_same_json():
    """``fixtures/sweep-0.2.0/sweep.json`` (two methods, a fraction and a speedup budget,
    adaptive chips, a speedup search, written by 0.2.0) reads back unchanged."""
    data = json.loads((FIXTURES / "sweep.json").read_text())
    result = SweepResult.from_dict(data)
    assert result.to_dict() == data
    assert [s.point.gap is not None for s in result.models[0].searches] == [True, True]


def test_a_points_budget_kind_is_the_enum_and_a_bad_one_is_refused():
    """A point's budget kind is a BudgetKind, read back as one; a wrong one is named."""
    mc = swimkit.MCResult(accuracies=torch.tensor([90.0, 91.0]), seed=0)
    counts = PlanCounts(1, 2, 8, 16)
    found = Point("swim", "m", "speedup", 3.0, counts, None, mc)
    assert found.budget_kind is BudgetKind.SPEEDUP and found.label == "swim speedup 3"
    assert Point.from_dict(found.to_dict()).budget_kind is BudgetKind.SPEEDUP
    with pytest.raises(swimkit.SwimkitError, match="budget kind 'speed' is not one of"):
        Point("swim", "m", "speed", 3.0, counts, None, mc)


def test_results_are_frozen_and_a_later_step_adds_to_a_copy():
    """Pairing with full verify and measuring a yield give new results."""
    p, full = point(50.0), point(52.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.mc.reference = 52.0  # type: ignore[misc]
    paired = p.paired_with(full.mc)
    assert p.gap is None and paired.gap is not None and paired.gap.mean == -2.0
    referenced = p.referenced(52.0, 1.0)
    assert p.mc.chip_yield is None and referenced.mc.chip_yield == 0.5  # the chip at 51


def test_a_plan_is_frozen_and_records_in_copies():
    """A plan's fields cannot be set or deleted; recorded() gives a copy that shares the
    levels (no copy of the large tensors) and leaves the plan as it was."""
    from toys import toy_problem

    model, _ = toy_problem()
    plan = swimkit.select(model, None, fraction=0.5, method="magnitude",
                          chip=swimkit.GaussianDevice(sigma=0.5, sigma_verified=0.05))
    with pytest.raises(AttributeError, match="frozen"):
        plan.method = "other"
    with pytest.raises(AttributeError, match="frozen"):
        del plan.method
    renamed = plan.recorded(method="other")
    assert (plan.method, renamed.method) == ("magnitude", "other")
    assert renamed._levels is plan._levels  # shared, not copied
    with pytest.raises(swimkit.SwimkitError, match="records only"):
        plan.recorded(levels={})


@pytest.mark.slow
def test_every_field_of_a_sweep_result_is_checked(swept, damages, cli):
    """Every field of a real sweep.json, damaged five ways: report reads it (a damage it
    can take) or says what is wrong in one line, never a traceback."""
    folder, out, _ = swept
    original = json.loads((out / "sweep.json").read_text())
    tried = 0
    fields = {k: v for k, v in original.items() if k in ("models", "within_points")}
    for path in damages.paths(fields):
        for damage in damages.kinds:
            target = folder / "damaged.json"
            target.write_text(json.dumps(damages.damaged(original, path, damage)))
            code, _, err = cli("report", target)
            assert code in (0, 2), (path, damage)
            if code == 2:
                assert err.startswith("swimkit: error:") and err.count("\n") == 1, err
            tried += 1
    assert tried > 200
