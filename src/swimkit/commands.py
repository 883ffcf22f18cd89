"""What each command of the command line does and takes: the settings groups (and so the
flags) it reads, its own arguments (files it reads and writes), its defaults, and the one
step it runs, its result printed or written. :mod:`swimkit.cli` builds the parser from
:data:`COMMANDS` and runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arguments import Declared, Target, given
from .command_settings import settings_from
from .configs import resolved
from .distributed import is_rank_zero
from .errors import SwimkitError
from .groups import flag_of, nonnegative
from .selection import DEFAULT_FRACTION
from .settings import SWEEP_FRACTIONS, Settings
from .training import TrainConfig


def _log(line: str) -> None:
    print(line, flush=True)


# --- commands: the settings of the arguments, one step, its result printed or written ---


@dataclass
class Invocation:
    """One parsed command: its arguments, its flags and its settings."""

    command: Command
    args: argparse.Namespace
    declared: dict[str, Declared]
    parser: argparse.ArgumentParser

    @property
    def values(self) -> dict[Target, Any]:
        values = given(self.args, self.declared, self.command.defaults)
        if self.command.derive is not None:
            self.command.derive(self.args, values)
        return values

    def settings(self) -> Settings:
        return settings_from(self.values)

    def config(self) -> dict[str, Any]:
        """The resolved configuration (every argument), as a result file records it."""
        from . import __version__

        flags = resolved(self.args, self.parser, self.declared, self.values,
                         self.command.defaults)
        for key in _PATHS:
            if flags.get(key):
                flags[key] = str(Path(flags[key]).resolve())
        return {"command": self.command.name, "swimkit": __version__, "flags": flags}


#: Arguments naming files read, recorded as absolute paths in a result's configuration.
_PATHS = ("data-dir", "checkpoint", "plan", "sensitivity", "teacher")


def cmd_run(call: Invocation) -> int:
    from .reports import print_run
    from .workflows import quiet, sweep, write_result

    outputs = _Outputs(call, "result.json")
    result = sweep(call.settings(), log=quiet, before=outputs.check).with_files(
        result=outputs.result)
    result = result.with_config(call.config())
    write_result(result, outputs.result)
    if is_rank_zero():
        print_run(result)
    return 0


def cmd_sweep(call: Invocation) -> int:
    from .reports import print_sweep, write_sweep_reports
    from .workflows import quiet, sweep, write_result

    _check_plot_suffix(call.args.plot)
    outputs = _Outputs(call, "sweep.json")
    result = sweep(call.settings(), log=quiet, before=outputs.check).with_files(
        result=outputs.result).with_config(call.config())
    if is_rank_zero():
        result = result.with_files(**write_sweep_reports(result, outputs.out_dir,
                                                         call.args.plot))
        print_sweep(result)
    write_result(result, outputs.result)
    return 0


class _Outputs:
    """The files run and sweep write, checked (and named) once the settings name the
    model and so the output folder."""

    def __init__(self, call: Invocation, result_name: str) -> None:
        self.args, self.result_name = call.args, result_name
        self.out_dir = Path()

    def check(self, settings: Settings) -> None:
        check_paths(self.args, settings.out_dir)
        _check_outputs(self.args, settings=settings)
        self.out_dir = settings.out_dir

    @property
    def result(self) -> str:
        return str(self.args.json or self.out_dir / self.result_name)


def _check_outputs(args: argparse.Namespace, options: tuple[str, ...] = ("json", "plot"),
                   settings: Settings | None = None) -> None:
    """Every file the command will write can be written: checked before any work."""
    from .storage import check_writable

    if settings is not None:
        check_writable(settings.out_dir / "points.json", "--out")
    for option in options:
        if getattr(args, option, None):
            check_writable(getattr(args, option), f"--{option}")


def cmd_train(call: Invocation) -> int:
    from .steps import train_model

    result = train_model(call.settings(), call.args.plan, reprice=call.args.reprice,
                         teacher_file=call.args.teacher, log=_log)
    if result.best_accuracy is not None:
        _log(f"best clean accuracy {result.best_accuracy:.2f} % (epoch {result.best_epoch})")
    _log(f"written: {result.best_path} (best), {result.last_path} (last)")
    return 0


def cmd_sensitivity(call: Invocation) -> int:
    from .steps import sensitivity_of_checkpoint

    sens = sensitivity_of_checkpoint(call.settings(), log=_log)
    sens.meta = {**sens.meta, "config": call.config()}
    sens.save(call.args.output)
    _log(f"{sens.engine} sensitivities of {sens.numel:,} weights over {sens.samples:,} images")
    _log(f"written: {call.args.output}")
    return 0


def cmd_select(call: Invocation) -> int:
    from .steps import select_plan

    args = call.args
    if args.summary and Path(args.summary).suffix.lower() not in (".json", ".csv"):
        raise SwimkitError(f"--summary must end in .json or .csv (got {args.summary!r})")
    plan = select_plan(call.settings(), args.sensitivity, log=_log)
    plan = plan.recorded(meta={**plan.meta, "config": call.config()})
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


def cmd_evaluate(call: Invocation) -> int:
    from .plans import Verify
    from .reports import evaluation_lines
    from .steps import evaluate_plan
    from .storage import atomic_write_json

    args = call.args
    if args.plan and args.verify:
        raise SwimkitError("give --plan or --verify, not both")
    if args.reprice and not args.plan:
        raise SwimkitError("--reprice moves a --plan to this chip: give --plan, or drop it")
    evaluation = evaluate_plan(call.settings(), args.plan, Verify.of(args.verify),
                               args.reference, reprice=args.reprice, log=_log)
    if is_rank_zero():
        for line in evaluation_lines(evaluation):
            _log(line)
        if args.json:
            atomic_write_json({**evaluation.to_dict(), "config": call.config()}, args.json)
            _log(f"written: {args.json}")
    return 0


def cmd_report(call: Invocation) -> int:
    from .plots import plot_sweep
    from .reports import merged_report
    from .storage import atomic_write_text

    args = call.args
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


# --- what each command takes -----------------------------------------------------------


def _one_point(args: argparse.Namespace, values: dict[Target, Any]) -> None:
    """A run or a selection is one point: one method (default swim) at one budget
    (default a fraction of :data:`~swimkit.selection.DEFAULT_FRACTION`)."""
    budgets = [values.get(("grid", k)) for k in ("fractions", "speedups", "time_budgets")]
    if not any(budgets):
        values["grid", "fractions"] = [DEFAULT_FRACTION]
    methods = values["grid", "methods"]
    count = sum(len(b or []) for b in budgets) or 1
    if len(methods) > 1 or count > 1:
        raise SwimkitError(f"'swimkit {args.command}' makes one plan: give one method and "
                           f"one budget (got {len(methods)} method(s) and {count} "
                           "budget(s)); a sweep compares several")


def _searches(args: argparse.Namespace, values: dict[Target, Any]) -> None:
    """A sweep given --within also searches, per method, the largest speedup within it."""
    values["grid", "search"] = ("grid", "within") in values


_POINT = ("methods", "fractions", "speedups", "time_budgets", "method_options")
#: A run or a sweep takes every training flag but the models it trains (the grid's
#: --sigma-train and --scale-aware) and --no-resume (its folders always go on).
_TRAINING = tuple(f.name for f in dataclasses.fields(TrainConfig)
                  if flag_of(f) is not None and flag_of(f).names
                  and f.name not in ("sigma_train", "scale_aware", "resume", "distill",
                                     "distill_temperature"))
_FLOW = {"model": None, "data": None, "train": _TRAINING, "device_model": None,
         "crossbar": None, "placement": None, "sensitivity": None, "selection": None,
         "evaluation": None, "settings": None}
_CHIP = {"device_model": None, "crossbar": None, "placement": None}
#: A run or a selection plans with swim unless told otherwise.
_ONE_METHOD: dict[Target, Any] = {("grid", "methods"): ["swim"]}
#: ... at this fraction where no speedups or time budgets are given.
_ONE_FRACTION: dict[Target, Any] = {("grid", "fractions"): [DEFAULT_FRACTION]}


@dataclass(frozen=True)
class Command:
    """A command: what it does (``run``), the settings groups (and fields) it takes, its
    defaults where they differ from the fields', a hook completing its values
    (``derive``), the defaults its help names where that hook sets them (``shown``) and
    the arguments of its own (files it reads and writes)."""

    name: str
    help: str
    run: Callable[[Invocation], int]
    groups: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    defaults: dict[Target, Any] = field(default_factory=dict)
    derive: Callable[[argparse.Namespace, dict[Target, Any]], None] | None = None
    own: Callable[[argparse.ArgumentParser], None] | None = None
    shown: dict[Target, Any] = field(default_factory=dict)

    @property
    def help_defaults(self) -> dict[Target, Any]:
        """The defaults the help names: the command's, and those its hook sets."""
        return {**self.shown, **self.defaults}


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, help="also write the result JSON here")
    p.add_argument("--plot", default=None, help="plot file (default OUT/sweep.png)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, help="also write the result JSON here")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", default=None,
                   help="fine-tune under the device errors of this plan (from select)")
    p.add_argument("--teacher", default=None,
                   help="with --distill: the clean model to distil from (a checkpoint; "
                        "default: the --checkpoint as it was)")
    _reprice_arg(p)


def _reprice_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reprice", action="store_true",
                   help="take a --plan made for another chip (other device model, crossbar "
                        "or bits) and price it for this one; without it such a plan is "
                        "refused")


def _sensitivity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", default=None, help="sensitivity file to write (.pt)")


def _select_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensitivity", default=None, help="sensitivity file (.pt)")
    p.add_argument("--output", "-o", default=None, help="plan file to write (.pt)")
    p.add_argument("--npz", default=None,
                   help="also write the per-device levels and the menu as NumPy .npz")
    p.add_argument("--summary", default=None,
                   help="also write a per-layer summary (.json or .csv)")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", default=None, help="plan file from 'swimkit select'")
    p.add_argument("--verify", choices=["none", "all"], default=None,
                   help="without --plan: verify no device or every device")
    p.add_argument("--reference", type=nonnegative, default=None,
                   help="accuracy (percent) the yield is measured against (e.g. full verify)")
    p.add_argument("--json", default=None, help="write the result JSON here")
    _reprice_arg(p)


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="*", help="sweep.json files (e.g. one per engine)")
    p.add_argument("--plot", default=None, help="write the plot here (.png, .pdf, .svg)")
    p.add_argument("--table", default=None, help="write the markdown table here")


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("run", "train, sensitivity, select and Monte-Carlo in one go (and fine-tune under "
                   "the plan)", cmd_run,
            {**_FLOW, "grid": None, "finetune": None}, _ONE_METHOD, derive=_one_point,
            own=_run_args,
            shown=_ONE_FRACTION),
    Command("sweep", "the whole flow over models, methods and budgets", cmd_sweep,
            {**_FLOW, "grid": None}, derive=_searches, own=_sweep_args,
            shown={("grid", "fractions"): list(SWEEP_FRACTIONS)}),
    Command("train", "train a model (checkpoints best.pt and last.pt); with --plan, "
                     "fine-tune under that plan's noise", cmd_train,
            {"model": None, "data": None, "train": None, **_CHIP,
             "settings": None}, own=_train_args),
    Command("sensitivity", "per-weight sensitivities of a trained model", cmd_sensitivity,
            {"model": None, "data": None, "sensitivity": None, "placement": None,
             "settings": ("torch_device",)}, own=_sensitivity_args),
    Command("select", "choose what to write-verify, device by device", cmd_select,
            {"model": None, "data": None, **_CHIP, "selection": None, "grid": _POINT,
             "settings": ("torch_device",)}, _ONE_METHOD, derive=_one_point, own=_select_args,
            shown=_ONE_FRACTION),
    Command("evaluate", "Monte-Carlo accuracy under device variation", cmd_evaluate,
            {"model": None, "data": None, **_CHIP, "evaluation": None, "grid": ("within",),
             "settings": ("torch_device",)}, own=_evaluate_args),
    Command("report", "table and plot of one or more sweep results, merged", cmd_report,
            own=_report_args),
)}

#: Arguments a command needs, from the command line or its configuration.
REQUIRED = {"sensitivity": ("output",), "select": ("output",), "report": ("results",)}


#: Options naming files a command reads, and files it writes.
INPUT_OPTIONS = ("checkpoint", "plan", "sensitivity", "teacher", "results", "config")
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
        if path in seen_inputs and not (flag == "--config" or seen_inputs[path] == "--config"):
            raise SwimkitError(f"{path} is given twice ({seen_inputs[path]} and {flag}); "
                               "give each file once")
        seen_inputs[path] = flag
    seen: dict[Path, str] = {}
    for flag, path in outputs:
        # a result given as --config is read whole before work: its run writes it again
        rerun = seen_inputs.get(path) == "--config" and flag.startswith("--out's")
        if path in seen_inputs and not rerun:
            raise SwimkitError(f"{flag} {path} would overwrite the input {seen_inputs[path]}; "
                               "write somewhere else")
        if path in seen and not seen[path].startswith("--out's"):
            raise SwimkitError(f"{flag} and {seen[path]} are the same file ({path}); give "
                               "each output its own name")
        seen[path] = flag


def _check_plot_suffix(plot: str | None) -> None:
    if plot and Path(plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise SwimkitError(f"--plot must end in .png, .pdf or .svg (got {plot!r})")


__all__ = ["COMMANDS", "INPUT_OPTIONS", "OUTPUT_OPTIONS", "OUT_FILES", "REQUIRED", "Command",
           "Invocation", "check_paths"]
