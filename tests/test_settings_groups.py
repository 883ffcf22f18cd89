"""The steps take their settings group (sensitivity, select, evaluate); the keyword forms
build the same group and give the same numbers; results and plans are frozen."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from toys import toy_problem

import swimkit
from swimkit.montecarlo import EvaluationSettings
from swimkit.results import PlanCounts, Point
from swimkit.selection import Budget, BudgetKind, SelectionSettings
from swimkit.sensitivity import SensitivitySettings


def _setup():
    model, batches = toy_problem()
    return model, batches, swimkit.DeviceModel(sigma=0.5, sigma_verified=0.05)


def test_sensitivity_from_its_group_is_the_keyword_form():
    model, batches, _ = _setup()
    by_group = swimkit.sensitivity(model, batches,
                                   SensitivitySettings("hutchinson", options={"probes": 3}))
    by_keywords = swimkit.sensitivity(model, batches, "hutchinson", probes=3)
    other = swimkit.sensitivity(model, batches, "hutchinson", probes=1)
    for name in by_group.second:
        assert torch.equal(by_group.second[name], by_keywords.second[name])
    assert not all(torch.equal(other.second[k], by_group.second[k]) for k in other.second)
    with pytest.raises(swimkit.SwimkitError, match="not both"):
        swimkit.sensitivity(model, batches, SensitivitySettings("hutchinson"), probes=2)
    with pytest.raises(swimkit.SwimkitError, match="unknown option 'probes'.*ggn"):
        swimkit.sensitivity(model, batches, "ggn", probes=2)


@pytest.mark.parametrize("method,budget", [("swim", Budget(BudgetKind.FRACTION, 0.2)),
                                           ("allocate", Budget(BudgetKind.SPEEDUP, 3.0))])
def test_select_from_its_group_is_the_keyword_form(method, budget):
    model, batches, dm = _setup()
    sens = swimkit.sensitivity(model, batches, "ggn")
    group = SelectionSettings(methods=[method], tolerances=[0.05] if method == "swim" else None)
    by_group = swimkit.select(model, sens, group, budget, device_model=dm)
    by_keywords = swimkit.select(model, sens, method=method, device_model=dm,
                                 tolerances=group.tolerances, **{budget.kind: budget.value})
    assert by_group.method == by_keywords.method == method
    for name in by_group.levels:
        assert torch.equal(by_group.levels[name], by_keywords.levels[name])
    assert by_group.programming.speedup == pytest.approx(by_keywords.programming.speedup)


def test_select_says_what_is_wrong_with_its_group_form():
    model, batches, dm = _setup()
    sens = swimkit.sensitivity(model, batches, "ggn")
    two = SelectionSettings(methods=["swim", "magnitude"], fractions=[0.1])
    with pytest.raises(swimkit.SwimkitError, match="2 methods: give method="):
        swimkit.select(model, sens, two)
    assert swimkit.select(model, sens, two, method="magnitude").method == "magnitude"
    budgets = SelectionSettings(fractions=[0.1, 0.2])
    with pytest.raises(swimkit.SwimkitError, match="2 budgets"):
        swimkit.select(model, sens, budgets)
    with pytest.raises(swimkit.SwimkitError, match="fraction in the SelectionSettings"):
        swimkit.select(model, sens, SelectionSettings(fractions=[0.1]), fraction=0.2)
    with pytest.raises(swimkit.SwimkitError, match="give a budget by keyword, e.g. fraction"):
        swimkit.select(model, sens, 0.1)


def test_evaluate_from_its_group_is_the_keyword_form():
    model, batches, dm = _setup()
    plan = swimkit.select(model, swimkit.sensitivity(model, batches, "ggn"), fraction=0.3,
                          device_model=dm)
    group = EvaluationSettings(samples=12, seed=3, ci_target=None, times=None)
    by_group = swimkit.evaluate(model, batches, dm, plan, group)
    by_keywords = swimkit.evaluate(model, batches, dm, plan, samples=12, seed=3)
    assert torch.equal(by_group.accuracies, by_keywords.accuracies)
    assert by_group.samples == 12
    # a group's ci_target 0 is a fixed number of chips, as on the command line
    fixed = swimkit.evaluate(model, batches, dm, plan, dataclasses.replace(group, ci_target=0))
    assert torch.equal(fixed.accuracies, by_group.accuracies)
    with pytest.raises(swimkit.SwimkitError, match="must be an EvaluationSettings"):
        swimkit.evaluate(model, batches, dm, plan, 12)


def test_a_plan_is_frozen_and_records_in_copies():
    model, batches, dm = _setup()
    plan = swimkit.select(model, None, fraction=0.5, method="magnitude", device_model=dm)
    with pytest.raises(AttributeError, match="frozen"):
        plan.method = "other"
    renamed = plan.recorded(method="other")
    assert (plan.method, renamed.method) == ("magnitude", "other")
    assert renamed.levels is plan.levels


def test_a_points_budget_kind_is_the_enum_and_a_bad_one_is_refused():
    mc = swimkit.MCResult(accuracies=torch.tensor([90.0, 91.0]), seed=0)
    counts = PlanCounts(1, 2, 8, 16)
    point = Point("swim", "m", "speedup", 3.0, counts, None, mc)
    assert point.budget_kind is BudgetKind.SPEEDUP and point.label == "swim speedup 3"
    assert Point.from_dict(point.to_dict()).budget_kind is BudgetKind.SPEEDUP
    with pytest.raises(swimkit.SwimkitError, match="budget kind 'speed' is not one of"):
        Point("swim", "m", "speed", 3.0, counts, None, mc)
