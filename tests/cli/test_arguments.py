"""The command line, declared once from the settings fields: each command's help, the
default every flag takes named in its help, singular flags as aliases of the plural
ones, and the option flags of registry entries (parametrized over ``COMMANDS`` and the
registries, so a command or an entry added later is covered)."""

from __future__ import annotations

import argparse
import re

import pytest

from swimkit.arguments import OPTION_FLAGS, declared_flags
from swimkit.cli import COMMANDS, build_parser, parse

#: What a command needs besides its flags (the files it must be told about).
NEEDS = {"sensitivity": ["-o", "s.pt"], "select": ["-o", "p.pt"], "report": ["a.json"]}


def subparser(command: str) -> argparse.ArgumentParser:
    actions = build_parser()._actions
    return next(a for a in actions if isinstance(a, argparse._SubParsersAction)).choices[
        command]


def shown(value) -> str:
    """A default as the help shows it."""
    if isinstance(value, list):
        return ",".join(shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_works_and_lists_every_flag(command, cli):
    """--help of every command exits 0 and lists every option string of the command."""
    code, out, err = cli(command, "--help")
    assert code == 0 and err == "" and out.startswith(f"usage: swimkit {command}")
    strings = [s for a in subparser(command)._actions for s in a.option_strings]
    assert "--config" in strings and "--print-config" in strings
    for string in strings:
        assert string in out, string


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_names_the_default_it_takes(command):
    """Where a flag not given leaves a value (what --print-config resolves), its help
    says "default" with that value; an option flag names its entry's default."""
    resolved = parse([command, *NEEDS.get(command, [])]).config()["flags"]
    helps = {a.dest: (a.help or "").replace("%%", "%") for a in subparser(command)._actions}
    declared = declared_flags(COMMANDS[command].groups)
    checked = 0
    for item in declared.values():
        if item.option is not None:
            registry = OPTION_FLAGS[item.targets[0]]
            entry = next(e for e in registry if item.flag.name in e.option_flags)
            value = entry.options[item.option]
        else:
            value = resolved[item.flag.key]
        if item.flag.switch or value in (None, [], {}):
            continue  # nothing taken: unset, chosen at run time, or off
        named = re.search(rf"default {re.escape(shown(value))}(?![\w.,])", helps[item.dest])
        assert named, (item.flag.name, value, helps[item.dest])
        checked += 1
    assert checked or not declared


def test_every_command_takes_the_groups_it_declares():
    """Each command's flags are the fields of the groups it names, and only those."""
    for name, command in COMMANDS.items():
        options = {s for a in subparser(name)._actions for s in a.option_strings}
        for item in declared_flags(command.groups).values():
            assert set(item.flag.names) <= options, (name, item.flag.names)


@pytest.mark.parametrize("command", ["run", "sweep", "select"])
@pytest.mark.parametrize("singular,plural,value", [
    ("--method", "--methods", "magnitude"), ("--fraction", "--fractions", "0.2"),
    ("--mask_p", "--fractions", "0.2"), ("--speedup", "--speedups", "3"),
    ("--time-budget", "--time-budgets", "0.5")])
def test_singular_flags_are_aliases_of_the_plural_ones(command, singular, plural, value):
    """--method is --methods, --fraction and --mask_p are --fractions, ...: the same
    grid, on every command that takes a method and a budget."""
    need = NEEDS.get(command, [])
    one = parse([command, *need, singular, value]).settings().grid
    other = parse([command, *need, plural, value]).settings().grid
    assert one == other
    assert one.budgets() == other.budgets() and one.methods == other.methods


def test_a_bad_value_names_the_main_flag_first(cli):
    """argparse's one line names the flag and its alias, the main (plural) one first."""
    code, _, err = cli("run", "--speedup", "0.5", "--no-progress")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("swimkit: error: argument --speedups/--speedup: expected a speedup")


@pytest.mark.parametrize("command", ["run", "select"])
@pytest.mark.parametrize("args", [["--methods", "swim,magnitude"], ["--fractions", "0.1,0.2"],
                                  ["--fraction", "0.1", "--speedup", "3"]])
def test_a_run_or_a_selection_makes_one_plan(command, args, cli):
    """run and select make one plan: several methods or budgets are one line, exit 2."""
    code, _, err = cli(command, *NEEDS.get(command, []), *args, "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "makes one plan" in err, err


def test_an_option_flag_is_the_entry_option_it_names():
    """--probes N is --engine-option probes=N; --learn-epochs N is --method-option
    epochs=N: the same settings, and the same option given twice is refused."""
    by_flag = parse(["run", "--engine", "hutchinson", "--probes", "7", "--probe-seed", "3"])
    by_option = parse(["run", "--engine", "hutchinson", "--engine-option", "probes=7",
                       "--engine-option", "seed=3"])
    assert by_flag.settings().sensitivity.options == {"probes": 7, "seed": 3}
    assert by_option.settings().sensitivity == by_flag.settings().sensitivity
    learned = ["run", "--method", "learned", "--speedup", "3"]
    flagged = parse([*learned, "--learn-epochs", "3", "--learn-lr", "0.02"]).settings()
    optioned = parse([*learned, "--method-option", "epochs=3",
                      "--method-option", "lr=0.02"]).settings()
    assert flagged.grid.options_of("learned") == {"epochs": 3, "lr": 0.02}
    assert flagged.point("learned") == optioned.point("learned")
    call = parse(["run", "--engine", "hutchinson", "--probes", "7", "--engine-option",
                  "probes=8"])
    with pytest.raises(Exception, match="option probes is given twice"):
        call.settings()
