"""Device models decided device by device: each device's level, error, options and time.

A weight w of layer l is stored as the N-bit magnitude code q = round(|w| / s_l 2^N)
(at most 2^N - 1) on K = N / m devices of L = 2^m levels: device j (most significant
first) holds digit d_j of q in base L, at the normalised level x_j = d_j / (L - 1) of
its conductance range; the sign is the weight's (a device pair or a sign bit, exact
here). Programming lands device j at d_j + e_j, e_j ~ Normal(0, sigma_j^2) in device
steps, where sigma_j is the plain-write spread at its level or the residual of the
tolerance a plan verifies it to. Afterwards the device may change (drift, read noise,
a stuck cell: :meth:`CellModel.evolve`); read at time t it gives v_j(t), and

    dW(t) = sign(w) s_l sum_j 2^(-j m) (v_j(t) - d_j).

:class:`CellModel` turns a few per-device answers (the plain-write spread per level,
what time does, the mean square error at a time) into both protocols: chips at several
times from one programming, variances at a time, option tables, prices and reports.
The Gaussian model of :mod:`~swimkit.devices.gaussian` is the special case whose
devices do not differ by level and do not change, done per weight for speed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import SwimkitError
from ..mapping import safe_scale
from ..plans import Plan
from ..programming import ProgrammingReport, WriteVerify
from ..seeding import seeded_generator
from ..slicing import BitSlicing
from .protocol import Sampler, check_times

#: Default menu: tolerances as multiples of the plain-write sigma, above the device's own
#: (tightest) tolerance, which always closes the menu.
MENU_FACTORS = (1.5, 1.0, 2 / 3, 0.5, 1 / 3)


def loose_menu(sigma: float, tight: float) -> tuple[float, ...]:
    """A handful of tolerances from loose (1.5 sigma) down to ``tight`` (the own loop's)."""
    loose = [f * sigma for f in MENU_FACTORS]
    return (*sorted({t for t in loose if t > tight * (1 + 1e-9)}, reverse=True), tight)


@dataclass(frozen=True)
class Cells:
    """The devices of one weight tensor: digits ``(*shape, K)`` (long), their levels
    x = d / (L - 1) in [0, 1] (float64), the weights' normalised levels |w| / s_l and
    signs (+-1), both ``(*shape,)`` float64, and the layer's scale s_l."""

    digits: Tensor
    levels: Tensor
    unit: Tensor
    sign: Tensor
    scale: Tensor
    slicing: BitSlicing
    whole: Cells | None = None

    @property
    def layer(self) -> Cells:
        """The cells of the whole layer: these, unless they are rows of a layer (``whole``).
        Layer-wide quantities (a compensation gain) are taken over them."""
        return self if self.whole is None else self.whole

    def rows(self, start: int, stop: int) -> Cells:
        """The devices of weights ``start`` to ``stop`` of a flattened layer, which know
        their layer."""
        return Cells(self.digits[start:stop], self.levels[start:stop], self.unit[start:stop],
                     self.sign[start:stop], self.scale, self.slicing, whole=self.layer)

    @property
    def top(self) -> int:
        """L - 1: the highest digit of a device."""
        return 2 ** self.slicing.bits_per_device - 1

    def weight_error(self, read: Tensor) -> Tensor:
        """dW (float64) of device readings ``read`` (device steps, like the digits)."""
        significance = self.slicing.significances().to(read.device)
        return self.sign * self.scale.double() * ((read - self.digits) * significance).sum(-1)

    def weighted_sum(self, device_values: Tensor) -> Tensor:
        """sum over the layer of 2^(-j m) values: the layer's read-out of ``device_values``."""
        significance = self.slicing.significances().to(device_values.device)
        return (device_values * significance).sum()


def cells_of(value: Tensor, scale: Tensor, slicing: BitSlicing) -> Cells:
    """The digits of ``value`` (weights of one layer, scale ``scale``) on its devices."""
    n, m = slicing.bits_per_weight, slicing.bits_per_device
    unit = (value.detach().double().abs() / safe_scale(scale).double()).clamp_(0.0, 1.0)
    code = torch.round(unit * 2.0**n).clamp_(max=2**n - 1).long()
    shifts = torch.arange(n - m, -1, -m, device=value.device)
    digits = (code.unsqueeze(-1) >> shifts) & (2**m - 1)
    levels = digits.double() / (2**m - 1)
    sign = torch.where(value.detach() < 0, -1.0, 1.0).double()
    return Cells(digits, levels, unit, sign, scale.detach(), slicing)


def device_options(plan: Plan | None, name: str, shape: torch.Size, devices: int) -> Tensor:
    """The option index of every device of weight ``name`` under ``plan``: ``(*shape, K)``
    long (0: plain write; weight-level plans put every device of a weight alike)."""
    if plan is None:
        return torch.zeros((*shape, devices), dtype=torch.long)
    if name not in plan.levels:
        raise SwimkitError(f"the plan has no levels for {name}; select again for this model")
    levels = plan.levels[name].long()
    if levels.shape[-1] not in (1, devices):
        raise SwimkitError(
            f"the plan has {levels.shape[-1]} devices per weight but the device model "
            f"{devices}; select again with the same bits per weight and per device")
    return levels.expand(*shape, devices)


class CellModel(ABC):
    """A device model answered device by device (see the module doc).

    Subclasses give :attr:`slicing`, :attr:`sigma` (the nominal plain-write spread),
    :attr:`loop`, :meth:`plain_sigmas`, :meth:`describe` and :meth:`with_sigma`; they
    may give :meth:`evolve` and :meth:`second_moments` (what happens after programming)
    and :attr:`compensated` (a per-layer gain calibrated at read time).
    """

    slicing: BitSlicing
    sigma: float

    @property
    @abstractmethod
    def loop(self) -> WriteVerify:
        """The own write-verify loop, its tolerance resolved."""

    @abstractmethod
    def plain_sigmas(self, cells: Cells) -> Tensor:
        """Spread (device steps, float64) of one plain write of every device."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The settings, JSON-ready (``kind`` first)."""

    @abstractmethod
    def with_sigma(self, sigma: float) -> CellModel:
        """The same device with plain-write spread ``sigma``."""

    # --- what happens after programming (default: nothing) ----------------------------

    @property
    def compensated(self) -> bool:
        """True: each layer's read-out is rescaled by a gain calibrated at read time."""
        return False

    @property
    def changes_with_time(self) -> bool:
        """True when a device read later differs from one read right after programming
        (a model giving :meth:`evolve` says so)."""
        return False

    def evolve(self, cells: Cells, programmed: Tensor, times: Sequence[float],
               generator: torch.Generator | None,
               reads: Sequence[torch.Generator | None]) -> list[Tensor]:
        """Device readings at each time of devices programmed to ``programmed``.

        ``generator`` draws what belongs to the chip (a drift exponent, a stuck cell),
        ``reads[i]`` what belongs to the read at ``times[i]`` (read noise), so a chip read
        at time t gives the same numbers whatever other times are read."""
        return [programmed] * len(times)

    def second_moments(self, cells: Cells, variances: Tensor, time: float) -> Tensor:
        """E[(v(t) - d)^2] per device and option, from the programming variances
        ``variances`` (``(*shape, K, O)``, device steps^2)."""
        return variances

    def device_means(self, cells: Cells, time: float) -> Tensor | None:
        """E[v(t) - d] per device (``(*shape, K)``; the same for every option, since
        verify only narrows a zero-mean programming error), or None where it is 0."""
        return None

    # --- option tables ----------------------------------------------------------------

    @property
    def devices_per_weight(self) -> int:
        return self.slicing.devices

    @property
    def prices_by_value(self) -> bool:
        """Devices are priced by their digits, so by the weights' values."""
        return True

    def menu(self, menu: tuple[float, ...] | None) -> tuple[float, ...]:
        """The tolerances a plan's menu stands for (None: the own loop)."""
        return (self.loop.tolerance,) if menu is None else tuple(menu)

    def default_menu(self) -> tuple[float, ...]:
        return loose_menu(self.sigma, self.loop.tolerance)

    def option_sigmas(self, cells: Cells, menu: tuple[float, ...] | None) -> Tensor:
        """Programming spread of every device at each option: ``(*shape, K, 1 + O)``."""
        plain = self.plain_sigmas(cells)
        columns = [plain] + [self.loop.with_tolerance(t).residual_sigma(plain)
                             for t in self.menu(menu)]
        return torch.stack(columns, dim=-1)

    def device_times(self, cells: Cells, menu: tuple[float, ...] | None) -> Tensor:
        """Seconds to program every device at each option: ``(*shape, K, 1 + O)``."""
        plain = self.plain_sigmas(cells)
        columns = [torch.full_like(plain, self.loop.t_program)]
        columns += [self.loop.with_tolerance(t).verify_time(plain) for t in self.menu(menu)]
        return torch.stack(columns, dim=-1)

    def device_variances(self, cells: Cells, menu: tuple[float, ...] | None,
                         time: float) -> Tensor:
        """E[error^2] of every device at each option at ``time``: ``(*shape, K, 1 + O)``."""
        return self.second_moments(cells, self.option_sigmas(cells, menu).square(), time)

    def option_variances(self, value: Tensor, scale: Tensor, menu: tuple[float, ...] | None,
                         time: float = 0.0) -> Tensor:
        return self.device_variances(cells_of(value, scale, self.slicing), menu, float(time))

    def option_times(self, value: Tensor, scale: Tensor,
                     menu: tuple[float, ...] | None) -> Tensor:
        return self.device_times(cells_of(value, scale, self.slicing), menu)

    def option_tables(self, value: Tensor, scale: Tensor, menu: tuple[float, ...] | None,
                      time: float, rows: int) -> Iterator[tuple[Tensor, Tensor]]:
        """:meth:`option_variances` and :meth:`option_times` of ``value`` flattened, in
        pieces of ``rows`` weights, ``(rows, K, 1 + O)`` each: what a planner reads of a
        large layer without holding its whole tables (the pieces are those tables' rows)."""
        cells = cells_of(value.reshape(-1), scale, self.slicing)
        for start in range(0, cells.unit.numel(), rows):
            part = cells.rows(start, start + rows)
            yield self.device_variances(part, menu, float(time)), self.device_times(part, menu)

    # --- the noise protocol -----------------------------------------------------------

    def variance(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor],
                 plan: Plan | None = None, time: float = 0.0) -> dict[str, Tensor]:
        """E[(dW / s)^2] per weight: each device's variance weighted by 4^(-j m), plus the
        square of the weight's bias (the devices' mean errors weighted by 2^(-j m))."""
        out = {}
        weights = self.slicing.variance_weights()
        menu = plan.menu if plan is not None else None
        for name, value in values.items():
            cells = cells_of(value, scales[name], self.slicing)
            table = self.device_variances(cells, menu, float(time))
            chosen = device_options(plan, name, value.shape, self.devices_per_weight)
            picked = torch.gather(table, -1, chosen.to(table.device).unsqueeze(-1)).squeeze(-1)
            out[name] = (picked * weights.to(picked.device)).sum(-1)
            means = self.device_means(cells, float(time))
            if means is not None:  # a weight's bias adds over its devices, not its squares
                significance = self.slicing.significances().to(means.device)
                out[name] += (means * significance).sum(-1).square() - (
                    means.square() * weights.to(means.device)).sum(-1)
        return out

    def sampler(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor],
                plan: Plan | None = None, times: Sequence[float] = (0.0,)) -> Sampler:
        times = check_times(times)
        menu = plan.menu if plan is not None else None
        layers = []
        for name, value in values.items():
            cells = cells_of(value, scales[name], self.slicing)
            sigmas = self.option_sigmas(cells, menu)
            chosen = device_options(plan, name, value.shape, self.devices_per_weight)
            spread = torch.gather(sigmas, -1, chosen.to(sigmas.device).unsqueeze(-1)).squeeze(-1)
            layers.append((name, value.dtype, cells, spread))

        def draw(generator: torch.Generator | None) -> list[dict[str, Tensor]]:
            chips: list[dict[str, Tensor]] = [{} for _ in times]
            reads = read_generators(generator, times)
            for name, dtype, cells, spread in layers:
                programmed = cells.digits + spread * torch.randn(
                    spread.shape, generator=generator, dtype=torch.float64, device=spread.device)
                evolved = self.evolve(cells, programmed, times, generator, reads)
                for chip, read in zip(chips, evolved, strict=True):
                    if self.compensated:
                        read = read * _gain(cells, read)
                    chip[name] = cells.weight_error(read).to(dtype)
            return chips

        return draw

    # --- pricing -----------------------------------------------------------------------

    def reference_times(self, values: Mapping[str, Tensor],
                        scales: Mapping[str, Tensor]) -> tuple[float, float]:
        full = none = 0.0
        for name, value in values.items():
            times = self.device_times(cells_of(value, scales[name], self.slicing), None)
            full += float(times[..., 1].sum())
            none += float(times[..., 0].sum())
        return full, none

    def plan_seconds(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor],
                     plan: Plan) -> tuple[float, list[Tensor], list[Cells]]:
        """Seconds of ``plan``; with, per layer in order, the devices' options and cells."""
        spent = 0.0
        chosen_all, cells_all = [], []
        for name, value in values.items():
            cells = cells_of(value, scales[name], self.slicing)
            times = self.device_times(cells, plan.menu)
            chosen = device_options(plan, name, value.shape, self.devices_per_weight)
            spent += float(torch.gather(times, -1, chosen.to(times.device).unsqueeze(-1)).sum())
            chosen_all.append(chosen)
            cells_all.append(cells)
        return spent, chosen_all, cells_all

    def programming_report(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor],
                           plan: Plan) -> ProgrammingReport:
        spent, _, _ = self.plan_seconds(values, scales, plan)
        return self._report(values, scales, plan, spent)

    def _report(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor], plan: Plan,
                spent: float, **extra: float) -> ProgrammingReport:
        if spent <= 0:
            raise SwimkitError("the plan takes no programming time (t_program = 0 and nothing "
                               "verified); set t_program > 0 to get a speedup")
        full, none = self.reference_times(values, scales)
        return ProgrammingReport(
            time_plan_s=spent, time_full_verify_s=full, time_no_verify_s=none,
            speedup=full / spent, fraction_verified=plan.fraction_verified,
            devices_fraction_verified=plan.devices_fraction_verified, **extra)


def read_generators(generator: torch.Generator | None, times: Sequence[float]
                    ) -> list[torch.Generator | None]:
    """One generator per read time, keyed by a number the chip's generator draws first."""
    if generator is None:
        return [None] * len(times)
    key = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return [seeded_generator("swimkit-read", key, repr(float(t)), where=generator.device)
            for t in times]


def _gain(cells: Cells, read: Tensor) -> Tensor:
    """The layer gain a chip calibrates at read time: target over measured read-out."""
    measured = cells.weighted_sum(read)
    target = cells.weighted_sum(cells.digits.double())
    if float(measured) <= 0 or float(target) <= 0:
        return torch.ones((), dtype=torch.float64, device=read.device)
    return target / measured


__all__ = ["MENU_FACTORS", "CellModel", "Cells", "cells_of", "device_options", "loose_menu"]
