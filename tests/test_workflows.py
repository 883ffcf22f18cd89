"""Workflow pieces: the point cache, settings checks, training folders."""

from __future__ import annotations

import json

import pytest
import torch

import swimkit
from swimkit.caches import PointCache
from swimkit.montecarlo import MCResult
from swimkit.results import PlanCounts, Point
from swimkit.settings import DataSettings, EvaluationSettings, SelectionSettings, Settings
from swimkit.workflows import _floor3, train_folder


def point(mean: float) -> Point:
    return Point("swim", "m", "speedup", 2.0, PlanCounts(1, 10, 8, 80), None,
                 MCResult(torch.tensor([mean, mean + 1.0])))


def test_point_cache_keeps_points_of_other_settings(tmp_path):
    path = tmp_path / "points.json"
    first = PointCache(path, "key-a")
    first.put("p", point(50.0))
    second = PointCache(path, "key-b")
    assert second.get("p") is None
    second.put("p", point(60.0))
    again = PointCache(path, "key-a")
    assert again.get("p").mc.mean == pytest.approx(50.5)
    assert PointCache(path, "key-b").get("p").mc.mean == pytest.approx(60.5)


@pytest.mark.parametrize("content", ["[]", "null", "{\"points_by_key\": 3}", "\u0000garbage",
                                     "{\"points_by_key\": {\"key-a\": []}}"])
def test_a_damaged_point_cache_is_started_afresh(tmp_path, content):
    path = tmp_path / "points.json"
    path.write_text(content)
    cache = PointCache(path, "key-a")
    assert cache.get("p") is None
    cache.put("p", point(50.0))
    assert PointCache(path, "key-a").get("p").mc.mean == pytest.approx(50.5)


@pytest.mark.parametrize("damage", [lambda p: p.pop("accuracy"),
                                    lambda p: p["accuracy"].update(accuracies_percent="x"),
                                    lambda p: p["accuracy"].update(accuracies_percent=[]),
                                    lambda p: p["accuracy"].update(accuracies_percent=[1, "a"]),
                                    lambda p: p["accuracy"].update(accuracies_percent=[170.0]),
                                    lambda p: p.update(programming={"speed": 2})])
def test_a_point_that_does_not_read_back_is_computed_again(tmp_path, damage):
    path = tmp_path / "points.json"
    PointCache(path, "key-a").put("p", point(50.0))
    data = json.loads(path.read_text())
    damage(data["points_by_key"]["key-a"]["p"])
    path.write_text(json.dumps(data))
    assert PointCache(path, "key-a").get("p") is None


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "null", "\udcff"])
def test_a_damaged_training_folder_is_named(tmp_path, content):
    from swimkit.workflows import _check_training_folder

    (tmp_path / "settings.json").write_text(content, errors="surrogateescape")
    with pytest.raises(swimkit.SwimkitError, match="settings.json is damaged.*delete"):
        _check_training_folder(tmp_path, {"model": "lenet"})


def test_settings_are_checked_before_any_work():
    with pytest.raises(swimkit.SwimkitError, match="test_batch_size must be an integer"):
        Settings(data=DataSettings(test_batch_size=0))
    with pytest.raises(swimkit.SwimkitError, match="unknown selection method"):
        Settings(selection=SelectionSettings(methods=["best"]))
    with pytest.raises(swimkit.SwimkitError, match="yield target"):
        Settings(evaluation=EvaluationSettings(yield_target=1.5))
    with pytest.raises(swimkit.SwimkitError, match="tolerance"):
        Settings(selection=SelectionSettings(tolerances=[0.2, 0.0]))
    with pytest.raises(swimkit.SwimkitError, match="probes"):
        from swimkit.settings import SensitivitySettings

        Settings(sensitivity=SensitivitySettings(engine="swim", options={"probes": 3}))
    with pytest.raises(swimkit.SwimkitError, match="learned lr"):
        Settings(selection=SelectionSettings(methods=["learned"], speedups=[5.0],
                                             learn={"lr": 0.0}))
    with pytest.raises(swimkit.SwimkitError, match="not fractions"):
        Settings(selection=SelectionSettings(methods=["learned"], fractions=[0.1]))
    s = Settings(sigma_trains=[0.0, 0.1])
    assert s.sigma_train_values == [0.0, 0.1] and s.out_dir.name == "lenet-fashion-mnist"


def test_search_points_and_folders_have_stable_names():
    assert _floor3(10.9456) == 10.9 and _floor3(10.96) == 10.9 and _floor3(3.0) == 3.0
    assert train_folder(0.0, True) == "train"
    assert train_folder(0.1, False) == "train-sigma0.1"
    assert train_folder(0.05, True) == "train-sigma0.05-scale-aware"


def _tiny_dataset(shape=(1, 28, 28), images=40):
    from swimkit.data import Dataset, Split

    split = Split(torch.zeros(images, *shape, dtype=torch.uint8),
                  torch.zeros(images, dtype=torch.int64))
    return Dataset("tiny", split, split, 10, (0.5,) * shape[0], (0.5,) * shape[0], None)


@pytest.mark.parametrize("model,shape,chosen", [("lenet", (1, 28, 28), 256),
                                                ("resnet18", (3, 32, 32), 16)])
def test_the_evaluation_batch_is_chosen_per_model_and_kept(model, shape, chosen):
    from swimkit.workflows import Context

    settings = Settings(model=swimkit.settings.ModelSettings(name=model))
    ctx = Context(settings, _tiny_dataset(shape), print, False)
    assert ctx.settings.data.test_batch_size == chosen  # what caches and logs see
    assert [len(x) for x, _ in ctx.test_batches] == [min(chosen, 40 - i)
                                                    for i in range(0, 40, chosen)]
    assert settings.data.test_batch_size is None  # the caller's settings as given
    given = Settings(model=swimkit.settings.ModelSettings(name=model),
                     data=DataSettings(test_batch_size=3))
    assert Context(given, _tiny_dataset(shape), print, False).settings.data.test_batch_size == 3


def test_each_settings_group_checks_itself_and_settings_never_edit_a_given_group():
    with pytest.raises(swimkit.SwimkitError, match="samples must be >= 1"):
        EvaluationSettings(samples=0)
    with pytest.raises(swimkit.SwimkitError, match="test_batch_size"):
        DataSettings(test_batch_size=0)
    with pytest.raises(swimkit.SwimkitError, match="fractions repeat"):
        SelectionSettings(fractions=[0.1, 0.1])
    with pytest.raises(swimkit.SwimkitError, match="judge_time"):
        EvaluationSettings(times=[1.0], judge_time=2.0)
    data, selection = DataSettings(), SelectionSettings(methods=["SM"])
    settings = Settings(data=data, selection=selection)
    assert settings.data.dataset == "fashion-mnist" and data.dataset is None  # a copy
    assert selection.methods == ["swim"] and settings.selection is selection


def test_one_budget_default_and_the_budget_kinds_are_stated_once():
    from swimkit.cli import build_parser
    from swimkit.command_settings import settings_of
    from swimkit.selection import Budget, BudgetKind
    from swimkit.settings import DEFAULT_FRACTION, SWEEP_FRACTIONS, SWEEP_METHODS

    def budgets(*argv: str) -> list[Budget]:
        return settings_of(build_parser().parse_args(argv)).selection.budgets()

    assert budgets("run") == [Budget(BudgetKind.FRACTION, DEFAULT_FRACTION)]
    assert budgets("run", "--speedup", "4") == [Budget("speedup", 4.0)]
    swept = settings_of(build_parser().parse_args(["sweep"])).selection
    assert swept.methods == list(SWEEP_METHODS) and swept.fractions == list(SWEEP_FRACTIONS)
    kind = Budget("time_budget", 1.0).kind
    assert kind is BudgetKind.TIME_BUDGET and f"{kind}" == str(kind) == "time_budget"
    assert Budget("speedup", 2.0).describe() == {"speedup": 2.0}


def test_results_are_frozen_and_a_later_step_adds_to_a_copy():
    import dataclasses

    p, full = point(50.0), point(52.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.mc.reference = 52.0  # type: ignore[misc]
    paired = p.paired_with(full.mc)
    assert p.gap is None and paired.gap is not None and paired.gap.mean == -2.0
    referenced = p.referenced(52.0, 1.0)
    assert p.mc.chip_yield is None and referenced.mc.chip_yield == 0.5  # the chip at 51


def test_verify_is_the_plan_of_no_device_or_every_device():
    from swimkit.plans import Verify

    assert Verify.of(None) is Verify.NONE and Verify.of("ALL") is Verify.ALL
    assert Verify.ALL == "all" and f"{Verify.NONE}" == "none"
    with pytest.raises(swimkit.SwimkitError, match="plan must be a Plan, 'none' or 'all'"):
        Verify.of("some")


def test_the_steps_monte_carlo_is_the_keyword_evaluate_with_the_evaluation_settings():
    from toys import toy_problem

    from swimkit.plans import Verify
    from swimkit.steps import monte_carlo

    model, batches = toy_problem()
    settings = Settings(evaluation=EvaluationSettings(samples=12, seed=3, ci_target=0.5,
                                                      min_samples=4))
    dm = settings.device_model
    stepped = monte_carlo(model, batches, Verify.NONE, settings)
    keyword = swimkit.evaluate(model, batches, dm, "none", samples=12, seed=3, ci_target=0.5,
                               min_samples=4)
    assert len(stepped) == 1 and torch.equal(stepped[0].accuracies, keyword.accuracies)
    assert stepped[0].ci_reached == keyword.ci_reached
    full = monte_carlo(model, batches, Verify.ALL, settings, adaptive=False)[0]
    assert full.samples == 12 and full.ci_target is None
