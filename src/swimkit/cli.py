"""The ``swimkit`` command line.

``swimkit run`` does the whole flow for one method and budget; ``swimkit sweep`` for a
grid of models (``--sigma-train`` values), methods and budgets, with a table and a plot;
``train``, ``sensitivity``, ``select`` and ``evaluate`` are the separate steps, reading
and writing files. Each command is declared in :data:`COMMANDS` by the settings groups it
takes (:mod:`swimkit.commands`): its flags, their help and defaults come from the groups'
fields (:mod:`swimkit.arguments`), its configuration files from the same declarations
(:mod:`swimkit.configs`). The SWIM research scripts' flag names are accepted as aliases
(--dev_var, --write_var, --mask_p, --noise_epoch, --train_epoch, --train_var, --div,
--method SM, --model LeNet).

Any mistake in the input ends with one line on stderr that says what is wrong and how
to fix it, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from . import distributed
from .arguments import add_flags, declared_flags
from .commands import COMMANDS, OUT_FILES, REQUIRED, Invocation, check_paths
from .configs import apply_config, read_config, toml_text
from .errors import SwimkitError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        _say_once(f"swimkit: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _say_once(text: str) -> None:
    """Write to stderr on rank 0 only (under torchrun every rank meets the same error)."""
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swimkit", description="Selective write-verify for CiM accelerators.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help)
        add_flags(p, declared_flags(command.groups), command.defaults)
        if command.own is not None:
            command.own(p)
        p.add_argument("--config", default=None, metavar="FILE",
                       help="read settings from this TOML, YAML or JSON file (a result JSON "
                            "runs again; the flags given here win)")
        p.add_argument("--print-config", action="store_true",
                       help="print the resolved configuration as TOML and stop")
    return parser


def _version() -> str:
    from . import __version__

    return f"swimkit {__version__}"


def parse(argv: Sequence[str] | None = None) -> Invocation:
    """The command of ``argv``, with its configuration file read."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    sub = _subparser(parser, command.name)
    if args.config:
        apply_config(args, sub, read_config(args.config, command.name), args.config)
    for name in REQUIRED.get(command.name, ()):
        if not getattr(args, name):
            flag = name if name == "results" else f"--{name}"
            raise SwimkitError(f"swimkit {command.name} needs {flag} (on the command line "
                               "or in --config)")
    return Invocation(command, args, declared_flags(command.groups), sub)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:  # noqa: SLF001 - the subcommands' parsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices[name]
    raise KeyError(name)


def _warn_once(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on rank 0 (not the source line Python shows by default)."""
    _say_once(f"swimkit: warning: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swimkit`` command."""
    shown = warnings.showwarning
    warnings.showwarning = _warn_once
    try:
        call = parse(argv)
        if call.args.print_config:
            call.settings()  # the configuration is checked before it is printed
            print(toml_text(call.config()["flags"],
                            f"swimkit {call.command.name}: the resolved configuration"), end="")
            return 0
        if call.command.name not in OUT_FILES:  # run and sweep check once --out is known
            check_paths(call.args)
        distributed.init_from_environment()
        return call.command.run(call)
    except SwimkitError as err:
        _say_once(f"swimkit: error: {err.command_line or err}\n")
        return 2
    except OSError as err:
        _say_once(f"swimkit: error: {err.strerror or err}: {err.filename or ''} "
                  "(check the path and its permissions)\n")
        return 2
    except KeyboardInterrupt:
        _say_once("swimkit: interrupted; run the same command again to resume\n")
        return 130
    finally:
        warnings.showwarning = shown
        distributed.shutdown()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["COMMANDS", "Invocation", "build_parser", "check_paths", "main", "parse"]
