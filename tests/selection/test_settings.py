"""SelectionSettings: one method at one budget, checked against its method before any
work, and keyword overrides of its fields."""

from __future__ import annotations

import pytest
from toys import toy_problem

import swimkit
from swimkit import EvaluationSettings, SelectionSettings
from swimkit.selection import DEFAULT_FRACTION, METHODS, Budget, BudgetKind

#: Every registered method that does not read the device at a time after programming.
NOT_AT_TIME = [m.name for m in METHODS if not m.plans_at_time]
#: Every registered method verifying to the device model's own loop only.
OWN_LOOP_ONLY = [m.name for m in METHODS if m.tolerances == 0]
#: Every registered method verifying whole weights at one tolerance.
ONE_TOLERANCE = [m.name for m in METHODS if m.tolerances == 1]


def test_one_budget_and_the_default_fraction():
    """The budget given, or the default fraction; two budgets are refused."""
    assert SelectionSettings().budget == Budget(BudgetKind.FRACTION, DEFAULT_FRACTION)
    assert SelectionSettings(speedup=4).budget == Budget(BudgetKind.SPEEDUP, 4.0)
    assert SelectionSettings(time_budget=2e-3).budget.describe() == {"time_budget": 2e-3}
    with pytest.raises(swimkit.SwimkitError, match="give one budget, not fraction and speedup"):
        SelectionSettings(fraction=0.1, speedup=2.0)
    with pytest.raises(swimkit.SwimkitError, match="speedup"):
        SelectionSettings(speedup=0.5)
    with pytest.raises(swimkit.SwimkitError, match="time budget"):
        SelectionSettings(time_budget=-1.0)


def test_the_method_by_any_alias_and_its_options_typed_and_completed():
    """An alias is read as the method's name; options are typed like their defaults and
    completed with the ones not given; an option the method lacks, or of the wrong kind,
    is refused."""
    assert SelectionSettings(method="SM").method == "swim"
    learned = SelectionSettings(method="learned", speedup=3.0, options={"epochs": "3"})
    assert learned.options == {"epochs": 3}
    assert learned.method_options == {**METHODS.get("learned").options, "epochs": 3}
    with pytest.raises(swimkit.SwimkitError, match="method 'learned' has no option 'steps'"):
        SelectionSettings(method="learned", speedup=3.0, options={"steps": 3})
    with pytest.raises(swimkit.SwimkitError, match="option lr of method 'learned' must be a "
                                                   "finite number"):
        SelectionSettings(method="learned", speedup=3.0, options={"lr": "fast"})
    with pytest.raises(swimkit.SwimkitError, match="swim' has no option 'epochs'"):
        SelectionSettings(method="swim", options={"epochs": 2})


def test_method_none_is_the_template_a_grid_shares():
    """Without a method nothing method-specific is checked (the grid's points are)."""
    template = SelectionSettings(method=None, tolerances=[0.3, 0.1], plan_time=60.0)
    assert template.method is None and template.tolerances == [0.3, 0.1]


@pytest.mark.parametrize("method", NOT_AT_TIME)
def test_plan_time_with_a_method_that_does_not_read_it_is_refused(method):
    """plan_time would not change the plan of a method that does not plan by variances."""
    with pytest.raises(swimkit.SwimkitError, match=f"plan_time 86400 would have no effect: "
                                                   f"method '{method}'"):
        SelectionSettings(method=method, plan_time=86400.0)
    assert SelectionSettings(method=method, plan_time=0.0).plan_time == 0.0


@pytest.mark.parametrize("method", OWN_LOOP_ONLY)
def test_tolerances_with_a_method_of_the_own_loop_are_refused(method):
    with pytest.raises(swimkit.SwimkitError, match="tolerances would have no effect"):
        SelectionSettings(method=method, speedup=3.0, tolerances=[0.1])


@pytest.mark.parametrize("method", ONE_TOLERANCE)
def test_a_menu_for_a_weight_level_method_is_refused(method):
    """A weight-level method verifies to one tolerance: one is taken, a menu refused."""
    assert SelectionSettings(method=method, tolerances=[0.1]).tolerances == [0.1]
    with pytest.raises(swimkit.SwimkitError, match="give one tolerance"):
        SelectionSettings(method=method, tolerances=[0.3, 0.1])


def test_a_method_that_learns_takes_a_time_budget():
    with pytest.raises(swimkit.SwimkitError, match="learns under a time budget"):
        SelectionSettings(method="learned", fraction=0.1)


def test_keywords_override_the_settings_given():
    """select(settings, **overrides) runs the settings with the keywords applied to a
    copy (the settings given stay as they were); another group is refused."""
    model, _ = toy_problem()
    settings = SelectionSettings(method="random", fraction=0.5, seed=1)
    plan = swimkit.select(model, None, settings, fraction=0.1)
    assert plan.method == "random" and plan.requested == {"fraction": 0.1}
    assert plan.weights_verified == round(0.1 * plan.weights_total)
    assert settings.fraction == 0.5
    with pytest.raises(swimkit.SwimkitError, match="takes a SelectionSettings"):
        swimkit.select(model, None, EvaluationSettings())
    with pytest.raises(swimkit.SwimkitError, match="select\\(\\) has no setting 'samples'"):
        swimkit.select(model, None, settings, samples=3)
