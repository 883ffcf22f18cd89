"""The two protocols a device model follows: drawing chips, and pricing verify options.

:class:`NoiseModel` is what Monte-Carlo evaluation, noise-injection training and the
second-order scores ask: draw one chip's weight errors, read at one or more times after
programming, and give each weight's error variance at a time. :class:`PricingModel` is
what the budgets and the device-level planners ask: each device's options (a plain
write, or write-verify to a tolerance of a menu) with their error variance and their
programming time. :class:`Device` is both; every registered model is one, and
:class:`~swimkit.settings.Settings` takes any object that follows them.

Times are seconds after programming; 0 is "right after" (the idealised, frozen chip).
Variances are of ``dW / s_l`` (normalised units): per device in device steps squared,
per weight weighted by each device's significance squared, 4^(-j m).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import SwimkitError, is_number
from ..plans import Plan
from ..programming import ProgrammingReport, WriteVerify
from ..slicing import BitSlicing
from .wrapped import WrappedDevice

#: One chip: the weight errors dW (weight units) read at each requested time, in order.
Sampler = Callable[[torch.Generator | None], list[dict[str, Tensor]]]

Values = Mapping[str, Tensor]


@runtime_checkable
class NoiseModel(Protocol):
    """Draws chips. ``values`` are the effective device weights by name, ``scales`` their
    per-layer s_l, ``plan`` which devices are write-verified (None: none)."""

    @property
    def slicing(self) -> BitSlicing:
        """How a weight is stored on devices (K devices of m bits)."""

    def sampler(self, values: Values, scales: Values, plan: Plan | None = None,
                times: Sequence[float] = (0.0,)) -> Sampler:
        """A function drawing one chip from a generator: its weight errors at each of
        ``times``. The chip is programmed once and read at every time (common random
        numbers across times); work that does not change between chips is done here."""

    def variance(self, values: Values, scales: Values, plan: Plan | None = None,
                 time: float = 0.0) -> dict[str, Tensor]:
        """E[(dW / s_l)^2] of every weight at ``time``: the input of the second-order scores."""

    def with_sigma(self, sigma: float) -> NoiseModel:
        """The same device with plain-write variation ``sigma`` (device steps): what
        noise-injection training at ``sigma_train`` draws from."""

    def describe(self) -> dict[str, Any]:
        """The settings, JSON-ready, for result files and cache keys (``kind`` first)."""


@runtime_checkable
class PricingModel(Protocol):
    """Prices verify options device by device."""

    @property
    def slicing(self) -> BitSlicing:
        """How a weight is stored on devices."""

    @property
    def sigma(self) -> float:
        """The nominal spread of a plain write, in device steps."""

    @property
    def loop(self) -> WriteVerify:
        """The model's own write-verify loop (its tolerance resolved): "full verify"."""

    @property
    def prices_by_value(self) -> bool:
        """True when a device's options depend on its weight's value (then budgets can
        only be checked on the trained model)."""

    def default_menu(self) -> tuple[float, ...]:
        """The tolerances (device steps) a planner chooses among unless told otherwise."""

    def option_variances(self, value: Tensor, scale: Tensor, menu: tuple[float, ...] | None,
                         time: float = 0.0) -> Tensor:
        """E[error^2] in device steps^2 of each option (plain write, then each tolerance
        of ``menu``; None: the own loop) at ``time``, float64. Shape ``(1 + O,)`` for
        devices all alike, ``(*value.shape, 1 + O)`` per weight, or
        ``(*value.shape, K, 1 + O)`` per device."""

    def option_times(self, value: Tensor, scale: Tensor,
                     menu: tuple[float, ...] | None) -> Tensor:
        """Seconds to program a device at each option, shaped like the variances."""

    def reference_times(self, values: Values, scales: Values) -> tuple[float, float]:
        """Seconds of verifying every device with the own loop, and of writing each once."""

    def programming_report(self, values: Values, scales: Values,
                           plan: Plan) -> ProgrammingReport:
        """Modelled time of programming ``plan``, against all or nothing."""


@runtime_checkable
class Device(NoiseModel, PricingModel, Protocol):
    """A device model that both draws chips and prices programming."""


def members(protocol: type) -> list[str]:
    """The public members a protocol asks for."""
    names: list[str] = []
    for base in protocol.__mro__:
        if base in (object, Protocol) or not getattr(base, "_is_protocol", False):
            continue
        names += [n for n in vars(base) if not n.startswith("_") and n not in names]
    return names


def missing(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (looked up without running them); a
    wrapped model (checked, on a crossbar's device sets) lacks what its base lacks."""
    absent = []
    for name in members(protocol):
        try:
            inspect.getattr_static(obj, name)
        except AttributeError:
            absent.append(name)
    if isinstance(obj, WrappedDevice):
        absent += [name for name in missing(obj.base, protocol) if name not in absent]
    return absent


def _named(obj: object) -> str:
    """The class name of the model a wrapper holds (of ``obj`` itself otherwise)."""
    while isinstance(obj, WrappedDevice):
        obj = obj.base
    return type(obj).__name__


def require_noise_model(obj: object, what: str = "device_model") -> NoiseModel:
    """``obj`` if it follows :class:`NoiseModel`, else an error naming what it lacks."""
    if missing(obj, NoiseModel):
        raise SwimkitError(
            f"{what} must follow swimkit.devices.NoiseModel ({_named(obj)} has no "
            f"{', '.join(missing(obj, NoiseModel))}); use a registered device model such as "
            "swimkit.DeviceModel(), or add those methods")
    return obj


def require_device(obj: object, what: str = "device_model") -> Device:
    """``obj`` if it follows both protocols (it can draw chips and price programming)."""
    if missing(obj, Device):
        raise SwimkitError(
            f"{what} must draw chips and price programming ({_named(obj)} has no "
            f"{', '.join(missing(obj, Device))}); use a registered device model such as "
            "swimkit.DeviceModel(), give a fraction, or add those methods")
    return obj


def changes_with_time(device: object) -> bool:
    """True unless ``device`` says its devices stay as programmed (``changes_with_time``
    False: gaussian, multi-level cells); a model that does not say is taken to change."""
    return bool(getattr(device, "changes_with_time", True))


def require_time_acts(device: object, what: str, seconds: object) -> None:
    """Refuse a setting that reads the device at a time after programming (``what``,
    e.g. "--times") on a device model whose devices do not change with time."""
    if changes_with_time(device):
        return
    kind = device.describe().get("kind", type(device).__name__) if hasattr(
        device, "describe") else type(device).__name__
    raise SwimkitError(f"{what} {seconds} would have no effect: device model {kind!r} stays "
                       "as programmed at every time; drop it, or use a model that changes "
                       "with time (pcm)")


def check_times(times: object) -> tuple[float, ...]:
    """``times`` as a non-empty tuple of seconds >= 0, without repeats, in the given order."""
    if isinstance(times, (int, float)) and not isinstance(times, bool):
        times = (times,)
    try:
        values = tuple(times)  # type: ignore[arg-type]
    except TypeError:
        raise SwimkitError(f"times must be a list of seconds after programming (got "
                           f"{times!r}); e.g. [1, 3600, 86400]") from None
    if not values or not all(is_number(t, finite=True) and t >= 0 for t in values):
        raise SwimkitError(f"times must be seconds >= 0 after programming (got "
                           f"{list(values)!r}); e.g. [1, 3600, 86400]")
    floats = tuple(float(t) for t in values)
    if len(set(floats)) != len(floats):
        raise SwimkitError(f"times {list(floats)} repeat a time: give each once")
    return floats


__all__ = ["Device", "NoiseModel", "PricingModel", "Sampler", "changes_with_time",
           "check_times", "missing", "require_device", "require_noise_model",
           "require_time_acts"]
