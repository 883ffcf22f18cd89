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
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import distributed
from .data import DATASETS
from .devices import DeviceModel
from .distributed import is_rank_zero
from .errors import SwimkitError, check_fraction
from .models import MODELS
from .programming import WriteVerify
from .selection import METHODS
from .selection.learned import LearnOptions
from .sensitivity import ENGINES
from .settings import (
    DataSettings,
    EvaluationSettings,
    ModelSettings,
    SelectionSettings,
    SensitivitySettings,
    Settings,
    default,
)
from .training import TrainConfig


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


def _registered(registry, what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            return registry.canonical(text)
        except SwimkitError:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {text!r}; choose one of: {', '.join(registry.names())}"
            ) from None

    return parse


_method = _registered(METHODS, "method")
_engine = _registered(ENGINES, "engine")


def _list_of(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]

    return parse


def _layers(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _names(registry) -> str:
    return ", ".join(registry.names())


# --- argument groups ---------------------------------------------------------------------


def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help=f"{_names(MODELS)} (aliases such as LeNet, QLeNet, Res18); default: "
                        "the checkpoint's model, else lenet")
    g.add_argument("--bits", type=_positive_int, default=None,
                   help="bit width of a quantized model (default 4 LeNet, 6 ConvNet, 8 ResNet)")
    g.add_argument("--checkpoint", default=None,
                   help="use this trained model (swimkit or SWIM reference saved_B_*.pt)")


def _add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", type=_registered(DATASETS, "dataset"), default=None,
                   help=f"{_names(DATASETS)} (default: the model's)")
    g.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    g.add_argument("--test-batch-size", type=_positive_int, default=None,
                   help=f"evaluation batch size (default {default(DataSettings, 'test_batch_size')}"
                        ": fastest on a 2-core CPU)")
    g.add_argument("--test-limit", type=_positive_int, default=None,
                   help="use only the first N test images (quick runs)")


def _add_training(p: argparse.ArgumentParser, several: bool = False) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", "--train_epoch", dest="epochs", type=_count, default=None,
                   help=f"(default {default(TrainConfig, 'epochs')})")
    g.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"(default {default(TrainConfig, 'batch_size')})")
    if several:
        g.add_argument("--sigma-train", "--train_var", dest="sigma_trains",
                       type=_list_of(_nonnegative), default=None,
                       help="noise-injection training: comma-separated sigmas, one model each, "
                            "all in one comparison (default 0)")
    else:
        g.add_argument("--sigma-train", "--train_var", dest="sigma_train", type=_nonnegative,
                       default=None, help="noise-injection training: sigma of a fresh draw per "
                                          "mini-batch (default 0: none)")
    g.add_argument("--train-limit", type=_positive_int, default=None,
                   help="use only the first N training images (quick runs)")


def _add_device_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device model")
    g.add_argument("--sigma", "--dev_var", dest="sigma", type=_nonnegative, default=None,
                   help="device variation of a plain write, in device steps "
                        f"(default {default(DeviceModel, 'sigma')})")
    g.add_argument("--sigma-verified", "--write_var", dest="sigma_verified",
                   type=_nonnegative, default=None,
                   help="residual variation of a device verified by the default loop "
                        f"(default {default(DeviceModel, 'sigma_verified')})")
    g.add_argument("--bits-per-weight", type=_positive_int, default=None,
                   help=f"(default {default(DeviceModel, 'bits_per_weight')})")
    g.add_argument("--bits-per-device", type=_positive_int, default=None,
                   help=f"(default {default(DeviceModel, 'bits_per_device')})")
    g.add_argument("--variation", default=None,
                   help="value-dependent variation: band:R (U-SWIM), a CSV of level,sigma")
    g.add_argument("--verified-variation", default=None,
                   help="variation curve of verified devices (default uniform)")
    g.add_argument("--tolerance", type=_nonnegative, default=None,
                   help="tolerance of the default loop in device steps (default: solved from "
                        "--sigma-verified)")
    g.add_argument("--max-attempts", type=_positive_int, default=None,
                   help=f"(default {default(WriteVerify, 'max_attempts')})")
    g.add_argument("--t-program", type=_nonnegative, default=None,
                   help=f"seconds per program pulse (default {default(WriteVerify, 't_program')})")
    g.add_argument("--t-read", type=_nonnegative, default=None,
                   help=f"seconds per verify read (default {default(WriteVerify, 't_read')})")


def _add_sensitivity(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sensitivity")
    g.add_argument("--engine", type=_engine, default=None,
                   help=f"{_names(ENGINES)} (default {default(SensitivitySettings, 'engine')})")
    g.add_argument("--sens-batch-size", "--div", dest="sens_batch_size", type=_positive_int,
                   default=None, help="batch size of the sensitivity pass (default "
                                      f"{default(SensitivitySettings, 'batch_size')})")
    g.add_argument("--sens-limit", type=_positive_int, default=None,
                   help="use only the first N training images for the sensitivity pass")
    g.add_argument("--probes", type=_positive_int, default=None,
                   help="hutchinson: Rademacher probes per batch (default 100)")
    g.add_argument("--probe-seed", type=int, default=None, help="hutchinson: probe seed")


def _add_selection(p: argparse.ArgumentParser, several: bool) -> None:
    g = p.add_argument_group("selection")
    helps = "; ".join(f"{m.name}: {m.help}" for m in METHODS)
    if several:
        g.add_argument("--methods", type=_list_of(_method), default=None,
                       help=f"comma-separated methods (default swim,magnitude,random). {helps}")
        g.add_argument("--fractions", type=_list_of(_fraction), default=None,
                       help="comma-separated fractions of weights (of devices for device-level "
                            "methods); default 0.01,0.03,0.1,0.3 unless speedups are given")
        g.add_argument("--speedups", type=_list_of(_nonnegative), default=None,
                       help="comma-separated programming speedups over full verify")
        g.add_argument("--time-budgets", type=_list_of(_nonnegative), default=None,
                       help="comma-separated programming-time budgets in seconds")
    else:
        g.add_argument("--method", type=_method, default="swim",
                       help=f"one method (default swim; SM = swim). {helps}")
        g.add_argument("--fraction", "--mask_p", dest="fraction", type=_fraction, default=None,
                       help="fraction of weights to verify (of devices for device-level "
                            "methods); default 0.1")
        g.add_argument("--speedup", type=_nonnegative, default=None,
                       help="instead of a fraction: a programming speedup over full verify")
        g.add_argument("--time-budget", type=_nonnegative, default=None,
                       help="instead of a fraction: a programming-time budget in seconds")
    g.add_argument("--tolerances", type=_list_of(_nonnegative), default=None,
                   help="menu of tolerances (device steps) for allocate / learned (default: "
                        "1.5, 1, 2/3, 1/2, 1/3 sigma and the default loop's)")
    g.add_argument("--exclude", type=_layers, default=None,
                   help="layers kept digital, comma separated (e.g. conv1,fc3)")
    g.add_argument("--learn-epochs", type=_positive_int, default=None,
                   help=f"learned: epochs of learning (default {default(LearnOptions, 'epochs')})")
    g.add_argument("--learn-lr", type=_nonnegative, default=None,
                   help=f"learned: learning rate (default {default(LearnOptions, 'lr')})")


def _add_mc(p: argparse.ArgumentParser, search: bool) -> None:
    g = p.add_argument_group("Monte-Carlo")
    g.add_argument("--samples", "--noise_epoch", dest="samples", type=_positive_int,
                   default=None, help="Monte-Carlo chips (default "
                                      f"{default(EvaluationSettings, 'samples')})")
    g.add_argument("--seed", type=int, default=None, help="seed of training and chips (default 0)")
    g.add_argument("--within", type=_nonnegative, default=None,
                   help="a chip is good within this many points of the best full verify "
                        f"(default {default(EvaluationSettings, 'within')})"
                        + ("; also finds per method the largest speedup whose mean is "
                           "within it" if search else ""))
    if search:
        g.add_argument("--yield", dest="yield_target", type=_fraction, default=None,
                       help="with --within: the largest speedup at which this share of chips "
                            "is within it (e.g. 0.9)")
        g.add_argument("--search-steps", type=_positive_int, default=None,
                       help="bisection steps of the speedup search "
                            f"(default {default(EvaluationSettings, 'search_steps')})")


def _add_output(p: argparse.ArgumentParser, *, out: bool = True,
                json_help: str | None = "also write the result JSON here") -> None:
    p.add_argument("--device", default="cpu", help="where to compute: cpu (default), cuda, cuda:N")
    if out:
        p.add_argument("--out", default=None, help="output folder (default runs/MODEL-DATASET)")
    if json_help:
        p.add_argument("--json", default=None, help=json_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swimkit", description="Selective write-verify for CiM accelerators.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train, sensitivity, select and Monte-Carlo in one go")
    sweep = sub.add_parser("sweep", help="the whole flow over models, methods and budgets")
    for p, several in ((run, False), (sweep, True)):
        _add_model(p)
        _add_data(p)
        _add_training(p, several)
        _add_device_model(p)
        _add_sensitivity(p)
        _add_selection(p, several)
        _add_mc(p, search=several)
        _add_output(p)
    sweep.add_argument("--plot", default=None, help="plot file (default OUT/sweep.png)")

    train = sub.add_parser("train", help="train a model (checkpoints best.pt and last.pt); "
                                         "with --plan, fine-tune under that plan's noise")
    _add_model(train)
    _add_data(train)
    _add_training(train)
    _add_device_model(train)
    train.add_argument("--plan", default=None,
                       help="fine-tune under the device errors of this plan (from select)")
    train.add_argument("--seed", type=int, default=None)
    _add_output(train)
    train.add_argument("--no-resume", action="store_true", help="start again from scratch")

    sens = sub.add_parser("sensitivity", help="per-weight sensitivities of a trained model")
    _add_model(sens)
    _add_data(sens)
    _add_sensitivity(sens)
    sens.add_argument("--exclude", type=_layers, default=None, help="layers kept digital")
    sens.add_argument("--output", "-o", required=True, help="sensitivity file to write (.pt)")
    _add_output(sens, out=False, json_help=None)

    sel = sub.add_parser("select", help="choose what to write-verify, device by device")
    _add_model(sel)
    _add_data(sel)
    _add_device_model(sel)
    _add_selection(sel, several=False)
    sel.add_argument("--sensitivity", default=None, help="sensitivity file (.pt)")
    sel.add_argument("--seed", type=int, default=None)
    sel.add_argument("--output", "-o", required=True, help="plan file to write (.pt)")
    sel.add_argument("--npz", default=None,
                     help="also write the per-device levels and the menu as NumPy .npz")
    sel.add_argument("--summary", default=None,
                     help="also write a per-layer summary (.json or .csv)")
    _add_output(sel, out=False, json_help=None)

    ev = sub.add_parser("evaluate", help="Monte-Carlo accuracy under device variation")
    _add_model(ev)
    _add_data(ev)
    _add_device_model(ev)
    _add_mc(ev, search=False)
    ev.add_argument("--exclude", type=_layers, default=None, help="layers kept digital")
    ev.add_argument("--plan", default=None, help="plan file from 'swimkit select'")
    ev.add_argument("--verify", choices=["none", "all"], default=None,
                    help="without --plan: verify no device or every device")
    ev.add_argument("--reference", type=_nonnegative, default=None,
                    help="accuracy (percent) the yield is measured against (e.g. full verify)")
    _add_output(ev, out=False, json_help="write the result JSON here")
    return parser


def _version() -> str:
    from . import __version__

    return f"swimkit {__version__}"


# --- settings from arguments --------------------------------------------------------------------


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """Settings fields (values of ``names``) of the arguments (keys) the user gave."""
    return {field: getattr(args, arg) for arg, field in names.items()
            if getattr(args, arg, None) is not None}


def device_model_of(args: argparse.Namespace) -> DeviceModel:
    loop = WriteVerify(**_given(args, {"tolerance": "tolerance", "max_attempts": "max_attempts",
                                       "t_program": "t_program", "t_read": "t_read"}))
    return DeviceModel(write_verify=loop, **_given(args, {
        "sigma": "sigma", "sigma_verified": "sigma_verified",
        "bits_per_weight": "bits_per_weight", "bits_per_device": "bits_per_device",
        "variation": "variation", "verified_variation": "verified_variation"}))


def settings_of(args: argparse.Namespace, **selection: Any) -> Settings:
    """The :class:`Settings` of parsed arguments (``selection`` overrides that group)."""
    engine = getattr(args, "engine", None) or default(SensitivitySettings, "engine")
    options = (_given(args, {"probes": "probes", "probe_seed": "seed"})
               if engine == "hutchinson" else {})
    seed = {"seed": args.seed} if getattr(args, "seed", None) is not None else {}
    return Settings(
        model=ModelSettings(name=_model_name(args), checkpoint=args.checkpoint,
                            bits=getattr(args, "bits", None)),
        data=DataSettings(**_given(args, {"dataset": "dataset", "data_dir": "data_dir",
                                          "train_limit": "train_limit",
                                          "test_limit": "test_limit",
                                          "test_batch_size": "test_batch_size"})),
        train=TrainConfig(**_given(args, {"epochs": "epochs", "batch_size": "batch_size",
                                          "sigma_train": "sigma_train"}), **seed),
        sigma_trains=getattr(args, "sigma_trains", None),
        device_model=device_model_of(args),
        sensitivity=SensitivitySettings(engine=engine, options=options, **_given(
            args, {"sens_batch_size": "batch_size", "sens_limit": "limit"})),
        selection=SelectionSettings(
            exclude=getattr(args, "exclude", None) or [],
            tolerances=getattr(args, "tolerances", None),
            learn=_given(args, {"learn_epochs": "epochs", "learn_lr": "lr"}), **selection),
        evaluation=EvaluationSettings(**_given(args, {
            "samples": "samples", "within": "within", "yield_target": "yield_target",
            "search_steps": "search_steps"}), **seed,
            search=getattr(args, "within", None) is not None and args.command == "sweep"),
        device=args.device,
        out=getattr(args, "out", None),
    )


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
    result = sweep(settings, log=quiet, progress=not args.no_progress)
    result.files["result"] = str(args.json or settings.out_dir / "result.json")
    write_result(result, result.files["result"])
    if is_rank_zero():
        print_run(result)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .reports import print_sweep, write_sweep_reports
    from .workflows import quiet, sweep, write_result

    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise SwimkitError(f"--plot must end in .png, .pdf or .svg (got {args.plot!r})")
    speedups, budgets = args.speedups or [], args.time_budgets or []
    fractions = args.fractions if args.fractions is not None else (
        [] if speedups or budgets else [0.01, 0.03, 0.1, 0.3])
    methods = args.methods or ["swim", "magnitude", "random"]
    settings = settings_of(args, methods=methods, fractions=fractions, speedups=speedups,
                           time_budgets=budgets)
    result = sweep(settings, log=quiet, progress=not args.no_progress)
    result.files["result"] = str(args.json or settings.out_dir / "sweep.json")
    if is_rank_zero():
        result.files.update(write_sweep_reports(result, settings.out_dir, args.plot))
        print_sweep(result)
    write_result(result, result.files["result"])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .models import build_model
    from .plans import Plan
    from .training import train

    settings = settings_of(args)
    dataset = _dataset_for(settings)
    if settings.data.train_limit:
        dataset = dataset.subset(settings.data.train_limit)
    if settings.model.checkpoint:
        model = _load_model(args)[0]
    else:
        model = build_model(settings.model.name, bits=settings.model.bits,
                            seed=settings.train.seed)
    plan = Plan.load(args.plan) if args.plan else None
    if plan is not None and not settings.model.checkpoint:
        raise SwimkitError("--plan fine-tunes a trained model: give its --checkpoint")
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

    model, name = _load_model(args)
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

    model, name = _load_model(args)
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
                  options=settings.selection.learn if entry.needs_data else None)
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
    from .storage import atomic_write_json
    from .workflows import Context

    model, name = _load_model(args)
    args.model = name
    if args.plan and args.verify:
        raise SwimkitError("give --plan or --verify, not both")
    plan = Plan.load(args.plan) if args.plan else (args.verify or "none")
    settings = settings_of(args)
    ctx = Context(settings, _dataset_for(settings), _log, not args.no_progress)
    model.to(settings.torch_device())
    clean = accuracy(model, ctx.test_batches)
    ev = settings.evaluation
    res = evaluate(model, ctx.test_batches, settings.device_model, plan, samples=ev.samples,
                   seed=ev.seed, exclude=settings.selection.exclude or None,
                   progress=not args.no_progress)
    if args.reference is not None:
        res.reference, res.within = args.reference, ev.within
    result = {"clean_accuracy_percent": clean, "accuracy": res.to_dict(),
              "plan": args.plan or plan, "device_model": settings.device_model.describe()}
    if is_rank_zero():
        _log(f"clean accuracy {clean:.2f} %")
        _log(f"under variation: {res}")
        if res.chip_yield is not None:
            _log(f"yield: {100 * res.chip_yield:.1f} % of chips within {ev.within:g} points of "
                 f"{args.reference:.2f} %")
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
