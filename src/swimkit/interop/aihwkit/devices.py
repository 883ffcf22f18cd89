"""aihwkit's inference noise models as swimkit device models.

An aihwkit noise model (``aihwkit.inference.noise``) says how a target conductance is
programmed (``apply_programming_noise_to_conductance``), which drift parameters a device
draws (``generate_drift_coefficients``) and what it reads at a time after programming
(``apply_drift_noise_to_conductance``); its conductance converter (``g_converter``) says how
a weight sits on conductances. :class:`AihwkitDevice` makes one a swimkit device model:

- **the weight on conductances** as the converter puts it. ``SinglePairConductanceConverter``
  (the default of the PCM and Wan models): a pair of devices, the one of the weight's sign at
  g_min + |w| / s (g_max - g_min), the other at g_min. ``SingleDeviceConductanceConverter``
  (the CMO model): one device, w in [-s, s] spread over [g_min, g_max]. A weight is held on
  one pair (or device), as in aihwkit: its magnitude code has ``bits_per_weight`` bits on one
  level grid (no bit slicing), and swimkit's crossbar must hold weights as magnitudes
  (``signed="magnitude"``, the default): the model holds the signs itself.
- **chips** run aihwkit's own functions in aihwkit's order (programming; drift coefficients
  from the targets; at a time t > 0, per tile of at most ``tile_inputs`` x ``tile_outputs``
  weights split as aihwkit splits a layer, the net programmed weights converted to
  conductances again, drifted and read, and converted back; with ``compensation`` aihwkit's
  global drift compensation: each tile's output scaled by its mean |w| after programming
  over its mean |w| at t, the read-out of an identity input through an ideal periphery).
  Time 0 is the chip right after programming (aihwkit's ``program_analog_weights`` without
  a drift). aihwkit draws from torch's global generator; each draw runs on a seed from the
  chip's generator, so chips are reproducible and read at one time alike whatever other
  times are read.
- **write-verify**: a verified device repeats the model's own programming draw until it
  lands within the tolerance (device steps of the level grid), at most ``max_attempts``
  times, as swimkit's loop does. aihwkit's programming error is the plain write.
- **variances and prices** per level of the grid: for ``PCMLikeNoiseModel`` from its
  formulas (see :func:`~swimkit.interop.aihwkit.conductances.pcm_moments`), for every
  other model from cached samples of the same functions
  (:func:`~swimkit.interop.aihwkit.conductances.sampled_moments`). The planning variances
  treat each device of a pair alone (aihwkit's re-conversion of the net weight at a read,
  which renormalises each tile by its largest programmed weight, changes the read noise by
  a few percent and is left out there; the chips include it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ...devices.cells import CellModel, Cells, cells_of, device_options, loose_menu, read_generators
from ...devices.protocol import Sampler, check_times
from ...errors import SwimkitError, is_integer, is_number, require
from ...plans import Plan
from ...programming import WriteVerify
from ...slicing import BitSlicing
from . import _lib
from .conductances import (
    PAIR,
    converter_kind,
    drift,
    is_pcm,
    pcm_moments,
    program,
    programming_sigma_pcm,
    read_at,
    sampled_moments,
    tile_blocks,
    verify_loop,
)


def program_options(device: AihwkitDevice, g: Tensor, chosen: Tensor,
                    tolerances: Sequence[float | None]) -> Tensor:
    """Program targets ``g`` (uS) as ``device`` does, each at its option ``chosen`` (0: a
    plain write; k: verified to ``tolerances[k]`` device steps, by the model's own draws in
    swimkit's loop, or by its acceptance range for a model with ranges)."""
    out = torch.empty_like(g)
    for option, tolerance in enumerate(tolerances):
        where = chosen == option
        if not bool(where.any()):
            continue
        noise = device._option_noise(tolerance)
        if tolerance is None or device.menu_ranges is not None:
            out[where] = program(noise, g[where])
        else:
            out[where] = verify_loop(noise, g[where], tolerance * device.step,
                                     device.loop.max_attempts)[0]
    return out


# --- the device model ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AihwkitDevice(CellModel):
    """An aihwkit noise model as a swimkit device model (see the module doc).

    ``noise`` is the aihwkit noise model; ``kind`` names it in results; ``sigma_verified``
    is the residual of the own loop at the top level (device steps; None: a tenth of the
    plain write's spread there); ``tile_inputs`` / ``tile_outputs`` are aihwkit's
    ``MappingParameter.max_input_size`` / ``max_output_size`` (tiles of the re-conversion at
    a read and of the drift compensation); ``samples`` per level for the sampled moments.
    """

    noise: Any
    kind: str = "aihwkit"
    sigma_verified: float | None = None
    bits_per_weight: int = 8
    bits_per_device: int | None = None
    write_verify: WriteVerify = field(default_factory=WriteVerify)
    compensation: bool = True
    tile_inputs: int = 512
    tile_outputs: int = 512
    samples: int = 2048
    ranges: bool = False
    pulse_sigma: float | None = None

    def __post_init__(self) -> None:
        bits = self.bits_per_weight
        per = bits if self.bits_per_device is None else self.bits_per_device
        require(is_integer(bits) and 1 <= bits <= 16,
                f"{self.kind} bits_per_weight must be an integer from 1 to 16 (got {bits!r})")
        require(per == bits, f"{self.kind} holds a weight on one conductance pair (or device), "
                f"as aihwkit does: give bits_per_device = bits_per_weight ({bits}), not {per}")
        for name in ("tile_inputs", "tile_outputs", "samples"):
            value = getattr(self, name)
            require(is_integer(value) and value >= 1,
                    f"{self.kind} {name} must be an integer >= 1 (got {value!r})")
        require(isinstance(self.compensation, bool),
                f"{self.kind} compensation must be true or false (got {self.compensation!r})")
        kind = converter_kind(self.noise)
        conv = self.noise.g_converter
        g_min, g_max = float(getattr(conv, "g_min", 0.0) or 0.0), float(conv.g_max)
        levels = 2**bits
        grid = levels if kind == PAIR else 2 * levels - 1
        positions = torch.arange(grid, dtype=torch.float64) / (grid - 1)
        set_ = object.__setattr__
        set_(self, "bits_per_device", bits)
        set_(self, "slicing", BitSlicing(bits, bits))
        set_(self, "converter", kind)
        set_(self, "g_min", g_min)
        set_(self, "g_max", g_max)
        set_(self, "step", (g_max - g_min) / (levels - 1))  # uS per device step
        set_(self, "grid", g_min + positions * (g_max - g_min))
        set_(self, "analytic", is_pcm(self.noise) and not self.ranges)
        set_(self, "_tables", {})
        set_(self, "menu_ranges", None)
        if self.ranges:
            keys = sorted(float(k) for k in getattr(self.noise, "coeff_dict", {}) or {})
            require(len(keys) >= 2, f"{self.kind}: acceptance ranges as a verify menu need a "
                                    "model with two or more (aihwkit's coeff_dict)")
            require(is_number(self.pulse_sigma, finite=True) and self.pulse_sigma > 0,
                    f"{self.kind} pulse_sigma (the spread of one programming pulse, device "
                    f"steps) must be a number > 0 (got {self.pulse_sigma!r})")
            # the loosest range is the plain write; the tighter ones are the menu, each as
            # the tolerance (device steps) its range gives at the top level
            set_(self, "menu_ranges", tuple(k / 100 * g_max / self.step for k in keys[:-1]))
        top = float(self._plain_spread(self.grid[-1:])[0]) / self.step
        require(top > 0, f"{self.kind} programs without error (its programming spread is 0); "
                         "there is nothing to verify")
        set_(self, "sigma", top)
        if self.menu_ranges is not None:
            set_(self, "_loop", self.write_verify.with_tolerance(min(self.menu_ranges)))
            return
        verified = top / 10 if self.sigma_verified is None else self.sigma_verified
        require(is_number(verified, finite=True) and 0 < verified < top,
                f"{self.kind} sigma_verified must be between 0 and the plain write's spread at "
                f"the top level, {top:.4g} device steps (got {verified!r})")
        set_(self, "_loop", self.write_verify.resolved(top, verified))

    # --- settings ------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.describe() == self.describe()

    __hash__ = object.__hash__

    @property
    def loop(self) -> WriteVerify:
        return self._loop  # type: ignore[attr-defined]

    @property
    def changes_with_time(self) -> bool:
        """True: aihwkit's noise models read at a time after programming (drift, read
        noise), so ``--times``, ``--plan-time`` and ``--noise-time`` act on them."""
        return True

    @property
    def compensated(self) -> bool:
        """Whether aihwkit's global drift compensation rescales each tile at a read."""
        return self.compensation

    def default_menu(self) -> tuple[float, ...]:
        if self.menu_ranges is not None:
            return tuple(sorted(self.menu_ranges, reverse=True))
        return loose_menu(self.sigma, self.loop.tolerance)

    def with_sigma(self, sigma: float) -> AihwkitDevice:
        """The same model with its programming error scaled to a plain spread of ``sigma``
        device steps at the top level (aihwkit's ``prog_noise_scale`` / ``noise_scale``)."""
        noise = copy.deepcopy(self.noise)
        for name in ("prog_noise_scale", "noise_scale"):
            if hasattr(noise, name):
                setattr(noise, name, getattr(noise, name) * float(sigma) / self.sigma)
                return replace(self, noise=noise, sigma_verified=None)
        raise SwimkitError(f"aihwkit's {type(noise).__name__} has no prog_noise_scale or "
                           "noise_scale: noise training cannot set its spread")

    def describe(self) -> dict[str, Any]:
        loop = self.loop
        return {
            "kind": self.kind, "noise_model": type(self.noise).__qualname__,
            "noise_settings": str(self.noise), "converter": self.converter,
            "g_min_uS": self.g_min, "g_max_uS": self.g_max,
            "sigma": self.sigma, "sigma_verified": self.sigma_verified,
            "bits_per_weight": self.bits_per_weight, "compensation": self.compensation,
            "tile_inputs": self.tile_inputs, "tile_outputs": self.tile_outputs,
            "variances": "formulas" if self.analytic else f"sampled ({self.samples} a level)",
            "write_verify": {"tolerance": loop.tolerance, "max_attempts": loop.max_attempts,
                             "t_program_s": loop.t_program, "t_read_s": loop.t_read},
        }

    # --- per level of the grid -----------------------------------------------------------

    def _plain_spread(self, g: Tensor) -> Tensor:
        """Standard deviation (uS) of one programming draw at each target ``g``."""
        if self.analytic:  # type: ignore[attr-defined]
            return programming_sigma_pcm(self.noise, g.double())
        m1, m2, _, _ = sampled_moments(self._option_noise(None), g.double(), None, 1, 0.0,
                                       self.samples)
        return (m2 - m1.square()).clamp_min(0).sqrt()

    def _option_noise(self, tolerance: float | None) -> Any:
        """The noise model an option programs with (the CMO model: its acceptance range)."""
        if self.menu_ranges is None:
            return self.noise
        noise = copy.copy(self.noise)
        noise.acceptance_range = self._range_of(tolerance)
        return noise

    def _range_of(self, tolerance: float | None) -> float:
        """The acceptance range (percent, a key of the model's table) of a tolerance."""
        assert self.menu_ranges is not None
        keys = sorted(self.noise.coeff_dict)
        if tolerance is None:
            return keys[-1]
        for key, tol in zip(keys[:-1], sorted(self.menu_ranges), strict=True):
            if math.isclose(tol, tolerance, rel_tol=1e-6):
                return key
        raise SwimkitError(f"{self.kind} verifies only to its acceptance ranges "
                           f"({', '.join(f'{k:g} %' for k in sorted(self.noise.coeff_dict))}"
                           f": tolerances {', '.join(f'{t:.4g}' for t in self.default_menu())}"
                           f" device steps), not {tolerance:.4g}")

    def level_table(self, menu: tuple[float, ...] | None, time: float
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """E[g(t)], E[g(t)^2], E[g_prog] and the expected attempts of one device at every
        level of the grid and every option (plain, then ``menu``): each ``(grid, 1 + O)``."""
        key = (None if menu is None else tuple(menu), float(time))
        tables = self._tables  # type: ignore[attr-defined]
        if key not in tables:
            columns = [None, *self.menu(menu)]
            parts = [self._level_column(t, float(time)) for t in columns]
            tables[key] = tuple(torch.stack([p[i] for p in parts], 1) for i in range(4))
        return tables[key]

    def _level_column(self, tolerance: float | None, time: float
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        loop = self.loop
        if self.menu_ranges is not None:  # each range is its own programming loop
            noise = self._option_noise(tolerance)
            m1, m2, mp, _ = sampled_moments(noise, self.grid, None, 1, time, self.samples)
            return m1, m2, mp, self._range_attempts(tolerance)
        if self.analytic:
            tol = None if tolerance is None else tolerance * self.step
            m1, m2, mp, q = pcm_moments(self.noise, self.grid, tol, loop.max_attempts, time)
            if tolerance is None:
                attempts = torch.ones_like(m1)
            else:
                attempts = -torch.expm1(loop.max_attempts * torch.log1p(-q.clamp(max=1 - 1e-16))
                                        ) / q
            return m1, m2, mp, attempts
        tol = None if tolerance is None else tolerance * self.step
        return sampled_moments(self.noise, self.grid, tol, loop.max_attempts, time,
                               self.samples)

    def _range_attempts(self, tolerance: float | None) -> Tensor:
        """Attempts of an acceptance-range loop, by swimkit's loop: tolerance = the range
        (percent of the target conductance), one pulse of spread ``pulse_sigma``."""
        from ...programming import expected_attempts

        half_width = self._range_of(tolerance) / 100 * self.grid
        pulse = float(self.pulse_sigma) * self.step  # type: ignore[arg-type]
        return expected_attempts((half_width / pulse).clamp_min(1e-300), self.loop.max_attempts)

    # --- devices ---------------------------------------------------------------------------

    def _indices(self, cells: Cells) -> tuple[Tensor, Tensor | None]:
        """Grid index of every weight's active device and (pair) of its idle device."""
        digits = cells.digits[..., 0]
        if self.converter == PAIR:
            return digits, torch.zeros_like(digits)
        top = 2**self.bits_per_weight - 1
        return top + cells.sign.long() * digits, None

    def plain_sigmas(self, cells: Cells) -> Tensor:
        active, _ = self._indices(cells)
        return (self._plain_spread(self.grid)[active] / self.step).unsqueeze(-1)

    def _net_moments(self, cells: Cells, menu: tuple[float, ...] | None, time: float
                     ) -> tuple[Tensor, Tensor]:
        """E[e], E[e^2] (device steps of the weight's magnitude code) per weight and option:
        ``(*shape, 1 + O)``."""
        device = cells.digits.device
        m1, m2, _, _ = (t.to(device) for t in self.level_table(menu, time))
        active, idle = self._indices(cells)
        target = self.grid.to(device)[active].unsqueeze(-1)
        if idle is None:  # one device: w = -s + 2 s (g - g_min) / range
            sign = cells.sign.unsqueeze(-1)
            mean = 2 * sign * (m1[active] - target)
            second = 4 * (m2[active] - 2 * target * m1[active] + target.square())
            return mean / self.step, second / self.step**2
        a1, a2, i1, i2 = m1[active], m2[active], m1[idle], m2[idle]
        mean = a1 - i1 - (target - self.g_min)
        second = (a2 - a1.square()) + (i2 - i1.square()) + mean.square()
        return mean / self.step, second / self.step**2

    @property
    def _middle(self) -> float:
        return (self.g_min + self.g_max) / 2

    def _gain(self, cells: Cells, menu: tuple[float, ...] | None, time: float) -> Tensor:
        """The expected compensation gain of the layer: its mean |w| after programming over
        its mean |w| at ``time`` (1 without compensation or at time 0)."""
        one = torch.ones((), dtype=torch.float64)
        if not self.compensation or time <= 0:
            return one
        layer = cells.layer
        m1, _, mp, _ = (t.to(layer.digits.device) for t in self.level_table(None, time))
        active, idle = self._indices(layer)
        if idle is None:
            now, then = m1[active, 0] - self._middle, mp[active, 0] - self._middle
        else:
            now, then = m1[active, 0] - m1[idle, 0], mp[active, 0] - mp[idle, 0]
        measured = float(now.abs().sum())
        return one * (float(then.abs().sum()) / measured) if measured > 0 else one

    def device_variances(self, cells: Cells, menu: tuple[float, ...] | None,
                         time: float) -> Tensor:
        mean, second = self._net_moments(cells, menu, time)
        gain = float(self._gain(cells, menu, time))
        if gain != 1.0:  # the gain scales the weight held, d + e (in steps): e' = c (d + e) - d
            d = cells.digits[..., 0:1].double()
            second = (gain**2 * (second + 2 * d * mean + d.square())
                      - 2 * gain * d * (d + mean) + d.square())
        return second.clamp_min(0.0).unsqueeze(-2)

    def device_means(self, cells: Cells, time: float) -> Tensor | None:
        mean, _ = self._net_moments(cells, None, time)
        gain = self._gain(cells, None, time)
        target = cells.digits[..., 0:1].double()
        return (gain * (target + mean[..., 0:1]) - target)

    def device_times(self, cells: Cells, menu: tuple[float, ...] | None) -> Tensor:
        _, _, _, attempts = self.level_table(menu, 0.0)
        costs = (attempts * self.loop.attempt_time).to(cells.digits.device)
        if self.menu_ranges is None:  # a plain write is one pulse
            costs[:, 0] = self.loop.t_program
        active, idle = self._indices(cells)
        total = costs[active] if idle is None else costs[active] + costs[idle]
        return total.unsqueeze(-2)

    # --- chips -----------------------------------------------------------------------------

    def sampler(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor],
                plan: Plan | None = None, times: Sequence[float] = (0.0,)) -> Sampler:
        times = check_times(times)
        menu = plan.menu if plan is not None else None
        tolerances = [None, *self.menu(menu)]
        layers = []
        for name, value in values.items():
            cells = cells_of(value, scales[name], self.slicing)
            chosen = device_options(plan, name, value.shape, 1)[..., 0].to(value.device)
            layers.append((name, value.dtype, cells, chosen))
        for time in times:  # refuse a time the model cannot read before any chip
            if time > 0 and layers:
                with _lib.seeded(torch.Generator().manual_seed(0), torch.device("cpu")):
                    read_at(self.noise, self.grid[-1:].clone(), self.grid[-1:].clone(), time)

        def draw(generator: torch.Generator | None) -> list[dict[str, Tensor]]:
            chips: list[dict[str, Tensor]] = [{} for _ in times]
            reads = read_generators(generator, times)
            for name, dtype, cells, chosen in layers:
                device = cells.digits.device
                with _lib.seeded(generator, device):
                    state = self._programmed(cells, chosen, tolerances)
                for chip, time, read in zip(chips, times, reads, strict=True):
                    with _lib.seeded(read, device):
                        error = self._read(cells, state, time)
                    reading = cells.digits.double() + error.unsqueeze(-1)
                    chip[name] = cells.weight_error(reading).to(dtype)
            return chips

        return draw

    def _programmed(self, cells: Cells, chosen: Tensor, tolerances: list[float | None]
                    ) -> dict[str, Any]:
        """One chip's programming: the devices' targets, programmed conductances and drift
        coefficients (the pair's plus and minus devices, or the one device)."""
        active, idle = self._indices(cells)
        grid = self.grid.to(cells.digits.device)
        sides = [grid[active]] + ([grid[idle]] if idle is not None else [])
        programmed = [self._program_options(g, chosen, tolerances) for g in sides]
        if idle is not None:  # aihwkit's slices: the plus device, then the minus device
            plus = cells.sign > 0
            sides = [torch.where(plus, sides[0], sides[1]), torch.where(plus, sides[1], sides[0])]
            programmed = [torch.where(plus, programmed[0], programmed[1]),
                          torch.where(plus, programmed[1], programmed[0])]
        nu = [self.noise.generate_drift_coefficients(g.clone()) for g in sides]
        return {"target": sides, "programmed": programmed, "nu": nu}

    def _program_options(self, g: Tensor, chosen: Tensor, tolerances: list[float | None]
                         ) -> Tensor:
        return program_options(self, g, chosen, tolerances)

    def _weights(self, conductances: list[Tensor]) -> Tensor:
        """The weight a pair or device holds, in uS (sign included; 0 at g_min / middle)."""
        if self.converter == PAIR:
            return conductances[0] - conductances[1]
        return conductances[0] - self._middle

    def _read(self, cells: Cells, state: dict[str, Any], time: float) -> Tensor:
        """The error (device steps of the magnitude code) of every weight read at ``time``."""
        programmed = state["programmed"]
        held = self._weights(programmed)
        if time > 0:
            read = torch.empty_like(held)
            conv = self.noise.g_converter
            shape = held.shape
            flat = [t.reshape(shape[0], -1) for t in (held, *state["nu"])]
            for rows, cols in tile_blocks(shape, self.tile_inputs, self.tile_outputs):
                tile = flat[0][rows, cols]
                nus = [nu[rows, cols] for nu in flat[1:]]
                source = tile if self.converter == PAIR else (tile + self._middle)
                conductances, params = conv.convert_to_conductances(source)
                slices = list(conductances) if self.converter == PAIR else [conductances]
                drifted = [drift(self.noise, g.double(), nu, time)
                           for g, nu in zip(slices, nus, strict=True)]
                back = conv.convert_back_to_weights(
                    drifted if self.converter == PAIR else drifted[0], params).double()
                now = back if self.converter == PAIR else back - self._middle
                if self.compensation:
                    then = tile.abs().mean().clamp_min(1e-12)
                    now = now * (then / now.abs().mean().clamp_min(1e-12))
                read.reshape(shape[0], -1)[rows, cols] = now
            held = read
        grid = self.grid.to(held.device)
        if self.converter == PAIR:
            net = grid[cells.digits[..., 0]] - self.g_min
            return (cells.sign * held - net) / self.step
        target = grid[self._indices(cells)[0]] - self._middle
        return 2 * cells.sign * (held - target) / self.step


__all__ = ["AihwkitDevice", "program_options"]
