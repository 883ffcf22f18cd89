"""Checks on the real Fashion-MNIST (marker ``realdata``; run with ``pytest -m realdata``).

They need /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist) and
take a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from swimkit.cli import main

pytestmark = pytest.mark.realdata
ROOT = Path(__file__).resolve().parents[1]


def test_swim_beats_magnitude_and_random_on_real_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "3",
                 "--samples", "20", "--fractions", "0.03,0.1", "--methods",
                 "swim,magnitude,random", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "sweep.json").read_text())
    assert result["clean_accuracy"] > 85
    by = {(p["method"], p["fraction"]): p for p in result["points"]}
    for fraction in (0.03, 0.1):
        swim = by[("swim", fraction)]
        for other in ("magnitude", "random"):
            assert swim["ci95"][0] > by[(other, fraction)]["ci95"][1], (other, fraction)
    # at 10% SWIM comes within a few points of verifying everything
    assert result["full_verify"]["mean"] - by[("swim", 0.1)]["mean"] < 8
    assert result["no_verify"]["mean"] < by[("swim", 0.03)]["mean"]


def test_api_example_runs():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "api_quickstart.py"),
                           "--quick"], capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "swim 10%" in done.stdout and "full verify" in done.stdout
