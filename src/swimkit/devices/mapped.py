"""Signed weights on devices: a device model on a crossbar's device sets.

A :class:`~swimkit.crossbar.Crossbar` says how a signed weight sits on devices: as a
magnitude with an exact sign (the idealised chip), as a differential pair (one set of
devices holds max(w, 0), the other max(-w, 0); both programmed, both with errors, both
priced; a plan programs the two devices of a pair alike) or with an offset (w + s stored
on one set of devices over [0, 2 s]). :class:`MappedDevice` follows both device
protocols by asking the base model about each device set a weight is held on, so every
device model works on every crossbar. :class:`~swimkit.ChipSpec` makes it where a chip's
crossbar needs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..crossbar import Crossbar
from ..programming import ProgrammingReport
from .wrapped import WrappedDevice

if TYPE_CHECKING:
    from ..plans import Plan


@dataclass(frozen=True)
class MappedDevice(WrappedDevice):
    """A device model on a :class:`Crossbar`: its ranges, and signed weights as a pair
    of device sets or with an offset, priced and drawn device by device.

    It follows both device protocols; every variance it returns is of ``dW / s`` with
    ``s`` the crossbar's range of the weight, like the base model's. Slicing, spread and
    loop are the base's (:class:`~swimkit.devices.wrapped.WrappedDevice`).
    """

    base: Any
    crossbar: Crossbar = field(default_factory=Crossbar)

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "crossbar": self.crossbar.describe()}

    # --- the weight as devices hold it ----------------------------------------------------

    def _sides(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor]
               ) -> list[tuple[dict[str, Tensor], dict[str, Tensor], float]]:
        """The device sets holding ``values``: (values, scales, sign) of each, in the
        base model's terms."""
        signed = self.crossbar.signed
        if signed == "pair":
            plus = {k: v.clamp(min=0) for k, v in values.items()}
            minus = {k: (-v).clamp(min=0) for k, v in values.items()}
            return [(plus, dict(scales), 1.0), (minus, dict(scales), -1.0)]
        if signed == "offset":
            return [({k: v + scales[k] for k, v in values.items()},
                     {k: 2 * s for k, s in scales.items()}, 1.0)]
        return [(dict(values), dict(scales), 1.0)]

    @property
    def _variance_factor(self) -> float:
        """Base variances are of dW over the scale they were given: 2 s for an offset."""
        return 4.0 if self.crossbar.signed == "offset" else 1.0

    def _one(self, value: Tensor, scale: Tensor) -> list[tuple[Tensor, Tensor]]:
        sides = self._sides({"w": value}, {"w": scale})
        return [(v["w"], s["w"]) for v, s, _ in sides]

    # --- the noise protocol -----------------------------------------------------------

    def sampler(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor],
                plan: Plan | None = None, times: Sequence[float] = (0.0,)) -> Any:
        parts = [(self.base.sampler(v, s, plan, times), sign)
                 for v, s, sign in self._sides(values, scales)]
        if len(parts) == 1:
            return parts[0][0]

        def draw(generator: torch.Generator | None) -> list[dict[str, Tensor]]:
            reads = [(sample(generator), sign) for sample, sign in parts]
            chips = []
            for index in range(len(reads[0][0])):
                chips.append({name: sum(sign * read[index][name] for read, sign in reads)
                              for name in values})
            return chips

        return draw

    def variance(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor],
                 plan: Plan | None = None, time: float = 0.0) -> dict[str, Tensor]:
        total: dict[str, Tensor] = {}
        for v, s, _ in self._sides(values, scales):
            for name, var in self.base.variance(v, s, plan, time).items():
                total[name] = var if name not in total else total[name] + var
        return {k: v * self._variance_factor for k, v in total.items()}

    # --- the pricing protocol ---------------------------------------------------------

    def option_variances(self, value: Tensor, scale: Tensor, menu: tuple[float, ...] | None,
                         time: float = 0.0) -> Tensor:
        tables = [self.base.option_variances(v, s, menu, time) for v, s in self._one(value, scale)]
        return _sum_tables(tables) * self._variance_factor

    def option_times(self, value: Tensor, scale: Tensor,
                     menu: tuple[float, ...] | None) -> Tensor:
        return _sum_tables([self.base.option_times(v, s, menu)
                            for v, s in self._one(value, scale)])

    def reference_times(self, values: Mapping[str, Tensor],
                        scales: Mapping[str, Tensor]) -> tuple[float, float]:
        full = none = 0.0
        for v, s, _ in self._sides(values, scales):
            side_full, side_none = self.base.reference_times(v, s)
            full, none = full + side_full, none + side_none
        return full, none

    def programming_report(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor],
                           plan: Plan) -> ProgrammingReport:
        reports = [self.base.programming_report(v, s, plan)
                   for v, s, _ in self._sides(values, scales)]
        if len(reports) == 1:
            return reports[0]
        spent = sum(r.time_plan_s for r in reports)
        full = sum(r.time_full_verify_s for r in reports)
        stuck = [r.stuck_devices_verified for r in reports if r.stuck_devices_verified is not None]
        lost = [r.time_stuck_s for r in reports if r.time_stuck_s is not None]
        return ProgrammingReport(
            time_plan_s=spent, time_full_verify_s=full,
            time_no_verify_s=sum(r.time_no_verify_s for r in reports), speedup=full / spent,
            fraction_verified=plan.fraction_verified,
            devices_fraction_verified=plan.devices_fraction_verified,
            stuck_devices_verified=sum(stuck) if stuck else None,
            time_stuck_s=sum(lost) if lost else None)


def _sum_tables(tables: list[Tensor]) -> Tensor:
    """Option tables of the device sets of one weight, added (broadcast to one shape)."""
    if len(tables) == 1:
        return tables[0]
    return torch.stack(torch.broadcast_tensors(*tables)).sum(0)


__all__ = ["MappedDevice"]
