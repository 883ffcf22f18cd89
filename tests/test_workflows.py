"""The whole flow as resumable steps: training folders (named per setting, refused when
made with other settings), checks before any training, the speedup search, models
trained with noise compared against the best full verify, and two runs in one folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import swimkit
from swimkit.evaluator import _floor3
from swimkit.workflows import _check_training_folder, train_folder


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "null", "\udcff"])
def test_a_damaged_training_folder_is_named(tmp_path, content):
    """A training folder's settings.json that is not swimkit's names the folder to delete."""
    (tmp_path / "settings.json").write_text(content, errors="surrogateescape")
    with pytest.raises(swimkit.SwimkitError, match="settings.json is damaged.*delete"):
        _check_training_folder(tmp_path, {"model": "lenet"})


def test_search_points_and_folders_have_stable_names():
    """Search speedups round down to three digits; training folders are named by sigma."""
    assert _floor3(10.9456) == 10.9 and _floor3(10.96) == 10.9 and _floor3(3.0) == 3.0
    assert train_folder(0.0, True) == "train"
    assert train_folder(0.1, False) == "train-sigma0.1"
    assert train_folder(0.05, True) == "train-sigma0.05-scale-aware"


@pytest.mark.slow
@pytest.mark.parametrize("speedups,steps", [("3", "4"), ("1.5,2,4", "1")])
def test_sweep_finds_the_largest_speedup_within_target(flow_args, tmp_path, cli, speedups,
                                                       steps):
    """The search's answer is the largest evaluated speedup meeting the target, fixed
    budgets included (a bisection from 1x alone can end below a fixed point that passes),
    and every evaluated speedup above it misses."""
    out = tmp_path / "within"
    code, stdout, err = cli("sweep", "--model", "lenet", *flow_args(out),
                            "--sigma", "2", "--sigma-verified", "0.2",
                            "--speedups", speedups, "--methods", "swim,allocate",
                            "--within", "1", "--search-steps", steps,
                            "--variation", "band:3")
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


@pytest.mark.slow
def test_sweep_compares_noise_trained_models_against_the_best_full_verify(flow_args, tmp_path,
                                                                          cli):
    """Each model trained (clean, noisy, noisy and scale-aware) is judged against the
    best full verify of all of them; each has its own training folder."""
    out = tmp_path / "models"
    code, stdout, err = cli("sweep", "--model", "lenet", *flow_args(out),
                            "--sigma-train", "0,0.2", "--scale-aware", "both",
                            "--speedups", "4",
                            "--methods", "allocate", "--within", "2", "--yield", "0.5",
                            "--search-steps", "2")
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


@pytest.mark.slow
def test_changed_training_settings_are_refused(flow_args, tmp_path, cli):
    """A folder holding a model trained with other settings (bits) is refused, one line."""
    out = tmp_path / "o"
    base = ["run", "--model", "qlenet", *flow_args(out, epochs=1)]
    assert cli(*base)[0] == 0
    code, _, err = cli(*base, "--bits", "6")
    assert code == 2 and "another --out" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_changed_training_setting_names_command_line_ways_out(flow_args, tmp_path, cli):
    """Resuming with another batch size names the setting and the command line's ways
    out (delete the folder), not the API's."""
    out = tmp_path / "same"
    base = ["run", "--model", "lenet", *flow_args(out, epochs=1)]
    assert cli(*base)[0] == 0
    code, _, err = cli(*base, "--batch-size", "64")
    assert code == 2 and "batch_size" in err and "delete the folder" in err
    assert "--no-resume" not in err and "resume=False" not in err


@pytest.mark.parametrize("budget", [["--speedup", "1e9"], ["--time-budget", "1e-9"]])
def test_unreachable_budgets_are_refused_before_training(flow_args, tmp_path, cli, budget):
    """A speedup or time budget no plan can meet is refused before any training."""
    out = tmp_path / "far"
    code, _, err = cli("run", "--model", "lenet", *flow_args(out), "--method", "allocate",
                       *budget)
    assert code == 2 and "cannot be" in err and err.count("\n") == 1
    assert not (out / "train").exists()


@pytest.mark.slow
def test_value_dependent_caps_are_checked_on_the_trained_model(flow_args, tmp_path, cli):
    """band:3 prices devices by their levels: the cap of the trained weights decides, after
    training and before the sensitivity pass."""
    out = tmp_path / "band"
    code, _, err = cli("run", "--model", "lenet", *flow_args(out), "--method", "allocate",
                       "--speedup", "50", "--variation", "band:3")
    assert code == 2 and "cannot be reached" in err
    assert (out / "train" / "best.pt").is_file() and not list(out.glob("sensitivity*"))


@pytest.mark.slow
def test_exclude_applies_to_every_method(flow_args, tmp_path, cli):
    """--exclude keeps the layers digital for every method and the baselines alike."""
    out = tmp_path / "ex"
    code, _, err = cli("sweep", "--model", "lenet", *flow_args(out), "--fractions", "0.1",
                       "--methods", "swim,random", "--exclude", "conv1,fc3")
    assert code == 0, err
    result = json.loads((out / "sweep.json").read_text())
    totals = {p["weights_total"] for p in [*result["points"], result["no_verify"]]}
    assert totals == {105918 - 54 - 840}
    for point in result["points"]:
        assert set(swimkit.Plan.load(point["plan_path"]).masks) == {"conv2.weight", "fc1.weight",
                                                                    "fc2.weight"}


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "swimkit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_runs_in_one_folder_keep_each_others_work(flow_args, tmp_path):
    """Two `swimkit run --out D` at once: both finish, points.json keeps both points, and
    each result equals the same run made alone."""
    shared = tmp_path / "shared"
    runs = {m: ["run", "--model", "lenet", *flow_args(shared, epochs=1, samples=3),
                "--method", m, "--fraction", "0.1", "--json", str(tmp_path / f"{m}.json")]
            for m in ("magnitude", "random")}
    procs = {m: _spawn(args) for m, args in runs.items()}
    for proc in procs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    points = json.loads((shared / "points.json").read_text())["points_by_key"]
    stored = [p for by_key in points.values() for p in by_key.values()]
    assert {p["method"] for p in stored} >= {"magnitude", "random"}
    for m in runs:
        lone_args = ["run", "--model", "lenet",
                     *flow_args(tmp_path / f"lone-{m}", epochs=1, samples=3), "--method", m,
                     "--fraction", "0.1", "--json", str(tmp_path / f"lone-{m}.json")]
        proc = _spawn(lone_args)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        together = json.loads((tmp_path / f"{m}.json").read_text())["selected"]["accuracy"]
        alone = json.loads((tmp_path / f"lone-{m}.json").read_text())["selected"]["accuracy"]
        assert together["accuracies_percent"] == alone["accuracies_percent"]


@pytest.mark.slow
def test_every_field_of_a_training_folder_settings_file_is_checked(swept, damages, cli):
    """Every field of a training folder's settings.json, damaged five ways: the rerun is
    refused in one line (a missing None field still means None: the same folder)."""
    folder, out, argv = swept
    settings = out / "train" / "settings.json"
    original = json.loads(settings.read_text())
    tried = 0
    try:
        for field in original:
            for damage in damages.kinds:
                settings.write_text(json.dumps(damages.damaged(original, (field,), damage)))
                code, _, err = cli(*argv)
                assert code == 2 or (damage == "missing" and original[field] is None), (
                    field, damage, err)
                if code == 2:
                    assert err.startswith("swimkit: error:") and err.count("\n") == 1, err
                tried += 1
    finally:
        settings.write_text(json.dumps(original))
    assert tried >= 20


def test_a_run_fine_tunes_under_its_plan_and_judges_the_same_plan(flow_args, tmp_path, cli):
    """--finetune-epochs trains a copy of the run's model under the plan (into
    OUT/finetune-PLAN) and judges it on that very plan, beside the model it came from;
    the same command again resumes and recomputes nothing; the plan's file is used as
    it is (the same devices, the same programming time)."""
    from swimkit.checkpoints import load_checkpoint, weights_digest

    out = tmp_path / "ft"
    args = ["run", "--model", "lenet", *flow_args(out, epochs=1, samples=3), "--method",
            "allocate", "--speedup", "5", "--sigma", "0.4", "--finetune-epochs", "1",
            "--finetune-sigma", "0.5", "--finetune-distill", "0.5", "--finetune-scale-aware",
            "--ci-target", "0"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    base, tuned = result["models"]
    assert tuned["label"] == f"{base['label']} fine-tuned under allocate speedup 5"
    plan = base["points"][0]["plan_path"]
    assert tuned["points"][0]["plan_path"] == plan
    assert tuned["points"][0]["programming"] == base["points"][0]["programming"]
    folders = list(out.glob(f"finetune-{os.path.splitext(os.path.basename(plan))[0]}-*"))
    assert len(folders) == 1
    folder = folders[0]
    assert tuned["checkpoint"] == str(folder / "best.pt")
    first, info = load_checkpoint(folder / "last.pt")
    assert info["extra"]["config"]["sigma_train"] == 0.5
    assert info["extra"]["config"]["distill"] == 0.5
    assert info["extra"]["config"]["lr"] == pytest.approx(3e-4)
    assert info["extra"]["settings"]["noise"]["plan"]["requested"] == {"speedup": 5.0}
    original, _ = load_checkpoint(out / "train" / "best.pt")
    assert weights_digest(first) != weights_digest(original)
    assert f"[{tuned['label']}] allocate speedup 5:" in stdout
    stamp = {p: p.stat().st_mtime_ns for p in (folder / "last.pt", out / "points.json")}
    code, again, err = cli(*args)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert json.loads((out / "result.json").read_text())["models"] == result["models"]
    code, _, err = cli(*args, "--finetune-lr", "1e-3")
    assert code == 0, err
    assert len(list(out.glob("finetune-*"))) == 2  # other fine-tuning, its own folder


@pytest.mark.parametrize(("extra", "needle"), [
    (["--finetune-sigma", "0.4"], "give --finetune-epochs N"),
    (["--finetune-epochs", "2", "--finetune-sigma", "0.6"], "--finetune-sigma 0.6 has no"),
    (["--finetune-epochs", "2", "--batchnorm", "folded"], "BatchNorm digital"),
])
def test_fine_tuning_settings_that_cannot_act_are_one_line(flow_args, tmp_path, cli, extra,
                                                            needle):
    out = tmp_path / "no"
    code, _, err = cli("run", "--model", "lenet", *flow_args(out), "--method", "allocate",
                       "--speedup", "5", *extra)
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not out.exists()
    code, _, err = cli("sweep", "--finetune-epochs", "2")
    assert code == 2 and "unrecognized arguments: --finetune-epochs" in err


def test_fine_tuning_is_for_one_plan_without_a_search():
    """Settings that fine-tune ask for one model, one method, one budget and no search."""
    from swimkit.settings import Settings, SweepGrid
    from swimkit.train_config import FinetuneSettings

    tune = FinetuneSettings(epochs=2)
    with pytest.raises(swimkit.SwimkitError, match="this asks for 2"):
        Settings(grid=SweepGrid(methods=["allocate"], speedups=[3.0, 5.0]), finetune=tune)
    with pytest.raises(swimkit.SwimkitError, match="drop --within"):
        Settings(grid=SweepGrid(methods=["allocate"], speedups=[3.0], within=1.0,
                                search=True), finetune=tune)
    Settings(grid=SweepGrid(methods=["allocate"], speedups=[3.0]), finetune=tune)
