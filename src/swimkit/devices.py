"""The device-variation model: how far a programmed weight lands from its target.

Design §2. A weight of layer l is mapped as w / s_l (s_l = max |W_l|) onto K = N / m
devices of m bits each; device j carries significance 2^(-j m) and lands with an error
eps_j ~ Normal(0, sigma^2) in units of its own step. Summed, the weight error is one
Gaussian per weight,

    dW ~ Normal(0, (s_l * sigma * sqrt(c))^2),   c = sum_j 4^(-j m),

so it is drawn in one go. ``sigma`` is ``sigma_verified`` for write-verified weights.
A variation curve makes sigma depend on the normalised level |w| / s_l (U-SWIM's
value-dependent setting, or a measured curve).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import is_number, require
from .mapping import safe_scale
from .variation import Variation, as_variation


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for Monte-Carlo instance ``index`` of a run seeded with ``seed``.

    Each instance's draw depends only on (seed, index), so a run gives the same
    numbers on any number of processes, and two methods evaluated with the same seed
    see the same underlying draws (common random numbers).
    """
    digest = hashlib.sha256(f"swimkit:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class DeviceModel:
    """Gaussian device variation of bit-sliced weights, with or without write-verify.

    ``sigma`` is the variation of a plain write and ``sigma_verified`` the residual
    variation of a write-verified device, both in device steps. ``variation`` and
    ``verified_variation`` (optional) scale them by the weight's normalised level:
    a :class:`~swimkit.variation.Variation`, any callable level -> factor, a CSV path
    or a spec such as ``"band:3"``.
    """

    sigma: float = 0.3
    sigma_verified: float = 0.03
    bits_per_weight: int = 8
    bits_per_device: int = 1
    variation: Any = None
    verified_variation: Any = None
    _curves: tuple[Variation, Variation] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require(
            is_number(self.sigma, finite=True) and self.sigma >= 0,
            f"sigma must be a number >= 0 (got {self.sigma!r}); e.g. --sigma 0.3",
        )
        require(
            is_number(self.sigma_verified, finite=True) and self.sigma_verified >= 0,
            f"sigma_verified must be a number >= 0 (got {self.sigma_verified!r}); "
            "e.g. --sigma-verified 0.03",
        )
        require(
            isinstance(self.bits_per_weight, int) and self.bits_per_weight >= 1,
            f"bits_per_weight must be an integer >= 1 (got {self.bits_per_weight!r})",
        )
        require(
            isinstance(self.bits_per_device, int)
            and self.bits_per_device >= 1
            and self.bits_per_weight % self.bits_per_device == 0,
            f"bits_per_device must divide bits_per_weight ({self.bits_per_weight}); "
            f"got {self.bits_per_device!r}",
        )
        curves = (as_variation(self.variation), as_variation(self.verified_variation))
        object.__setattr__(self, "_curves", curves)

    @property
    def devices_per_weight(self) -> int:
        """K = N / m devices store one weight."""
        return self.bits_per_weight // self.bits_per_device

    @property
    def slice_factor(self) -> float:
        """c = sum_j 4^(-j m): the variance of a weight error per unit device variance."""
        m = self.bits_per_device
        return sum(4.0 ** (-j * m) for j in range(1, self.devices_per_weight + 1))

    @property
    def value_dependent(self) -> bool:
        """True when sigma depends on the weight's level."""
        return not all(curve.uniform for curve in self._curves)

    def level_sigma(self, level: Tensor, verified: bool) -> Tensor:
        """Per-weight sigma (device steps) at normalised levels ``level`` in [0, 1]."""
        base = self.sigma_verified if verified else self.sigma
        return base * self._curves[int(verified)](level)

    def weight_sigma(
        self, value: Tensor, scale: Tensor, verified: Tensor | None = None
    ) -> Tensor:
        """Per-weight sigma in device steps for weights ``value`` of a layer with ``scale``.

        ``verified`` (bool, like ``value``) marks the write-verified weights.
        """
        level = _level(value, scale)
        plain = self.level_sigma(level, verified=False)
        if verified is None:
            return plain
        return torch.where(verified, self.level_sigma(level, verified=True), plain)

    def noise_std(self, value: Tensor, scale: Tensor, verified: Tensor | None = None) -> Tensor:
        """Standard deviation of dW for every weight (weight units)."""
        return self.weight_sigma(value, scale, verified) * (scale * math.sqrt(self.slice_factor))

    def sample(
        self,
        values: Mapping[str, Tensor],
        scales: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One Monte-Carlo instance: a draw of dW for every weight in ``values``."""
        return draw(self.noise_stds(values, scales, masks), generator)

    def noise_stds(
        self,
        values: Mapping[str, Tensor],
        scales: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Standard deviation of dW for every weight, shaped like the weight.

        Uniform ones are expanded views of one number (no memory). They do not change
        between Monte-Carlo instances: compute them once, then :func:`draw`.
        """
        masks = masks or {}
        return {
            name: self._std(value, scales[name], masks.get(name)).to(value.dtype)
            .expand(value.shape)
            for name, value in values.items()
        }

    def _std(self, value: Tensor, scale: Tensor, verified: Tensor | None) -> Tensor:
        if self.value_dependent:
            return self.noise_std(value, scale, verified)
        unit = scale.to(value.dtype) * math.sqrt(self.slice_factor)
        if verified is None or not bool(verified.any()):
            return unit * self.sigma
        if bool(verified.all()):
            return unit * self.sigma_verified
        return torch.where(verified.to(value.device), unit * self.sigma_verified,
                           unit * self.sigma)

    def describe(self) -> dict[str, Any]:
        """The settings, for result files."""
        return {
            "sigma": self.sigma,
            "sigma_verified": self.sigma_verified,
            "bits_per_weight": self.bits_per_weight,
            "bits_per_device": self.bits_per_device,
            "devices_per_weight": self.devices_per_weight,
            "slice_factor": self.slice_factor,
            "variation": self._curves[0].describe(),
            "verified_variation": self._curves[1].describe(),
        }


def draw(stds: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Standard normals scaled by ``stds``, drawn in their order on each tensor's device.

    Two plans drawn with the same generator state share the same underlying normals
    (common random numbers).
    """
    return {
        name: torch.randn(std.shape, generator=generator, device=std.device,
                          dtype=std.dtype).mul_(std)
        for name, std in stds.items()
    }


def _level(value: Tensor, scale: Tensor) -> Tensor:
    """Normalised level |w| / s in [0, 1] (0 for an all-zero layer)."""
    return (value.detach().abs() / safe_scale(scale)).clamp_(0.0, 1.0)


def generator_for(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded for Monte-Carlo instance ``index``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(sample_seed(seed, index))
    return gen
