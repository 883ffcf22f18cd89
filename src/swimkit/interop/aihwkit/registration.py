"""The aihwkit device models in swimkit's registry (entry point ``swimkit.device_models``).

Registering imports nothing of aihwkit: building a model does, and says how to install
it where it is missing. ``--device-model aihwkit-pcm`` (and ``aihwkit-reram-wan``,
``aihwkit-reram-cmo``, or ``aihwkit`` with ``--device-option model=IMPORT.PATH``) then
works everywhere a device model does.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from ...devices.registry import DEVICE_MODELS, register_device_model
from ...errors import SwimkitError
from . import _lib
from .devices import AihwkitDevice

SETTINGS = ("sigma", "sigma_verified", "bits_per_weight", "bits_per_device", "write_verify")
COMMON_OPTIONS: dict[str, Any] = {"compensation": True, "tile_inputs": 512, "tile_outputs": 512}


def check_ranges(noise: Any) -> None:
    """Refuse a CMO-like model whose ``acceptance_range`` is not a key of its table:
    aihwkit silently programs such a model with its tightest range (the keys are in
    percent: ``acceptance_range=2e-2`` gets the 0.2 % loop, not 2 %)."""
    table = getattr(noise, "coeff_dict", None)
    given = getattr(noise, "acceptance_range", None)
    if not isinstance(table, dict) or given is None:
        return
    if given not in table:
        keys = ", ".join(f"{k:g}" for k in sorted(table))
        raise SwimkitError(f"acceptance_range {given!r} is not one of aihwkit's ranges ({keys}, "
                           "in percent), so aihwkit would program with the tightest one; give "
                           f"a percent such as 2 for 2 %")


def device_model(noise: Any, *, kind: str = "aihwkit", sigma: float | None = None,
                 **settings: Any) -> AihwkitDevice:
    """A swimkit device model of the aihwkit noise model ``noise`` (an instance of an
    ``aihwkit.inference.noise`` class): its draws, its converter, its variances (formulas
    for ``PCMLikeNoiseModel``, sampled otherwise). A model with acceptance ranges (the CMO
    model's ``coeff_dict``) verifies to them. ``sigma`` rescales its programming error to
    that spread at the top level (device steps)."""
    base = _lib.module("aihwkit.inference.noise.base").BaseNoiseModel
    if not isinstance(noise, base):
        raise SwimkitError(f"an aihwkit noise model must be an instance of "
                           f"aihwkit.inference.noise BaseNoiseModel (got {type(noise).__name__})")
    check_ranges(noise)
    ranged = isinstance(getattr(noise, "coeff_dict", None), dict) and hasattr(
        noise, "acceptance_range")
    if ranged:
        percent = settings.pop("pulse_sigma_percent", 5.0)
        bits = settings.get("bits_per_weight", 8)
        settings["pulse_sigma"] = percent / 100 * (2**bits - 1)
    else:
        settings.pop("pulse_sigma_percent", None)
    device = AihwkitDevice(noise, kind=kind, ranges=ranged, **settings)
    return device if sigma is None else device.with_sigma(sigma)


def device_model_of(rpu_config: Any, **settings: Any) -> AihwkitDevice:
    """The device model of an aihwkit ``InferenceRPUConfig``: its noise model, drift
    compensation (on where it has one) and tile sizes."""
    noise = getattr(rpu_config, "noise_model", None)
    if noise is None:
        raise SwimkitError("the rpu_config has no noise_model: give an aihwkit "
                           "InferenceRPUConfig (or TorchInferenceRPUConfig)")
    mapping = rpu_config.mapping
    settings.setdefault("compensation", getattr(rpu_config, "drift_compensation", None)
                        is not None)
    settings.setdefault("tile_inputs", max(int(mapping.max_input_size), 0) or 2**31)
    settings.setdefault("tile_outputs", max(int(mapping.max_output_size), 0) or 2**31)
    return device_model(noise, **settings)


def _pcm(g_max: float = 25.0, prog_noise_scale: float = 1.0, read_noise_scale: float = 1.0,
         drift_scale: float = 1.0, t0: float = 20.0, t_read: float = 250e-9,
         **settings: Any) -> AihwkitDevice:
    noise_cls = _lib.module("aihwkit.inference.noise.pcm").PCMLikeNoiseModel
    noise = noise_cls(g_max=g_max, prog_noise_scale=prog_noise_scale, t_0=t0, t_read=t_read,
                      read_noise_scale=read_noise_scale, drift_scale=drift_scale)
    return device_model(noise, kind="aihwkit-pcm", **settings)


def _wan(g_max: float = 25.0, noise_scale: float = 1.0, **settings: Any) -> AihwkitDevice:
    noise_cls = _lib.module("aihwkit.inference.noise.reram").ReRamWan2022NoiseModel
    return device_model(noise_cls(g_max=g_max, noise_scale=noise_scale),
                        kind="aihwkit-reram-wan", **settings)


def _cmo(g_max: float = 88.2, g_min: float = 9.0, prog_noise_scale: float = 1.0,
         read_noise_scale: float = 1.0, drift_scale: float = 1.0,
         pulse_sigma_percent: float = 5.0, **settings: Any) -> AihwkitDevice:
    noise_cls = _lib.module("aihwkit.inference.noise.reram").ReRamCMONoiseModel
    noise = noise_cls(g_max=g_max, g_min=g_min, prog_noise_scale=prog_noise_scale,
                      read_noise_scale=read_noise_scale, drift_scale=drift_scale,
                      acceptance_range=2)
    return device_model(noise, kind="aihwkit-reram-cmo",
                        pulse_sigma_percent=pulse_sigma_percent, **settings)


def noise_class(path: str) -> type:
    """The class ``path`` names: ``package.module.Class`` or ``package.module:Class``."""
    module_name, sep, name = path.partition(":")
    if not sep:
        module_name, _, name = path.rpartition(".")
    if not module_name or not name:
        raise SwimkitError(f"model must be an import path such as "
                           f"aihwkit.inference.noise.pcm.PCMLikeNoiseModel (got {path!r})")
    if module_name.split(".")[0] == "aihwkit":
        _lib.module("aihwkit")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise SwimkitError(f"cannot import {path!r} ({err}); check the module and class "
                           "name") from None
    if not isinstance(found, type):
        raise SwimkitError(f"{path!r} is not a class")
    return found


def _any(model: str = "", args: str = "", samples: int = 2048,
         pulse_sigma_percent: float = 5.0, **settings: Any) -> AihwkitDevice:
    if not model:
        raise SwimkitError("device model aihwkit needs its noise model: give --device-option "
                           "model=aihwkit.inference.noise.pcm.PCMLikeNoiseModel (any import "
                           "path of a BaseNoiseModel class)")
    try:
        kwargs = json.loads(args) if args else {}
    except json.JSONDecodeError:
        raise SwimkitError(f"args must be a JSON object of keyword arguments, e.g. "
                           f"'{{\"g_max\": 25}}' (got {args!r})") from None
    if not isinstance(kwargs, dict):
        raise SwimkitError(f"args must be a JSON object (got {args!r})")
    cls = noise_class(model)
    try:
        noise = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise SwimkitError(f"{model}({args or ''}) failed: {err}") from None
    for key, asked in kwargs.items():  # a setting the model replaced without a word
        taken = getattr(noise, key, asked)
        if key == "acceptance_range" and taken != asked:
            raise SwimkitError(f"{model} took acceptance_range={asked!r} as {taken!r}: its "
                               "ranges are in percent (keys "
                               f"{', '.join(f'{k:g}' for k in sorted(noise.coeff_dict))}); "
                               "give 2 for 2 %")
    return device_model(noise, kind="aihwkit", samples=samples,
                        pulse_sigma_percent=pulse_sigma_percent, **settings)


def register() -> None:
    """Register the aihwkit device models (run once from the entry point)."""
    if "aihwkit-pcm" in DEVICE_MODELS:
        return
    register_device_model(
        "aihwkit-pcm", _pcm, settings=SETTINGS,
        options={**COMMON_OPTIONS, "g_max": 25.0, "prog_noise_scale": 1.0,
                 "read_noise_scale": 1.0, "drift_scale": 1.0, "t0": 20.0, "t_read": 250e-9},
        help="aihwkit's PCMLikeNoiseModel (programming error, drift, 1/f read noise, global "
             "drift compensation) on a device pair per weight; needs aihwkit")
    register_device_model(
        "aihwkit-reram-wan", _wan, settings=SETTINGS,
        options={**COMMON_OPTIONS, "g_max": 25.0, "noise_scale": 1.0, "samples": 2048},
        help="aihwkit's ReRamWan2022NoiseModel (reads at 1, 86400, 172800 s); needs aihwkit")
    register_device_model(
        "aihwkit-reram-cmo", _cmo, settings=("bits_per_weight", "bits_per_device",
                                              "write_verify"),
        options={**COMMON_OPTIONS, "g_max": 88.2, "g_min": 9.0, "prog_noise_scale": 1.0,
                 "read_noise_scale": 1.0, "drift_scale": 1.0, "pulse_sigma_percent": 5.0,
                 "samples": 2048},
        help="aihwkit's ReRamCMONoiseModel: its 2 percent acceptance range is the plain write, "
             "0.2 percent the verify option; needs aihwkit")
    register_device_model(
        "aihwkit", _any, settings=SETTINGS,
        options={**COMMON_OPTIONS, "model": "", "args": "", "samples": 2048,
                 "pulse_sigma_percent": 5.0},
        help="any aihwkit noise model by import path (model=, JSON args=), variances "
             "sampled; needs aihwkit")


__all__ = ["check_ranges", "device_model", "device_model_of", "noise_class", "register"]
