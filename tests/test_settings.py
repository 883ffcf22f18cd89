"""The settings of a run: each group checks itself when it is made, Settings what ties
the groups together, before any work; none changes a group it was given."""

from __future__ import annotations

import pytest

import swimkit
from swimkit import ChipSpec, build_device_model
from swimkit.cli import parse
from swimkit.selection import Budget, BudgetKind
from swimkit.settings import (
    DEFAULT_FRACTION,
    SWEEP_FRACTIONS,
    SWEEP_METHODS,
    DataSettings,
    EvaluationSettings,
    SelectionSettings,
    SensitivitySettings,
    Settings,
    SweepGrid,
)

PCM = ChipSpec(build_device_model("pcm"))


def test_settings_are_checked_before_any_work():
    """A bad value in any group is refused when the settings are made."""
    with pytest.raises(swimkit.SwimkitError, match="test_batch_size must be an integer"):
        Settings(data=DataSettings(test_batch_size=0))
    with pytest.raises(swimkit.SwimkitError, match="unknown selection method"):
        Settings(grid=SweepGrid(methods=["best"]))
    with pytest.raises(swimkit.SwimkitError, match="yield target"):
        Settings(grid=SweepGrid(yield_target=1.5, within=1.0))
    with pytest.raises(swimkit.SwimkitError, match="tolerance"):
        Settings(selection=SelectionSettings(tolerances=[0.2, 0.0]))
    with pytest.raises(swimkit.SwimkitError, match="probes"):
        Settings(sensitivity=SensitivitySettings(engine="swim", options={"probes": 3}))
    with pytest.raises(swimkit.SwimkitError, match="learned lr"):
        Settings(grid=SweepGrid(methods=["learned"], speedups=[5.0],
                                method_options={"lr": 0.0}))
    with pytest.raises(swimkit.SwimkitError, match="not a fraction"):
        Settings(grid=SweepGrid(methods=["learned"], fractions=[0.1]))
    s = Settings(grid=SweepGrid(sigma_trains=[0.0, 0.1]))
    assert s.grid.sigma_trains == [0.0, 0.1] and s.out_dir.name == "lenet-fashion-mnist"


def test_each_settings_group_checks_itself_and_settings_never_edit_a_given_group():
    """Groups refuse bad values themselves; Settings completes a copy of a group (the
    model's dataset), never the group given."""
    with pytest.raises(swimkit.SwimkitError, match="samples must be an integer >= 1"):
        EvaluationSettings(samples=0)
    with pytest.raises(swimkit.SwimkitError, match="test_batch_size"):
        DataSettings(test_batch_size=0)
    with pytest.raises(swimkit.SwimkitError, match="fractions repeat"):
        SweepGrid(fractions=[0.1, 0.1])
    with pytest.raises(swimkit.SwimkitError, match="judge_time"):
        Settings(evaluation=EvaluationSettings(times=[1.0]), grid=SweepGrid(judge_time=2.0),
                 chip=PCM)
    data, grid = DataSettings(), SweepGrid(methods=["SM"])
    settings = Settings(data=data, grid=grid)
    assert settings.data.dataset == "fashion-mnist" and data.dataset is None  # a copy
    assert grid.methods == ["swim"] and settings.grid is grid


def test_one_budget_default_and_the_budget_kinds_are_stated_once():
    """run's budget without one given is DEFAULT_FRACTION; a sweep's are SWEEP_FRACTIONS
    for SWEEP_METHODS; a budget kind is one enum, spelled as its value."""
    def budgets(*argv: str) -> list[Budget]:
        return parse(list(argv)).settings().grid.budgets()

    assert budgets("run") == [Budget(BudgetKind.FRACTION, DEFAULT_FRACTION)]
    assert budgets("run", "--speedup", "4") == [Budget("speedup", 4.0)]
    swept = parse(["sweep"]).settings().grid
    assert swept.methods == list(SWEEP_METHODS) and swept.budgets() == [
        Budget(BudgetKind.FRACTION, f) for f in SWEEP_FRACTIONS]
    assert SweepGrid().budgets() == swept.budgets()  # the API's default is the sweep's
    kind = Budget("time_budget", 1.0).kind
    assert kind is BudgetKind.TIME_BUDGET and f"{kind}" == str(kind) == "time_budget"
    assert Budget("speedup", 2.0).describe() == {"speedup": 2.0}


@pytest.mark.parametrize("make,needle", [
    (lambda: Settings(grid=SweepGrid(scale_aware="on")), "--scale-aware shapes noise-injection"),
    (lambda: Settings(train=swimkit.TrainConfig(noise_time=10.0)), "--noise-time is when"),
    (lambda: Settings(evaluation=EvaluationSettings(times=[0.0, 10.0])),
     "--times 0,10 would have no"),
    (lambda: Settings(selection=SelectionSettings(method=None, plan_time=10.0),
                      grid=SweepGrid(methods=["allocate"])),
     "--plan-time 10 s would have no effect"),
    (lambda: Settings(selection=SelectionSettings(method=None, tolerances=[0.1, 0.2]),
                      grid=SweepGrid(methods=["allocate-one"])), "tolerances would have no"),
    (lambda: Settings(selection=SelectionSettings(tolerances=[0.1, 0.2])), "one tolerance"),
    (lambda: SweepGrid(search_steps=3), "--search-steps would have no effect"),
    (lambda: SweepGrid(yield_target=0.9), "--yield needs --within"),
    (lambda: Settings(grid=SweepGrid(judge_time=10.0)), "--judge-time is a time of --times"),
    (lambda: SweepGrid(method_options={"epochs": 3}), "option 'epochs' would have no effect"),
])
def test_settings_that_would_not_act_are_refused(make, needle):
    """What would not act on the settings' chip and grid is refused when the group or
    the settings are made (the API's form of the command line's refusals)."""
    with pytest.raises(swimkit.SwimkitError, match=needle):
        make()


def test_a_point_of_the_grid_is_its_selection():
    """Settings.point: the grid's method at a budget, with the template's settings, the
    method's options and the tolerances it can take (a menu, or the last tolerance)."""
    s = Settings(selection=SelectionSettings(method=None, tolerances=[0.2, 0.1], seed=4),
                 grid=SweepGrid(methods=["allocate", "swim", "learned"], speedups=[3.0],
                                method_options={"epochs": 2}))
    allocate = s.point("allocate")
    assert (allocate.method, allocate.speedup, allocate.tolerances) == ("allocate", 3.0,
                                                                         [0.2, 0.1])
    assert s.point("swim").tolerances == [0.1] and s.point("swim").seed == 4
    assert s.point("learned").options == {"epochs": 2} and s.point("swim").options == {}
    assert s.point("swim", Budget(BudgetKind.FRACTION, 0.3)).budget == Budget("fraction", 0.3)
