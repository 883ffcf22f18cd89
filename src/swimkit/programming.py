"""The write-verify loop as tensor formulas, and the programming time of a plan.

Each device is programmed with an error ``e ~ Normal(0, sigma^2)`` (device steps), read
back, and accepted if ``|e| <= tolerance``; otherwise it is programmed again, at most
``max_attempts`` (n) times. With ``a = tolerance / sigma``:

- acceptance per attempt ``q = erf(a / sqrt 2)``;
- expected attempts ``E = (1 - (1 - q)^n) / q``;
- an accepted device's error is a normal truncated to [-a, a] (in units of sigma), of
  variance ``1 - 2 a phi(a) / (2 Phi(a) - 1)``;
- a device that runs out of attempts keeps its last error, of second moment
  ``1 + a phi(a) / (1 - Phi(a))``; the residual mixes both by their shares.

The functions below take ``a`` (a float64 tensor) and return ratios to sigma; the
:class:`WriteVerify` settings class applies them to a sigma (a float or a per-device
tensor) and prices devices: ``t_program`` for a plain write, ``E * (t_program + t_read)``
for a verified one. :func:`price` sums a plan's devices; the speedup of a plan is the time
of verifying every device over the time of the plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

from .errors import SwimkitError, is_number, require

Sigma = TypeVar("Sigma", float, Tensor)

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# Beyond a = 40, truncation changes nothing in float64; below 1e-3 the truncated variance
# uses its series to avoid cancellation.
_A_MAX = 40.0
_A_MIN = 1e-300
_A_SERIES = 1e-3

DEFAULT_MAX_ATTEMPTS = 100
DEFAULT_T_PROGRAM = 100e-9
DEFAULT_T_READ = 50e-9


# --- formulas in a = tolerance / sigma ---------------------------------------------------


def acceptance(a: Tensor) -> Tensor:
    """Probability q that one attempt lands within the tolerance."""
    return torch.erf(a / _SQRT2)


def log_miss(a: Tensor) -> Tensor:
    """log(1 - q), accurate for q near 0 and near 1."""
    q = acceptance(a)
    return torch.where(q < 0.5, torch.log1p(-q), torch.log(torch.erfc(a / _SQRT2)))


def expected_attempts(a: Tensor, max_attempts: int) -> Tensor:
    """Mean number of program-and-read attempts: (1 - (1 - q)^n) / q."""
    return -torch.expm1(max_attempts * log_miss(a)) / acceptance(a)


def failure_probability(a: Tensor, max_attempts: int) -> Tensor:
    """Probability that a device is still out of tolerance after n attempts."""
    return torch.exp(max_attempts * log_miss(a))


def accepted_variance(a: Tensor) -> Tensor:
    """Variance of a unit normal truncated to [-a, a]."""
    exact = 1.0 - 2.0 * a * torch.exp(-0.5 * a * a - _LOG_SQRT_2PI) / acceptance(a)
    series = a * a / 3.0 - 2.0 * a**4 / 45.0
    return torch.where(a < _A_SERIES, series, exact).clamp_min(0.0)


def failed_second_moment(a: Tensor) -> Tensor:
    """E[x^2 | |x| > a] for a unit normal: 1 + a phi(a) / (1 - Phi(a))."""
    log_mills = -0.5 * a * a - _LOG_SQRT_2PI - torch.special.log_ndtr(-a)
    return 1.0 + a * torch.exp(log_mills)


def residual_variance(a: Tensor, max_attempts: int) -> Tensor:
    """Final error variance / sigma^2: accepted and failed devices mixed by their shares."""
    log_pf = max_attempts * log_miss(a)
    return -torch.expm1(log_pf) * accepted_variance(a) + torch.exp(log_pf) * failed_second_moment(a)


def _solve_increasing(
    ratio: Callable[[Tensor], Tensor], target: float
) -> tuple[float | None, float]:
    """The a with ratio(a) = target on the branch where ratio increases (the larger a, so
    fewer attempts), or None; and the lowest ratio reachable."""
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


# --- the loop's settings ---------------------------------------------------------------


@dataclass(frozen=True)
class WriteVerify:
    """Settings of the write-verify loop, and its closed forms at a given sigma.

    ``tolerance`` is the acceptance window +-delta in device steps; None leaves it to the
    device model, which solves it so that the residual is its ``sigma_verified``
    (:meth:`resolved`). ``t_program`` and ``t_read`` are the seconds of one program
    pulse and one verify read.
    """

    tolerance: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    t_program: float = DEFAULT_T_PROGRAM
    t_read: float = DEFAULT_T_READ

    def __post_init__(self) -> None:
        require(
            self.tolerance is None
            or (is_number(self.tolerance, finite=True) and self.tolerance > 0),
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
                is_number(value, finite=True) and value >= 0,
                f"{name} must be a time in seconds >= 0 (got {value!r}); e.g. 100e-9",
            )
        require(self.t_program + self.t_read > 0,
                "programming takes no time with t_program = 0 and t_read = 0; give one > 0")

    @property
    def attempt_time(self) -> float:
        """Seconds of one verify attempt: a program pulse and a read."""
        return self.t_program + self.t_read

    def with_tolerance(self, tolerance: float) -> WriteVerify:
        """The same loop with another tolerance."""
        return replace(self, tolerance=float(tolerance))

    def resolved(self, sigma: float, sigma_verified: float) -> WriteVerify:
        """This loop, its tolerance solved from (sigma, sigma_verified) if it has none."""
        if self.tolerance is not None:
            return self
        solved = WriteVerify.for_residual(sigma, sigma_verified, self.max_attempts,
                                          self.t_program, self.t_read)
        return self.with_tolerance(solved.tolerance)

    @classmethod
    def for_residual(
        cls,
        sigma: float,
        target_residual: float,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        t_program: float = DEFAULT_T_PROGRAM,
        t_read: float = DEFAULT_T_READ,
        include_failures: bool = True,
    ) -> WriteVerify:
        """The loop whose final error has standard deviation ``target_residual``.

        With ``include_failures`` (default) the target is :meth:`residual_sigma`, which
        counts devices that run out of attempts; where two tolerances fit, the larger
        (fewer attempts) is chosen. Without it the target is :meth:`accepted_sigma`.
        """
        _check_scalar_sigma(sigma, positive=True)
        require(
            is_number(target_residual) and 0 < target_residual < sigma,
            f"target residual sigma must be between 0 and sigma={sigma} "
            f"(got {target_residual!r}); write-verify can only reduce the spread",
        )
        probe = cls(None, max_attempts, t_program, t_read)  # validates the other settings

        def ratio(a: Tensor) -> Tensor:
            variance = residual_variance(a, max_attempts) if include_failures else (
                accepted_variance(a))
            return torch.sqrt(variance)

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
        return probe.with_tolerance(a * sigma)

    # --- closed forms at a sigma ---------------------------------------------------------

    def acceptance(self, sigma: Sigma) -> Sigma:
        """Probability q that one attempt lands within the tolerance."""
        return self._apply(sigma, acceptance)

    def expected_attempts(self, sigma: Sigma) -> Sigma:
        """Mean number of program-and-read attempts per device."""
        return self._apply(sigma, lambda a: expected_attempts(a, self.max_attempts))

    def failure_probability(self, sigma: Sigma) -> Sigma:
        """Probability that a device is still out of tolerance after max_attempts."""
        return self._apply(sigma, lambda a: failure_probability(a, self.max_attempts))

    def accepted_sigma(self, sigma: Sigma) -> Sigma:
        """Standard deviation of the error of an accepted device (truncated normal)."""
        return self._apply(sigma, lambda a: torch.sqrt(accepted_variance(a)), scale=True)

    def residual_sigma(self, sigma: Sigma) -> Sigma:
        """Standard deviation of the final error, devices that ran out of attempts included."""
        return self._apply(
            sigma, lambda a: torch.sqrt(residual_variance(a, self.max_attempts)), scale=True
        )

    def verify_time(self, sigma: Sigma) -> Sigma:
        """Seconds to write-verify one device: E * (t_program + t_read)."""
        return self._apply(
            sigma, lambda a: expected_attempts(a, self.max_attempts) * self.attempt_time
        )

    def _apply(self, sigma: Sigma, fn: Callable[[Tensor], Tensor], scale: bool = False) -> Sigma:
        if self.tolerance is None:
            raise SwimkitError(
                "this write-verify loop has no tolerance yet: give one, or use the loop of a "
                "DeviceModel (device_model.loop), solved from its sigma_verified"
            )
        sig, restore = _prepare(sigma)
        a = (self.tolerance / sig).clamp(_A_MIN, _A_MAX)
        out = fn(a)
        return restore(out * sig if scale else out)


# --- pricing a plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgrammingReport:
    """Modelled programming time of a plan against verifying all or nothing.

    Times in seconds; ``speedup`` = full-verify time / plan time; the fractions are shares
    in [0, 1] of the weights (any device verified) and of the devices verified. Devices
    with stuck cells add the expected number of stuck devices the plan tries to verify
    and the seconds those tries burn (each runs the loop to its maximum attempts).
    """

    time_plan_s: float
    time_full_verify_s: float
    time_no_verify_s: float
    speedup: float
    fraction_verified: float
    devices_fraction_verified: float
    stuck_devices_verified: float | None = None
    time_stuck_s: float | None = None

    @property
    def max_speedup(self) -> float:
        """The speedup of writing every device once (the model's cap)."""
        return self.time_full_verify_s / self.time_no_verify_s

    def to_dict(self) -> dict[str, Any]:
        """The fields, without the stuck-cell ones of devices that have none."""
        return {k: v for k, v in asdict(self).items() if v is not None or k in _ALWAYS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProgrammingReport:
        """A report as written by :meth:`to_dict`, or by the first release (keys without
        their unit, no device count)."""
        renamed = {_FIRST_RELEASE_KEYS.get(k, k): v for k, v in data.items()}
        renamed.setdefault("devices_fraction_verified", renamed.get("fraction_verified"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(renamed) - known)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in renamed and f.default is dataclasses.MISSING)
        if unknown or missing:
            what = f"unknown field {unknown[0]!r}" if unknown else f"no {missing[0]!r}"
            raise SwimkitError(f"cannot read a programming report ({what})")
        report = cls(**renamed)
        report.check()
        return report

    def check(self) -> None:
        """Refuse a report no plan can have: negative or non-finite times, a full verify
        faster than writing once, shares outside [0, 1], a speedup that does not follow."""
        times = (self.time_plan_s, self.time_full_verify_s, self.time_no_verify_s)
        require(all(is_number(t, finite=True) and t > 0 for t in times),
                f"a programming report with times {list(times)}: every time must be > 0 s")
        require(self.time_full_verify_s >= self.time_no_verify_s * (1 - 1e-9),
                "a programming report whose full verify is faster than writing every device "
                "once")
        for name in ("fraction_verified", "devices_fraction_verified"):
            value = getattr(self, name)
            require(is_number(value, finite=True) and 0 <= value <= 1,
                    f"a programming report with {name} {value!r}: a share in [0, 1]")
        require(is_number(self.speedup, finite=True) and math.isclose(
            self.speedup, self.time_full_verify_s / self.time_plan_s, rel_tol=1e-6),
                f"a programming report whose speedup {self.speedup!r} is not full verify's "
                "time over the plan's")


_ALWAYS = ("time_plan_s", "time_full_verify_s", "time_no_verify_s", "speedup",
           "fraction_verified", "devices_fraction_verified")

_FIRST_RELEASE_KEYS = {"time_plan": "time_plan_s", "time_full_verify": "time_full_verify_s",
                       "time_no_verify": "time_no_verify_s"}


def price(levels: Tensor, option_times: Tensor) -> float:
    """Seconds to program devices at option ``levels`` (uint8, ``(*shape, K)``).

    ``option_times`` gives each option's seconds per device: shape ``(O,)`` for every
    device alike, or ``(*shape, O)`` per weight (value-dependent devices).
    """
    levels = levels.to(option_times.device)
    if option_times.dim() == 1:
        counts = torch.bincount(levels.reshape(-1).long(), minlength=option_times.numel())
        return float((counts.double() * option_times.double()).sum())
    per_device = torch.gather(option_times.double(), -1, levels.long())
    return float(per_device.sum())


def weight_level_price(levels: Tensor, option_times: Tensor, devices: int) -> float:
    """Seconds for a weight-level plan: all K devices of a weight at its option ``levels``
    (one per weight; 0 = plain write). The closed form K * sum_i t(option_i)."""
    levels = levels.to(option_times.device)
    if option_times.dim() == 1:
        counts = torch.bincount(levels.reshape(-1).long(), minlength=option_times.numel())
        return devices * sum(int(c) * float(t) for c, t in zip(counts, option_times, strict=False)
                             if int(c))
    per_weight = torch.gather(option_times, -1, levels.long().unsqueeze(-1)).squeeze(-1)
    return devices * float(per_weight.double().sum())


# --- helpers -------------------------------------------------------------------------------


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
    ok = is_number(sigma, finite=True) and (sigma > 0 if positive else sigma >= 0)
    bound = "> 0" if positive else ">= 0"
    if not ok:
        raise SwimkitError(
            f"sigma must be a number {bound} in device steps (got {sigma!r}); e.g. 0.3"
        )


__all__ = [
    "ProgrammingReport",
    "WriteVerify",
    "accepted_variance",
    "acceptance",
    "expected_attempts",
    "failed_second_moment",
    "failure_probability",
    "price",
    "residual_variance",
    "weight_level_price",
]
