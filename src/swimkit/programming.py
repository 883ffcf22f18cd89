"""Write-verify loop and programming-time model.

Each device is programmed with an error ``e ~ Normal(0, sigma^2)`` (in device steps),
read back, and accepted if ``|e| <= tolerance``; otherwise it is programmed again, at
most ``max_attempts`` times. With ``a = tolerance / sigma``:

- acceptance per attempt ``q = erf(a / sqrt 2)``;
- expected attempts ``E = (1 - (1 - q)^max_attempts) / q``;
- an accepted device's error is a normal truncated to [-tolerance, tolerance], with
  standard deviation ``sigma sqrt(1 - 2 a phi(a) / (2 Phi(a) - 1))``;
- a device that exhausts its attempts keeps its last error, a normal conditioned on
  ``|e| > tolerance``, with ``E[e^2] = sigma^2 (1 + a phi(a) / (1 - Phi(a)))``.

Programming a weight of K devices takes ``K * t_program`` written once and
``K * E * (t_program + t_read)`` verified. The speedup of a plan is the time of verifying
every weight over the time of the plan: unlike the verified fraction alone, it counts
what writing the unverified weights still costs.

Every function takes sigma as a float or a tensor of per-weight sigmas (for
value-dependent variation) and returns the same kind; the maths runs in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from .errors import SwimkitError, is_number, require

Sigma = TypeVar("Sigma", float, Tensor)

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# Beyond a = 40 sigma, truncation changes nothing in float64; below 1e-3 the truncated
# variance uses its series to avoid cancellation.
_A_MAX = 40.0
_A_MIN = 1e-300
_A_SERIES = 1e-3


@dataclass(frozen=True)
class WriteVerify:
    """Settings of the write-verify loop.

    ``tolerance`` is the acceptance window +-delta in device steps; ``t_program`` and
    ``t_read`` are the seconds of one program pulse and one verify read.
    """

    tolerance: float
    max_attempts: int = 100
    t_program: float = 100e-9
    t_read: float = 50e-9

    def __post_init__(self) -> None:
        require(
            is_number(self.tolerance) and math.isfinite(self.tolerance) and self.tolerance > 0,
            f"write-verify tolerance must be a number > 0 in device steps "
            f"(got {self.tolerance!r}); e.g. 0.05",
        )
        require(
            isinstance(self.max_attempts, int)
            and not isinstance(self.max_attempts, bool)
            and self.max_attempts >= 1,
            f"max_attempts must be a whole number >= 1 (got {self.max_attempts!r}); e.g. 20",
        )
        for name in ("t_program", "t_read"):
            value = getattr(self, name)
            require(
                is_number(value) and math.isfinite(value) and value >= 0,
                f"{name} must be a time in seconds >= 0 (got {value!r}); e.g. 100e-9",
            )

    @classmethod
    def for_residual(
        cls,
        sigma: float,
        target_residual: float,
        max_attempts: int = 100,
        t_program: float = 100e-9,
        t_read: float = 50e-9,
        include_failures: bool = True,
    ) -> WriteVerify:
        """The loop whose final error has standard deviation ``target_residual``.

        With ``include_failures`` (default) the target is :meth:`residual_sigma`, which
        counts devices that run out of attempts; where two tolerances fit, the larger
        (fewer attempts) is chosen. Without it the target is :meth:`accepted_sigma`, the
        design's formula for accepted devices only.
        """
        _check_scalar_sigma(sigma, positive=True)
        require(
            is_number(target_residual) and 0 < target_residual < sigma,
            f"target residual sigma must be between 0 and sigma={sigma} "
            f"(got {target_residual!r}); write-verify can only reduce the spread",
        )
        probe = cls(1.0, max_attempts, t_program, t_read)  # validates the other settings
        ratio = probe._residual_ratio if include_failures else _accepted_ratio
        a, lowest = _solve_increasing(ratio, target_residual / sigma)
        if a is None:
            hint = (
                f"raise max_attempts above {max_attempts} or pass include_failures=False"
                if include_failures
                else "ask for a larger target"
            )
            raise SwimkitError(
                f"a residual sigma of {target_residual:.4g} is not reachable from "
                f"sigma={sigma:.4g} with max_attempts={max_attempts} "
                f"(the lowest is {lowest * sigma:.4g}); {hint}"
            )
        return cls(a * sigma, max_attempts, t_program, t_read)

    # --- closed forms --------------------------------------------------------------

    def acceptance(self, sigma: Sigma) -> Sigma:
        """Probability q that one attempt lands within the tolerance."""
        return self._apply(sigma, lambda a: torch.erf(a / _SQRT2))

    def expected_attempts(self, sigma: Sigma) -> Sigma:
        """Mean number of program-and-read attempts per device."""
        return self._apply(sigma, self._attempts_of)

    def failure_probability(self, sigma: Sigma) -> Sigma:
        """Probability that a device is still out of tolerance after max_attempts."""
        return self._apply(sigma, lambda a: torch.exp(self.max_attempts * _log_miss(a)))

    def accepted_sigma(self, sigma: Sigma) -> Sigma:
        """Standard deviation of the error of an accepted device (truncated normal)."""
        return self._apply(sigma, _accepted_ratio, scale=True)

    def residual_sigma(self, sigma: Sigma) -> Sigma:
        """Standard deviation of the final error, devices that ran out of attempts included."""
        return self._apply(sigma, self._residual_ratio, scale=True)

    def time_per_device(self, sigma: Sigma, verified: bool | Tensor) -> Sigma | Tensor:
        """Seconds to program one device: ``E * (t_program + t_read)`` verified, else
        ``t_program``. A bool tensor ``verified`` gives a tensor (broadcast with sigma)."""
        sig, restore = _prepare(sigma)
        verify_time = self.expected_attempts(sig) * (self.t_program + self.t_read)
        if isinstance(verified, Tensor):
            out = torch.where(verified.to(sig.device), verify_time, self.t_program)
            return restore(out) if isinstance(sigma, Tensor) else out
        return restore(verify_time if verified else torch.full_like(sig, self.t_program))

    # --- Monte-Carlo of the loop itself ---------------------------------------------

    def simulate(
        self, sigma: float | Tensor, n: int, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Run the loop on ``n`` devices (per element of a sigma tensor).

        Returns ``attempts`` (int64), ``error`` (the final error, device steps) and
        ``accepted`` (bool), each shaped ``(n, *sigma.shape)``.
        """
        sig, _ = _prepare(sigma)
        require(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1,
            f"n must be a whole number of devices >= 1 (got {n!r})",
        )
        shape = (n, *sig.shape)
        flat_sigma = sig.expand(shape).reshape(-1)
        error = torch.zeros(flat_sigma.numel(), dtype=torch.float64, device=sig.device)
        attempts = torch.zeros(flat_sigma.numel(), dtype=torch.int64, device=sig.device)
        active = torch.arange(flat_sigma.numel(), device=sig.device)
        for _ in range(self.max_attempts):
            draw = torch.randn(
                active.numel(), dtype=torch.float64, device=sig.device, generator=generator
            )
            draw = draw * flat_sigma[active]
            error[active] = draw
            attempts[active] += 1
            active = active[draw.abs() > self.tolerance]
            if active.numel() == 0:
                break
        out_dtype = sigma.dtype if isinstance(sigma, Tensor) and sigma.is_floating_point() else None
        return {
            "attempts": attempts.reshape(shape),
            "error": error.reshape(shape).to(out_dtype or torch.float64),
            "accepted": (error.abs() <= self.tolerance).reshape(shape),
        }

    # --- internals ------------------------------------------------------------------

    def _apply(self, sigma: Sigma, fn: Callable[[Tensor], Tensor], scale: bool = False) -> Sigma:
        sig, restore = _prepare(sigma)
        a = (self.tolerance / sig).clamp(_A_MIN, _A_MAX)
        out = fn(a)
        return restore(out * sig if scale else out)

    def _attempts_of(self, a: Tensor) -> Tensor:
        q = torch.erf(a / _SQRT2)
        return -torch.expm1(self.max_attempts * _log_miss(a)) / q

    def _residual_ratio(self, a: Tensor) -> Tensor:
        """Residual sigma / sigma: accepted and failed devices mixed by their shares."""
        log_pf = self.max_attempts * _log_miss(a)
        pf = torch.exp(log_pf)
        var = -torch.expm1(log_pf) * _accepted_var(a) + pf * _failed_var(a)
        return torch.sqrt(var)


def _accepted_var(a: Tensor) -> Tensor:
    """Variance of a unit normal truncated to [-a, a]."""
    q = torch.erf(a / _SQRT2)
    exact = 1.0 - 2.0 * a * torch.exp(-0.5 * a * a - _LOG_SQRT_2PI) / q
    series = a * a / 3.0 - 2.0 * a**4 / 45.0
    return torch.where(a < _A_SERIES, series, exact).clamp_min(0.0)


def _accepted_ratio(a: Tensor) -> Tensor:
    """Accepted sigma / sigma."""
    return torch.sqrt(_accepted_var(a))


def _failed_var(a: Tensor) -> Tensor:
    """E[x^2 | |x| > a] for a unit normal: 1 + a phi(a) / (1 - Phi(a))."""
    log_mills = -0.5 * a * a - _LOG_SQRT_2PI - torch.special.log_ndtr(-a)
    return 1.0 + a * torch.exp(log_mills)


def _log_miss(a: Tensor) -> Tensor:
    """log(1 - q), accurate for q near 0 and near 1."""
    q = torch.erf(a / _SQRT2)
    return torch.where(q < 0.5, torch.log1p(-q), torch.log(torch.erfc(a / _SQRT2)))


def _solve_increasing(
    ratio: Callable[[Tensor], Tensor], target: float
) -> tuple[float | None, float]:
    """The a with ratio(a) = target on the branch where ratio increases (the larger a,
    so fewer attempts), or None; and the lowest ratio reachable."""
    grid = torch.logspace(-6, math.log10(_A_MAX), 4001, dtype=torch.float64)
    values = ratio(grid)
    best = int(values.argmin())
    lowest = float(values[best])
    if lowest >= target:
        return None, lowest
    above = torch.nonzero(values[best:] >= target)
    require(above.numel() > 0, "target residual sigma must be below sigma")
    hi_index = best + int(above[0])
    lo, hi = float(grid[hi_index - 1]), float(grid[hi_index])
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(ratio(torch.tensor(mid, dtype=torch.float64))) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi), lowest


# --- programming time ---------------------------------------------------------------


def programming_time(
    sigma_plain: Tensor | float,
    verified: Tensor,
    devices_per_weight: int,
    write_verify: WriteVerify,
) -> float:
    """Seconds to program the weights of ``verified`` (True = write-verify, else once).

    ``sigma_plain`` is the plain-write sigma, one number or one per weight (same shape).
    """
    return _layer_times(sigma_plain, verified, devices_per_weight, write_verify)[0]


def verify_cost(
    sigma_plain: Tensor | float, devices_per_weight: int, write_verify: WriteVerify
) -> Tensor:
    """Extra seconds of verifying each weight over writing it once (float64 tensor).

    ``K * (E * (t_program + t_read) - t_program)``: the price of each weight in a
    time-budget selection.
    """
    k = _check_devices(devices_per_weight)
    sig, _ = _prepare(sigma_plain)
    wv = write_verify
    return k * (wv.expected_attempts(sig) * (wv.t_program + wv.t_read) - wv.t_program)


@dataclass
class ProgrammingReport:
    """Modelled programming time of a plan against verifying all or nothing (seconds)."""

    time_plan: float
    time_full_verify: float
    time_no_verify: float
    speedup: float
    fraction_verified: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def programming_report(
    sigma_plain: Mapping[str, Tensor | float] | Tensor | float,
    masks: Mapping[str, Tensor],
    devices_per_weight: int,
    write_verify: WriteVerify,
) -> ProgrammingReport:
    """Sum the programming time of a plan (layer name -> verify mask) over its layers.

    ``sigma_plain`` is one sigma for every weight, or a dict layer name -> sigma (a float
    or a per-weight tensor shaped like that layer's mask).
    """
    require(bool(masks), "the plan has no layers; give at least one verify mask")
    plan = full = none = 0.0
    count = total = 0
    for name, mask in masks.items():
        if isinstance(sigma_plain, Mapping):
            require(
                name in sigma_plain,
                f"no plain-write sigma for layer {name!r}; give one for every layer of the plan",
            )
            sig = sigma_plain[name]
        else:
            sig = sigma_plain
        times = _layer_times(sig, mask, devices_per_weight, write_verify)
        plan, full, none = plan + times[0], full + times[1], none + times[2]
        count += int(mask.sum())
        total += mask.numel()
    require(
        plan > 0,
        "the plan takes no programming time (t_program = 0 and nothing verified); "
        "set t_program > 0 to get a speedup",
    )
    return ProgrammingReport(
        time_plan=plan,
        time_full_verify=full,
        time_no_verify=none,
        speedup=full / plan,
        fraction_verified=count / total if total else 0.0,
    )


def _layer_times(
    sigma_plain: Tensor | float, verified: Tensor, devices_per_weight: int, wv: WriteVerify
) -> tuple[float, float, float]:
    """(plan, all verified, none verified) seconds for one mask."""
    k = _check_devices(devices_per_weight)
    require(
        isinstance(verified, Tensor) and verified.dtype == torch.bool,
        "a verify mask must be a bool tensor (True = write-verify the weight)",
    )
    sig, _ = _prepare(sigma_plain)
    require(
        sig.numel() == 1 or sig.shape == verified.shape,
        f"per-weight sigma shaped {tuple(sig.shape)} does not match the verify mask "
        f"shaped {tuple(verified.shape)}; give one sigma or one per weight",
    )
    n = verified.numel()
    verify_time = wv.expected_attempts(sig.reshape(()) if sig.numel() == 1 else sig)
    verify_time = verify_time.to(verified.device) * (wv.t_program + wv.t_read)
    none = k * n * wv.t_program
    if sig.numel() == 1:
        count = int(verified.sum())
        each = float(verify_time)
        return k * (count * each + (n - count) * wv.t_program), k * n * each, none
    plan = k * float(torch.where(verified, verify_time, wv.t_program).sum())
    return plan, k * float(verify_time.sum()), none


def _check_devices(devices_per_weight: int) -> int:
    require(
        isinstance(devices_per_weight, int)
        and not isinstance(devices_per_weight, bool)
        and devices_per_weight >= 1,
        f"devices_per_weight must be a whole number >= 1 (got {devices_per_weight!r}); "
        "e.g. 8 for 8-bit weights on 1-bit devices",
    )
    return devices_per_weight


# --- helpers ------------------------------------------------------------------------


def _prepare(sigma: float | Tensor) -> tuple[Tensor, Callable[[Tensor], Any]]:
    """sigma as a float64 tensor, and a function that returns results in sigma's kind."""
    if isinstance(sigma, Tensor):
        sig = sigma.detach().to(torch.float64)
        require(
            bool(torch.isfinite(sig).all()) and bool((sig >= 0).all()),
            "sigma must be finite and >= 0 for every weight",
        )
        dtype = sigma.dtype if sigma.is_floating_point() else torch.float64
        return sig, lambda t: t.to(dtype)
    _check_scalar_sigma(sigma)
    return torch.tensor(float(sigma), dtype=torch.float64), lambda t: float(t)


def _check_scalar_sigma(sigma: object, positive: bool = False) -> None:
    ok = is_number(sigma) and math.isfinite(sigma) and (sigma > 0 if positive else sigma >= 0)
    bound = "> 0" if positive else ">= 0"
    if not ok:
        raise SwimkitError(
            f"sigma must be a number {bound} in device steps (got {sigma!r}); e.g. 0.3"
        )


