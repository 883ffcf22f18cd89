"""The ``swimkit`` command line.

``swimkit run`` does the whole flow for one method and budget; ``swimkit sweep`` for a
grid of models (``--sigma-train`` values), methods and budgets, with a table and a plot;
``train``, ``sensitivity``, ``select`` and ``evaluate`` are the separate steps, reading
and writing files. Choices, aliases and help text of methods, engines, models and
datasets come from their registries; defaults from the settings classes. The SWIM
research scripts' flag names are accepted as aliases (--dev_var, --write_var, --mask_p,
--noise_epoch, --train_epoch, --train_var, --div, --method SM, --model LeNet).

Any mistake in the input ends with one line on stderr that says what is wrong and how
to fix it, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import distributed
from .arguments import (
    add_data,
    add_device_model,
    add_mapping,
    add_model,
    add_monte_carlo,
    add_output,
    add_selection,
    add_sensitivity,
    add_training,
    nonnegative,
)
from .command_settings import settings_of
from .distributed import is_rank_zero
from .errors import SwimkitError
from .settings import Settings


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

    run = sub.add_parser("run", help="train, sensitivity, select and Monte-Carlo in one go")
    sweep = sub.add_parser("sweep", help="the whole flow over models, methods and budgets")
    for p, several in ((run, False), (sweep, True)):
        add_model(p)
        add_data(p)
        add_training(p, several)
        add_device_model(p)
        add_sensitivity(p)
        add_selection(p, several)
        add_monte_carlo(p, search=several)
        add_output(p)
    sweep.add_argument("--plot", default=None, help="plot file (default OUT/sweep.png)")

    train = sub.add_parser("train", help="train a model (checkpoints best.pt and last.pt); "
                                         "with --plan, fine-tune under that plan's noise")
    add_model(train)
    add_data(train)
    add_training(train)
    add_device_model(train)
    train.add_argument("--plan", default=None,
                       help="fine-tune under the device errors of this plan (from select)")
    train.add_argument("--seed", type=int, default=None)
    add_output(train)
    train.add_argument("--no-resume", action="store_true", help="start again from scratch")

    sens = sub.add_parser("sensitivity", help="per-weight sensitivities of a trained model")
    add_model(sens)
    add_data(sens)
    add_sensitivity(sens)
    add_mapping(sens)
    sens.add_argument("--output", "-o", required=True, help="sensitivity file to write (.pt)")
    add_output(sens, out=False, json_help=None)

    sel = sub.add_parser("select", help="choose what to write-verify, device by device")
    add_model(sel)
    add_data(sel)
    add_device_model(sel)
    add_selection(sel, several=False)
    sel.add_argument("--sensitivity", default=None, help="sensitivity file (.pt)")
    sel.add_argument("--seed", type=int, default=None)
    sel.add_argument("--output", "-o", required=True, help="plan file to write (.pt)")
    sel.add_argument("--npz", default=None,
                     help="also write the per-device levels and the menu as NumPy .npz")
    sel.add_argument("--summary", default=None,
                     help="also write a per-layer summary (.json or .csv)")
    add_output(sel, out=False, json_help=None)

    ev = sub.add_parser("evaluate", help="Monte-Carlo accuracy under device variation")
    add_model(ev)
    add_data(ev)
    add_device_model(ev)
    add_monte_carlo(ev, search=False)
    add_mapping(ev)
    ev.add_argument("--plan", default=None, help="plan file from 'swimkit select'")
    ev.add_argument("--verify", choices=["none", "all"], default=None,
                    help="without --plan: verify no device or every device")
    ev.add_argument("--reference", type=nonnegative, default=None,
                    help="accuracy (percent) the yield is measured against (e.g. full verify)")
    add_output(ev, out=False, json_help="write the result JSON here")

    rep = sub.add_parser("report", help="table and plot of one or more sweep results, merged")
    rep.add_argument("results", nargs="+", help="sweep.json files (e.g. one per engine)")
    rep.add_argument("--plot", default=None, help="write the plot here (.png, .pdf, .svg)")
    rep.add_argument("--table", default=None, help="write the markdown table here")
    return parser


def _version() -> str:
    from . import __version__

    return f"swimkit {__version__}"


# --- commands: the settings of the arguments, one step, its result printed or written ---


def _log(line: str) -> None:
    print(line, flush=True)


class _Outputs:
    """The files run and sweep write, checked (and named) once the settings name the
    model and so the output folder."""

    def __init__(self, args: argparse.Namespace, result_name: str) -> None:
        self.args, self.result_name = args, result_name
        self.out_dir = Path()

    def check(self, settings: Settings) -> None:
        check_paths(self.args, settings.out_dir)
        _check_outputs(self.args, settings=settings)
        self.out_dir = settings.out_dir

    @property
    def result(self) -> str:
        return str(self.args.json or self.out_dir / self.result_name)


def cmd_run(args: argparse.Namespace) -> int:
    from .reports import print_run
    from .workflows import quiet, sweep, write_result

    outputs = _Outputs(args, "result.json")
    result = sweep(settings_of(args), log=quiet, progress=not args.no_progress,
                   before=outputs.check).with_files(result=outputs.result)
    write_result(result, outputs.result)
    if is_rank_zero():
        print_run(result)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .reports import print_sweep, write_sweep_reports
    from .workflows import quiet, sweep, write_result

    _check_plot_suffix(args.plot)
    outputs = _Outputs(args, "sweep.json")
    result = sweep(settings_of(args), log=quiet, progress=not args.no_progress,
                   before=outputs.check).with_files(result=outputs.result)
    if is_rank_zero():
        result = result.with_files(**write_sweep_reports(result, outputs.out_dir, args.plot))
        print_sweep(result)
    write_result(result, outputs.result)
    return 0


def _check_outputs(args: argparse.Namespace, options: tuple[str, ...] = ("json", "plot"),
                   settings: Settings | None = None) -> None:
    """Every file the command will write can be written: checked before any work."""
    from .storage import check_writable

    if settings is not None:
        check_writable(settings.out_dir / "points.json", "--out")
    for option in options:
        if getattr(args, option, None):
            check_writable(getattr(args, option), f"--{option}")


def cmd_train(args: argparse.Namespace) -> int:
    from .steps import train_model

    result = train_model(settings_of(args), args.plan, resume=not args.no_resume, log=_log,
                         progress=not args.no_progress)
    if result.best_accuracy is not None:
        _log(f"best clean accuracy {result.best_accuracy:.2f} % (epoch {result.best_epoch})")
    _log(f"written: {result.best_path} (best), {result.last_path} (last)")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .steps import sensitivity_of_checkpoint

    sens = sensitivity_of_checkpoint(settings_of(args), log=_log,
                                     progress=not args.no_progress)
    sens.save(args.output)
    _log(f"{sens.engine} sensitivities of {sens.numel:,} weights over {sens.samples:,} images")
    _log(f"written: {args.output}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .steps import select_plan

    if args.summary and Path(args.summary).suffix.lower() not in (".json", ".csv"):
        raise SwimkitError(f"--summary must end in .json or .csv (got {args.summary!r})")
    plan = select_plan(settings_of(args), args.sensitivity, log=_log,
                       progress=not args.no_progress)
    plan.save(args.output)
    written = [args.output]
    if args.npz:
        written.append(str(plan.export_npz(args.npz)))
    if args.summary:
        written.append(str(plan.export_summary(args.summary)))
    prog = plan.programming
    _log(f"{plan.method}: {plan.devices_verified:,} of {plan.devices_total:,} devices verified "
         f"({100 * plan.devices_fraction_verified:.2f} %), {plan.weights_verified:,} weights "
         f"touched" + (f", modelled speedup {prog.speedup:.2f}x" if prog else ""))
    _log(f"written: {', '.join(written)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .plans import Verify
    from .reports import evaluation_lines
    from .steps import evaluate_plan
    from .storage import atomic_write_json

    if args.plan and args.verify:
        raise SwimkitError("give --plan or --verify, not both")
    evaluation = evaluate_plan(settings_of(args), args.plan, Verify.of(args.verify),
                               args.reference, log=_log, progress=not args.no_progress)
    if is_rank_zero():
        for line in evaluation_lines(evaluation):
            _log(line)
        if args.json:
            atomic_write_json(evaluation.to_dict(), args.json)
            _log(f"written: {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .plots import plot_sweep
    from .reports import merged_report
    from .storage import atomic_write_text

    _check_plot_suffix(args.plot)
    check_paths(args)
    _check_outputs(args, ("plot", "table"))
    report = merged_report(args.results)
    print(report.text, end="")
    if args.table:
        _log(f"written: {atomic_write_text(report.text, args.table)}")
    if args.plot:
        written = plot_sweep(report.result, args.plot)
        _log(f"written: {written}" if written else "no plot: install matplotlib")
    return 0


#: Options naming files a command reads, and files it writes.
INPUT_OPTIONS = ("checkpoint", "plan", "sensitivity", "results")
OUTPUT_OPTIONS = ("json", "plot", "table", "output", "npz", "summary")
#: Files run and sweep write into --out besides the options'.
OUT_FILES = {"run": ("result.json", "points.json"),
             "sweep": ("sweep.json", "sweep.md", "sweep.csv", "sweep.png", "sweep-time.png",
                       "points.json")}


def check_paths(args: argparse.Namespace, out_dir: Path | None = None) -> None:
    """Refuse, before any work, an output that is an input or another output."""
    def named(options: tuple[str, ...]) -> list[tuple[str, Path]]:
        found = []
        for option in options:
            value = getattr(args, option, None)
            for item in value if isinstance(value, list) else [value]:
                if item:
                    found.append((f"--{option}" if option != "results" else "a result file",
                                  Path(item).resolve()))
        return found

    inputs, outputs = named(INPUT_OPTIONS), named(OUTPUT_OPTIONS)
    if out_dir is not None:
        outputs += [(f"--out's {name}", (out_dir / name).resolve())
                    for name in OUT_FILES.get(args.command, ())]
    seen_inputs: dict[Path, str] = {}
    for flag, path in inputs:
        if path in seen_inputs:
            raise SwimkitError(f"{path} is given twice ({seen_inputs[path]} and {flag}); "
                               "give each file once")
        seen_inputs[path] = flag
    seen: dict[Path, str] = {}
    for flag, path in outputs:
        if path in seen_inputs:
            raise SwimkitError(f"{flag} {path} would overwrite the input {seen_inputs[path]}; "
                               "write somewhere else")
        if path in seen and not seen[path].startswith("--out's"):
            raise SwimkitError(f"{flag} and {seen[path]} are the same file ({path}); give "
                               "each output its own name")
        seen[path] = flag


def _check_plot_suffix(plot: str | None) -> None:
    if plot and Path(plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise SwimkitError(f"--plot must end in .png, .pdf or .svg (got {plot!r})")


COMMANDS = {
    "run": cmd_run, "sweep": cmd_sweep, "train": cmd_train, "sensitivity": cmd_sensitivity,
    "select": cmd_select, "evaluate": cmd_evaluate, "report": cmd_report,
}


def _warn_once(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on rank 0 (not the source line Python shows by default)."""
    _say_once(f"swimkit: warning: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swimkit`` command."""
    shown = warnings.showwarning
    warnings.showwarning = _warn_once
    try:
        args = build_parser().parse_args(argv)
        if args.command not in OUT_FILES:  # run and sweep check once --out is known
            check_paths(args)
        distributed.init_from_environment()
        return COMMANDS[args.command](args)
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


__all__ = ["build_parser", "main"]
