"""The ``swimkit`` command line.

``swimkit run`` does the whole flow for one method and budget; ``swimkit sweep`` for a
grid of them, with a table and a plot; ``train``, ``sensitivity``, ``select`` and
``evaluate`` are the separate steps, reading and writing files. The original SWIM
research scripts' flag names are accepted as aliases (--dev_var, --write_var,
--mask_p, --noise_epoch, --train_epoch, --train_var, --div, --method SM, --model LeNet).

Any mistake in the input ends with one line on stderr that says what is wrong and how
to fix it, and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import distributed
from .distributed import is_rank_zero
from .errors import SwimkitError, check_fraction

METHOD_ALIASES = {
    "swim": "swim", "sm": "swim", "second": "second", "magnitude": "magnitude",
    "mag": "magnitude", "random": "random", "rand": "random", "uswim": "uswim",
    "u-swim": "uswim", "variance": "variance",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"swimkit: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


# --- argument types ----------------------------------------------------------------------


def _fraction(text: str) -> float:
    try:
        return check_fraction(float(text))
    except (ValueError, SwimkitError):
        raise argparse.ArgumentTypeError(
            f"fraction must be a number between 0 and 1 (got {text!r})"
        ) from None


def _bounded(kind: type, minimum: float, expected: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that must be >= ``minimum``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < minimum or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})")
        return value

    return parse


_nonnegative = _bounded(float, 0.0, "a number >= 0")
_positive_int = _bounded(int, 1, "a whole number >= 1")
_count = _bounded(int, 0, "a whole number >= 0")


def _method(text: str) -> str:
    key = text.lower()
    if key not in METHOD_ALIASES:
        raise argparse.ArgumentTypeError(
            f"unknown method {text!r}; choose one of: "
            f"{', '.join(sorted(set(METHOD_ALIASES.values())))}"
        )
    return METHOD_ALIASES[key]


def _list_of(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]

    return parse


def _layers(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


# --- argument groups ---------------------------------------------------------------------


def _add_model(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, default=None,
                   help="lenet, convnet, resnet18, resnet18_tiny or their q-variants "
                        "(also LeNet, CIFAR, Res18, TIN, QLeNet, ...); default: the "
                        "checkpoint's model, else lenet")
    g.add_argument("--bits", type=_positive_int, default=None,
                   help="bit width of a quantized model (default 4 LeNet, 6 ConvNet, 8 ResNet)")
    g.add_argument("--checkpoint", default=None,
                   help="use this trained model (swimkit or SWIM reference saved_B_*.pt)")


def _add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help="mnist, fashion-mnist, cifar10 or tiny-imagenet (default: the model's)")
    g.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    g.add_argument("--test-batch-size", type=_positive_int, default=256,
                   help="evaluation batch size (default 256: fastest on a 2-core CPU)")
    g.add_argument("--test-limit", type=_positive_int, default=None,
                   help="use only the first N test images (quick runs)")


def _add_training(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", "--train_epoch", dest="epochs", type=_count, default=10)
    g.add_argument("--batch-size", type=_positive_int, default=128)
    g.add_argument("--sigma-train", "--train_var", dest="sigma_train", type=_nonnegative,
                   default=0.0, help="noise-injection training: sigma of a fresh draw per batch")
    g.add_argument("--train-limit", type=_positive_int, default=None,
                   help="use only the first N training images (quick runs)")


def _add_device(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    g.add_argument("--sigma", "--dev_var", dest="sigma", type=_nonnegative, default=0.3,
                   help="device variation of a plain write, in device steps (default 0.3)")
    g.add_argument("--sigma-verified", "--write_var", dest="sigma_verified",
                   type=_nonnegative, default=0.03,
                   help="residual variation of a write-verified device (default 0.03)")
    g.add_argument("--bits-per-weight", type=_positive_int, default=8)
    g.add_argument("--bits-per-device", type=_positive_int, default=1)
    g.add_argument("--variation", default=None,
                   help="value-dependent variation: band:R (U-SWIM), a CSV of level,sigma")
    g.add_argument("--verified-variation", default=None,
                   help="variation curve of verified devices (default uniform)")
    g.add_argument("--exclude", type=_layers, default=[],
                   help="layers kept digital, comma separated (e.g. conv1,fc3)")
    g.add_argument("--tolerance", type=_nonnegative, default=None,
                   help="write-verify tolerance in device steps (default: from --sigma-verified)")
    g.add_argument("--max-attempts", type=_positive_int, default=100)
    g.add_argument("--t-program", type=_nonnegative, default=100e-9,
                   help="seconds per program pulse (default 100e-9)")
    g.add_argument("--t-read", type=_nonnegative, default=50e-9,
                   help="seconds per verify read (default 50e-9)")


def _add_sensitivity(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sensitivity")
    g.add_argument("--engine", default="swim", choices=["swim", "ggn", "hutchinson", "fisher"])
    g.add_argument("--sens-batch-size", "--div", dest="sens_batch_size", type=_positive_int,
                   default=128, help="batch size of the sensitivity pass (default 128)")
    g.add_argument("--sens-limit", type=_positive_int, default=None,
                   help="use only the first N training images for the sensitivity pass")


def _add_mc(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Monte-Carlo")
    g.add_argument("--samples", "--noise_epoch", dest="samples", type=_positive_int,
                   default=100, help="Monte-Carlo instances (default 100)")
    g.add_argument("--seed", type=int, default=0)


def _add_device_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu",
                   help="where to compute: cpu (default), cuda or cuda:N")


def _add_output(p: argparse.ArgumentParser) -> None:
    _add_device_choice(p)
    p.add_argument("--out", default=None, help="output folder (default runs/MODEL-DATASET)")
    p.add_argument("--json", default=None, help="also write the result JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swimkit", description="Selective write-verify for CiM accelerators.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train, sensitivity, select and Monte-Carlo in one go")
    sweep = sub.add_parser("sweep", help="the whole flow over several methods and budgets")
    for p in (run, sweep):
        _add_model(p)
        _add_data(p)
        _add_training(p)
        _add_device(p)
        _add_sensitivity(p)
        _add_mc(p)
        _add_output(p)
    run.add_argument("--fraction", "--mask_p", dest="fraction", type=_fraction, default=None,
                     help="fraction of weights to verify (default 0.1)")
    run.add_argument("--speedup", type=_nonnegative, default=None,
                     help="instead of a fraction: verify within this programming speedup")
    run.add_argument("--time-budget", type=_nonnegative, default=None,
                     help="instead of a fraction: a programming-time budget in seconds")
    run.add_argument("--method", type=_method, default="swim",
                     help="swim, second, magnitude, random, uswim or variance (SM = swim)")
    sweep.add_argument("--fractions", type=_list_of(_fraction), default=None,
                       help="comma-separated fractions (default 0.01,0.03,0.1,0.3)")
    sweep.add_argument("--speedups", type=_list_of(_nonnegative), default=[],
                       help="comma-separated programming speedups to select for")
    sweep.add_argument("--time-budgets", type=_list_of(_nonnegative), default=[],
                       help="comma-separated programming-time budgets in seconds")
    sweep.add_argument("--methods", type=_list_of(_method), default=["swim", "magnitude",
                                                                     "random"])
    sweep.add_argument("--within", type=_nonnegative, default=None,
                       help="also find, per method, the smallest fraction within this many "
                            "accuracy points of full write-verify (bisection)")
    sweep.add_argument("--search-steps", type=_positive_int, default=10,
                       help="bisection steps of --within (default 10)")
    sweep.add_argument("--plot", default=None, help="plot file (default OUT/sweep.png)")

    train = sub.add_parser("train", help="train a model (checkpoints best.pt and last.pt)")
    _add_model(train)
    _add_data(train)
    _add_training(train)
    train.add_argument("--seed", type=int, default=0)
    _add_output(train)
    train.add_argument("--no-resume", action="store_true", help="start again from scratch")

    sens = sub.add_parser("sensitivity", help="per-weight sensitivities of a trained model")
    _add_model(sens)
    _add_data(sens)
    _add_sensitivity(sens)
    sens.add_argument("--exclude", type=_layers, default=[], help="layers kept digital")
    sens.add_argument("--seed", type=int, default=0)
    sens.add_argument("--probes", type=_positive_int, default=100,
                      help="Hutchinson probes per batch")
    sens.add_argument("--output", "-o", required=True, help="sensitivity file to write (.pt)")
    _add_device_choice(sens)
    sens.add_argument("--no-progress", action="store_true")

    sel = sub.add_parser("select", help="choose the weights to write-verify")
    _add_model(sel)
    _add_device(sel)
    sel.add_argument("--sensitivity", default=None, help="sensitivity file (.pt)")
    sel.add_argument("--fraction", "--mask_p", dest="fraction", type=_fraction, default=None)
    sel.add_argument("--speedup", type=_nonnegative, default=None)
    sel.add_argument("--time-budget", type=_nonnegative, default=None,
                     help="a programming-time budget in seconds")
    sel.add_argument("--method", type=_method, default="swim")
    sel.add_argument("--seed", type=int, default=0)
    sel.add_argument("--output", "-o", required=True, help="plan file to write (.pt)")
    sel.add_argument("--npz", default=None, help="also write the masks as NumPy .npz")

    ev = sub.add_parser("evaluate", help="Monte-Carlo accuracy under device variation")
    _add_model(ev)
    _add_data(ev)
    _add_device(ev)
    _add_mc(ev)
    ev.add_argument("--plan", default=None, help="plan file from 'swimkit select'")
    ev.add_argument("--verify", choices=["none", "all"], default=None,
                    help="without --plan: verify no weight or every weight")
    ev.add_argument("--json", default=None, help="write the result JSON here")
    _add_device_choice(ev)
    ev.add_argument("--no-progress", action="store_true")
    return parser


def _version() -> str:
    from . import __version__

    return f"swimkit {__version__}"


# --- commands ----------------------------------------------------------------------------


def _log(line: str) -> None:
    print(line, flush=True)


def _settings(args: argparse.Namespace, **extra: Any):
    from .workflows import Settings

    fields = set(Settings.__dataclass_fields__)
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["model"] = _model_name(args)
    values.update(extra)
    return Settings(**values)


def _model_name(args: argparse.Namespace) -> str:
    """--model, else the model a --checkpoint was saved for, else lenet."""
    if getattr(args, "model", None):
        return args.model
    if getattr(args, "checkpoint", None):
        return _load_model(args)[1]
    return "lenet"


def _load_model(args: argparse.Namespace):
    """(model in eval mode, its canonical name) from --checkpoint (and --model)."""
    from .checkpoints import load_checkpoint

    if not args.checkpoint:
        raise SwimkitError("--checkpoint is required: the trained model to work on")
    model, info = load_checkpoint(args.checkpoint, model_name=args.model)
    name = args.model or info.get("model_name")
    if not name:
        raise SwimkitError(f"cannot tell which model {args.checkpoint} holds; give --model")
    return model.eval(), name


def _dataset_for(args: argparse.Namespace, model_name: str):
    """The dataset of --dataset (default: the model's), checked against the model."""
    from .data import load_dataset
    from .models import model_info
    from .workflows import check_fits

    dataset = load_dataset(args.dataset or model_info(model_name).dataset, args.data_dir)
    check_fits(model_name, dataset)
    return dataset


def cmd_run(args: argparse.Namespace) -> int:
    from .reports import print_run
    from .workflows import quiet, sweep, write_result

    given = {k: v for k, v in (("fractions", args.fraction), ("speedups", args.speedup),
                               ("time_budgets", args.time_budget)) if v is not None}
    if len(given) > 1:
        raise SwimkitError("give one budget: --fraction, --speedup or --time-budget")
    budget = {"fractions": [], **{k: [v] for k, v in given.items()}} if given else {}
    settings = _settings(args, methods=[args.method], **budget)
    result = sweep(settings, log=quiet, progress=not args.no_progress)
    result["files"]["result"] = str(args.json or settings.out_dir / "result.json")
    write_result(result, result["files"]["result"])
    if is_rank_zero():
        print_run(result)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .reports import print_sweep, write_sweep_reports
    from .workflows import quiet, sweep, write_result

    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise SwimkitError(f"--plot must end in .png, .pdf or .svg (got {args.plot!r})")
    fractions = args.fractions if args.fractions is not None else (
        [] if args.speedups or args.time_budgets else [0.01, 0.03, 0.1, 0.3])
    settings = _settings(args, fractions=fractions, speedups=args.speedups,
                         time_budgets=args.time_budgets, methods=args.methods)
    result = sweep(settings, log=quiet, progress=not args.no_progress)
    result["files"]["result"] = str(args.json or settings.out_dir / "sweep.json")
    if is_rank_zero():
        result["files"].update(write_sweep_reports(result, settings.out_dir, args.plot))
        print_sweep(result)
    write_result(result, result["files"]["result"])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .models import build_model
    from .training import TrainConfig, train

    settings = _settings(args)
    dataset = _dataset_for(args, settings.model)
    if settings.train_limit:
        dataset = dataset.subset(settings.train_limit)
    if settings.checkpoint:
        model = _load_model(args)[0]
    else:
        model = build_model(settings.model, bits=settings.bits, seed=settings.seed)
    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size,
                         sigma_train=settings.sigma_train, seed=settings.seed)
    out = settings.out_dir / "train"
    result = train(model, dataset, config, model_name=settings.model, checkpoint_dir=out,
                   resume=not args.no_resume, progress=not args.no_progress, log=_log,
                   device=settings.torch_device())
    if result.best_accuracy is not None:
        _log(f"best clean accuracy {result.best_accuracy:.2f} % (epoch {result.best_epoch})")
    _log(f"written: {result.best_path} (best), {result.last_path} (last)")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .data import Batches
    from .sensitivity import sensitivity
    from .workflows import resolve_device

    model, name = _load_model(args)
    where = resolve_device(args.device)
    dataset = _dataset_for(args, name)
    split = dataset.train.head(args.sens_limit) if args.sens_limit else dataset.train
    batches = Batches(split, dataset, args.sens_batch_size, device=where)
    model.to(where)
    options = {"probes": args.probes, "seed": args.seed} if args.engine == "hutchinson" else {}
    sens = sensitivity(model, batches, args.engine, exclude=args.exclude or None,
                       progress=not args.no_progress, **options)
    sens.save(args.output)
    _log(f"{args.engine} sensitivities of {sens.numel:,} weights over {sens.samples:,} images")
    _log(f"written: {args.output}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .selection import select
    from .sensitivity import Sensitivity

    model, name = _load_model(args)
    if args.fraction is None and args.speedup is None and args.time_budget is None:
        args.fraction = 0.1
    sens = Sensitivity.load(args.sensitivity) if args.sensitivity else None
    settings = _settings(args, model=name)
    plan = select(model, sens, args.fraction, args.method, device=settings.device_model(),
                  write_verify=settings.write_verify(), speedup=args.speedup,
                  time_budget=args.time_budget, seed=args.seed,
                  exclude=settings.exclude or None)
    plan.save(args.output)
    if args.npz:
        plan.export_npz(args.npz)
    prog = plan.programming
    _log(f"{plan.method}: {plan.weights_verified:,} of {plan.weights_total:,} weights verified "
         f"({100 * plan.fraction_verified:.2f} %), modelled speedup {prog.speedup:.2f}x")
    _log(f"written: {args.output}" + (f", {args.npz}" if args.npz else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import preload
    from .montecarlo import accuracy, evaluate
    from .selection import Plan
    from .storage import atomic_write_json

    model, name = _load_model(args)
    if args.plan and args.verify:
        raise SwimkitError("give --plan or --verify, not both")
    plan = Plan.load(args.plan) if args.plan else (args.verify or "none")
    settings = _settings(args, model=name)
    dataset = _dataset_for(args, name)
    split = dataset.test.head(args.test_limit) if args.test_limit else dataset.test
    batches = preload(split, dataset, args.test_batch_size, settings.torch_device())
    model.to(settings.torch_device())
    clean = accuracy(model, batches)
    res = evaluate(model, batches, settings.device_model(), plan, samples=args.samples,
                   seed=args.seed, exclude=settings.exclude or None,
                   progress=not args.no_progress)
    result = {"clean_accuracy": clean, "result": res.to_dict(),
              "plan": args.plan or plan, "device_model": settings.device_model().describe()}
    if is_rank_zero():
        _log(f"clean accuracy {clean:.2f} %")
        _log(f"under variation: {res}")
        if args.json:
            atomic_write_json(result, args.json)
            _log(f"written: {args.json}")
    return 0


COMMANDS = {
    "run": cmd_run, "sweep": cmd_sweep, "train": cmd_train, "sensitivity": cmd_sensitivity,
    "select": cmd_select, "evaluate": cmd_evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swimkit`` command."""
    args = build_parser().parse_args(argv)
    try:
        distributed.init_from_environment()
        return COMMANDS[args.command](args)
    except SwimkitError as err:
        sys.stderr.write(f"swimkit: error: {err}\n")
        return 2
    except OSError as err:
        sys.stderr.write(f"swimkit: error: {err.strerror or err}: {err.filename or ''} "
                         "(check the path and its permissions)\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("swimkit: interrupted; run the same command again to resume\n")
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["build_parser", "main"]
