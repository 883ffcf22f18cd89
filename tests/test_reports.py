"""report: sweeps of one device model merged into one table and plot; only sweeps of the
same chips merge, each point once; a file that is not a sweep result is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import swimkit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sweep-0.2.0"


@pytest.mark.slow
def test_report_merges_sweeps_of_one_device_model(flow_args, tmp_path, cli):
    """Two sweeps of one device model (one per method) merge into one table with their
    points and searches and a plot; a sweep of another device model is refused."""
    out = tmp_path / "rep"
    base = ["sweep", "--model", "lenet", *flow_args(out), "--speedups", "3",
            "--within", "3", "--search-steps", "1"]
    assert cli(*base, "--methods", "swim", "--engine", "swim",
               "--json", tmp_path / "a.json")[0] == 0
    assert cli(*base, "--methods", "magnitude", "--json", tmp_path / "b.json")[0] == 0
    code, stdout, err = cli("report", tmp_path / "a.json", tmp_path / "b.json",
                            "--plot", tmp_path / "m.png", "--table", tmp_path / "m.md")
    assert code == 0, err
    table = (tmp_path / "m.md").read_text()
    assert table.count("| swim |") == 2 and table.count("| magnitude |") == 2  # point, search
    assert "Largest modelled speedup" in table and (tmp_path / "m.png").stat().st_size > 1000
    alone = json.loads((tmp_path / "a.json").read_text())
    again = swimkit.results.SweepResult.from_dict(alone).to_dict()
    assert again["models"] == alone["models"]
    other = tmp_path / "band"
    assert cli("sweep", "--model", "lenet", *flow_args(other), "--speedups", "3",
               "--methods", "magnitude", "--variation", "band:3",
               "--json", tmp_path / "c.json")[0] == 0
    code, _, err = cli("report", tmp_path / "a.json", tmp_path / "c.json")
    assert code == 2 and "differ in their device model" in err


def _sweep_file(tmp_path: Path, name: str, **settings) -> Path:
    mc = swimkit.MCResult(torch.tensor([80.0, 81.0, 82.0]))
    point = {"method": "none", "model": "m", "budget": None, "weights_verified": 0,
             "weights_total": 10, "devices_verified": 0, "devices_total": 80,
             "programming": None, "accuracy": mc.to_dict(), "plan_path": None, "meta": {}}
    model = {"label": "m", "sigma_train": 0.0, "scale_aware": False, "checkpoint": "c.pt",
             "clean_accuracy_percent": 85.0, "no_verify": point,
             "full_verify": {**point, "method": "all"}, "points": [], "searches": []}
    data = {"within_points": 1.0, "models": [model],
            "settings": {"device_model": {"kind": "gaussian"},
                         "data": {"dataset": "fashion-mnist", "test_limit": None},
                         "evaluation": {"seed": 0, "times": None}, **settings}}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_reports_merge_only_sweeps_of_the_same_chips(tmp_path, cli):
    """Sweeps of other chips' seeds are refused; a file whose fields are wrong names
    the field, one line."""
    a = _sweep_file(tmp_path, "a.json")
    b = _sweep_file(tmp_path, "b.json", evaluation={"seed": 1, "times": None})
    assert cli("report", a)[0] == 0
    code, _, err = cli("report", a, b)
    assert code == 2 and "the chips' seed" in err
    for field, value, needle in (("within_points", -5, ">= 0"), ("within_points", "x", ">= 0"),
                                 ("models", [], "non-empty")):
        data = json.loads(a.read_text())
        data[field] = value
        bad = tmp_path / f"bad-{field}.json"
        bad.write_text(json.dumps(data))
        code, _, err = cli("report", bad)
        assert code == 2 and needle in err


def test_the_same_sweep_under_two_names_merges_into_each_row_once(tmp_path, cli):
    """0.2.0's sweep given twice (two file names, the same numbers) reports exactly as
    given once: every point and search row once."""
    text = (FIXTURES / "sweep.json").read_text()
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(text)
    code, once, err = cli("report", tmp_path / "a.json", "--table", tmp_path / "once.md")
    assert code == 0, err
    code, twice, err = cli("report", tmp_path / "a.json", tmp_path / "b.json",
                           "--table", tmp_path / "twice.md")
    assert code == 0, err
    merged = (tmp_path / "twice.md").read_text()
    assert merged == (tmp_path / "once.md").read_text()
    rows = [line for line in merged.splitlines() if line.startswith("| ")]
    assert len(rows) > 5 and len(rows) == len(set(rows))  # no row twice


def test_the_same_point_with_other_numbers_is_refused(tmp_path, cli):
    """Two results holding one point (method, budget) with different chips: refused in
    one line naming the model and the point, not listed twice or silently dropped."""
    data = json.loads((FIXTURES / "sweep.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps(data))
    changed = data["models"][0]["points"][0]
    changed["accuracy"]["accuracies_percent"][0] -= 1.0
    (tmp_path / "b.json").write_text(json.dumps(data))
    code, _, err = cli("report", tmp_path / "a.json", tmp_path / "b.json")
    assert code == 2 and err.count("\n") == 1, err
    assert "different numbers for" in err and changed["method"] in err
