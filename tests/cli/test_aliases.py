"""Every flag of the earlier command line, and the SWIM reference's names, still work.

``earlier_flags.json`` holds every flag of swimkit 0.2's command line (written from that
release's parser by ``make_earlier_flags.py``): per command, its option strings, a value
and what it set. Each is parsed by today's command line and must set the same setting;
a setting that moved to another group is read where it lives now (:data:`MOVED`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from swimkit.cli import parse

ROWS = json.loads((Path(__file__).with_name("earlier_flags.json")).read_text())["rows"]


def _one(values: list) -> Any:
    assert len(values) == 1, values
    return values[0]


def _budgets(kind: str) -> Callable:
    return lambda s: [b.value for b in s.grid.budgets() if b.kind.value == kind]


#: Settings of 0.2 that live elsewhere now: (command or None for all, path) -> how to read
#: today's value in 0.2's form.
MOVED: dict[tuple[str | None, str], Callable] = {
    # run trains one model: the grid's one sigma, scale-aware "on" or not
    ("run", "train.sigma_train"): lambda s: _one(s.grid.sigma_trains),
    ("run", "train.scale_aware"): lambda s: s.grid.scale_aware == "on",
    (None, "sigma_trains"): lambda s: s.grid.sigma_trains,
    (None, "compare_scale_aware"): lambda s: s.grid.scale_aware == "both",
    # the methods and budgets of a point are the grid's (a run is a grid of one point)
    (None, "selection.methods"): lambda s: s.grid.methods,
    (None, "selection.fractions"): _budgets("fraction"),
    (None, "selection.speedups"): _budgets("speedup"),
    (None, "selection.time_budgets"): _budgets("time_budget"),
    (None, "selection.learn.epochs"): lambda s: s.grid.options_of("learned").get("epochs"),
    (None, "selection.learn.lr"): lambda s: s.grid.options_of("learned").get("lr"),
    # which weights are on devices is the chip's
    (None, "selection.exclude"): lambda s: list(s.chip.placement.exclude),
    (None, "selection.map_params"): lambda s: list(s.chip.placement.params),
    # what a comparison judges is the grid's
    (None, "evaluation.within"): lambda s: s.grid.within,
    (None, "evaluation.yield_target"): lambda s: s.grid.yield_target,
    (None, "evaluation.judge_time"): lambda s: s.grid.judge_time,
    (None, "evaluation.search_steps"): lambda s: s.grid.search_steps,
    (None, "evaluation.search"): lambda s: s.grid.search,
    (None, "device"): lambda s: s.torch_device,
    # select drew from the chips' seed; it has a seed of its own now
    ("select", "evaluation.seed"): lambda s: s.selection.seed,
}
#: Settings 0.2 set but the command never read (so nothing to compare): (command, path).
UNREAD = {("train", "evaluation.seed"), ("select", "train.seed"), ("evaluate", "train.seed")}
#: Flags 0.2 accepted and ignored, refused now (an option that would not act): why.
REFUSED = {("train", "--json"): "swimkit train never wrote a result JSON"}


def _leaf(described: dict, path: str) -> Any:
    node: Any = described
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return "<absent>"
        node = node[key]
    return node


def _read(command: str, path: str, settings, described: dict) -> Any:
    """The value of 0.2's setting ``path`` in today's ``settings``."""
    moved = MOVED.get((command, path)) or MOVED.get((None, path))
    return moved(settings) if moved is not None else _leaf(described, path)


@functools.cache
def _settings(argv: tuple[str, ...]) -> tuple[Any, dict]:
    """The settings of ``argv`` and their description (each command line parsed once)."""
    settings = parse(list(argv)).settings()
    return settings, json.loads(json.dumps(settings.describe(), default=str))


CASES = [pytest.param(row, flag, id=f"{row['command']} {flag}")
         for row in ROWS for flag in row["flags"]]


@pytest.mark.parametrize("row,flag", CASES)
def test_every_earlier_flag_parses_and_sets_the_same_setting(row, flag, cli):
    """Each option string of 0.2 (aliases included) is accepted by the command that had
    it and sets what it set then; a setting changes only because the flag is given."""
    command = row["command"]
    given = [flag] + ([] if row["value"] is None else [row["value"]])
    if (command, flag) in REFUSED:
        code, _, err = cli(command, *row["companions"], *given)
        assert code == 2 and err.count("\n") == 1 and flag in err, err
        return
    call = parse([command, *row["companions"], *given])
    if not row["sets"]:  # not a setting (a file to write, a switch of the command)
        assert getattr(call.args, row["dest"]) == row["parsed"]
        return
    base = _settings((command, *row["companions"]))
    now = _settings((command, *row["companions"], *given))
    compared = 0
    for path, value in row["sets"].items():
        if (command, path) in UNREAD:
            continue
        assert _read(command, path, *now) == value, (path, _read(command, path, *now), value)
        assert _read(command, path, *base) != value, (path, "set without the flag")
        compared += 1
    assert compared, "every flag that set something still sets something"


def test_the_table_covers_every_command_and_reference_alias():
    """The table is the whole earlier command line: every command, and the SWIM
    reference's flag names on the commands that took them."""
    commands = {row["command"] for row in ROWS}
    assert commands == {"run", "sweep", "train", "sensitivity", "select", "evaluate", "report"}
    strings = {(row["command"], s) for row in ROWS for s in row["flags"]}
    for alias in ("--dev_var", "--write_var", "--noise_epoch", "--train_epoch", "--train_var"):
        assert ("run", alias) in strings and ("sweep", alias) in strings
    assert ("run", "--mask_p") in strings and ("run", "--div") in strings
    assert len(ROWS) > 250


@pytest.mark.parametrize("command", ["run", "select"])
@pytest.mark.parametrize("name,method", [("SM", "swim"), ("sm", "swim"), ("mag", "magnitude")])
def test_reference_method_names_are_aliases(command, name, method):
    """--method SM (the reference's) names swim, as every alias names its method."""
    need = ["-o", "plan.pt"] if command == "select" else []
    assert parse([command, *need, "--method", name]).settings().grid.methods == [method]


@pytest.mark.parametrize("name,model", [("LeNet", "lenet"), ("QLeNet", "qlenet"),
                                        ("lenet", "lenet")])
def test_reference_model_names_are_aliases(name, model):
    """--model LeNet / QLeNet (the reference's spelling) name swimkit's models."""
    for command in ("run", "sweep", "train"):
        assert parse([command, "--model", name]).settings().model.name == model


def test_reference_flag_names_are_aliases(fmnist, tmp_path, cli):
    """A run given the reference's names is the run given swimkit's: the same settings,
    the same chips."""
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
        code, _, err = cli(*args, *common, "--out", tmp_path / "same", "--json", path)
        assert code == 0, err
        results.append(json.loads(path.read_text()))
    assert results[0]["settings"] == results[1]["settings"]
    assert results[0]["selected"]["accuracy"] == results[1]["selected"]["accuracy"]
