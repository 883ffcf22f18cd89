"""End to end on several processes: a sweep that trains gives the same numbers under
torchrun with 2 processes as in one process, and a bad input is reported once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")


def swimkit(args: list[str], processes: int, cwd: Path) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={processes}", "-m", "swimkit"] if processes > 1
                else [sys.executable, "-m", "swimkit"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    env.pop("OMP_NUM_THREADS", None)  # one process: torch picks its default thread count
    return subprocess.run([*launcher, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600, check=False)


def numbers(obj):
    """Every number in a JSON tree, in order (paths and timings left out)."""
    if isinstance(obj, dict):
        return [n for k, v in obj.items() if "seconds" not in k for n in numbers(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.mark.slow
def test_a_training_sweep_gives_the_same_numbers_on_one_and_two_processes(fmnist, tmp_path):
    results = []
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        done = swimkit(["sweep", "--model", "lenet", "--dataset", "fashion-mnist",
                        "--data-dir", str(fmnist), "--epochs", "1", "--samples", "14",
                        # chips in rounds of 3, 7, 11, 14, each dealt out among the ranks
                        "--min-samples", "3", "--ci-target", "0.05",
                        "--sigma", "0.5", "--sigma-train", "0,0.1", "--methods",
                        "swim,allocate", "--speedups", "4", "--out", str(out),
                        "--no-progress", "--json", str(out / "r.json")], processes, tmp_path)
        assert done.returncode == 0, done.stderr
        results.append(json.loads((out / "r.json").read_text()))
    one, two = (numbers(r["models"]) for r in results)
    assert len(one) > 50 and one == two
    for folder in ("train", "train-sigma0.1"):  # bit for bit, not only the accuracies
        weights = [torch.load(tmp_path / f"p{n}" / folder / "best.pt", weights_only=True)
                   ["state_dict"] for n in (1, 2)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_bad_input_is_reported_once_under_torchrun(tmp_path):
    done = swimkit(["run", "--speedup", "0.5"], 2, tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("swimkit: error: argument --speedup") == 1
