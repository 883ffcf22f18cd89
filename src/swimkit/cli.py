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
import json
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
    add_model,
    add_monte_carlo,
    add_output,
    add_selection,
    add_sensitivity,
    add_training,
    layer_list,
    load_model,
    nonnegative,
    settings_of,
)
from .distributed import is_rank_zero
from .errors import SwimkitError, first_line
from .selection import METHODS
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
    sens.add_argument("--exclude", type=layer_list, default=None, help="layers kept digital")
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
    ev.add_argument("--exclude", type=layer_list, default=None, help="layers kept digital")
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


def _dataset_for(settings: Settings):
    """The dataset of the settings, checked against the model."""
    from .workflows import prepare

    return prepare(settings).dataset


# --- commands ----------------------------------------------------------------------------


def _log(line: str) -> None:
    print(line, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from .reports import print_run
    from .workflows import quiet, sweep, write_result

    given = {k: [v] for k, v in (("fractions", args.fraction), ("speedups", args.speedup),
                                 ("time_budgets", args.time_budget)) if v is not None}
    if len(given) > 1:
        raise SwimkitError("give one budget: --fraction, --speedup or --time-budget")
    settings = settings_of(args, methods=[args.method], **(given or {"fractions": [0.1]}))
    check_paths(args, settings.out_dir)
    _check_outputs(args, settings=settings)
    result = sweep(settings, log=quiet, progress=not args.no_progress)
    result.files["result"] = str(args.json or settings.out_dir / "result.json")
    write_result(result, result.files["result"])
    if is_rank_zero():
        print_run(result)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .reports import print_sweep, write_sweep_reports
    from .workflows import quiet, sweep, write_result

    _check_plot_suffix(args.plot)
    speedups, budgets = args.speedups or [], args.time_budgets or []
    fractions = args.fractions if args.fractions is not None else (
        [] if speedups or budgets else [0.01, 0.03, 0.1, 0.3])
    methods = args.methods or ["swim", "magnitude", "random"]
    settings = settings_of(args, methods=methods, fractions=fractions, speedups=speedups,
                           time_budgets=budgets)
    check_paths(args, settings.out_dir)
    _check_outputs(args, settings=settings)
    result = sweep(settings, log=quiet, progress=not args.no_progress)
    result.files["result"] = str(args.json or settings.out_dir / "sweep.json")
    if is_rank_zero():
        result.files.update(write_sweep_reports(result, settings.out_dir, args.plot))
        print_sweep(result)
    write_result(result, result.files["result"])
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
    from .models import build_model
    from .plans import Plan
    from .training import train

    settings = settings_of(args)
    dataset = _dataset_for(settings)  # cut to --train-limit / --test-limit already
    if settings.model.checkpoint:
        model = load_model(args)[0]
    else:
        model = build_model(settings.model.name, bits=settings.model.bits,
                            seed=settings.train.seed)
    plan = Plan.load(args.plan) if args.plan else None
    if plan is not None and not settings.model.checkpoint:
        raise SwimkitError("--plan fine-tunes a trained model: give its --checkpoint")
    if plan is None and not settings.train.sigma_train and (
            settings.train.scale_aware or settings.train.noise_time):
        raise SwimkitError("--scale-aware and --noise-time shape noise-injection training: "
                           "give --sigma-train > 0 (or --plan), or drop them")
    noise = settings.device_model if plan is not None or settings.train.sigma_train else None
    out = settings.out_dir / ("finetune" if plan is not None else "train")
    result = train(model, dataset, settings.train, model_name=settings.model.name,
                   checkpoint_dir=out, resume=not args.no_resume,
                   progress=not args.no_progress, log=_log, device=settings.torch_device(),
                   noise_model=noise, plan=plan)
    if result.best_accuracy is not None:
        _log(f"best clean accuracy {result.best_accuracy:.2f} % (epoch {result.best_epoch})")
    _log(f"written: {result.best_path} (best), {result.last_path} (last)")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .sensitivity import sensitivity
    from .workflows import Context

    model, name = load_model(args)
    args.model = name
    settings = settings_of(args)
    ctx = Context(settings, _dataset_for(settings), _log, not args.no_progress)
    s = settings.sensitivity
    model.to(settings.torch_device())
    sens = sensitivity(model, ctx.train_batches(s.batch_size, s.limit), s.engine,
                       exclude=settings.selection.exclude or None,
                       progress=not args.no_progress, **s.options)
    sens.save(args.output)
    _log(f"{s.engine} sensitivities of {sens.numel:,} weights over {sens.samples:,} images")
    _log(f"written: {args.output}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .selection import select
    from .sensitivity import Sensitivity
    from .workflows import Context

    if args.summary and Path(args.summary).suffix.lower() not in (".json", ".csv"):
        raise SwimkitError(f"--summary must end in .json or .csv (got {args.summary!r})")
    model, name = load_model(args)
    args.model = name
    if args.fraction is None and args.speedup is None and args.time_budget is None:
        args.fraction = 0.1
    settings = settings_of(args, methods=[args.method])
    entry = METHODS.get(args.method)
    sens = Sensitivity.load(args.sensitivity) if args.sensitivity else None
    data = None
    if entry.needs_data:
        ctx = Context(settings, _dataset_for(settings), _log, not args.no_progress)
        data = ctx.train_batches(settings.train.batch_size, settings.data.train_limit, True)
    model.to(settings.torch_device())
    plan = select(model, sens, args.fraction, args.method, speedup=args.speedup,
                  time_budget=args.time_budget, device_model=settings.device_model,
                  tolerances=settings.selection.tolerances, data=data,
                  seed=settings.evaluation.seed, exclude=settings.selection.exclude or None,
                  options=settings.selection.learn if entry.needs_data else None,
                  plan_time=settings.selection.plan_time)
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
    from .montecarlo import accuracy, evaluate
    from .plans import Plan
    from .reports import format_time
    from .storage import atomic_write_json
    from .workflows import Context

    model, name = load_model(args)
    args.model = name
    if args.plan and args.verify:
        raise SwimkitError("give --plan or --verify, not both")
    plan = Plan.load(args.plan) if args.plan else (args.verify or "none")
    settings = settings_of(args)
    ctx = Context(settings, _dataset_for(settings), _log, not args.no_progress)
    model.to(settings.torch_device())
    clean = accuracy(model, ctx.test_batches)
    ev = settings.evaluation
    found = evaluate(model, ctx.test_batches, settings.device_model, plan, samples=ev.samples,
                     seed=ev.seed, ci_target=ev.ci_target or None, min_samples=ev.min_samples,
                     chips_per_pass=ev.chips_per_pass, compile=ev.compile, threads=ev.threads,
                     exclude=settings.selection.exclude or None, progress=not args.no_progress,
                     times=ev.times)
    results = found if ev.times is not None else [found]
    for res in results:
        if args.reference is not None:
            res.reference, res.within = args.reference, ev.within
    result = {"clean_accuracy_percent": clean, "accuracy": results[0].to_dict(),
              "plan": args.plan or plan, "device_model": settings.device_model.describe()}
    if ev.times is not None:
        result["over_time"] = [{"time_s": t, **r.to_dict()}
                               for t, r in zip(ev.times, results, strict=True)]
    if is_rank_zero():
        _log(f"clean accuracy {clean:.2f} %")
        for time, res in zip(ev.times or [None], results, strict=True):
            when = "" if time is None else f" {format_time(time)} after programming"
            _log(f"under variation{when}: {res}")
            if res.chip_yield is not None:
                _log(f"yield: {100 * res.chip_yield:.1f} % of chips within {ev.within:g} "
                     f"points of {args.reference:.2f} %")
        if args.json:
            atomic_write_json(result, args.json)
            _log(f"written: {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .reports import plot_sweep, sweep_text
    from .results import SweepResult
    from .storage import atomic_write_text

    _check_plot_suffix(args.plot)
    check_paths(args)
    _check_outputs(args, ("plot", "table"))
    loaded = []
    for path in args.results:
        try:
            loaded.append(SweepResult.from_dict(json.loads(Path(path).read_text())))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SwimkitError(f"cannot read {path} ({exc}); give a sweep.json file") from None
        except SwimkitError as exc:
            raise SwimkitError(f"{path}: {exc}") from None
    try:
        result = SweepResult.merge(loaded)
        result.set_reference()
        text = sweep_text(result)
    except SwimkitError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise SwimkitError(f"a result file holds a value of the wrong kind "
                           f"({first_line(exc, with_type=True)}); give sweep.json files as "
                           "swimkit writes them") from None
    print(text, end="")
    if args.table:
        _log(f"written: {atomic_write_text(text, args.table)}")
    if args.plot:
        written = plot_sweep(result, args.plot)
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
