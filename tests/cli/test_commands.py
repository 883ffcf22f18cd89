"""The commands end to end: run (and its resume), the separate steps chained through
files, sweep's table and plot, budgets, and a plan refused on a chip it was not made for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import swimkit
from swimkit.checkpoints import load_checkpoint, save_checkpoint, weights_digest
from swimkit.threads import machine_threads


@pytest.mark.slow
def test_run_end_to_end_and_resume(flow_args, tmp_path, cli):
    """run writes a complete result (baselines, the plan's point, settings, files);
    running it again reuses the trained model, the sensitivities and the chips."""
    out = tmp_path / "run"
    args = ["run", "--model", "lenet", *flow_args(out), "--fraction", "0.1",
            "--method", "swim", "--json", tmp_path / "r.json"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    for key in ("clean_accuracy_percent", "no_verify", "full_verify", "selected", "settings",
                "models", "reference_full_verify_percent"):
        assert key in result
    for key in ("no_verify", "full_verify", "selected"):
        mc = result[key]["accuracy"]
        assert len(mc["accuracies_percent"]) == 4
        assert mc["ci95_percent"][0] <= mc["mean_percent"] <= mc["ci95_percent"][1]
        assert mc["p05_percent"] <= mc["mean_percent"] and 0 <= mc["yield_fraction"] <= 1
    selected = result["selected"]
    assert selected["weights_verified"] == round(0.1 * selected["weights_total"])
    assert selected["weights_total"] == 106154 - (6 + 16 + 120 + 84 + 10)
    assert selected["devices_verified"] == 8 * selected["weights_verified"]
    assert set(selected["programming"]) >= {"time_plan_s", "time_full_verify_s", "speedup"}
    assert selected["programming"]["speedup"] > 1
    assert selected["gap_to_full_verify"]["mean_points"] <= 0
    settings = result["settings"]
    assert settings["device_model"]["sigma"] == 0.5
    assert settings["grid"]["methods"] == ["swim"]  # a run is a grid of one point
    assert result["clean_accuracy_percent"] > 50
    assert "clean accuracy" in stdout and "written" in stdout and "p05" in stdout
    for name in ("model", "sensitivity", "result"):
        assert Path(result["files"][name]).is_file()
    plan = swimkit.Plan.load(selected["plan_path"])
    assert plan.weights_verified == selected["weights_verified"]

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    code, stdout2, _ = cli(*args)
    assert code == 0
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["selected"]["accuracy"] == result["selected"]["accuracy"]
    assert (out / "train" / "last.pt").stat().st_mtime_ns == stamps[out / "train" / "last.pt"]
    assert (out / "sensitivity-swim.pt").stat().st_mtime_ns == stamps[out /
                                                                      "sensitivity-swim.pt"]


@pytest.mark.slow
def test_separate_steps_chain_through_files(fmnist, tmp_path, cli):
    """train -> sensitivity -> select -> evaluate through their files; evaluate stops
    at a CI target, and too many threads is one warning line."""
    out = tmp_path / "steps"
    base = ["--dataset", "fashion-mnist", "--data-dir", fmnist]
    code, stdout, err = cli("train", "--model", "qlenet", *base, "--epochs", "1", "--out", out,
                            "--no-progress")
    assert code == 0, err
    ckpt = out / "train" / "last.pt"
    assert ckpt.is_file() and "best clean accuracy" in stdout
    sens = tmp_path / "sens.pt"
    code, _, err = cli("sensitivity", "--checkpoint", ckpt, *base, "-o", sens, "--no-progress")
    assert code == 0, err
    plan = tmp_path / "plan.pt"
    code, stdout, err = cli("select", "--checkpoint", ckpt, "--sensitivity", sens,
                            "--fraction", "0.2", "-o", plan, "--npz", tmp_path / "plan.npz")
    assert code == 0, err
    assert "speedup" in stdout and (tmp_path / "plan.npz").is_file()
    code, stdout, err = cli("evaluate", "--checkpoint", ckpt, *base, "--plan", plan,
                            "--samples", "3", "--json", tmp_path / "e.json", "--no-progress")
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert len(result["accuracy"]["accuracies_percent"]) == 3
    # adaptive chips, and a warning as one line (threads: more than this process's CPUs)
    threads = 2 * machine_threads()
    code, stdout, err = cli("evaluate", "--checkpoint", ckpt, *base, "--plan", plan,
                            "--samples", "12", "--ci-target", "50", "--min-samples", "3",
                            "--threads", threads, "--json", tmp_path / "a.json",
                            "--no-progress")
    assert code == 0, err
    assert err.count(f"swimkit: warning: {threads} threads x 1 process(es)") == 1
    assert len(err.strip().splitlines()) == 1
    accuracy = json.loads((tmp_path / "a.json").read_text())["accuracy"]
    assert accuracy["samples"] == 3 and accuracy["ci_of"] == "mean"
    assert accuracy["ci_reached_points"] <= 50 and "stopped at a mean CI" in stdout


@pytest.mark.slow
def test_sweep_writes_table_and_plot(flow_args, tmp_path, cli):
    """A sweep of two methods at three budgets: every point in sweep.json and the table,
    a CSV and a plot."""
    out = tmp_path / "sweep"
    code, stdout, err = cli("sweep", "--model", "lenet", *flow_args(out),
                            "--fractions", "0.01,0.1", "--methods", "swim,magnitude",
                            "--speedups", "4")
    assert code == 0, err
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["points"]) == 2 * 3
    table = (out / "sweep.md").read_text()
    assert table.count("| swim |") == 3 and table.count("| magnitude |") == 3
    assert (out / "sweep.csv").is_file() and (out / "sweep.png").stat().st_size > 1000
    assert "| method |" in stdout


@pytest.mark.slow
@pytest.mark.parametrize("budget", [["--speedup", "4"], ["--time-budget", "0.5"]])
def test_run_with_a_programming_budget(budget, flow_args, tmp_path, cli):
    """run under a speedup or a time budget meets it."""
    path = tmp_path / "r.json"
    code, stdout, err = cli("run", "--model", "lenet", *flow_args(tmp_path / "o"), *budget,
                            "--json", path)
    assert code == 0, err
    prog = json.loads(path.read_text())["selected"]["programming"]
    if budget[0] == "--speedup":
        assert prog["speedup"] >= 4
    else:
        assert prog["time_plan_s"] <= 0.5
    assert "speedup" in stdout


#: A plan made for one chip, evaluated on another that differs in one setting.
OTHER_CHIPS = {
    "crossbar": (["--tile", "64x64", "--ranges", "column", "--signed", "pair"], []),
    "device model": (["--device-model", "pcm"], []),
    "gaussian plan on pcm": ([], ["--device-model", "pcm"]),
    "pcm levels on plain cells": (["--device-option", "levels=pcm", "--bits-per-device", "2"],
                                  ["--bits-per-device", "2"]),
    "bits per device": (["--bits-per-device", "2"], []),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LeNet trained one epoch on part of the small Fashion-MNIST, and its data."""
    from formats import make_learnable_mnist

    from swimkit.cli import main

    folder = tmp_path_factory.mktemp("chips")
    make_learnable_mnist(folder / "data", n_train=600, n_test=100)
    assert main(["train", "--model", "lenet", "--dataset", "fashion-mnist", "--data-dir",
                 str(folder / "data"), "--epochs", "1", "--out", str(folder / "o"),
                 "--no-progress"]) == 0
    return folder / "o" / "train" / "best.pt", folder / "data"


@pytest.mark.parametrize("made_for,other", list(OTHER_CHIPS.values()), ids=list(OTHER_CHIPS))
def test_a_plan_runs_only_on_the_chip_it_was_made_for(made_for, other, trained, tmp_path, cli):
    """evaluate --plan on another chip is one line naming the difference (before any
    data is read); on its own chip it runs; --reprice prices it for the other chip and
    runs (or says in one line that it cannot: other bits per device); train --plan on
    another chip is refused the same way."""
    checkpoint, data = trained
    plan = tmp_path / "plan.pt"
    code, _, err = cli("select", "--checkpoint", checkpoint, "--method", "magnitude",
                       "--fraction", "0.2", "-o", plan, *made_for)
    assert code == 0, err
    assert swimkit.Plan.load(plan).chip is not None
    evaluate = ["evaluate", "--checkpoint", checkpoint, "--plan", plan, "--samples", "2",
                "--dataset", "fashion-mnist", "--no-progress"]
    code, _, err = cli(*evaluate, "--data-dir", tmp_path / "absent", *other)
    assert code == 2 and err.count("\n") == 1, err
    assert "the plan was made for another chip (chip." in err and "--reprice" in err
    code, _, err = cli(*evaluate, "--data-dir", data, *made_for)
    assert code == 0, err
    code, _, err = cli(*evaluate, "--data-dir", data, *other, "--reprice", "--json",
                       tmp_path / "e.json")
    if made_for.count("--bits-per-device") == other.count("--bits-per-device"):
        assert code == 0, err
        assert json.loads((tmp_path / "e.json").read_text())["config"]["flags"]["reprice"]
    else:
        assert code == 2 and err.count("\n") == 1 and "select again for this chip" in err
    code, _, err = cli("train", "--checkpoint", checkpoint, "--plan", plan, "--epochs", "1",
                       "--dataset", "fashion-mnist", "--data-dir", data, "--out",
                       tmp_path / "ft", "--no-progress", *other)
    assert code == 2 and err.count("\n") == 1 and "made for another chip" in err, err
    assert not (tmp_path / "ft" / "finetune").exists()


def test_training_from_a_checkpoint_goes_to_finetune_and_distils_from_it(trained, tmp_path,
                                                                         cli):
    """train --checkpoint writes OUT/finetune (with noise, a plan or distillation alike),
    distilling from the checkpoint as it was; --distill without a checkpoint has no
    teacher and is one line, before any data is read."""
    checkpoint, data = trained
    code, _, err = cli("train", "--checkpoint", checkpoint, "--sigma-train", "0.2",
                       "--scale-aware", "--distill", "0.5", "--epochs", "1", "--dataset",
                       "fashion-mnist", "--data-dir", data, "--out", tmp_path / "o",
                       "--no-progress")
    assert code == 0, err
    assert (tmp_path / "o" / "finetune" / "best.pt").is_file()
    assert not (tmp_path / "o" / "train").exists()
    _, info = load_checkpoint(tmp_path / "o" / "finetune" / "last.pt")
    assert info["extra"]["config"]["distill"] == 0.5
    code, _, err = cli("train", "--model", "lenet", "--distill", "0.5", "--dataset",
                       "fashion-mnist", "--data-dir", tmp_path / "absent", "--out",
                       tmp_path / "p")
    assert code == 2 and err.count("\n") == 1 and "give its --checkpoint" in err, err
    code, _, err = cli("sweep", "--distill", "0.5")
    assert code == 2 and "unrecognized arguments: --distill" in err


def test_a_teacher_file_is_distilled_from_and_a_resume_needs_the_same_one(trained,
                                                                          tmp_path, cli):
    """--teacher names the clean model: its weights are recorded, so going on with another
    teacher is refused in one line; --teacher without --distill, or naming no file, is one
    line before any work."""
    checkpoint, data = trained
    other = tmp_path / "other.pt"
    save_checkpoint(other, swimkit.build_model("lenet"), model_name="lenet")
    common = ["--checkpoint", checkpoint, "--sigma-train", "0.2", "--dataset",
              "fashion-mnist", "--data-dir", data, "--out", tmp_path / "o", "--no-progress"]
    code, _, err = cli("train", *common, "--distill", "0.5", "--teacher", other,
                       "--epochs", "1")
    assert code == 0, err
    _, info = load_checkpoint(tmp_path / "o" / "finetune" / "last.pt")
    assert info["extra"]["settings"]["teacher"] == weights_digest(load_checkpoint(other)[0])
    code, _, err = cli("train", *common, "--distill", "0.5", "--epochs", "2")
    assert code == 2 and err.count("\n") == 1 and "holds a run with teacher=" in err, err
    code, _, err = cli("train", *common, "--teacher", other)
    assert code == 2 and err.count("\n") == 1 and "give --distill" in err
    code, _, err = cli("train", *common, "--distill", "0.5", "--teacher", tmp_path / "x.pt")
    assert code == 2 and err.count("\n") == 1 and "--teacher" in err and "not a file" in err


def test_reprice_needs_a_plan(cli, tmp_path):
    """--reprice moves a --plan: without one it would not act, and is refused."""
    code, _, err = cli("evaluate", "--checkpoint", tmp_path / "c.pt", "--reprice")
    assert code == 2 and err.count("\n") == 1 and "--reprice moves a --plan" in err
