"""A Monte-Carlo result's statistics: mean, CI, 5th percentile, yield, paired gaps, and
what one chip can say."""

from __future__ import annotations

import json
import math

import pytest
import torch

import swimkit
from swimkit.chipstats import ci_half_width, t_quantile_975
from swimkit.storage import atomic_write_json


def test_statistics_and_ci():
    res = swimkit.MCResult(torch.tensor([90.0, 91.0, 92.0, 93.0]), seed=0)
    assert res.mean == pytest.approx(91.5)
    assert res.std == pytest.approx(torch.tensor([90.0, 91, 92, 93]).std().item())
    half = t_quantile_975(3) * res.std / 2
    assert res.ci95 == pytest.approx((91.5 - half, 91.5 + half))
    assert ci_half_width(res.accuracies) == pytest.approx(half)
    data = res.to_dict()
    assert data["accuracies_percent"] == [90.0, 91.0, 92.0, 93.0]
    assert data["mean_percent"] == pytest.approx(91.5)
    assert data["yield_fraction"] is None  # no reference yet
    back = swimkit.MCResult.from_dict(data)
    assert torch.equal(back.accuracies, res.accuracies.double()) and back.seed == 0


def test_p05_yield_and_paired_gap():
    accs = torch.arange(80.0, 100.0)  # 20 chips: 80, 81, ..., 99
    res = swimkit.MCResult(accs, seed=4, reference=98.5, within=1.0)
    assert res.p05 == pytest.approx(80.95)  # linear interpolation, as numpy
    assert res.chip_yield == pytest.approx(2 / 20)  # 98 and 99 are within 1 of 98.5
    assert res.yield_within(90.0, 0.0) == pytest.approx(10 / 20)
    data = res.to_dict()
    assert data["p05_percent"] == pytest.approx(80.95) and data["yield_fraction"] == 0.1
    assert data["yield_reference_percent"] == 98.5 and data["yield_within_points"] == 1.0
    other = swimkit.MCResult(accs + 1.0, seed=4)
    gap = res.paired_difference(other)
    assert gap.mean == pytest.approx(-1.0) and gap.std == pytest.approx(0.0)
    with pytest.raises(swimkit.SwimkitError, match="same seed"):
        res.paired_difference(swimkit.MCResult(accs, seed=5))


@pytest.mark.parametrize("dof,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824),
                                          (5, 2.5706), (9, 2.2622), (29, 2.0452),
                                          (99, 1.9842), (10_000, 1.9602)])
def test_t_quantile(dof, expected):
    """Against the printed table of Student's t (four decimals)."""
    assert t_quantile_975(dof) == pytest.approx(expected, abs=1e-4)


def test_one_chip_has_no_ci_and_files_are_strict_json(tmp_path):
    """One chip has no spread: NaN in memory, said in words, null in a file (never the
    NaN or Infinity strict JSON readers refuse)."""
    one = swimkit.MCResult(torch.tensor([80.0]))
    assert math.isnan(one.std) and all(math.isnan(v) for v in one.ci95)
    assert "no CI" in str(one)
    path = atomic_write_json({"ci": one.to_dict(), "inf": math.inf}, tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["inf"] is None and data["ci"]["std_percent"] is None
