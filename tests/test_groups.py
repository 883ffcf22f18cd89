"""Every step takes its settings group and keyword overrides of the group's fields: the
keyword form builds the same group and gives the same numbers; keywords given with a
group act on a copy of it; a keyword that is no field is refused by name, with where it
went when it moved (the chip, the grid)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from toys import toy_problem

import swimkit
from swimkit.groups import MOVED, with_overrides
from swimkit.montecarlo import EvaluationSettings
from swimkit.selection import Budget, BudgetKind, SelectionSettings
from swimkit.sensitivity import SensitivitySettings


def _setup():
    model, batches = toy_problem()
    return model, batches, swimkit.GaussianDevice(sigma=0.5, sigma_verified=0.05)


def test_sensitivity_from_its_group_is_the_keyword_form():
    """sensitivity(group) == sensitivity(engine name, options=...); keywords with a group
    override it; an option or a keyword the engine does not take is named."""
    model, batches, _ = _setup()
    by_group = swimkit.sensitivity(model, batches,
                                   SensitivitySettings("hutchinson", options={"probes": 3}))
    by_keywords = swimkit.sensitivity(model, batches, "hutchinson", options={"probes": 3})
    overridden = swimkit.sensitivity(model, batches, SensitivitySettings("hutchinson"),
                                     options={"probes": 3})
    other = swimkit.sensitivity(model, batches, "hutchinson", options={"probes": 1})
    for name in by_group.second:
        assert torch.equal(by_group.second[name], by_keywords.second[name])
        assert torch.equal(by_group.second[name], overridden.second[name])
    assert not all(torch.equal(other.second[k], by_group.second[k]) for k in other.second)
    with pytest.raises(swimkit.SwimkitError, match="engine 'ggn' has no option 'probes'"):
        swimkit.sensitivity(model, batches, "ggn", options={"probes": 2})
    with pytest.raises(swimkit.SwimkitError, match="sensitivity.. has no setting 'probes'"):
        swimkit.sensitivity(model, batches, "hutchinson", probes=2)


@pytest.mark.parametrize("method,budget", [("swim", Budget(BudgetKind.FRACTION, 0.2)),
                                           ("allocate", Budget(BudgetKind.SPEEDUP, 3.0))])
def test_select_from_its_group_is_the_keyword_form(method, budget):
    """select(group) == select(method=..., budget=...): the same levels and speedup."""
    model, batches, dm = _setup()
    sens = swimkit.sensitivity(model, batches, "ggn")
    kind = budget.kind.value
    group = SelectionSettings(method=method, tolerances=[0.05] if method == "swim" else None,
                              **{kind: budget.value})
    by_group = swimkit.select(model, sens, group, chip=dm)
    by_keywords = swimkit.select(model, sens, method=method, chip=dm,
                                 tolerances=group.tolerances, **{kind: budget.value})
    assert by_group.method == by_keywords.method == method
    for name in by_group.levels:
        assert torch.equal(by_group.levels[name], by_keywords.levels[name])
    assert by_group.programming.speedup == pytest.approx(by_keywords.programming.speedup)


def test_keywords_given_with_a_group_act_on_a_copy_of_it():
    """select(group, fraction=0.2) selects at 0.2 with the group's other settings, and
    the group given is left as it was."""
    model, batches, dm = _setup()
    sens = swimkit.sensitivity(model, batches, "ggn")
    group = SelectionSettings(method="magnitude", fraction=0.1)
    wider = swimkit.select(model, sens, group, chip=dm, fraction=0.2)
    assert group.fraction == 0.1
    direct = swimkit.select(model, sens, chip=dm, method="magnitude", fraction=0.2)
    assert wider.weights_verified == direct.weights_verified > swimkit.select(
        model, sens, group, chip=dm).weights_verified


def test_select_says_what_is_wrong_with_its_settings():
    """A settings object of another kind, two budgets, a learning method at a fraction,
    a keyword of 0.2 that moved: one message each, naming the fix."""
    model, batches, dm = _setup()
    sens = swimkit.sensitivity(model, batches, "ggn")
    with pytest.raises(swimkit.SwimkitError, match="takes a SelectionSettings .*got float"):
        swimkit.select(model, sens, 0.1)
    with pytest.raises(swimkit.SwimkitError, match="give one budget, not fraction and speedup"):
        swimkit.select(model, sens, fraction=0.1, speedup=3.0)
    with pytest.raises(swimkit.SwimkitError, match="not a fraction"):
        swimkit.select(model, sens, method="learned", fraction=0.1)
    with pytest.raises(swimkit.SwimkitError, match="no setting 'device_model'.*chip="):
        swimkit.select(model, sens, fraction=0.1, device_model=dm)
    with pytest.raises(swimkit.SwimkitError, match="no setting 'methods'"):
        swimkit.select(model, sens, methods=["swim"], fraction=0.1)


def test_evaluate_from_its_group_is_the_keyword_form():
    """evaluate(group) == evaluate(samples=, seed=); a group's ci_target 0 is a fixed
    number of chips, as on the command line; keywords with a group override it."""
    model, batches, dm = _setup()
    plan = swimkit.select(model, swimkit.sensitivity(model, batches, "ggn"), fraction=0.3,
                          chip=dm)
    group = EvaluationSettings(samples=12, seed=3, ci_target=None, times=None)
    by_group = swimkit.evaluate(model, batches, dm, plan, group)
    by_keywords = swimkit.evaluate(model, batches, dm, plan, samples=12, seed=3)
    assert torch.equal(by_group.accuracies, by_keywords.accuracies)
    assert by_group.samples == 12
    fixed = swimkit.evaluate(model, batches, dm, plan, dataclasses.replace(group, ci_target=0))
    assert torch.equal(fixed.accuracies, by_group.accuracies)
    fewer = swimkit.evaluate(model, batches, dm, plan, group, samples=7)
    assert fewer.samples == 7 and torch.equal(fewer.accuracies, by_group.accuracies[:7])
    reseeded = swimkit.evaluate(model, batches, dm, plan, group, seed=4)
    assert not torch.equal(reseeded.accuracies, by_group.accuracies)
    with pytest.raises(swimkit.SwimkitError, match="takes a EvaluationSettings"):
        swimkit.evaluate(model, batches, dm, plan, 12)


@pytest.mark.parametrize("bad,needle", [({"seed": "a"}, "seed must be an integer"),
                                        ({"samples": 0}, "samples must be"),
                                        ({"times": [1.0]}, "would have no effect"),
                                        ({"min_samples": 4}, "min_samples would have no")])
def test_evaluate_refuses_a_bad_keyword_in_one_line(bad, needle):
    """A keyword of the wrong kind or one that would not act: a SwimkitError, no
    traceback from inside the evaluation."""
    model, batches, dm = _setup()
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.evaluate(model, batches, dm, "none", **bad)


GROUPS = {"select": SelectionSettings, "evaluate": EvaluationSettings,
          "sensitivity": SensitivitySettings, "train": swimkit.TrainConfig}


@pytest.mark.parametrize("step", list(GROUPS))
@pytest.mark.parametrize("moved", list(MOVED))
def test_a_keyword_that_moved_says_where_it_went(step, moved):
    """Every keyword of 0.2 that is now part of another value (the chip, the budget, the
    model's place) is refused by every step with where it went."""
    with pytest.raises(swimkit.SwimkitError, match=rf"{step}\(\) has no setting '{moved}': "):
        with_overrides(GROUPS[step], None, {moved: 1}, step)


@pytest.mark.parametrize("step", list(GROUPS))
def test_an_unknown_keyword_lists_the_settings(step):
    """A keyword that is no setting is refused with the group's settings listed."""
    cls = GROUPS[step]
    with pytest.raises(swimkit.SwimkitError, match=f"its settings \\({cls.__name__}\\) are "):
        with_overrides(cls, None, {"wobble": 1}, step)
    group = cls()
    assert with_overrides(cls, group, {}, step) is group  # nothing to override: as given
