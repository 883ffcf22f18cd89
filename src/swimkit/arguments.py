"""Command-line arguments: types that check each value and the argument groups (the
:class:`~swimkit.settings.Settings` they make: :mod:`swimkit.command_settings`).

Choices, aliases and help text of methods, engines, models and datasets come from their
registries; defaults from the settings classes, so each is stated once.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from .clipping import CLIP_PER
from .crossbar import RANGES, SIGNED, Crossbar
from .data import DATASETS
from .devices import DEVICE_MODELS, DeviceModel
from .errors import SwimkitError, check_fraction, repeated
from .models import MODELS
from .programming import WriteVerify
from .selection import METHODS
from .selection.learned import LearnOptions
from .sensitivity import ENGINES, GRADIENT_BATCH
from .settings import (
    DEFAULT_FRACTION,
    DEFAULT_MODEL,
    SWEEP_FRACTIONS,
    SWEEP_METHODS,
    EvaluationSettings,
    SelectionSettings,
    SensitivitySettings,
    default,
)
from .training import TrainConfig

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


nonnegative = _bounded(float, 0.0, "a number >= 0")
positive_int = _bounded(int, 1, "a whole number >= 1")
positive = _bounded(float, 1e-300, "a number > 0")
_at_least_two = _bounded(int, 2, "a whole number >= 2")
_speedup = _bounded(float, 1.0, "a speedup >= 1 (1 verifies every device; e.g. 10)")
_epochs = _bounded(int, 1, "a whole number of epochs >= 1 (to use a trained model, give "
                           "--checkpoint instead)")


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
    """A comma-separated list of ``kind``, each value once (a repeat would run twice)."""

    def parse(text: str) -> list:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list (got {text!r})")
        twice = repeated(values)
        if twice:
            raise argparse.ArgumentTypeError(
                f"{', '.join(twice)} is given twice in {text!r}; give each value once")
        return values

    return parse


def layer_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _joined(values: tuple) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _names(registry) -> str:
    return ", ".join(registry.names())


# --- argument groups ---------------------------------------------------------------------


def add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help=f"{_names(MODELS)} (aliases such as LeNet, QLeNet, Res18); default: "
                        f"the checkpoint's model, else {DEFAULT_MODEL}")
    g.add_argument("--bits", type=positive_int, default=None,
                   help="bit width of a quantized model (default 4 LeNet, 6 ConvNet, 8 ResNet)")
    g.add_argument("--checkpoint", default=None,
                   help="use this trained model (swimkit or SWIM reference saved_B_*.pt)")
    g.add_argument("--trusted", action="store_true",
                   help="allow a --checkpoint that holds pickled Python objects (only for "
                        "files you trust: loading them can run code)")


def add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", type=_registered(DATASETS, "dataset"), default=None,
                   help=f"{_names(DATASETS)} (default: the model's)")
    g.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    g.add_argument("--test-batch-size", type=positive_int, default=None,
                   help="evaluation batch size (default: chosen per model and device, the "
                        "power of two whose largest activation is nearest 4 MiB on the CPU, "
                        "256 MiB on a GPU)")
    g.add_argument("--test-limit", type=positive_int, default=None,
                   help="use only the first N test images (quick runs)")


def add_training(p: argparse.ArgumentParser, several: bool = False) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", "--train_epoch", dest="epochs", type=_epochs, default=None,
                   help=f"(default {default(TrainConfig, 'epochs')})")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"(default {default(TrainConfig, 'batch_size')})")
    if several:
        g.add_argument("--sigma-train", "--train_var", dest="sigma_trains",
                       type=_list_of(nonnegative), default=None,
                       help="noise-injection training: comma-separated sigmas, one model each, "
                            "all in one comparison (default 0)")
    else:
        g.add_argument("--sigma-train", "--train_var", dest="sigma_train", type=nonnegative,
                       default=None, help="noise-injection training: sigma of a fresh draw per "
                                          "mini-batch (default 0: none)")
    if several:
        g.add_argument("--scale-aware", nargs="?", const="on", default=None,
                       choices=["on", "off", "both"],
                       help="noise injection follows each layer's range max|W| with its "
                            "gradient, as device errors do (the model learns small ranges); "
                            "'both' compares each --sigma-train with and without it")
    else:
        g.add_argument("--scale-aware", action="store_true", default=None,
                       help="noise injection follows each layer's range max|W| with its "
                            "gradient, as device errors do (the model learns small ranges)")
    g.add_argument("--noise-time", type=nonnegative, default=None, metavar="SECONDS",
                   help="noise-injection training reads the device this long after "
                        "programming (train for the drifted device; default 0)")
    g.add_argument("--clip-sigma", type=positive, default=None, metavar="K",
                   help="clamp every device weight to +-K standard deviations after each "
                        "step (e.g. 2.5; with --learn-ranges: where the learned ranges start)")
    g.add_argument("--clip-per", choices=CLIP_PER, default=None,
                   help="clip per tensor (default) or per output channel")
    g.add_argument("--learn-ranges", action="store_true", default=None,
                   help="learn a clipping range per tensor (or channel) with the model")
    g.add_argument("--train-limit", type=positive_int, default=None,
                   help="use only the first N training images (quick runs)")


def _device_model_name(text: str) -> str:
    try:
        return DEVICE_MODELS.canonical(text)
    except SwimkitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (got {text!r}); e.g. "
                                         "compensation=true")
    return key.strip(), value.strip()


def add_device_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device model")
    models = "; ".join(f"{e.name}: {e.help} (options: {e.option_help})" for e in DEVICE_MODELS)
    g.add_argument("--device-model", type=_device_model_name, default="gaussian",
                   help=f"the device model (default gaussian). {models}")
    g.add_argument("--device-option", dest="device_options", type=_key_value,
                   action="append", default=None, metavar="KEY=VALUE",
                   help="an option of the device model (repeat for several), e.g. "
                        "--device-option compensation=true")
    g.add_argument("--sigma", "--dev_var", dest="sigma", type=nonnegative, default=None,
                   help="device variation of a plain write, in device steps "
                        f"(default {default(DeviceModel, 'sigma')})")
    g.add_argument("--sigma-verified", "--write_var", dest="sigma_verified",
                   type=nonnegative, default=None,
                   help="residual variation of a device verified by the default loop "
                        f"(default {default(DeviceModel, 'sigma_verified')})")
    g.add_argument("--bits-per-weight", type=positive_int, default=None,
                   help=f"(default {default(DeviceModel, 'bits_per_weight')})")
    g.add_argument("--bits-per-device", type=positive_int, default=None,
                   help=f"(default {default(DeviceModel, 'bits_per_device')})")
    g.add_argument("--variation", default=None,
                   help="value-dependent variation: band:R (U-SWIM), a CSV of level,sigma")
    g.add_argument("--verified-variation", default=None,
                   help="variation curve of verified devices (default uniform)")
    g.add_argument("--tolerance", type=nonnegative, default=None,
                   help="tolerance of the default loop in device steps (default: solved from "
                        "--sigma-verified)")
    g.add_argument("--max-attempts", type=positive_int, default=None,
                   help=f"(default {default(WriteVerify, 'max_attempts')})")
    g.add_argument("--t-program", type=nonnegative, default=None,
                   help=f"seconds per program pulse (default {default(WriteVerify, 't_program')})")
    g.add_argument("--t-read", type=nonnegative, default=None,
                   help=f"seconds per verify read (default {default(WriteVerify, 't_read')})")
    add_crossbar(p)


def _tile(text: str) -> tuple[int, int]:
    rows, _, columns = text.lower().partition("x")
    try:
        shape = (int(rows), int(columns or rows))
    except ValueError:
        shape = (0, 0)
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLUMNS cells, e.g. 256x256 (got "
                                         f"{text!r})")
    return shape


def add_crossbar(p: argparse.ArgumentParser) -> None:
    """How weights sit on arrays and are read (:class:`~swimkit.crossbar.Crossbar`)."""
    g = p.add_argument_group("crossbar mapping")
    g.add_argument("--tile", type=_tile, default=None, metavar="ROWSxCOLUMNS",
                   help="array tiles, e.g. 256x256 (default: one array per matrix)")
    g.add_argument("--ranges", choices=RANGES, default=None,
                   help="what maps to a device's full range: max|W| per layer (default), per "
                        "tile (per matrix without --tile) or per output column of each tile")
    g.add_argument("--signed", choices=SIGNED, default=None,
                   help="signed weights: magnitude (sign exact, default), pair (a "
                        "differential pair, both devices programmed) or offset (w + s on one "
                        "device set over [0, 2s])")
    g.add_argument("--dac-bits", type=positive_int, default=None,
                   help="input DAC bits (inputs scaled by their absolute maximum; default "
                        "exact)")
    g.add_argument("--adc-bits", type=positive_int, default=None,
                   help="ADC bits of each column's partial sum (default exact)")
    g.add_argument("--adc-range", type=positive, default=None,
                   help="ADC full scale in normalised units (weights / range times inputs / "
                        f"their maximum; default {default(Crossbar, 'adc_range'):g})")
    g.add_argument("--output-noise", type=nonnegative, default=None,
                   help="Gaussian noise of each column's partial sum at every read, in "
                        "normalised units (default 0)")


def add_sensitivity(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sensitivity")
    g.add_argument("--engine", type=_engine, default=None,
                   help=f"{_names(ENGINES)} (default {default(SensitivitySettings, 'engine')})")
    g.add_argument("--sens-batch-size", "--div", dest="sens_batch_size", type=positive_int,
                   default=None, help="batch size of the sensitivity pass (default: swim "
                                      "chooses one per model, which changes none of its "
                                      "results; the exact engines take "
                                      f"{GRADIENT_BATCH})")
    g.add_argument("--sens-limit", type=positive_int, default=None,
                   help="use only the first N training images for the sensitivity pass")
    g.add_argument("--probes", type=positive_int, default=None,
                   help="hutchinson: Rademacher probes per batch (default "
                        f"{ENGINES.get('hutchinson').options['probes']})")
    g.add_argument("--probe-seed", type=int, default=None, help="hutchinson: probe seed")


def add_mapping(g: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Which weights are on devices: --exclude and --map-params."""
    g.add_argument("--exclude", type=layer_list, default=None,
                   help="layers kept digital, comma separated (e.g. conv1,fc3)")
    g.add_argument("--map-params", type=layer_list, default=None, metavar="PATTERNS",
                   help="also map these parameters to devices, comma separated shell "
                        "patterns of parameter names (e.g. 'blocks.*.qkv'); conv, linear "
                        "and attention weights are mapped without it")


def add_selection(p: argparse.ArgumentParser, several: bool) -> None:
    g = p.add_argument_group("selection")
    helps = "; ".join(f"{m.name}: {m.help}" for m in METHODS)
    if several:
        g.add_argument("--methods", type=_list_of(_method), default=None,
                       help=f"comma-separated methods (default {_joined(SWEEP_METHODS)}). "
                            f"{helps}")
        g.add_argument("--fractions", type=_list_of(_fraction), default=None,
                       help="comma-separated fractions of weights (of devices for device-level "
                            f"methods); default {_joined(SWEEP_FRACTIONS)} unless speedups or "
                            "time budgets are given")
        g.add_argument("--speedups", type=_list_of(_speedup), default=None,
                       help="comma-separated programming speedups over full verify")
        g.add_argument("--time-budgets", type=_list_of(nonnegative), default=None,
                       help="comma-separated programming-time budgets in seconds")
    else:
        first = default(SelectionSettings, "methods")[0]
        g.add_argument("--method", type=_method, default=first,
                       help=f"one method (default {first}; SM = swim). {helps}")
        g.add_argument("--fraction", "--mask_p", dest="fraction", type=_fraction, default=None,
                       help="fraction of weights to verify (of devices for device-level "
                            f"methods); default {DEFAULT_FRACTION:g}")
        g.add_argument("--speedup", type=_speedup, default=None,
                       help="instead of a fraction: a programming speedup over full verify")
        g.add_argument("--time-budget", type=nonnegative, default=None,
                       help="instead of a fraction: a programming-time budget in seconds")
    g.add_argument("--tolerances", type=_list_of(nonnegative), default=None,
                   help="menu of tolerances (device steps) for allocate / learned (default: "
                        "1.5, 1, 2/3, 1/2, 1/3 sigma and the default loop's)")
    add_mapping(g)
    g.add_argument("--plan-time", type=nonnegative, default=None, metavar="SECONDS",
                   help="plan against the device error this long after programming (for "
                        "devices that change with time, e.g. 86400; default "
                        f"{default(SelectionSettings, 'plan_time'):g}: right after)")
    g.add_argument("--learn-epochs", type=positive_int, default=None,
                   help=f"learned: epochs of learning (default {default(LearnOptions, 'epochs')})")
    g.add_argument("--learn-lr", type=nonnegative, default=None,
                   help=f"learned: learning rate (default {default(LearnOptions, 'lr')})")


def add_monte_carlo(p: argparse.ArgumentParser, search: bool) -> None:
    g = p.add_argument_group("Monte-Carlo")
    g.add_argument("--samples", "--noise_epoch", dest="samples", type=positive_int,
                   default=None, help="Monte-Carlo chips (default "
                                      f"{default(EvaluationSettings, 'samples')})")
    g.add_argument("--ci-target", type=nonnegative, default=None, metavar="P",
                   help="stop a plan's chips once the 95%% CI of its gap to full verify (of "
                        "its mean, without one) is within +-P points (default "
                        f"{default(EvaluationSettings, 'ci_target')}; 0: always --samples)")
    g.add_argument("--min-samples", type=_at_least_two, default=None,
                   help="chips before --ci-target may stop (default "
                        f"{default(EvaluationSettings, 'min_samples')})")
    g.add_argument("--seed", type=int, default=None,
                   help=f"seed of training and chips (default {default(TrainConfig, 'seed')})")
    g.add_argument("--times", type=_list_of(nonnegative), default=None, metavar="T1,T2,...",
                   help="read every chip at these seconds after programming (one result per "
                        "time, the same chips), e.g. 1,3600,86400,31536000")
    g.add_argument("--chips-per-pass", type=positive_int, default=None, metavar="C",
                   help="chips evaluated per forward pass, weights stacked (default: chosen; "
                        "1 on the CPU)")
    g.add_argument("--compile", action="store_true",
                   help="compile the forward once with torch.compile (falls back to eager, "
                        "with a message, where it cannot run)")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads of Monte-Carlo (default: this process's share of "
                        "the cores; a warning when more)")
    g.add_argument("--within", type=nonnegative, default=None,
                   help="a chip is good within this many points of the best full verify "
                        f"(default {default(EvaluationSettings, 'within')})"
                        + ("; also finds per method the largest speedup whose mean is "
                           "within it" if search else ""))
    if search:
        g.add_argument("--yield", dest="yield_target", type=_fraction, default=None,
                       help="with --within: the largest speedup at which this share of chips "
                            "is within it (e.g. 0.9)")
        g.add_argument("--judge-time", type=nonnegative, default=None, metavar="SECONDS",
                       help="with --times: the time plans are judged at (searches, gaps; "
                            "default the first time)")
        g.add_argument("--search-steps", type=positive_int, default=None,
                       help="bisection steps of the speedup search "
                            f"(default {default(EvaluationSettings, 'search_steps')})")


def add_output(p: argparse.ArgumentParser, *, out: bool = True,
                json_help: str | None = "also write the result JSON here") -> None:
    p.add_argument("--device", default="cpu", help="where to compute: cpu (default), cuda, cuda:N")
    if out:
        p.add_argument("--out", default=None, help="output folder (default runs/MODEL-DATASET)")
    if json_help:
        p.add_argument("--json", default=None, help=json_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


__all__ = ["add_crossbar", "add_data", "add_device_model", "add_mapping", "add_model",
           "add_monte_carlo", "add_output", "add_selection", "add_sensitivity", "add_training",
           "layer_list", "nonnegative", "positive", "positive_int"]
