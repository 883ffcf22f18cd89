"""Monte-Carlo accuracy under device variation, with confidence intervals and chip yield.

One Monte-Carlo instance draws dW once for every device weight (a programmed chip) and
evaluates the whole test set with it. Accuracy under variation is summarised over many
chips: the mean, the sample standard deviation, a 95% confidence interval of the mean
(Student t), the 5th-percentile chip and the yield, the share of chips within P points
of a reference accuracy (full write-verify).

Chip k is drawn from a generator seeded by (seed, k) alone, so:
- results are the same on any number of processes (chips are split across the ranks
  of a torch.distributed group and gathered);
- plans evaluated with the same seed see the same underlying standard-normal draws
  (common random numbers), so paired differences between plans are not sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from scipy import stats
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import distributed
from .devices import NoiseModel, generator_for
from .errors import SwimkitError, require
from .mapping import (
    DeviceWeight,
    device_weights,
    effective_weights,
    perturbed,
    weight_scales,
)
from .plans import Plan
from .progress import progress_bar

Batches = Iterable[tuple[Tensor, Tensor]]


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    require(dof >= 1, "a confidence interval needs at least two samples")
    return float(stats.t.ppf(0.975, dof))


@dataclass
class MCResult:
    """Accuracies (percent) of every Monte-Carlo chip, and their summary.

    ``reference`` (percent, optional) is the accuracy the yield is measured against,
    ``within`` the points a chip may fall below it and still count.
    """

    accuracies: Tensor
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    reference: float | None = None
    within: float = 1.0

    @property
    def samples(self) -> int:
        return int(self.accuracies.numel())

    @property
    def mean(self) -> float:
        return float(self.accuracies.double().mean())

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for a single chip)."""
        if self.samples < 2:
            return 0.0
        return float(self.accuracies.double().std(unbiased=True))

    @property
    def ci95(self) -> tuple[float, float]:
        """95% confidence interval of the mean accuracy."""
        if self.samples < 2:
            return (self.mean, self.mean)
        half = t_quantile_975(self.samples - 1) * self.std / math.sqrt(self.samples)
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

    def paired_difference(self, other: MCResult) -> MCResult:
        """Per-chip differences self - other (same seed: common random numbers)."""
        require(
            self.samples == other.samples and self.seed == other.seed,
            "a paired difference needs two results with the same seed and sample count",
        )
        return MCResult(self.accuracies - other.accuracies, seed=self.seed)

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
        )

    def __str__(self) -> str:
        low, high = self.ci95
        return (
            f"{self.mean:.2f} +- {self.std:.2f} % "
            f"(95% CI {low:.2f}-{high:.2f}, p05 {self.p05:.2f}, n={self.samples})"
        )


@torch.inference_mode()
def accuracy(model: nn.Module, batches: Batches) -> float:
    """Clean accuracy (percent) of ``model`` on ``batches``, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        correct, seen = _count_correct(model, batches)
    finally:
        model.train(was_training)
    require(seen > 0, "no test batches: give a non-empty loader")
    return 100.0 * correct / seen


def _count_correct(model: nn.Module, batches: Batches) -> tuple[int, int]:
    correct: Tensor | int = 0
    seen = 0
    for x, y in batches:
        correct = correct + (model(x).argmax(dim=-1) == y).sum()
        seen += int(y.shape[0])
    return int(correct), seen


def evaluate(
    model: nn.Module,
    batches: Batches,
    device_model: NoiseModel,
    plan: Plan | str | None = None,
    samples: int = 100,
    seed: int = 0,
    *,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: bool = False,
) -> MCResult:
    """Accuracy of ``model`` under device variation over ``samples`` chips.

    ``device_model`` is any :class:`~swimkit.devices.NoiseModel`. ``plan`` says how the
    devices are programmed: a :class:`~swimkit.plans.Plan`, ``"none"`` (or None: nothing
    verified) or ``"all"``. The test batches are held in memory once and every chip
    evaluates all of them. Inside a torch.distributed group the chips are shared among
    the ranks and every rank returns the full result.
    """
    require(isinstance(samples, int) and samples >= 1, f"samples must be >= 1 (got {samples!r})")
    require(isinstance(device_model, NoiseModel),
            f"device_model must answer sampler(), variance() and describe() (a NoiseModel such "
            f"as swimkit.DeviceModel); got {type(device_model).__name__}")
    weights = _plan_weights(model, plan, layers, exclude)
    chosen = _as_plan(plan, weights, device_model)
    data = batches if isinstance(batches, (list, tuple)) else list(batches)
    require(len(data) > 0, "no test batches: give a non-empty loader")
    rank, world = distributed.rank(), distributed.world_size()
    mine = list(range(rank, samples, world))
    was_training = model.training
    model.eval()
    try:
        show = progress and rank == 0
        local = _run_chips(model, data, device_model, weights, chosen, seed, mine, show)
    finally:
        model.train(was_training)
    accuracies = _gather(local, mine, samples, world)
    meta = {"plan": plan.method if isinstance(plan, Plan) else (plan or "none")}
    return MCResult(accuracies=accuracies, seed=seed, meta=meta)


def _plan_weights(
    model: nn.Module, plan: Plan | str | None, layers, exclude
) -> dict[str, DeviceWeight]:
    if not isinstance(plan, Plan):
        require(plan is None or isinstance(plan, str),
                f"plan must be a Plan, 'none' or 'all' (got {type(plan).__name__})")
        return device_weights(model, layers=layers, exclude=exclude)
    if layers or exclude:  # a plan names its weights: they must agree with the exclusion
        kept = device_weights(model, layers=layers, exclude=exclude)
        outside = [name for name in plan.names if name not in kept]
        if outside:
            raise SwimkitError(f"the plan programs {outside[0]!r}, which the excluded layers "
                               f"({', '.join(exclude or ())}) keep digital: make the plan "
                               "with the same exclusion")
    return plan.weights_in(model)


def _as_plan(plan: Plan | str | None, weights: Mapping[str, DeviceWeight],
             device_model: NoiseModel) -> Plan | None:
    """The plan to draw with: a Plan, None for "none", a full-verify plan for "all"."""
    if isinstance(plan, Plan):
        return plan
    choice = (plan or "none").lower()
    require(choice in ("none", "all"), f"plan must be a Plan, 'none' or 'all' (got {plan!r})")
    if choice == "none":
        return None
    devices = getattr(device_model, "devices_per_weight", None)
    return Plan.uniform(effective_weights(weights), verify=True, devices_per_weight=devices)


@torch.inference_mode()
def _run_chips(
    model: nn.Module,
    data: Sequence[tuple[Tensor, Tensor]],
    device_model: NoiseModel,
    weights: Mapping[str, DeviceWeight],
    plan: Plan | None,
    seed: int,
    indices: Sequence[int],
    progress: bool,
) -> Tensor:
    values = effective_weights(weights)
    sample = device_model.sampler(values, weight_scales(values), plan)
    seen = sum(int(y.shape[0]) for _, y in data)
    where = next(iter(values.values())).device
    out = torch.empty(len(indices), dtype=torch.float64)
    with perturbed(model, weights) as offsets:
        for i, index in enumerate(progress_bar(indices, progress, "Monte-Carlo")):
            offsets.set(sample(generator_for(seed, index, where)))
            with parametrize.cached():
                correct, _ = _count_correct(model, data)
            out[i] = 100.0 * correct / seen
        offsets.set(None)
    return out


def _gather(local: Tensor, mine: Sequence[int], samples: int, world: int) -> Tensor:
    """Every rank's accuracies, put back in chip order."""
    if world == 1:
        return local
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (list(mine), local.tolist()))
    result = torch.empty(samples, dtype=torch.float64)
    for indices, values in parts:
        result[torch.as_tensor(indices, dtype=torch.long)] = torch.as_tensor(
            values, dtype=torch.float64
        )
    return result


__all__ = ["MCResult", "accuracy", "evaluate", "t_quantile_975"]
