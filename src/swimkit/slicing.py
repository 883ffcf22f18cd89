"""Bit slicing: how one weight is spread over several devices.

A weight of N bits is stored on K = N / m devices of m bits each. Device j (j = 1 is the
most significant) carries significance 2^(-j m), so an error eps_j on it (in units of its
own step) moves the normalised weight by 2^(-j m) eps_j, and its variance enters the
weight's error variance with the factor 4^(-j m). With 8 x 1-bit slicing the most
significant device holds 75 % of a weight's error variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import is_integer, require


@dataclass(frozen=True)
class BitSlicing:
    """``bits_per_weight`` bits on devices of ``bits_per_device`` bits each."""

    bits_per_weight: int = 8
    bits_per_device: int = 1

    def __post_init__(self) -> None:
        require(
            is_integer(self.bits_per_weight) and self.bits_per_weight >= 1,
            f"bits_per_weight must be an integer >= 1 (got {self.bits_per_weight!r})",
        )
        require(
            is_integer(self.bits_per_device)
            and self.bits_per_device >= 1
            and self.bits_per_weight % self.bits_per_device == 0,
            f"bits_per_device must divide bits_per_weight ({self.bits_per_weight}); "
            f"got {self.bits_per_device!r}",
        )

    @property
    def devices(self) -> int:
        """K = N / m devices store one weight."""
        return self.bits_per_weight // self.bits_per_device

    def significances(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """2^(-j m) for j = 1..K, most significant first."""
        j = torch.arange(1, self.devices + 1, dtype=dtype)
        return torch.exp2(-j * self.bits_per_device)

    def variance_weights(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """4^(-j m) for j = 1..K: each device's share factor of the weight error variance."""
        return self.significances(dtype).square()

    @property
    def slice_factor(self) -> float:
        """c = sum_j 4^(-j m): the weight error variance per unit device variance."""
        m = self.bits_per_device
        return sum(4.0 ** (-j * m) for j in range(1, self.devices + 1))


__all__ = ["BitSlicing"]
