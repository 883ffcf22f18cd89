"""Result files and point caches written by swimkit 0.2.0 read back unchanged.

``fixtures/sweep-0.2.0`` holds the ``sweep.json`` and ``points.json`` of a small sweep
(two methods, a fraction and a speedup budget, adaptive chips, a speedup search) written
by release 0.2.0 with the arguments below, run from a folder holding the data in
``data``. The result types read them back to the same JSON, and the same arguments
give the same cache key, so a rerun reuses every stored point.
"""

from __future__ import annotations

import json
from pathlib import Path

from swimkit.caches import PointCache, evaluation_key
from swimkit.cli import build_parser
from swimkit.command_settings import settings_of
from swimkit.results import SweepResult

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sweep-0.2.0"
ARGUMENTS = ["sweep", "--model", "lenet", "--dataset", "fashion-mnist", "--data-dir", "data",
             "--epochs", "1", "--samples", "4", "--out", "out", "--no-progress",
             "--sigma", "0.5", "--methods", "swim,random", "--fractions", "0.1",
             "--speedups", "2", "--within", "5", "--search-steps", "2",
             "--test-batch-size", "50", "--sens-limit", "200", "--min-samples", "3",
             "--ci-target", "1"]


def stored(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_a_sweep_file_of_0_2_0_reads_back_to_the_same_json():
    data = stored("sweep.json")
    result = SweepResult.from_dict(data)
    assert result.to_dict() == data
    assert [s.point.gap is not None for s in result.models[0].searches] == [True, True]


def test_the_same_arguments_give_the_cache_key_of_0_2_0():
    key = evaluation_key(settings_of(build_parser().parse_args(ARGUMENTS)))
    assert list(stored("points.json")["points_by_key"]) == [key]


def test_every_cached_point_of_0_2_0_reads_back_to_the_same_json():
    key = next(iter(stored("points.json")["points_by_key"]))
    cache = PointCache(FIXTURES / "points.json", key)  # reading writes nothing
    assert len(cache.points) == 13
    for point_id, saved in cache.points.items():
        point = cache.get(point_id)
        assert point is not None and point.to_dict() == saved
