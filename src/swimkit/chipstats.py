"""The accuracies of a set of simulated chips and what is read from them: the mean and
its 95 % Student-t interval, the 5th percentile, the yield within a reference, and the
paired difference to another result of the same chips."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy import stats
from torch import Tensor

from .errors import require
from .frozen import frozen


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    require(dof >= 1, "a confidence interval needs at least two samples")
    return float(stats.t.ppf(0.975, dof))


@dataclass(frozen=True)
class MCResult:
    """Accuracies (percent) of every Monte-Carlo chip, and their summary.

    ``reference`` (percent, optional) is the accuracy the yield is measured against,
    ``within`` the points a chip may fall below it and still count. Frozen all the way
    down: ``accuracies`` reads as a copy, ``meta`` cannot be changed.
    """

    accuracies: Tensor
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    reference: float | None = None
    within: float = 1.0
    ci_target: float | None = None   # adaptive runs: the CI half-width asked for (points)
    ci_of: str = "mean"              # ... of the mean or of the paired difference
    ci_reached: float | None = None  # ... and the half-width reached when it stopped

    def __post_init__(self) -> None:
        require(isinstance(self.accuracies, Tensor), "accuracies must be a tensor of percent")
        object.__setattr__(self, "accuracies", self.accuracies.detach().clone())
        object.__setattr__(self, "meta", frozen(dict(self.meta or {})))

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        return value.clone() if name == "accuracies" else value

    @property
    def samples(self) -> int:
        return int(self.accuracies.numel())

    @property
    def mean(self) -> float:
        return float(self.accuracies.double().mean())

    @property
    def std(self) -> float:
        """Sample standard deviation (NaN for a single chip: one chip has no spread)."""
        if self.samples < 2:
            return math.nan
        return float(self.accuracies.double().std(unbiased=True))

    @property
    def ci95(self) -> tuple[float, float]:
        """95% confidence interval of the mean accuracy (NaN for a single chip: no CI)."""
        if self.samples < 2:
            return (math.nan, math.nan)
        half = ci_half_width(self.accuracies)
        return (self.mean - half, self.mean + half)

    @property
    def p05(self) -> float:
        """The 5th-percentile chip accuracy (linear interpolation between chips)."""
        return float(torch.quantile(self.accuracies.double(), 0.05))

    def yield_within(self, reference: float, within: float = 1.0) -> float:
        """Share of chips whose accuracy is at least ``reference - within``."""
        return float((self.accuracies.double() >= reference - within - 1e-9).double().mean())

    @property
    def chip_yield(self) -> float | None:
        """Share of chips within ``within`` points of ``reference`` (None without one)."""
        if self.reference is None:
            return None
        return self.yield_within(self.reference, self.within)

    @property
    def ci_stop(self) -> str | None:
        """Where an adaptive run stopped ("a mean CI of +-0.47"); None for a fixed run."""
        if self.ci_target is None:
            return None
        return f"a {self.ci_of} CI of +-{self.ci_reached:.2f}"

    def paired_difference(self, other: MCResult) -> MCResult:
        """Per-chip differences self - other over the chips both have (chip k is the same
        draw in both when the seeds agree: common random numbers)."""
        require(self.seed == other.seed,
                f"a paired difference needs two results of the same seed (got {self.seed} and "
                f"{other.seed})")
        n = min(self.samples, other.samples)
        return MCResult(self.accuracies[:n] - other.accuracies[:n], seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: accuracies in percent (keys end in ``_percent``), yield a fraction."""
        low, high = self.ci95
        out = {
            "mean_percent": self.mean,
            "std_percent": self.std,
            "ci95_percent": [low, high],
            "p05_percent": self.p05,
            "yield_fraction": self.chip_yield,
            "yield_reference_percent": self.reference,
            "yield_within_points": self.within if self.reference is not None else None,
            "samples": self.samples,
            "seed": self.seed,
            "accuracies_percent": [float(a) for a in self.accuracies],
        }
        if self.ci_target is not None:
            out.update({"ci_target_points": self.ci_target, "ci_of": self.ci_of,
                        "ci_reached_points": self.ci_reached})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MCResult:
        """The result written by :meth:`to_dict`."""
        accuracies = torch.tensor(data["accuracies_percent"], dtype=torch.float64)
        require(accuracies.dim() == 1 and accuracies.numel() > 0
                and bool(((accuracies >= 0) & (accuracies <= 100)).all()),
                "accuracies_percent must be a non-empty list of numbers between 0 and 100")
        return cls(
            accuracies,
            seed=int(data.get("seed", 0)),
            reference=data.get("yield_reference_percent"),
            within=1.0 if data.get("yield_within_points") is None
            else data["yield_within_points"],
            ci_target=data.get("ci_target_points"),
            ci_of=data.get("ci_of", "mean"),
            ci_reached=data.get("ci_reached_points"),
        )

    def __str__(self) -> str:
        low, high = self.ci95
        if self.samples < 2:
            return f"{self.mean:.2f} % (one chip: no spread, no CI; give --samples 2 or more)"
        return (
            f"{self.mean:.2f} +- {self.std:.2f} % "
            f"(95% CI {low:.2f}-{high:.2f}, p05 {self.p05:.2f}, n={self.samples}"
            + ("" if self.ci_stop is None else f", stopped at {self.ci_stop}") + ")"
        )


def ci_half_width(values: Tensor) -> float:
    """Half-width (points) of the 95 % Student-t interval of the mean of ``values``."""
    n = int(values.numel())
    if n < 2:
        return math.inf
    return t_quantile_975(n - 1) * float(values.double().std(unbiased=True)) / math.sqrt(n)
