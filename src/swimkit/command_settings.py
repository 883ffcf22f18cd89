"""The :class:`~swimkit.settings.Settings` of a parsed command line (the arguments of
:mod:`swimkit.arguments`): the device model, crossbar, methods and budgets it names, with
options that would not act refused.
"""

from __future__ import annotations

import argparse
from typing import Any

from .crossbar import Crossbar
from .devices import Device, build_device_model, parse_option
from .errors import SwimkitError
from .programming import WriteVerify
from .settings import (
    DEFAULT_FRACTION,
    SWEEP_FRACTIONS,
    SWEEP_METHODS,
    DataSettings,
    EvaluationSettings,
    ModelSettings,
    SelectionSettings,
    SensitivitySettings,
    Settings,
    default,
)
from .training import TrainConfig


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """Settings fields (values of ``names``) of the arguments (keys) the user gave."""
    return {field: getattr(args, arg) for arg, field in names.items()
            if getattr(args, arg, None) is not None}


def device_model_of(args: argparse.Namespace) -> Device:
    """The device model of --device-model with its settings and --device-option values."""
    name = getattr(args, "device_model", None) or "gaussian"
    loop = WriteVerify(**_given(args, {"tolerance": "tolerance", "max_attempts": "max_attempts",
                                       "t_program": "t_program", "t_read": "t_read"}))
    options: dict[str, Any] = {}
    for key, text in getattr(args, "device_options", None) or []:
        if key in options:
            raise SwimkitError(f"--device-option {key} is given twice; give it once")
        options[key] = parse_option(name, key, text)
    device = build_device_model(name, write_verify=loop, **options, **_given(args, {
        "sigma": "sigma", "sigma_verified": "sigma_verified",
        "bits_per_weight": "bits_per_weight", "bits_per_device": "bits_per_device",
        "variation": "variation", "verified_variation": "verified_variation"}))
    return crossbar_of_args(args).wrap(device)


def crossbar_of_args(args: argparse.Namespace) -> Crossbar:
    """The :class:`~swimkit.crossbar.Crossbar` of the crossbar options."""
    tile = getattr(args, "tile", None) or (None, None)
    return Crossbar(tile_rows=tile[0], tile_columns=tile[1], **_given(args, {
        "ranges": "ranges", "signed": "signed", "dac_bits": "dac_bits",
        "adc_bits": "adc_bits", "adc_range": "adc_range", "output_noise": "output_noise"}))


def selection_of(args: argparse.Namespace) -> dict[str, Any]:
    """The methods and budgets of the arguments: a sweep's lists (by default
    :data:`~swimkit.settings.SWEEP_METHODS` at :data:`~swimkit.settings.SWEEP_FRACTIONS`),
    or one method at one budget (by default :data:`~swimkit.settings.DEFAULT_FRACTION`)."""
    if hasattr(args, "methods"):
        speedups, budgets = args.speedups or [], args.time_budgets or []
        fractions = args.fractions if args.fractions is not None else (
            [] if speedups or budgets else list(SWEEP_FRACTIONS))
        return {"methods": args.methods or list(SWEEP_METHODS), "fractions": fractions,
                "speedups": speedups, "time_budgets": budgets}
    if not hasattr(args, "method"):
        return {}
    given = {k: [v] for k, v in (("fractions", args.fraction), ("speedups", args.speedup),
                                 ("time_budgets", args.time_budget)) if v is not None}
    if len(given) > 1:
        raise SwimkitError("give one budget: --fraction, --speedup or --time-budget")
    return {"methods": [args.method], **(given or {"fractions": [DEFAULT_FRACTION]})}


def settings_of(args: argparse.Namespace) -> Settings:
    """The :class:`Settings` of parsed arguments."""
    if getattr(args, "yield_target", None) is not None and args.within is None:
        raise SwimkitError("--yield needs --within P: the points a chip may lose and count")
    selection = selection_of(args)
    engine = getattr(args, "engine", None) or default(SensitivitySettings, "engine")
    _refuse_idle_options(args, selection, engine)
    options = (_given(args, {"probes": "probes", "probe_seed": "seed"})
               if engine == "hutchinson" else {})
    seed = {"seed": args.seed} if getattr(args, "seed", None) is not None else {}
    return Settings(
        model=ModelSettings(name=getattr(args, "model", None), checkpoint=args.checkpoint,
                            bits=getattr(args, "bits", None),
                            trusted=getattr(args, "trusted", False)),
        data=DataSettings(**_given(args, {"dataset": "dataset", "data_dir": "data_dir",
                                          "train_limit": "train_limit",
                                          "test_limit": "test_limit",
                                          "test_batch_size": "test_batch_size"})),
        train=TrainConfig(**_given(args, {"epochs": "epochs", "batch_size": "batch_size",
                                          "sigma_train": "sigma_train",
                                          "noise_time": "noise_time",
                                          "clip_sigma": "clip_sigma", "clip_per": "clip_per",
                                          "learn_ranges": "learn_ranges"}),
                          scale_aware=getattr(args, "scale_aware", None) in (True, "on"), **seed),
        sigma_trains=getattr(args, "sigma_trains", None),
        compare_scale_aware=getattr(args, "scale_aware", None) == "both",
        device_model=device_model_of(args),
        sensitivity=SensitivitySettings(engine=engine, options=options, **_given(
            args, {"sens_batch_size": "batch_size", "sens_limit": "limit"})),
        selection=SelectionSettings(
            exclude=getattr(args, "exclude", None) or [],
            map_params=getattr(args, "map_params", None) or [],
            tolerances=getattr(args, "tolerances", None),
            learn=_given(args, {"learn_epochs": "epochs", "learn_lr": "lr"}),
            **_given(args, {"plan_time": "plan_time"}), **selection),
        evaluation=EvaluationSettings(**_given(args, {
            "samples": "samples", "within": "within", "yield_target": "yield_target",
            "search_steps": "search_steps", "ci_target": "ci_target",
            "min_samples": "min_samples", "chips_per_pass": "chips_per_pass",
            "threads": "threads", "times": "times", "judge_time": "judge_time"}), **seed,
            compile=bool(getattr(args, "compile", False)),
            search=getattr(args, "within", None) is not None and args.command == "sweep"),
        device=args.device,
        out=getattr(args, "out", None),
    )


def _refuse_idle_options(args: argparse.Namespace, selection: dict[str, Any],
                         engine: str) -> None:
    """Options that would not act with the others given: refused, so a result never
    records a setting that did nothing."""
    methods = selection.get("methods") or []
    idle = [
        ("--probes / --probe-seed", "set the hutchinson engine's probes: add --engine "
         "hutchinson", engine != "hutchinson" and (getattr(args, "probes", None) is not None
                                                   or getattr(args, "probe_seed", None)
                                                   is not None)),
        ("--learn-epochs / --learn-lr", "set method learned: add it to the methods",
         "learned" not in methods and (getattr(args, "learn_epochs", None) is not None
                                       or getattr(args, "learn_lr", None) is not None)),
        ("--min-samples", "sets when --ci-target may stop: give --ci-target > 0",
         getattr(args, "min_samples", None) is not None and getattr(args, "ci_target", None)
         == 0),
        ("--search-steps", "sets the speedup search: give --within P",
         getattr(args, "search_steps", None) is not None and getattr(args, "within", None)
         is None),
    ]
    for flags, fix, unused in idle:
        if unused:
            raise SwimkitError(f"{flags} would have no effect here: they {fix}, or drop them")


__all__ = ["crossbar_of_args", "device_model_of", "selection_of", "settings_of"]
