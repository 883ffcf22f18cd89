"""What a rerun reuses, and by which key: the point cache (every settings key kept, a
damaged entry computed again, 0.2.0's folders reused), keys derived from the settings
fields that change results, and sensitivity files found again."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from swimkit import ChipSpec, Crossbar, Placement, TrainConfig, build_device_model
from swimkit.caches import CACHE_VERSION, PointCache, evaluation_key, key_of_0_2
from swimkit.cli import parse
from swimkit.montecarlo import EvaluationSettings, MCResult
from swimkit.results import PlanCounts, Point
from swimkit.settings import (
    DataSettings,
    SelectionSettings,
    SensitivitySettings,
    Settings,
    SweepGrid,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sweep-0.2.0"
#: The arguments 0.2.0 wrote ``fixtures/sweep-0.2.0`` with (from a folder holding the data
#: in ``data``).
ARGUMENTS = ["sweep", "--model", "lenet", "--dataset", "fashion-mnist", "--data-dir", "data",
             "--epochs", "1", "--samples", "4", "--out", "out", "--no-progress",
             "--sigma", "0.5", "--methods", "swim,random", "--fractions", "0.1",
             "--speedups", "2", "--within", "5", "--search-steps", "2",
             "--test-batch-size", "50", "--sens-limit", "200", "--min-samples", "3",
             "--ci-target", "1"]


def point(mean: float) -> Point:
    return Point("swim", "m", "speedup", 2.0, PlanCounts(1, 10, 8, 80), None,
                 MCResult(torch.tensor([mean, mean + 1.0])))


def test_point_cache_keeps_points_of_other_settings(tmp_path):
    """Points of two settings keys live side by side in one file."""
    path = tmp_path / "points.json"
    first = PointCache(path, "key-a")
    first.put("p", point(50.0))
    second = PointCache(path, "key-b")
    assert second.get("p") is None
    second.put("p", point(60.0))
    again = PointCache(path, "key-a")
    assert again.get("p").mc.mean == pytest.approx(50.5)
    assert PointCache(path, "key-b").get("p").mc.mean == pytest.approx(60.5)
    assert json.loads(path.read_text())["version"] == CACHE_VERSION


@pytest.mark.parametrize("content", ["[]", "null", "{\"points_by_key\": 3}", "\u0000garbage",
                                     "{\"points_by_key\": {\"key-a\": []}}"])
def test_a_damaged_point_cache_is_started_afresh(tmp_path, content):
    """A points file that is not a cache is started again, not a crash."""
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
    """An entry that does not read back as a point is a miss."""
    path = tmp_path / "points.json"
    PointCache(path, "key-a").put("p", point(50.0))
    data = json.loads(path.read_text())
    damage(data["points_by_key"]["key-a"]["p"])
    path.write_text(json.dumps(data))
    assert PointCache(path, "key-a").get("p") is None


def stored(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_the_same_arguments_give_the_cache_key_of_0_2_0():
    """0.2.0's key is derived from today's settings for the same arguments; today's key
    is another (CACHE_VERSION 3), so points are never mixed up between the two."""
    settings = parse(ARGUMENTS).settings()
    assert list(stored("points.json")["points_by_key"]) == [key_of_0_2(settings)]
    assert evaluation_key(settings) != key_of_0_2(settings)


def test_a_folder_of_0_2_0_is_reused_under_the_new_key(tmp_path):
    """A cache opened with today's key and 0.2.0's as an earlier one finds all 13 points
    0.2.0 stored, each reading back to the same JSON; reading writes nothing."""
    settings = parse(ARGUMENTS).settings()
    path = tmp_path / "points.json"
    path.write_text((FIXTURES / "points.json").read_text())
    before = path.read_bytes()
    old_points = stored("points.json")["points_by_key"][key_of_0_2(settings)]
    assert len(old_points) == 13
    cache = PointCache(path, evaluation_key(settings), earlier=(key_of_0_2(settings),))
    assert cache.points == {}  # nothing under the new key yet
    for point_id, saved in old_points.items():
        found = cache.get(point_id)
        assert found is not None and found.to_dict() == saved
    assert path.read_bytes() == before
    alone = PointCache(path, evaluation_key(settings))
    assert all(alone.get(point_id) is None for point_id in old_points)


def test_every_cached_point_of_0_2_0_reads_back_to_the_same_json():
    """Under its own key every point 0.2.0 stored reads back unchanged."""
    key = next(iter(stored("points.json")["points_by_key"]))
    cache = PointCache(FIXTURES / "points.json", key)  # reading writes nothing
    assert len(cache.points) == 13
    for point_id, saved in cache.points.items():
        found = cache.get(point_id)
        assert found is not None and found.to_dict() == saved


BASE = Settings()

#: Settings that change results: each changes the key.
CHANGES = {
    "samples": dict(evaluation=EvaluationSettings(samples=7)),
    "chips' seed": dict(evaluation=EvaluationSettings(seed=1)),
    "sigma": dict(chip=ChipSpec(build_device_model("gaussian", sigma=0.4))),
    "device model": dict(chip=ChipSpec(build_device_model("band"))),
    "crossbar": dict(chip=ChipSpec(crossbar=Crossbar(ranges="column"))),
    "placement": dict(chip=ChipSpec(placement=Placement(exclude=("conv1",)))),
    "test limit": dict(data=DataSettings(test_limit=100)),
    "engine": dict(sensitivity=SensitivitySettings("ggn")),
    "tolerances": dict(selection=SelectionSettings(method=None, tolerances=[0.1, 0.2])),
    "selection seed": dict(selection=SelectionSettings(method=None, seed=2)),
    "training batch": dict(train=TrainConfig(batch_size=64)),
    "method options": dict(grid=SweepGrid(methods=["learned"], speedups=[3.0],
                                          method_options={"epochs": 2})),
}
#: Settings that only change speed, what is shown or where files go: the same key.
SAME = {
    "threads": dict(evaluation=EvaluationSettings(threads=1)),
    "chips per pass": dict(evaluation=EvaluationSettings(chips_per_pass=2)),
    "compile": dict(evaluation=EvaluationSettings(compile=True)),
    "progress": dict(evaluation=EvaluationSettings(progress=True),
                     selection=SelectionSettings(method=None, progress=True)),
    "output folder": dict(out="elsewhere"),
    "grid's methods and budgets": dict(grid=SweepGrid(methods=["random"], fractions=[0.5])),
}


def test_the_default_key_is_the_previous_releases():
    """Settings added since (distillation) enter the key only where set, so a folder of
    the previous release's points is found again (its key, recorded here, is that of
    the default settings then)."""
    assert evaluation_key(Settings()) == "0763c83a668dcb3b"


@pytest.mark.parametrize("change", list(CHANGES.values()), ids=list(CHANGES))
def test_a_setting_that_changes_results_changes_the_key(change):
    """The key is derived from every field that changes results."""
    assert evaluation_key(Settings(**change)) != evaluation_key(BASE)


@pytest.mark.parametrize("same", list(SAME.values()), ids=list(SAME))
def test_a_setting_that_does_not_change_results_keeps_the_key(same):
    """Fields declared as speed or display only, the output folder and the point's own
    method and budget (the point's name) leave the key."""
    assert evaluation_key(Settings(**same)) == evaluation_key(BASE)


@pytest.mark.slow
def test_going_back_to_earlier_sensitivity_settings_reuses_their_pass(flow_args, tmp_path,
                                                                     cli):
    """Sensitivities of each settings stay beside each other: going back finds the
    earlier pass, and rerunning rewrites none."""
    out = tmp_path / "back"
    base = ["sweep", "--model", "lenet", *flow_args(out, epochs=1, samples=2), "--fractions",
            "0.1", "--methods", "swim"]
    for limit in ("600", "300", "600"):
        assert cli(*base, "--sens-limit", limit)[0] == 0
    files = sorted(p.name for p in out.glob("sensitivity-swim*.pt"))
    assert len(files) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("sensitivity-swim*.pt")}
    assert cli(*base, "--sens-limit", "300")[0] == 0
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("sensitivity-swim*.pt")}


@pytest.mark.slow
def test_a_damaged_cached_point_is_computed_again(swept, damages, cli):
    """Every top-level field of a points.json entry, damaged five ways: the rerun
    computes that point again and gets the same chips."""
    folder, out, argv = swept
    cache = out / "points.json"
    original = json.loads(cache.read_text())
    key = next(iter(original["points_by_key"]))
    point_id = next(p for p in original["points_by_key"][key] if p.endswith("fraction-0.1"))
    entry = original["points_by_key"][key][point_id]
    expected = entry["accuracy"]["accuracies_percent"]
    tried = 0
    try:
        for field in entry:
            for damage in damages.kinds:
                broken = copy.deepcopy(original)
                broken["points_by_key"][key][point_id] = damages.damaged(entry, (field,), damage)
                cache.write_text(json.dumps(broken))
                code, _, err = cli(*argv)
                assert code == 0, (field, damage, err)
                again = json.loads(cache.read_text())["points_by_key"][key][point_id]
                assert again["accuracy"]["accuracies_percent"] == expected, (field, damage)
                tried += 1
    finally:
        cache.write_text(json.dumps(original))
    assert tried >= 40
