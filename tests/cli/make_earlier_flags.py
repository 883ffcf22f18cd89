"""Write ``earlier_flags.json``: every flag of the command line of swimkit 0.2 (commit
4488411, before the command line was declared from the settings fields), per command,
with a value and what it set.

Run it with that release's source on the path (not the current one)::

    git archive 4488411 src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python tests/cli/make_earlier_flags.py

Each row: the command, the flag's option strings (its aliases), a value (None: a
switch), the companion flags that make the value acceptable (``--yield`` needs
``--within``), and what the flag set: the leaves of ``Settings.describe()`` that differ
from the companions' alone, or, for a flag that is not a setting (``--json``), its value
in the parsed arguments. ``test_aliases.py`` reads the table back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: A value of each flag (not the default), by its main option string.
VALUES = {
    "--model": "qlenet", "--bits": "3", "--checkpoint": "c.pt", "--dataset": "mnist",
    "--data-dir": "d", "--test-batch-size": "50", "--test-limit": "70", "--epochs": "3",
    "--batch-size": "64", "--sigma-train": "0.1", "--noise-time": "100",
    "--clip-sigma": "2.5", "--clip-per": "channel", "--train-limit": "90",
    "--device-model": "pcm", "--device-option": "levels=pcm", "--sigma": "0.4",
    "--sigma-verified": "0.05", "--bits-per-weight": "6", "--bits-per-device": "2",
    "--variation": "band:3", "--verified-variation": "band:2", "--tolerance": "0.07",
    "--max-attempts": "50", "--t-program": "2e-07", "--t-read": "1e-07", "--tile": "64x32",
    "--ranges": "column", "--signed": "pair", "--dac-bits": "8", "--adc-bits": "6",
    "--adc-range": "8", "--output-noise": "0.01", "--engine": "ggn",
    "--sens-batch-size": "32", "--sens-limit": "200", "--probes": "7", "--probe-seed": "3",
    "--method": "magnitude", "--methods": "magnitude,random", "--fraction": "0.2",
    "--fractions": "0.2,0.4", "--speedup": "3", "--speedups": "3,5", "--time-budget": "0.5",
    "--time-budgets": "0.5,1", "--tolerances": "0.1,0.2", "--exclude": "conv1,fc3",
    "--map-params": "fc1.bias", "--plan-time": "100", "--learn-epochs": "3",
    "--learn-lr": "0.02", "--samples": "12", "--ci-target": "1", "--min-samples": "4",
    "--seed": "5", "--times": "0,10", "--chips-per-pass": "2", "--threads": "1",
    "--within": "2", "--yield": "0.9", "--judge-time": "10", "--search-steps": "3",
    "--device": "cpu:0", "--out": "o", "--json": "r.json", "--plot": "p.png",
    "--plan": "p.pt", "--verify": "all", "--reference": "90", "--sensitivity": "s.pt",
    "--output": "x.pt", "--npz": "x.npz", "--summary": "x.json", "--table": "t.md",
}
#: A sweep's --scale-aware takes a mode; run's and train's is a switch.
SWEEP_VALUES = {"--scale-aware": "both"}
#: Flags a value needs beside it (the same on the earlier and the current command line).
COMPANIONS = {
    "--noise-time": ["--sigma-train", "0.1", "--device-model", "pcm"],
    "--scale-aware": ["--sigma-train", "0.1"],
    "--clip-per": ["--clip-sigma", "2.5"],
    "--probes": ["--engine", "hutchinson"], "--probe-seed": ["--engine", "hutchinson"],
    "--min-samples": ["--ci-target", "1"],
    "--yield": ["--within", "1"], "--search-steps": ["--within", "1"],
    "--judge-time": ["--times", "0,10", "--device-model", "pcm"],
    "--times": ["--device-model", "pcm"],
    "--adc-range": ["--adc-bits", "8"],
    "--tile": ["--ranges", "tile"],
    "--verified-variation": ["--variation", "band:3"],
}
#: Companions that depend on the command (one method or several).
METHOD_COMPANIONS = {
    "--plan-time": ("allocate", ["--device-model", "pcm"]),
    "--tolerances": ("allocate", []),
    "--learn-epochs": ("learned", ["--speedup", "3"]),
    "--learn-lr": ("learned", ["--speedup", "3"]),
}
#: What a flag needs on every command (a checkpoint for the separate steps).
COMMAND_NEEDS = {"sensitivity": ["-o", "need.pt"], "select": ["-o", "need.pt"],
                 "report": ["a.json"]}
NOT_FLAGS = ("-h", "--help")


def leaves(obj, prefix=""):
    """Every leaf of a JSON-like object: dotted path -> value."""
    if isinstance(obj, dict) and obj:
        out = {}
        for key, value in obj.items():
            out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def plain(value):
    return json.loads(json.dumps(value, default=str))


def companions(command: str, main: str) -> list[str]:
    if main in METHOD_COMPANIONS:
        method, more = METHOD_COMPANIONS[main]
        if command == "sweep":
            more = [a.replace("--speedup", "--speedups") for a in more]
            return ["--methods", method, *more]
        return ["--method", method, *more]
    return list(COMPANIONS.get(main, []))


def main() -> None:
    from swimkit.cli import build_parser
    from swimkit.command_settings import settings_of

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rows = []
    for command, sub in subparsers.choices.items():
        for action in sub._actions:
            strings = [s for s in action.option_strings if s not in NOT_FLAGS]
            if not strings:
                continue
            main_flag = max(strings, key=len) if strings[0] == "-o" else strings[0]
            switch = action.nargs == 0
            value = None if switch else (SWEEP_VALUES.get(main_flag) if command == "sweep"
                                         else None) or VALUES[main_flag]
            extra = companions(command, main_flag) + COMMAND_NEEDS.get(command, [])
            base_args = parser.parse_args([command, *extra])
            given = [main_flag] + ([] if switch else [value])
            args = parser.parse_args([command, *extra, *given])
            changed = {}
            if command != "report":  # report reads result files, it makes no settings
                before = leaves(plain(settings_of(base_args).describe()))
                after = leaves(plain(settings_of(args).describe()))
                changed = {k: v for k, v in after.items() if before.get(k, "<none>") != v}
            rows.append({"command": command, "flags": strings, "value": value,
                         "companions": extra, "sets": changed,
                         "dest": action.dest, "parsed": plain(getattr(args, action.dest))})
    out = Path(__file__).with_name("earlier_flags.json")
    about = ("the flags of swimkit 0.2's command line (commit 4488411) and what each set; "
             "written by make_earlier_flags.py")
    lines = ",\n".join(json.dumps(row) for row in rows)  # one row a line
    out.write_text(f'{{"about": {json.dumps(about)},\n"rows": [\n{lines}\n]}}\n')
    print(f"{len(rows)} rows written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
