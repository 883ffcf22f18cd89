"""Gaussian devices whose error depends on each device's own level (multi-level cells).

A cell of m bits holds one of L = 2^m levels. Measured multi-level RRAM and PCM do not
land every level with the same spread: the extremes (the fully reset and fully set
states) are tighter than the levels in between, and in PCM the spread grows with the
target conductance (:data:`~swimkit.variation.PCM_PROGRAMMING`). Here device j's
plain-write spread is

    sigma_j = sigma * weight_curve(|w| / s_l) * level_curve(x_j),   x_j = d_j / (L - 1),

so a plan is priced and drawn device by device: verifying a device at a wide level
costs more attempts and removes more variance. ``levels`` is a variation curve over x
(``"pcm"``, ``"band:R"``, a CSV of level,factor, a callable).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

from ..errors import is_number, require
from ..programming import WriteVerify
from ..slicing import BitSlicing
from ..variation import Variation, as_variation
from .cells import CellModel, Cells


@dataclass(frozen=True)
class MultiLevelGaussian(CellModel):
    """Gaussian programming error with a spread per device level (see the module doc)."""

    levels: Any = "pcm"
    sigma: float = 0.3
    sigma_verified: float = 0.03
    bits_per_weight: int = 8
    bits_per_device: int = 1
    variation: Any = None
    write_verify: WriteVerify = WriteVerify()
    _curves: tuple[Variation, Variation] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("sigma", "sigma_verified"):
            value = getattr(self, name)
            require(is_number(value, finite=True) and value >= 0,
                    f"{name} must be a number >= 0 (got {value!r})")
        object.__setattr__(self, "slicing", BitSlicing(self.bits_per_weight,
                                                        self.bits_per_device))
        object.__setattr__(self, "_curves", (as_variation(self.levels),
                                             as_variation(self.variation)))
        object.__setattr__(self, "_loop", self.write_verify.resolved(self.sigma,
                                                                     self.sigma_verified))

    @property
    def loop(self) -> WriteVerify:
        return self._loop  # type: ignore[attr-defined]

    def plain_sigmas(self, cells: Cells) -> Tensor:
        by_level = self._curves[0](cells.levels)
        by_weight = self._curves[1](cells.unit).unsqueeze(-1)
        return (self.sigma * by_level * by_weight).double()

    def with_sigma(self, sigma: float) -> MultiLevelGaussian:
        return replace(self, sigma=float(sigma))

    def describe(self) -> dict[str, Any]:
        loop = self.loop
        return {
            "kind": "gaussian", "sigma": self.sigma, "sigma_verified": self.sigma_verified,
            "bits_per_weight": self.bits_per_weight, "bits_per_device": self.bits_per_device,
            "devices_per_weight": self.slicing.devices,
            "levels": self._curves[0].describe(), "variation": self._curves[1].describe(),
            "write_verify": {"tolerance": loop.tolerance, "max_attempts": loop.max_attempts,
                             "t_program_s": loop.t_program, "t_read_s": loop.t_read},
        }


__all__ = ["MultiLevelGaussian"]
