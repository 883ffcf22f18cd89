"""Device model ``stuck``: a share of the cells stuck at their lowest or highest level.

On top of any device-by-device model (``base``: ``gaussian``, ``pcm``, or a plug-in
:class:`~swimkit.devices.cells.CellModel`), each device of each chip is stuck at level 0
with probability ``low`` and at the top level L - 1 with probability ``high``, whatever
it was programmed to (fabrication faults and endurance failures of RRAM and PCM arrays
leave a few percent of cells so). Which cells are stuck differs from chip to chip, so a
plan cannot know them: write-verify of a stuck cell runs the loop to its maximum
attempts and keeps the stuck value. Hence, per device and option o,

    E[error^2] = (1 - p) E_base[error^2 | o] + low d^2 + high (L - 1 - d)^2,
    seconds    = (1 - p) t_o + p max_attempts (t_program + t_read)   (verify options),

with p = low + high; a plain write costs one pulse either way. A plan's report gives the
expected number of stuck devices it tries to verify and the seconds those tries burn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import is_number, require
from ..plans import Plan
from ..programming import ProgrammingReport
from .cells import CellModel, Cells
from .registry import register_device_model
from .wrapped import WrappedDevice


@dataclass(frozen=True)
class Stuck(WrappedDevice, CellModel):
    """``base`` devices, a share ``low`` stuck at level 0 and ``high`` at the top level."""

    base: CellModel
    low: float = 0.01
    high: float = 0.0

    def __post_init__(self) -> None:
        require(isinstance(self.base, CellModel),
                f"stuck cells go on top of a device-by-device model (gaussian, pcm or a "
                f"swimkit.devices.CellModel); got {type(self.base).__name__}")
        for name in ("low", "high"):
            value = getattr(self, name)
            require(is_number(value, finite=True) and 0 <= value <= 1,
                    f"stuck {name} must be a share between 0 and 1 (got {value!r}); e.g. 0.01")
        require(self.low + self.high <= 1,
                f"stuck low + high must be at most 1 (got {self.low + self.high:g})")

    # --- delegated (slicing, sigma, loop, with_sigma: WrappedDevice) ---------------------

    @property
    def compensated(self) -> bool:
        return self.base.compensated

    @property
    def share(self) -> float:
        """p: the probability that a device is stuck."""
        return self.low + self.high

    def plain_sigmas(self, cells: Cells) -> Tensor:
        return self.base.plain_sigmas(cells)

    # --- what stuck cells do ---------------------------------------------------------------

    def evolve(self, cells: Cells, programmed: Tensor, times: Sequence[float],
               generator: torch.Generator | None,
               reads: Sequence[torch.Generator | None]) -> list[Tensor]:
        readings = self.base.evolve(cells, programmed, times, generator, reads)
        u = torch.rand(programmed.shape, generator=generator, dtype=torch.float64,
                       device=programmed.device)
        at_low, at_high = u < self.low, u >= 1.0 - self.high
        top = float(cells.top)
        return [torch.where(at_low, 0.0, torch.where(at_high, top, read)) for read in readings]

    def second_moments(self, cells: Cells, variances: Tensor, time: float) -> Tensor:
        base = self.base.second_moments(cells, variances, time)
        d = cells.digits.double().unsqueeze(-1)
        stuck = self.low * d.square() + self.high * (cells.top - d).square()
        return (1 - self.share) * base + stuck

    def device_means(self, cells: Cells, time: float) -> Tensor:
        d = cells.digits.double()
        base = self.base.device_means(cells, time)
        stuck = self.high * (cells.top - d) - self.low * d
        return stuck if base is None else (1 - self.share) * base + stuck

    def device_times(self, cells: Cells, menu: tuple[float, ...] | None) -> Tensor:
        times = self.base.device_times(cells, menu)
        burnt = self.loop.max_attempts * self.loop.attempt_time
        verify = (1 - self.share) * times[..., 1:] + self.share * burnt
        return torch.cat([times[..., :1], verify], dim=-1)

    def programming_report(self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor],
                           plan: Plan) -> ProgrammingReport:
        spent, chosen, cells = self.plan_seconds(values, scales, plan)
        burnt = self.loop.max_attempts * self.loop.attempt_time
        tried = lost = 0.0
        for options, layer in zip(chosen, cells, strict=True):
            base = self.base.device_times(layer, plan.menu)
            verified = options > 0
            tried += self.share * int(verified.sum())
            at = torch.gather(base, -1, options.to(base.device).unsqueeze(-1)).squeeze(-1)
            lost += self.share * float((burnt - at)[verified].sum())
        return self._report(values, scales, plan, spent, stuck_devices_verified=tried,
                            time_stuck_s=lost)

    def describe(self) -> dict[str, Any]:
        return {"kind": "stuck", "low": self.low, "high": self.high,
                "base": self.base.describe()}


def stuck(base: str = "gaussian", low: float = 0.01, high: float = 0.0, **settings: Any) -> Stuck:
    """Stuck cells on the model ``base`` built from ``settings`` (its cell form for
    gaussian: the same statistics, drawn device by device)."""
    from .registry import build_device_model

    if base.lower() == "gaussian":
        settings.setdefault("levels", "uniform")
    model = build_device_model(base, **settings)
    return Stuck(model, low=low, high=high)  # type: ignore[arg-type]


register_device_model(
    "stuck", stuck,
    options={"base": "gaussian", "low": 0.01, "high": 0.0, "levels": None, "compensation": None},
    help="a share low / high of the cells stuck at the lowest / highest level, on top of "
         "base (gaussian or pcm; levels and compensation go to it)")

__all__ = ["Stuck", "stuck"]
