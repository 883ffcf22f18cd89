"""A device model from outside swimkit, its every answer checked.

A plug-in device model (registered from a package or a notebook) is outside code, like a
selection method's score or a curvature rule: :class:`CheckedDevice` asks it through the
two protocols and checks what comes back before anything uses it (the weights' names and
shapes, finite numbers, variances and seconds >= 0, a report that prices a plan), and an
exception it raises becomes one line naming the model and the call. swimkit's own models
are not wrapped (:func:`checked`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import SwimkitError, first_line
from ..programming import ProgrammingReport
from .wrapped import WrappedDevice

if TYPE_CHECKING:
    from ..plans import Plan

Values = Mapping[str, Tensor]


def checked(device: Any) -> Any:
    """``device`` itself if it is swimkit's own, else a :class:`CheckedDevice` of it."""
    if isinstance(device, CheckedDevice) or type(device).__module__.startswith("swimkit."):
        return device
    return CheckedDevice(device)


@dataclass(frozen=True)
class CheckedDevice(WrappedDevice):
    """``base`` (a device model from outside swimkit) with its answers checked."""

    base: Any

    @property
    def name(self) -> str:
        try:
            kind = self.base.describe().get("kind")
        except Exception:  # noqa: BLE001 - a name for an error message only
            kind = None
        return f"device model {kind or type(self.base).__name__!r}"

    def _call(self, what: str, *args: Any) -> Any:
        try:
            return getattr(self.base, what)(*args)
        except SwimkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - outside code, in one line
            raise SwimkitError(f"{self.name} failed in {what}(): "
                               f"{first_line(exc, with_type=True)}") from None

    def _bad(self, what: str, problem: str) -> SwimkitError:
        return SwimkitError(f"{self.name} gave {problem} from {what}(); fix the model")

    # --- the noise protocol ---------------------------------------------------------------

    def sampler(self, values: Values, scales: Values, plan: Plan | None = None,
                times: Sequence[float] = (0.0,)) -> Callable[..., list[dict[str, Tensor]]]:
        sample = self._call("sampler", values, scales, plan, times)
        if not callable(sample):
            raise self._bad("sampler", f"a {type(sample).__name__}, not a function drawing "
                                       "one chip")

        def draw(generator: torch.Generator | None) -> list[dict[str, Tensor]]:
            try:
                reads = sample(generator)
            except SwimkitError:
                raise
            except Exception as exc:  # noqa: BLE001 - outside code, in one line
                raise SwimkitError(f"{self.name} failed drawing a chip: "
                                   f"{first_line(exc, with_type=True)}") from None
            if not isinstance(reads, (list, tuple)) or len(reads) != len(times):
                raise self._bad("sampler", f"{_count(reads)} reads for {len(times)} time(s)")
            for read in reads:
                self._tensors("sampler", read, values, exact=True)
            return list(reads)

        return draw

    def variance(self, values: Values, scales: Values, plan: Plan | None = None,
                 time: float = 0.0) -> dict[str, Tensor]:
        out = self._call("variance", values, scales, plan, time)
        self._tensors("variance", out, values, nonnegative=True)
        return out

    def with_sigma(self, sigma: float) -> CheckedDevice:
        return CheckedDevice(self._call("with_sigma", sigma))

    def describe(self) -> dict[str, Any]:
        out = self._call("describe")
        if not isinstance(out, dict):
            raise self._bad("describe", f"a {type(out).__name__}, not a dict of its settings")
        return out

    # --- the pricing protocol -------------------------------------------------------------

    def option_variances(self, value: Tensor, scale: Tensor, menu: tuple[float, ...] | None,
                         time: float = 0.0) -> Tensor:
        out = self._call("option_variances", value, scale, menu, time)
        return self._table("option_variances", out, value, menu)

    def option_times(self, value: Tensor, scale: Tensor,
                     menu: tuple[float, ...] | None) -> Tensor:
        out = self._call("option_times", value, scale, menu)
        return self._table("option_times", out, value, menu)

    def reference_times(self, values: Values, scales: Values) -> tuple[float, float]:
        out = self._call("reference_times", values, scales)
        if not (isinstance(out, tuple) and len(out) == 2
                and all(_finite(t) and t > 0 for t in out)):
            raise self._bad("reference_times", f"{out!r}, not two seconds > 0 (full verify, "
                                               "no verify)")
        return float(out[0]), float(out[1])

    def programming_report(self, values: Values, scales: Values,
                           plan: Plan) -> ProgrammingReport:
        out = self._call("programming_report", values, scales, plan)
        if not isinstance(out, ProgrammingReport):
            raise self._bad("programming_report", f"a {type(out).__name__}, not a "
                                                  "swimkit.programming.ProgrammingReport")
        times = (out.time_plan_s, out.time_full_verify_s, out.time_no_verify_s, out.speedup)
        if not all(_finite(t) and t > 0 for t in times):
            raise self._bad("programming_report", f"times or a speedup that are not numbers "
                                                  f"> 0 ({times})")
        try:
            out.check()  # shares in [0, 1], a speedup that follows from the times
        except SwimkitError as exc:
            raise self._bad("programming_report", str(exc).removeprefix("a ")) from None
        return out

    # --- checks ---------------------------------------------------------------------------

    def _tensors(self, what: str, out: object, values: Values, *, exact: bool = False,
                 nonnegative: bool = False) -> None:
        """A tensor per weight of ``values``, shaped like it (broadcastable unless
        ``exact``), finite (and >= 0)."""
        if not isinstance(out, Mapping):
            raise self._bad(what, f"a {type(out).__name__}, not a dict of tensors by weight "
                                  "name")
        for name, value in values.items():
            got = out.get(name)
            if not isinstance(got, Tensor):
                raise self._bad(what, f"no tensor for {name}")
            shape = tuple(value.shape)
            fits = (tuple(got.shape) == shape if exact
                    else _broadcasts(tuple(got.shape), shape))
            if not fits:
                raise self._bad(what, f"a tensor shaped {tuple(got.shape)} for {name}, "
                                      f"whose weight is {shape}")
            self._numbers(what, got, name, nonnegative)

    def _table(self, what: str, out: object, value: Tensor,
               menu: tuple[float, ...] | None) -> Tensor:
        """An option table: ``(1 + O,)``, ``(*shape, 1 + O)`` or ``(*shape, K, 1 + O)``."""
        if not isinstance(out, Tensor):
            raise self._bad(what, f"a {type(out).__name__}, not a tensor")
        options = 1 + (1 if menu is None else len(menu))
        shape = tuple(value.shape)
        allowed = [(options,), (*shape, options), (*shape, self.slicing.devices, options)]
        if tuple(out.shape) not in allowed:
            raise self._bad(what, f"a table shaped {tuple(out.shape)} for a weight shaped "
                                  f"{shape} and {options} options; expected one of "
                                  f"{', '.join(map(str, allowed))}")
        self._numbers(what, out, "its options", nonnegative=True)
        return out

    def _numbers(self, what: str, tensor: Tensor, name: str, nonnegative: bool) -> None:
        if not tensor.is_floating_point():
            raise self._bad(what, f"{tensor.dtype} numbers for {name}")
        if not bool(torch.isfinite(tensor).all()):
            raise self._bad(what, f"NaN or infinite numbers for {name}")
        if nonnegative and bool((tensor < 0).any()):
            raise self._bad(what, f"negative numbers for {name} (variances and seconds are "
                                  ">= 0)")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("base", "option_tables"):
            raise AttributeError(name)  # option tables: read through the checked calls
        return getattr(self.base, name)


def _broadcasts(shape: tuple[int, ...], to: tuple[int, ...]) -> bool:
    try:
        return torch.broadcast_shapes(shape, to) == torch.Size(to)
    except RuntimeError:
        return False


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _count(reads: object) -> str:
    return str(len(reads)) if isinstance(reads, (list, tuple)) else type(reads).__name__


__all__ = ["CheckedDevice", "checked"]
