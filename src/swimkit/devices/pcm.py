"""Device model ``pcm``: phase-change memory that drifts and reads noisily.

Each device's target conductance is G_T = x G_max (x its level, G_max = 25 uS). After
programming:

- **programming error** Normal(0, sigma_p(x)^2) in device steps, sigma_p(x) = ``sigma``
  times the measured shape of the PCM programming error against conductance,
  (0.26348 + 1.9650 x - 1.1731 x^2) / 1.0554 (Nandakumar et al., ICECS 2019; Joshi et
  al., Nature Communications 11, 2473, 2020). The fitted size, about 1 uS of 25, is
  what iterative programming leaves, so write-verify is what reaches it here: a plain
  write lands at ``sigma`` steps at the top level, the own loop at ``sigma_verified``;
- **drift** G(t) = G_prog ((t + t0) / t0)^(-nu), t seconds after programming, t0 = 20 s,
  with a drift exponent per device nu ~ Normal(mu(x), s(x)^2), mu(x) = clip(-0.0155 ln x
  + 0.0244, 0.049, 0.1), s(x) = clip(-0.0125 ln x - 0.0059, 0.008, 0.045), clipped at 0
  (the same measurements; these fits are the statistics of IBM aihwkit's PCM-like model);
- **read noise** (1/f): each read adds Normal(0, (G(t) Q(x) sqrt(ln((t + t0 + t_r) /
  (2 t_r))))^2), Q(x) = min(0.0088 / x^0.65, 0.2), t_r = 250 ns;
- optional **global drift compensation**: each layer's read-out is rescaled by one gain,
  calibrated at read time (target over measured sum of the layer's conductances, the
  read of a known input that real chips do).

Write-verify fixes the programming error only: drift and read noise stay, so the
variance a plan leaves at time t (:meth:`PCM.second_moments`) has a floor verify
cannot lower, which is why planning for a time changes the plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..errors import is_number, require
from ..programming import WriteVerify
from ..slicing import BitSlicing
from ..variation import PCM_PROGRAMMING, PolynomialVariation
from .cells import CellModel, Cells
from .registry import register_device_model

#: Levels below this count as this (ln 0 is undefined; as in the measured fits' floor).
LEVEL_FLOOR = 1e-3


@dataclass(frozen=True)
class PCM(CellModel):
    """Phase-change memory devices (see the module doc for every number's source)."""

    changes_with_time = True  # drift and read noise

    sigma: float = 0.3
    sigma_verified: float = 0.03
    bits_per_weight: int = 8
    bits_per_device: int = 1
    write_verify: WriteVerify = WriteVerify()
    compensation: bool = False
    t0: float = 20.0
    t_read_noise: float = 250e-9
    drift_scale: float = 1.0
    read_noise_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sigma", "sigma_verified", "drift_scale", "read_noise_scale"):
            value = getattr(self, name)
            require(is_number(value, finite=True) and value >= 0,
                    f"pcm {name} must be a number >= 0 (got {value!r})")
        for name in ("t0", "t_read_noise"):
            value = getattr(self, name)
            require(is_number(value, finite=True) and value > 0,
                    f"pcm {name} must be a time in seconds > 0 (got {value!r})")
        require(isinstance(self.compensation, bool),
                f"pcm compensation must be true or false (got {self.compensation!r})")
        object.__setattr__(self, "slicing", BitSlicing(self.bits_per_weight,
                                                        self.bits_per_device))
        object.__setattr__(self, "_shape", PolynomialVariation(PCM_PROGRAMMING, "pcm"))
        object.__setattr__(self, "_loop", self.write_verify.resolved(self.sigma,
                                                                     self.sigma_verified))

    @property
    def loop(self) -> WriteVerify:
        return self._loop  # type: ignore[attr-defined]

    @property
    def compensated(self) -> bool:
        return self.compensation

    def with_sigma(self, sigma: float) -> PCM:
        return replace(self, sigma=float(sigma))

    def plain_sigmas(self, cells: Cells) -> Tensor:
        return self.sigma * self._shape(cells.levels)  # type: ignore[attr-defined]

    # --- the measured statistics ------------------------------------------------------------

    def drift_exponent(self, levels: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and spread of the drift exponent nu at each level."""
        log = torch.log(levels.clamp(min=LEVEL_FLOOR))
        mean = (-0.0155 * log + 0.0244).clamp(0.049, 0.1) * self.drift_scale
        spread = (-0.0125 * log - 0.0059).clamp(0.008, 0.045) * self.drift_scale
        return mean, spread

    def read_noise(self, levels: Tensor, time: float) -> Tensor:
        """Relative read noise Q(x) sqrt(ln((t + t0 + t_r) / (2 t_r))) at each level."""
        q = (0.0088 / levels.clamp(min=LEVEL_FLOOR).pow(0.65)).clamp(max=0.2)
        elapsed = time + self.t0
        growth = math.log((elapsed + self.t_read_noise) / (2 * self.t_read_noise))
        return q * math.sqrt(max(growth, 0.0)) * self.read_noise_scale

    def _log_time(self, time: float) -> float:
        return math.log((time + self.t0) / self.t0)

    # --- what time does -------------------------------------------------------------------

    def evolve(self, cells: Cells, programmed: Tensor, times: Sequence[float],
               generator: torch.Generator | None,
               reads: Sequence[torch.Generator | None]) -> list[Tensor]:
        mean, spread = self.drift_exponent(cells.levels)
        nu = (mean + spread * torch.randn(mean.shape, generator=generator, dtype=torch.float64,
                                          device=mean.device)).clamp_(min=0.0)
        readings = []
        for time, read in zip(times, reads, strict=True):
            drifted = programmed * torch.exp(-nu * self._log_time(time))
            noise = torch.randn(drifted.shape, generator=read, dtype=torch.float64,
                                device=drifted.device)
            readings.append(drifted + drifted.abs() * self.read_noise(cells.levels, time) * noise)
        return readings

    def _moments(self, cells: Cells, time: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """E[D], E[D^2], the relative read noise q and the layer gain c at ``time``."""
        first, second = self._drift_moments(cells, time)
        gain = torch.ones((), dtype=torch.float64, device=first.device)
        if self.compensation:
            layer = cells.layer
            d = layer.digits.double()
            layer_first = first if layer is cells else self._drift_moments(layer, time)[0]
            target, expected = layer.weighted_sum(d), layer.weighted_sum(d * layer_first)
            if float(expected) > 0:
                gain = target / expected
        return first, second, self.read_noise(cells.levels, time), gain

    def _drift_moments(self, cells: Cells, time: float) -> tuple[Tensor, Tensor]:
        """E[D] and E[D^2] of every device, D = ((t + t0) / t0)^(-nu)."""
        mean, spread = self.drift_exponent(cells.levels)
        log_t = self._log_time(time)
        first = torch.exp(-mean * log_t + 0.5 * (spread * log_t) ** 2)
        second = torch.exp(-2 * mean * log_t + 2 * (spread * log_t) ** 2)
        return first, second

    def device_means(self, cells: Cells, time: float) -> Tensor:
        """E[c v - d] = d (c E[D] - 1): drift biases every device toward 0."""
        first, _, _, gain = self._moments(cells, time)
        return cells.digits.double() * (gain * first - 1)

    def second_moments(self, cells: Cells, variances: Tensor, time: float) -> Tensor:
        """E[(c v - d)^2], v = (d + e) D + read noise, D = ((t + t0) / t0)^(-nu), e of
        variance ``variances``, c the layer gain (1 without compensation; with it, the
        expected calibration sum 2^(-jm) d / sum 2^(-jm) d E[D]). The clip of nu at 0 is
        left out: it binds with a probability of about 5e-10 at the top level (mu 0.049,
        s 0.008) but up to 1.3 % at the lowest ones (mu 0.1, s 0.045), where drift is
        smallest in weight units."""
        first, second, q, gain = self._moments(cells, time)
        d = cells.digits.double()
        spread_at_t = (second * (1 + q.square())).unsqueeze(-1)
        d2 = d.square().unsqueeze(-1)
        return (gain**2 * (d2 + variances) * spread_at_t - 2 * gain * d2 * first.unsqueeze(-1)
                + d2).clamp_(min=0.0)

    def describe(self) -> dict[str, Any]:
        loop = self.loop
        return {
            "kind": "pcm", "sigma": self.sigma, "sigma_verified": self.sigma_verified,
            "bits_per_weight": self.bits_per_weight, "bits_per_device": self.bits_per_device,
            "devices_per_weight": self.slicing.devices, "compensation": self.compensation,
            "t0_s": self.t0, "t_read_noise_s": self.t_read_noise,
            "drift_scale": self.drift_scale, "read_noise_scale": self.read_noise_scale,
            "write_verify": {"tolerance": loop.tolerance, "max_attempts": loop.max_attempts,
                             "t_program_s": loop.t_program, "t_read_s": loop.t_read},
        }


def pcm(**settings: Any) -> PCM:
    return PCM(**settings)


register_device_model(
    "pcm", pcm, settings=("sigma", "sigma_verified", "bits_per_weight", "bits_per_device",
                          "write_verify"),
    options={"compensation": False, "t0": 20.0, "t_read_noise": 250e-9, "drift_scale": 1.0,
             "read_noise_scale": 1.0},
    help="phase-change memory: conductance-dependent programming error, drift with a "
         "per-device exponent, 1/f read noise; compensation=true rescales each layer at read")

__all__ = ["PCM", "pcm"]
