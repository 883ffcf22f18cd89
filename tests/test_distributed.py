"""End to end on several processes: a sweep that trains gives the same numbers under
torchrun with 2 processes as in one process, a bad input is reported once, and a rank
that stops answering ends the job with one line within the bounded time
SWIMKIT_DIST_TIMEOUT sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from json_numbers import numbers

from swimkit import SwimkitError, distributed

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           **extra}
    env.pop("OMP_NUM_THREADS", None)  # one process: torch picks its default thread count
    return env


def swimkit(args: list[str], processes: int, cwd: Path) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={processes}", "-m", "swimkit"] if processes > 1
                else [sys.executable, "-m", "swimkit"])
    return subprocess.run([*launcher, *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=600, check=False)


@pytest.mark.slow
def test_a_training_sweep_gives_the_same_numbers_on_one_and_two_processes(fmnist, tmp_path):
    """The same sweep on 1 and 2 processes: every number of every model equal, and the
    trained weights bit for bit."""
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


@pytest.mark.slow
def test_a_bad_input_is_reported_once_under_torchrun(tmp_path):
    """Every rank meets the same bad flag; only rank 0 says so."""
    done = swimkit(["run", "--speedup", "0.5"], 2, tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("swimkit: error: argument --speedups/--speedup:") == 1


#: Rank 1 stops itself (SIGSTOP) as it reaches the gather of the chips; the time it
#: stopped is written first.
STOPPING_RANK = """\
import os, signal, sys, time
from pathlib import Path
import swimkit.distributed as distributed
from swimkit.cli import main

if os.environ.get("RANK") == "1":
    gather = distributed.all_gather_object

    def stopped(value):
        Path(sys.argv[1]).write_text(repr(time.time()))
        os.kill(os.getpid(), signal.SIGSTOP)
        return gather(value)

    distributed.all_gather_object = stopped
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_stopped_rank_ends_the_job_with_one_line_in_bounded_time(fmnist, tmp_path):
    """With SWIMKIT_DIST_TIMEOUT=10 and rank 1 stopped at the gather, rank 0 ends the
    job with one line naming the silent rank and the variable; the job is over well
    within a minute of the stop (not the process group's day)."""
    from swimkit import build_model
    from swimkit.checkpoints import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "lenet.pt", build_model("lenet", seed=0),
                                 model_name="lenet")
    script = tmp_path / "stopping_rank.py"
    script.write_text(STOPPING_RANK)
    stamp = tmp_path / "stopped-at"
    job = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(script), str(stamp), "evaluate", "--checkpoint", str(checkpoint), "--verify",
         "none", "--samples", "4", "--dataset", "fashion-mnist", "--data-dir", str(fmnist),
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=_env(SWIMKIT_DIST_TIMEOUT="10"))
    try:
        _, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    ended = time.time()
    assert stamp.is_file(), err  # rank 1 did stop at the gather
    took = ended - float(stamp.read_text())
    print(f"the job ended {took:.1f} s after rank 1 stopped")
    assert job.returncode != 0
    said = [line for line in err.splitlines() if line.startswith("swimkit: error:")]
    assert said == ["swimkit: error: another rank did not answer within 10 s (stopped, wedged "
                    "or killed); the job is ended: run it again (set SWIMKIT_DIST_TIMEOUT to "
                    "wait longer)"], err
    assert 10 <= took < 60


@pytest.mark.parametrize("text,seconds", [("", 300.0), ("10", 10.0), ("2.5", 2.5)])
def test_the_timeout_is_read_from_the_environment(text, seconds, monkeypatch):
    """SWIMKIT_DIST_TIMEOUT sets how long a rank may stay silent (default 300 s)."""
    monkeypatch.setenv("SWIMKIT_DIST_TIMEOUT", text)
    assert distributed.timeout_seconds() == seconds


@pytest.mark.parametrize("text", ["0", "-3", "inf", "nan", "soon"])
def test_a_bad_timeout_is_one_line(text, monkeypatch):
    """A timeout that is not a number of seconds > 0 is refused, naming the variable."""
    monkeypatch.setenv("SWIMKIT_DIST_TIMEOUT", text)
    with pytest.raises(SwimkitError, match="SWIMKIT_DIST_TIMEOUT must be a number of seconds"):
        distributed.timeout_seconds()


def test_one_process_needs_no_group():
    """Without torchrun every helper works as rank 0 of 1."""
    ran = []
    distributed.rank_zero_first(lambda: ran.append(1))
    assert ran == [1] and distributed.all_gather_object("x") == ["x"]
    assert distributed.is_rank_zero() and distributed.world_size() == 1
