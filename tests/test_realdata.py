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
import torch

from swimkit.cli import main
from swimkit.data import batches, load_dataset

pytestmark = pytest.mark.realdata
ROOT = Path(__file__).resolve().parents[1]


def test_real_fashion_mnist():
    """The installed Fashion-MNIST: 60000 + 10000 images, balanced classes, in [0, 1]."""
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.train.images.shape == (60000, 1, 28, 28)
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.train.labels.min() == 0 and ds.train.labels.max() == 9
    assert torch.equal(ds.train.labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(ds.test.labels.bincount(), torch.full((10,), 1000))
    x, y = next(iter(batches(ds.test, ds, 128)))
    assert x.shape == (128, 1, 28, 28) and x.min() >= 0.0 and x.max() <= 1.0


def test_swim_beats_magnitude_and_random_and_allocate_beats_swim(tmp_path, capsys):
    """On a trained LeNet SWIM keeps more accuracy than magnitude and random at the same
    fraction, comes near full verify at 10 %, and allocate beats SWIM at 8x."""
    out = tmp_path / "sweep"
    code = main(["sweep", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "3",
                 "--samples", "20", "--fractions", "0.03,0.1", "--speedups", "8",
                 "--methods", "swim,magnitude,random,allocate", "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "sweep.json").read_text())
    assert result["config"]["command"] == "sweep"  # runs again with --config sweep.json
    assert result["clean_accuracy_percent"] > 85
    by = {(p["method"], p["budget"]["kind"], p["budget"]["value"]): p["accuracy"]
          for p in result["points"]}
    for fraction in (0.03, 0.1):
        swim = by[("swim", "fraction", fraction)]
        for other in ("magnitude", "random"):
            assert swim["ci95_percent"][0] > by[(other, "fraction", fraction)]["ci95_percent"][1]
    # at 10% SWIM comes within a few points of verifying everything
    full = result["full_verify"]["accuracy"]["mean_percent"]
    assert full - by[("swim", "fraction", 0.1)]["mean_percent"] < 8
    # at the same modelled speedup, device-level allocation beats whole weights
    allocate, swim8 = by[("allocate", "speedup", 8.0)], by[("swim", "speedup", 8.0)]
    assert allocate["ci95_percent"][0] > swim8["ci95_percent"][1]


def test_api_example_runs():
    """The API quick start runs to the end and prints its comparison."""
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "api_quickstart.py"),
                           "--quick"], capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "allocate 10x" in done.stdout and "full verify" in done.stdout
