"""The command line: the whole flow, the separate steps, aliases, resume and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import swimkit
from swimkit.cli import main
from swimkit.threads import machine_threads


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def flow_args(folder: Path, out: Path) -> list[str]:
    return ["--dataset", "fashion-mnist", "--data-dir", str(folder), "--epochs", "2",
            "--samples", "4", "--out", str(out), "--no-progress", "--sigma", "0.5"]


def test_run_end_to_end_and_resume(fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--model", "lenet", *flow_args(fmnist, out), "--fraction", "0.1",
            "--method", "swim", "--json", str(tmp_path / "r.json")]
    code, stdout, err = run_cli(args, capsys)
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
    assert settings["selection"]["methods"] == ["swim"]
    assert result["clean_accuracy_percent"] > 50
    assert "clean accuracy" in stdout and "written" in stdout and "p05" in stdout
    for name in ("model", "sensitivity", "result"):
        assert Path(result["files"][name]).is_file()
    plan = swimkit.Plan.load(selected["plan_path"])
    assert plan.weights_verified == selected["weights_verified"]

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    code, stdout2, _ = run_cli(args, capsys)
    assert code == 0
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["selected"]["accuracy"] == result["selected"]["accuracy"]
    assert (out / "train" / "last.pt").stat().st_mtime_ns == stamps[out / "train" / "last.pt"]
    assert (out / "sensitivity-swim.pt").stat().st_mtime_ns == stamps[out /
                                                                      "sensitivity-swim.pt"]


def test_reference_flag_names_are_aliases(fmnist, tmp_path, capsys):
    ours = ["run", "--model", "lenet", "--sigma", "0.4", "--sigma-verified", "0.05",
            "--fraction", "0.05", "--samples", "2", "--epochs", "1", "--sens-batch-size", "64",
            "--method", "swim"]
    theirs = ["run", "--model", "LeNet", "--dev_var", "0.4", "--write_var", "0.05",
              "--mask_p", "0.05", "--noise_epoch", "2", "--train_epoch", "1", "--div", "64",
              "--method", "SM"]
    common = ["--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--no-progress"]
    results = []
    for i, args in enumerate((ours, theirs)):
        path = tmp_path / f"{i}.json"
        code, _, err = run_cli([*args, *common, "--out", str(tmp_path / "same"), "--json",
                                str(path)], capsys)
        assert code == 0, err
        results.append(json.loads(path.read_text()))
    assert results[0]["settings"] == results[1]["settings"]
    assert results[0]["selected"]["accuracy"] == results[1]["selected"]["accuracy"]


def test_separate_steps_chain_through_files(fmnist, tmp_path, capsys):
    out = tmp_path / "steps"
    base = ["--dataset", "fashion-mnist", "--data-dir", str(fmnist)]
    code, stdout, err = run_cli(["train", "--model", "qlenet", *base, "--epochs", "1", "--out",
                                 str(out), "--no-progress"], capsys)
    assert code == 0, err
    ckpt = out / "train" / "last.pt"
    assert ckpt.is_file() and "best clean accuracy" in stdout
    sens = tmp_path / "sens.pt"
    code, _, err = run_cli(["sensitivity", "--checkpoint", str(ckpt), *base,
                            "-o", str(sens), "--no-progress"], capsys)
    assert code == 0, err
    plan = tmp_path / "plan.pt"
    code, stdout, err = run_cli(["select", "--checkpoint", str(ckpt),
                                 "--sensitivity", str(sens), "--fraction", "0.2", "-o", str(plan),
                                 "--npz", str(tmp_path / "plan.npz")], capsys)
    assert code == 0, err
    assert "speedup" in stdout and (tmp_path / "plan.npz").is_file()
    code, stdout, err = run_cli(["evaluate", "--checkpoint", str(ckpt),
                                 *base, "--plan", str(plan), "--samples", "3", "--json",
                                 str(tmp_path / "e.json"), "--no-progress"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert len(result["accuracy"]["accuracies_percent"]) == 3
    # adaptive chips, and a warning as one line (threads: more than this process's CPUs)
    threads = 2 * machine_threads()
    code, stdout, err = run_cli(["evaluate", "--checkpoint", str(ckpt), *base, "--plan",
                                 str(plan), "--samples", "12", "--ci-target", "50",
                                 "--min-samples", "3", "--threads", str(threads), "--json",
                                 str(tmp_path / "a.json"), "--no-progress"], capsys)
    assert code == 0, err
    assert err.count(f"swimkit: warning: {threads} threads x 1 process(es)") == 1
    assert len(err.strip().splitlines()) == 1
    accuracy = json.loads((tmp_path / "a.json").read_text())["accuracy"]
    assert accuracy["samples"] == 3 and accuracy["ci_of"] == "mean"
    assert accuracy["ci_reached_points"] <= 50 and "stopped at a mean CI" in stdout


def test_sweep_writes_table_and_plot(fmnist, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = run_cli(["sweep", "--model", "lenet", *flow_args(fmnist, out),
                                 "--fractions", "0.01,0.1", "--methods", "swim,magnitude",
                                 "--speedups", "4"], capsys)
    assert code == 0, err
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["points"]) == 2 * 3
    table = (out / "sweep.md").read_text()
    assert table.count("| swim |") == 3 and table.count("| magnitude |") == 3
    assert (out / "sweep.csv").is_file() and (out / "sweep.png").stat().st_size > 1000
    assert "| method |" in stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--fraction", "1.5"], "fraction"),
        (["run", "--sigma", "-0.2"], "--sigma"),
        (["run", "--model", "alexnet"], "unknown model"),
        (["run", "--dataset", "imagenet"], "unknown dataset"),
        (["run", "--method", "best"], "unknown method"),
        (["run", "--samples", "0"], "samples"),
        (["run", "--variation", "wobbly"], "variation"),
        (["evaluate", "--dataset", "fashion-mnist"], "--checkpoint"),
        (["run", "--sigma-verified", "0.5"], "residual sigma"),
        (["run", "--t-program", "0", "--t-read", "0"], "no time"),
        (["run", "--speedup", "inf"], "expected a speedup >= 1"),
        (["run", "--speedup", "0.5"], "expected a speedup >= 1"),
        (["sweep", "--methods", ","], "expected a comma-separated list"),
        (["sweep", "--speedups", " , "], "expected a comma-separated list"),
        (["train", "--epochs", "0"], "--checkpoint instead"),
        (["run", "--epochs", "0"], "--checkpoint instead"),
        (["sweep", "--plot", "plot.xyz"], "--plot"),
        (["run", "--device", "abacus"], "unknown device"),
        (["run", "--device", "meta"], "cannot run swimkit"),
        (["run", "--device", "mps"], "has no Apple GPU"),
        (["run", "--device", "xpu"], "has no Intel GPU"),
        (["sweep", "--yield", "0.9"], "--within"),
        (["sweep", "--methods", "learned", "--fractions", "0.1"], "not fractions"),
        (["run", "--method", "allocate", "--tolerances", "0.2,-1"], "expected a number"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, fmnist, tmp_path, capsys):
    with_out = args[0] in ("run", "sweep")
    full = [*args, "--no-progress"] + (["--out", str(tmp_path / "x")] if with_out else [])
    with pytest.raises(SystemExit) as stop:
        sys.exit(main(full))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_missing_data_says_how_to_get_it(fmnist, tmp_path, capsys):
    code, _, err = run_cli(["run", "--dataset", "fashion-mnist", "--data-dir",
                            str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                            "--no-progress"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in err


def test_checkpoint_that_does_not_fit(fmnist, tmp_path, capsys):
    path = tmp_path / "convnet.pt"
    swimkit.checkpoints.save_checkpoint(path, swimkit.build_model("convnet"),
                                        model_name="convnet")
    state = torch.load(path, weights_only=True)
    state["model_name"] = "lenet"
    torch.save(state, path)
    code, _, err = run_cli(["evaluate", "--model", "lenet", "--checkpoint", str(path),
                            "--dataset", "fashion-mnist", "--data-dir", str(fmnist)], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not fit" in err


def test_console_script_and_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "swimkit", "--version"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and "swimkit" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "swimkit", "run", "--mask_p", "2"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


@pytest.mark.parametrize("speedups,steps", [("3", "4"), ("1.5,2,4", "1")])
def test_sweep_finds_the_largest_speedup_within_target(fmnist, tmp_path, capsys, speedups,
                                                       steps):
    """The search's answer is the largest evaluated speedup meeting the target, fixed
    budgets included (a bisection from 1x alone can end below a fixed point that passes),
    and every evaluated speedup above it misses."""
    out = tmp_path / "within"
    code, stdout, err = run_cli(["sweep", "--model", "lenet", *flow_args(fmnist, out),
                                 "--sigma", "2", "--sigma-verified", "0.2",
                                 "--speedups", speedups, "--methods", "swim,allocate",
                                 "--within", "1", "--search-steps", steps,
                                 "--variation", "band:3"], capsys)
    assert code == 0, err
    result = json.loads((out / "sweep.json").read_text())
    floor = result["reference_full_verify_percent"] - 1
    for search in result["searches"]:
        stored = json.loads((out / "points.json").read_text())["points_by_key"]
        tried = [p for p in next(iter(stored.values())).values()
                 if p["method"] == search["method"] and p["budget"]["kind"] == "speedup"]
        found = search["point"]
        assert found["accuracy"]["mean_percent"] >= floor
        met = [p["programming"]["speedup"] for p in tried
               if p["accuracy"]["mean_percent"] >= floor]
        unmet = [p["programming"]["speedup"] for p in tried
                 if p["accuracy"]["mean_percent"] < floor]
        assert search["speedup"] == pytest.approx(max(met))
        assert all(u > search["speedup"] for u in unmet)  # the bisection's bracket
        assert len(tried) >= 3
    assert "Largest modelled speedup" in (out / "sweep.md").read_text()


def test_sweep_compares_noise_trained_models_against_the_best_full_verify(fmnist, tmp_path,
                                                                          capsys):
    out = tmp_path / "models"
    code, stdout, err = run_cli(["sweep", "--model", "lenet", *flow_args(fmnist, out),
                                 "--sigma-train", "0,0.2", "--scale-aware", "both",
                                 "--speedups", "4",
                                 "--methods", "allocate", "--within", "2", "--yield", "0.5",
                                 "--search-steps", "2"], capsys)
    assert code == 0, err
    result = json.loads((out / "sweep.json").read_text())
    models = result["models"]
    assert [(m["sigma_train"], m["scale_aware"]) for m in models] == [
        (0.0, False), (0.2, False), (0.2, True)]
    best = max(m["full_verify"]["accuracy"]["mean_percent"] for m in models)
    assert result["reference_full_verify_percent"] == pytest.approx(best)
    for model in models:
        for point in (model["no_verify"], model["full_verify"], *model["points"]):
            mc = point["accuracy"]
            assert mc["yield_reference_percent"] == pytest.approx(best)
            reached = sum(a >= best - 2 - 1e-9 for a in mc["accuracies_percent"])
            assert mc["yield_fraction"] == pytest.approx(reached / len(mc["accuracies_percent"]))
        assert model["searches"][0]["target"].startswith("50 % of chips")
    for folder in ("train", "train-sigma0.2", "train-sigma0.2-scale-aware"):
        assert (out / folder / "best.pt").is_file()
    table = (out / "sweep.md").read_text()
    assert "| sigma_train 0.2 scale-aware | allocate |" in table
    assert (out / "sweep.png").stat().st_size > 1000


@pytest.mark.parametrize("budget", [["--speedup", "4"], ["--time-budget", "0.5"]])
def test_run_with_a_programming_budget(budget, fmnist, tmp_path, capsys):
    path = tmp_path / "r.json"
    code, stdout, err = run_cli(["run", "--model", "lenet", *flow_args(fmnist, tmp_path / "o"),
                                 *budget, "--json", str(path)], capsys)
    assert code == 0, err
    prog = json.loads(path.read_text())["selected"]["programming"]
    if budget[0] == "--speedup":
        assert prog["speedup"] >= 4
    else:
        assert prog["time_plan_s"] <= 0.5
    assert "speedup" in stdout


def test_changed_training_settings_are_refused(fmnist, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["run", "--model", "qlenet", *flow_args(fmnist, out), "--epochs", "1"]
    assert run_cli(base, capsys)[0] == 0
    code, _, err = run_cli([*base, "--bits", "6"], capsys)
    assert code == 2 and "another --out" in err and err.count("\n") == 1


def test_damaged_files_are_one_line_errors_that_name_options(tmp_path, capsys):
    import os
    import pickle

    (tmp_path / "rand.csv").write_bytes(os.urandom(300) + b"\xff\xfe")
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"model": object()}, tmp_path / "objects.pt", pickle_module=pickle)
    cases = [(["run", "--variation", str(tmp_path / "rand.csv")], "is not a text CSV file"),
             (["evaluate", "--checkpoint", str(tmp_path / "text.pt")],
              "is not a PyTorch checkpoint; give the file that training wrote"),
             (["evaluate", "--checkpoint", str(tmp_path / "objects.pt")], "add --trusted")]
    for args, needle in cases:
        code, _, err = run_cli([*args, "--no-progress"], capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, err
        assert "trusted=True" not in err


@pytest.mark.parametrize("budget", [["--speedup", "1e9"], ["--time-budget", "1e-9"]])
def test_unreachable_budgets_are_refused_before_training(fmnist, tmp_path, capsys, budget):
    out = tmp_path / "far"
    code, _, err = run_cli(["run", "--model", "lenet", *flow_args(fmnist, out),
                            "--method", "allocate", *budget], capsys)
    assert code == 2 and "cannot be" in err and err.count("\n") == 1
    assert not (out / "train").exists()


def test_value_dependent_caps_are_checked_on_the_trained_model(fmnist, tmp_path, capsys):
    """band:3 prices devices by their levels: the cap of the trained weights decides, after
    training and before the sensitivity pass."""
    out = tmp_path / "band"
    code, _, err = run_cli(["run", "--model", "lenet", *flow_args(fmnist, out), "--method",
                            "allocate", "--speedup", "50", "--variation", "band:3"], capsys)
    assert code == 2 and "cannot be reached" in err
    assert (out / "train" / "best.pt").is_file() and not list(out.glob("sensitivity*"))


@pytest.mark.parametrize("extra,needle", [(["--exclude", "conv9"], "matches no"),
                                          (["--json", "/proc/x/r.json"], "--json /proc/x"),
                                          (["--plot", "/proc/x/p.png"], "--plot /proc/x")])
def test_options_are_checked_before_training(fmnist, tmp_path, capsys, extra, needle):
    out = tmp_path / "early"
    code, _, err = run_cli(["sweep", "--model", "lenet", *flow_args(fmnist, out),
                            "--fractions", "0.1", "--methods", "magnitude", *extra], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (out / "train").exists()


def test_going_back_to_earlier_sensitivity_settings_reuses_their_pass(fmnist, tmp_path, capsys):
    out = tmp_path / "back"
    base = ["sweep", "--model", "lenet", *flow_args(fmnist, out), "--fractions", "0.1",
            "--methods", "swim", "--epochs", "1", "--samples", "2"]
    for limit in ("600", "300", "600"):
        assert run_cli([*base, "--sens-limit", limit], capsys)[0] == 0
    files = sorted(p.name for p in out.glob("sensitivity-swim*.pt"))
    assert len(files) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("sensitivity-swim*.pt")}
    assert run_cli([*base, "--sens-limit", "300"], capsys)[0] == 0
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("sensitivity-swim*.pt")}


def test_a_changed_training_setting_names_command_line_ways_out(fmnist, tmp_path, capsys):
    out = tmp_path / "same"
    base = ["run", "--model", "lenet", *flow_args(fmnist, out), "--epochs", "1"]
    assert run_cli(base, capsys)[0] == 0
    code, _, err = run_cli([*base, "--batch-size", "64"], capsys)
    assert code == 2 and "batch_size" in err and "delete the folder" in err
    assert "--no-resume" not in err and "resume=False" not in err


def test_exclude_applies_to_every_method(fmnist, tmp_path, capsys):
    out = tmp_path / "ex"
    code, _, err = run_cli(["sweep", "--model", "lenet", *flow_args(fmnist, out),
                            "--fractions", "0.1", "--methods", "swim,random",
                            "--exclude", "conv1,fc3"], capsys)
    assert code == 0, err
    result = json.loads((out / "sweep.json").read_text())
    totals = {p["weights_total"] for p in [*result["points"], result["no_verify"]]}
    assert totals == {105918 - 54 - 840}
    for point in result["points"]:
        assert set(swimkit.Plan.load(point["plan_path"]).masks) == {"conv2.weight", "fc1.weight",
                                                                    "fc2.weight"}


def test_ctrl_c_while_starting_is_one_line(monkeypatch, capsys):
    import importlib.abc

    import swimkit_launcher

    class Interrupted(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "swimkit.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "swimkit.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    assert swimkit_launcher.main() == 130
    assert capsys.readouterr().err == "swimkit: interrupted while starting; nothing was written\n"


def test_report_merges_sweeps_of_one_device_model(fmnist, tmp_path, capsys):
    out = tmp_path / "rep"
    base = ["sweep", "--model", "lenet", *flow_args(fmnist, out), "--speedups", "3",
            "--within", "3", "--search-steps", "1"]
    assert run_cli([*base, "--methods", "swim", "--engine", "swim",
                    "--json", str(tmp_path / "a.json")], capsys)[0] == 0
    assert run_cli([*base, "--methods", "magnitude", "--json", str(tmp_path / "b.json")],
                   capsys)[0] == 0
    code, stdout, err = run_cli(["report", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                 "--plot", str(tmp_path / "m.png"),
                                 "--table", str(tmp_path / "m.md")], capsys)
    assert code == 0, err
    table = (tmp_path / "m.md").read_text()
    assert table.count("| swim |") == 2 and table.count("| magnitude |") == 2  # point, search
    assert "Largest modelled speedup" in table and (tmp_path / "m.png").stat().st_size > 1000
    alone = json.loads((tmp_path / "a.json").read_text())
    again = swimkit.results.SweepResult.from_dict(alone).to_dict()
    assert again["models"] == alone["models"]
    other = tmp_path / "band"
    assert run_cli(["sweep", "--model", "lenet", *flow_args(fmnist, other), "--speedups", "3",
                    "--methods", "magnitude", "--variation", "band:3",
                    "--json", str(tmp_path / "c.json")], capsys)[0] == 0
    code, _, err = run_cli(["report", str(tmp_path / "a.json"), str(tmp_path / "c.json")],
                           capsys)
    assert code == 2 and "differ in their device model" in err
