"""Nothing silently ignored, no file overwritten, no run lost to another, no plugin or
callback that takes the tool down: each case of the hardening round, and a fuzz test over
every field of the files swimkit reads."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch
from toys import toy_problem

import swimkit
from swimkit.cli import main
from swimkit.selection import METHODS
from swimkit.sensitivity import ENGINES
from swimkit.storage import atomic_write_json


def run_cli(args, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as ended:  # argparse's own refusals (bad values) exit here
        code = ended.code
    out = capsys.readouterr()
    return code, out.out, out.err


def flow(fmnist: Path, out: Path) -> list[str]:
    return ["--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--epochs", "1",
            "--samples", "3", "--out", str(out), "--no-progress", "--sigma", "0.5"]


# --- 1. two runs in one folder ------------------------------------------------------------


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "swimkit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_in_one_folder_keep_each_others_work(fmnist, tmp_path):
    """Two `swimkit run --out D` at once: both finish, points.json keeps both points, and
    each result equals the same run made alone."""
    shared = tmp_path / "shared"
    runs = {m: ["run", "--model", "lenet", *flow(fmnist, shared), "--method", m,
                "--fraction", "0.1", "--json", str(tmp_path / f"{m}.json")]
            for m in ("magnitude", "random")}
    procs = {m: _spawn(args) for m, args in runs.items()}
    for proc in procs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    points = json.loads((shared / "points.json").read_text())["points_by_key"]
    stored = [p for by_key in points.values() for p in by_key.values()]
    assert {p["method"] for p in stored} >= {"magnitude", "random"}
    for m in runs:
        lone_args = ["run", "--model", "lenet", *flow(fmnist, tmp_path / f"lone-{m}"),
                     "--method", m, "--fraction", "0.1", "--json", str(tmp_path / f"lone-{m}.json")]
        proc = _spawn(lone_args)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        together = json.loads((tmp_path / f"{m}.json").read_text())["selected"]["accuracy"]
        alone = json.loads((tmp_path / f"lone-{m}.json").read_text())["selected"]["accuracy"]
        assert together["accuracies_percent"] == alone["accuracies_percent"]


# --- 2. outputs never overwrite inputs -----------------------------------------------------


def test_an_output_that_is_an_input_is_refused_before_work(tmp_path, capsys):
    sweep = tmp_path / "a.json"
    sweep.write_text("{}")
    code, _, err = run_cli(["report", sweep, "--table", sweep], capsys)
    assert code == 2 and "would overwrite the input" in err
    assert sweep.read_text() == "{}"
    code, _, err = run_cli(["report", sweep, sweep], capsys)
    assert code == 2 and "given twice" in err
    code, _, err = run_cli(["select", "--checkpoint", tmp_path / "c.pt", "-o",
                            tmp_path / "p.json", "--summary", tmp_path / "p.json"], capsys)
    assert code == 2 and "are the same file" in err
    code, _, err = run_cli(["select", "--checkpoint", tmp_path / "c.pt", "-o",
                            tmp_path / "p.pt", "--summary", tmp_path / "a.txt"], capsys)
    assert code == 2 and "--summary must end in .json or .csv" in err
    assert not (tmp_path / "p.pt").exists()


# --- 3. options act or are refused ---------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["sweep", "--sigma-train", "0,0"], "given twice"),
    (["sweep", "--methods", "swim,SM"], "given twice"),
    (["sweep", "--speedups", "3,3"], "given twice"),
    (["run", "--times", "1,1"], "given twice"),
    (["run", "--scale-aware"], "--scale-aware"),
    (["run", "--noise-time", "100"], "--noise-time"),
    (["run", "--tolerances", "0.1,0.1", "--method", "allocate", "--speedup", "3"], "twice"),
    (["run", "--threads", "100000"], "per core"),
    (["run", "--device-model", "pcm", "--variation", "band:3"], "takes no 'variation'"),
    (["run", "--device-model", "pcm", "--device-option", "drift=1"], "no option 'drift'"),
    (["run", "--device-option", "levels"], "KEY=VALUE"),
])
def test_options_without_effect_are_refused(args, needle, fmnist, tmp_path, capsys):
    code, _, err = run_cli([*args, *flow(fmnist, tmp_path / "o")], capsys)
    assert code == 2, err
    assert needle in err and err.count("\n") == 1


def test_a_checkpoint_with_noise_training_flags_is_refused(fmnist, tmp_path, capsys):
    out = tmp_path / "o"
    train = [a for a in flow(fmnist, out) if a not in ("--samples", "3")]
    assert run_cli(["train", "--model", "lenet", *train], capsys)[0] == 0
    code, _, err = run_cli(["sweep", "--checkpoint", out / "train" / "best.pt",
                            "--sigma-train", "0.1", *flow(fmnist, tmp_path / "s")], capsys)
    assert code == 2 and "would not act" in err


# --- 4. plans mean what they say -------------------------------------------------------------


def test_a_plan_must_cover_the_mapped_layers():
    model, batches = toy_problem()
    values = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
    partial = swimkit.Plan.uniform({"0.weight": values["0.weight"]}, True)
    with pytest.raises(swimkit.SwimkitError, match="leaves out 1 layer"):
        swimkit.evaluate(model, batches, swimkit.DeviceModel(), partial, samples=2)
    fine = swimkit.evaluate(model, batches, swimkit.DeviceModel(), partial, samples=2,
                            exclude=["2"])
    assert fine.samples == 2


def test_a_menu_that_cannot_spend_the_budget_is_refused():
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    for menu in ([5.0], [1e-300]):
        with pytest.raises(swimkit.SwimkitError, match="menu|lowers"):
            swimkit.select(model, sens, method="allocate", speedup=3.0, tolerances=menu)
    with pytest.raises(swimkit.SwimkitError, match="less than the"):
        swimkit.select(model, sens, method="swim", speedup=3.0, tolerances=[5.0])
    with pytest.raises(swimkit.SwimkitError, match="repeats"):
        swimkit.select(model, sens, method="allocate", speedup=3.0, tolerances=[0.2, 0.2])


# --- 5. statistics at small counts, strict JSON ---------------------------------------------


def test_one_chip_has_no_ci_and_files_are_strict_json(tmp_path):
    one = swimkit.MCResult(torch.tensor([80.0]))
    assert math.isnan(one.std) and all(math.isnan(v) for v in one.ci95)
    assert "no CI" in str(one)
    path = atomic_write_json({"ci": one.to_dict(), "inf": math.inf}, tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["inf"] is None and data["ci"]["std_percent"] is None


# --- 6. reports merge only what belongs together ------------------------------------------------


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


def test_reports_merge_only_sweeps_of_the_same_chips(tmp_path, capsys):
    a = _sweep_file(tmp_path, "a.json")
    b = _sweep_file(tmp_path, "b.json",
                    evaluation={"seed": 1, "times": None})
    assert run_cli(["report", a], capsys)[0] == 0
    code, _, err = run_cli(["report", a, b], capsys)
    assert code == 2 and "the chips' seed" in err
    for field, value, needle in (("within_points", -5, ">= 0"), ("within_points", "x", ">= 0"),
                                 ("models", [], "non-empty")):
        data = json.loads(a.read_text())
        data[field] = value
        bad = tmp_path / f"bad-{field}.json"
        bad.write_text(json.dumps(data))
        code, _, err = run_cli(["report", bad], capsys)
        assert code == 2 and needle in err


# --- 7. plugins are isolated -------------------------------------------------------------------


class _Point:
    def __init__(self, name, register):
        self.name, self._register = name, register

    def load(self):
        return self._register


def _plugins(monkeypatch, points):
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: points
                        if group == "swimkit.methods" else real(group=group))
    monkeypatch.setattr(METHODS, "_plugins_loaded", False)


def test_a_failing_plugin_is_skipped_with_a_warning_and_the_others_load(monkeypatch, capsys):
    def broken():
        swimkit.register_method("half-done", lambda i: i.normalised, needs_sensitivity=False)
        raise RuntimeError("boom")

    def exits():
        raise SystemExit(7)

    def fine():
        swimkit.register_method("fine", lambda i: i.normalised, needs_sensitivity=False)

    def override():
        swimkit.register_method("magnitude", lambda i: i.normalised, needs_sensitivity=False,
                                replace=True)

    _plugins(monkeypatch, [_Point("broken", broken), _Point("exits", exits),
                           _Point("fine", fine)])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = METHODS.names()
        assert "fine" in names and "half-done" not in names and "swim" in names
        said = " ".join(str(w.message) for w in caught)
        assert "'broken'" in said and "boom" in said and "'exits'" in said
    finally:
        if "fine" in METHODS:
            METHODS.remove("fine")
    saved = dict(METHODS._entries), dict(METHODS._lookup)
    _plugins(monkeypatch, [_Point("override", override)])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            METHODS.names()
        assert any("replaces the selection method 'magnitude'" in str(w.message)
                   for w in caught)
    finally:
        METHODS._entries, METHODS._lookup = saved


def test_the_command_line_survives_a_plugin_that_exits(monkeypatch, capsys):
    _plugins(monkeypatch, [_Point("exits", lambda: (_ for _ in ()).throw(SystemExit(7)))])
    with pytest.raises(SystemExit) as ended:
        main(["run", "--help"])
    assert ended.value.code == 0  # argparse's help exit, not the plugin's 7
    assert "warning: plugin 'exits'" in capsys.readouterr().err


# --- 8. outside callbacks --------------------------------------------------------------------


@pytest.mark.parametrize("returned,needle", [
    (None, "returned NoneType"), ([1, 2], "returned list"),
    ({"0.weight": "x"}, "a str as the score"),
    ({"0.weight": torch.zeros(2, dtype=torch.bool)}, "torch.bool score"),
    ({"0.weight": torch.zeros(2, dtype=torch.complex64)}, "complex64 score"),
    ("nan", "NaN or infinite"),
])
def test_score_results_are_checked(returned, needle):
    model, batches = toy_problem()

    def method(inputs):
        if returned == "nan":
            return {k: torch.full_like(v, math.nan) for k, v in inputs.values.items()}
        return returned

    swimkit.register_method("odd", method, needs_sensitivity=False, replace=True)
    try:
        with pytest.raises(swimkit.SwimkitError, match=needle):
            swimkit.select(model, None, fraction=0.1, method="odd")
    finally:
        METHODS.remove("odd")


def test_a_score_cannot_write_the_model():
    model, _ = toy_problem()
    before = copy.deepcopy(model.state_dict())

    def vandal(inputs):
        for v in inputs.values.values():
            v.zero_()
        return {k: v.abs() for k, v in inputs.normalised.items()}

    swimkit.register_method("vandal", vandal, needs_sensitivity=False)
    try:
        swimkit.select(model, None, fraction=0.1, method="vandal")
    finally:
        METHODS.remove("vandal")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_registrations_are_checked():
    with pytest.raises(swimkit.SwimkitError, match="num_classes"):
        swimkit.register_model("bad", torch.nn.Identity, dataset="mnist",
                               input_shape=(1, 28, 28), num_classes=-3)
    with pytest.raises(swimkit.SwimkitError, match="has a curvature rule already"):
        swimkit.register_rule(torch.nn.Linear, lambda ctx, s: None)
    swimkit.register_model("returns-none", lambda: None, dataset="mnist",
                           input_shape=(1, 28, 28))
    try:
        with pytest.raises(swimkit.SwimkitError, match="returned NoneType"):
            swimkit.build_model("returns-none")
    finally:
        swimkit.models.MODELS.remove("returns-none")


def test_an_engine_returning_nonsense_is_named():
    model, batches = toy_problem()
    swimkit.register_engine("nonsense", lambda *a, **k: None, help="a test's toy")
    try:
        with pytest.raises(swimkit.SwimkitError, match="engine 'nonsense' returned NoneType"):
            swimkit.sensitivity(model, batches, "nonsense")
    finally:
        ENGINES.remove("nonsense")


# --- 9. models that do not return one tensor ---------------------------------------------------


class TupleOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x), x


@pytest.mark.parametrize("engine", ["swim", "ggn", "hutchinson", "fisher"])
def test_a_model_returning_a_tuple_gets_one_message_everywhere(engine):
    _, batches = toy_problem()
    model = TupleOut()
    with pytest.raises(swimkit.SwimkitError, match="returns a tuple, not one tensor of logits"):
        swimkit.sensitivity(model, batches, engine)
    with pytest.raises(swimkit.SwimkitError, match="returns a tuple"):
        swimkit.evaluate(model, batches, swimkit.DeviceModel(), samples=2)


class DataDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc(x)
        return y * 2 if bool(y.sum() > 0) else y


def test_the_exact_engines_explain_what_they_cannot_map():
    _, batches = toy_problem()
    with pytest.raises(swimkit.SwimkitError, match="engine 'ggn' cannot run this model"):
        swimkit.sensitivity(DataDependent(), batches, "ggn")


# --- 10. machine limits -------------------------------------------------------------------------


def test_more_chips_per_pass_than_memory_holds_is_refused():
    model, batches = toy_problem()
    with pytest.raises(swimkit.SwimkitError, match="GiB"):
        swimkit.evaluate(model, batches, swimkit.DeviceModel(), samples=2,
                         chips_per_pass=10**9)


# --- 11. a fuzz test over every field of the files swimkit reads --------------------------------


DAMAGES = {"wrong type": lambda v: "x" if not isinstance(v, str) else 12345,
           "missing": None, "NaN": lambda v: math.nan, "empty": lambda v: [] if not isinstance(
               v, list) else {}, "out of range": lambda v: -1e9}


def _paths(obj, prefix=()):
    """Every field path of a JSON-like object (lists: their first item)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list) and obj and isinstance(obj[0], (dict, list)):
        yield from _paths(obj[0], (*prefix, 0))


def _damaged(obj, path, damage):
    out = copy.deepcopy(obj)
    node = out
    for key in path[:-1]:
        node = node[key]
    if damage == "missing":
        if isinstance(node, dict):
            del node[path[-1]]
        else:
            node.pop(path[-1])
    else:
        node[path[-1]] = DAMAGES[damage](node[path[-1]])
    return out


@pytest.fixture(scope="module")
def made_files(tmp_path_factory):
    """A real sweep result, a real plan and the points cache of a toy sweep."""
    from formats import make_learnable_mnist

    import swimkit.data as data_mod

    folder = tmp_path_factory.mktemp("fuzz")
    make_learnable_mnist(folder / "data", n_train=600, n_test=100)
    out = folder / "o"
    saved = data_mod.locate.SYSTEM_DATA_DIRS
    data_mod.locate.SYSTEM_DATA_DIRS = (folder / "system",)
    try:
        code = main(fuzz_sweep(folder, out))
    finally:
        data_mod.locate.SYSTEM_DATA_DIRS = saved
    assert code == 0
    return folder, out


def fuzz_sweep(folder: Path, out: Path) -> list[str]:
    return ["sweep", "--model", "lenet", "--dataset", "fashion-mnist", "--data-dir",
            str(folder / "data"), "--epochs", "1", "--samples", "3", "--out", str(out),
            "--no-progress", "--methods", "magnitude", "--fractions", "0.1", "--sigma", "0.5"]


def test_every_field_of_a_sweep_result_is_checked(made_files, capsys):
    folder, out = made_files
    original = json.loads((out / "sweep.json").read_text())
    tried = 0
    for path in _paths({k: v for k, v in original.items() if k in ("models", "within_points")}):
        for damage in DAMAGES:
            target = folder / "damaged.json"
            target.write_text(json.dumps(_damaged(original, path, damage)))
            code, _, err = run_cli(["report", target], capsys)
            assert code in (0, 2), (path, damage)
            if code == 2:
                assert err.startswith("swimkit: error:") and err.count("\n") == 1, err
            tried += 1
    assert tried > 200
    print(f"sweep result: {tried} damaged files")


def test_every_field_of_a_plan_is_checked(made_files, capsys):
    folder, out = made_files
    plan_path = next((out / "plans").glob("*.pt"))
    original = torch.load(plan_path, weights_only=True)
    checkpoint = out / "train" / "best.pt"
    tried = 0
    fields = [p for p in _paths(original) if p[0] != "levels" or len(p) == 1]
    for path in fields:
        for damage in DAMAGES:
            target = folder / "damaged.pt"
            try:
                torch.save(_damaged(original, path, damage), target)
            except Exception:  # noqa: BLE001 - a damage torch cannot even save
                continue
            code, _, err = run_cli(["evaluate", "--checkpoint", checkpoint, "--plan", target,
                                    "--samples", "2", "--dataset", "fashion-mnist",
                                    "--data-dir", folder / "data", "--no-progress"], capsys)
            assert code in (0, 2), (path, damage)
            if code == 2:
                assert err.startswith("swimkit: error:") and err.count("\n") == 1, err
            tried += 1
    assert tried > 40


class Doubler(torch.nn.Module):
    def forward(self, x):
        return 2 * x


def test_rules_and_derivatives_from_outside_are_checked():
    from swimkit.sensitivity.swim.registry import remove_rule

    _, batches = toy_problem()
    model = torch.nn.Sequential(torch.nn.Linear(8, 3), Doubler())
    swimkit.register_rule(Doubler, lambda ctx, s: None)
    try:
        with pytest.raises(swimkit.SwimkitError, match="returned NoneType for graph node"):
            swimkit.sensitivity(model, batches)
    finally:
        remove_rule(Doubler)
    swimkit.register_elementwise(torch.nn.functional.softsign, lambda x: "slope")
    try:
        with pytest.raises(swimkit.SwimkitError, match="returned str, not a tensor"):
            swimkit.sensitivity(torch.nn.Sequential(torch.nn.Linear(8, 3), SoftsignF()),
                                batches)
    finally:
        remove_rule(torch.nn.functional.softsign)


class SoftsignF(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.softsign(x)


def test_a_damaged_cached_point_is_computed_again(made_files, capsys):
    """Every top-level field of a points.json entry, damaged five ways: the rerun computes
    that point again and gets the same chips."""
    folder, out = made_files
    cache = out / "points.json"
    original = json.loads(cache.read_text())
    key = next(iter(original["points_by_key"]))
    point_id = next(p for p in original["points_by_key"][key] if p.endswith("fraction-0.1"))
    entry = original["points_by_key"][key][point_id]
    expected = entry["accuracy"]["accuracies_percent"]
    tried = 0
    for field in entry:
        for damage in DAMAGES:
            damaged = copy.deepcopy(original)
            damaged["points_by_key"][key][point_id] = _damaged(entry, (field,), damage)
            cache.write_text(json.dumps(damaged))
            code, _, err = run_cli(fuzz_sweep(folder, out), capsys)
            assert code == 0, (field, damage, err)
            again = json.loads(cache.read_text())["points_by_key"][key][point_id]
            assert again["accuracy"]["accuracies_percent"] == expected, (field, damage)
            tried += 1
    cache.write_text(json.dumps(original))
    assert tried >= 40
    print(f"points.json: {tried} damaged entries")


def test_every_field_of_a_training_folder_settings_file_is_checked(made_files, capsys):
    folder, out = made_files
    settings = out / "train" / "settings.json"
    original = json.loads(settings.read_text())
    tried = 0
    for field in original:
        for damage in DAMAGES:
            settings.write_text(json.dumps(_damaged(original, (field,), damage)))
            code, _, err = run_cli(fuzz_sweep(folder, out), capsys)
            # a missing None field still means None: the folder is the same one
            assert code == 2 or (damage == "missing" and original[field] is None), (
                field, damage, err)
            if code == 2:
                assert err.startswith("swimkit: error:") and err.count("\n") == 1, err
            tried += 1
    settings.write_text(json.dumps(original))
    assert tried >= 20
