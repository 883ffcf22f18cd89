"""Monte-Carlo accuracy under device variation, with confidence intervals.

One Monte-Carlo instance draws dW once for every device weight (a programmed chip) and
evaluates the whole test set with it. Accuracy under variation is the mean over many
instances, reported with the sample standard deviation and a 95% confidence interval
of the mean (Student t).

Instance k is drawn from a generator seeded by (seed, k) alone, so:
- results are the same on any number of processes (instances are split across the
  ranks of a torch.distributed group and gathered);
- plans evaluated with the same seed see the same underlying standard-normal draws
  (common random numbers), so their differences are not sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import distributed
from .devices import DeviceModel, draw, generator_for
from .errors import SwimkitError, require
from .mapping import DeviceWeight, device_weights, effective_weights, perturbed, weight_scales
from .progress import progress_bar
from .selection import Plan

Batches = Iterable[tuple[Tensor, Tensor]]


def _t_density(t: float, dof: float) -> float:
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return math.exp(log_norm - (dof + 1) / 2 * math.log1p(t * t / dof))


def _t_cdf_above_half(t: float, dof: float, steps: int = 2000) -> float:
    """P(T <= t) - 1/2 for t >= 0, by Simpson's rule on the density."""
    h = t / steps
    inner = sum((4 if i % 2 else 2) * _t_density(i * h, dof) for i in range(1, steps))
    return h / 3 * (_t_density(0.0, dof) + inner + _t_density(t, dof))


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom.

    Newton's method on the t distribution function (integrated numerically), started
    from the normal quantile; accurate to about 1e-8.
    """
    require(dof >= 1, "a confidence interval needs at least two samples")
    t = 1.959963984540054
    for _ in range(50):
        step = (_t_cdf_above_half(t, dof) - 0.475) / _t_density(t, dof)
        t -= step
        if abs(step) < 1e-10:
            break
    return t


@dataclass
class MCResult:
    """Accuracies (percent) of every Monte-Carlo instance, and their summary."""

    accuracies: Tensor
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return int(self.accuracies.numel())

    @property
    def mean(self) -> float:
        return float(self.accuracies.double().mean())

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for a single instance)."""
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

    def paired_difference(self, other: MCResult) -> MCResult:
        """Per-instance differences self - other (same seed: common random numbers)."""
        require(
            self.samples == other.samples and self.seed == other.seed,
            "a paired difference needs two results with the same seed and sample count",
        )
        return MCResult(self.accuracies - other.accuracies, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.ci95
        return {
            "mean": self.mean,
            "std": self.std,
            "ci95": [low, high],
            "samples": self.samples,
            "accuracies": [float(a) for a in self.accuracies],
        }

    def __str__(self) -> str:
        low, high = self.ci95
        return (
            f"{self.mean:.2f} +- {self.std:.2f} % "
            f"(95% CI {low:.2f}-{high:.2f}, n={self.samples})"
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
    device: DeviceModel,
    plan: Plan | str | None = None,
    samples: int = 100,
    seed: int = 0,
    *,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: bool = False,
) -> MCResult:
    """Accuracy of ``model`` under device variation over ``samples`` instances.

    ``plan`` marks the write-verified weights: a :class:`Plan`, ``"none"`` (or None:
    nothing verified) or ``"all"``. The test batches are held in memory once and every
    instance evaluates all of them. Inside a torch.distributed group the instances
    are shared among the ranks and every rank returns the full result.
    """
    require(isinstance(samples, int) and samples >= 1, f"samples must be >= 1 (got {samples!r})")
    weights = _plan_weights(model, plan, layers, exclude)
    masks = _masks(plan, weights)
    data = batches if isinstance(batches, (list, tuple)) else list(batches)
    require(len(data) > 0, "no test batches: give a non-empty loader")
    rank, world = distributed.rank(), distributed.world_size()
    mine = list(range(rank, samples, world))
    was_training = model.training
    model.eval()
    try:
        show = progress and rank == 0
        local = _run_instances(model, data, device, weights, masks, seed, mine, show)
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
    all_layers = device_weights(model)
    missing = [n for n in plan.masks if n not in all_layers]
    if missing:
        raise SwimkitError(
            f"the plan names weight {missing[0]!r}, which the model does not have: "
            "select again for this model"
        )
    for name, mask in plan.masks.items():
        shape = tuple(all_layers[name].value.shape)
        if tuple(mask.shape) != shape:
            raise SwimkitError(
                f"the plan's mask for {name} has shape {tuple(mask.shape)}, the weight {shape}: "
                "select again for this model"
            )
    return {n: all_layers[n] for n in plan.masks}


def _masks(plan: Plan | str | None, weights: Mapping[str, DeviceWeight]) -> dict[str, Tensor]:
    if isinstance(plan, Plan):
        return {k: v.to(weights[k].value.device) for k, v in plan.masks.items()}
    choice = (plan or "none").lower()
    require(choice in ("none", "all"), f"plan must be a Plan, 'none' or 'all' (got {plan!r})")
    values = effective_weights(weights)
    return Plan.uniform(values, verify=choice == "all").masks


@torch.inference_mode()
def _run_instances(
    model: nn.Module,
    data: Sequence[tuple[Tensor, Tensor]],
    device: DeviceModel,
    weights: Mapping[str, DeviceWeight],
    masks: Mapping[str, Tensor],
    seed: int,
    indices: Sequence[int],
    progress: bool,
) -> Tensor:
    values = effective_weights(weights)
    stds = device.noise_stds(values, weight_scales(values), masks)
    seen = sum(int(y.shape[0]) for _, y in data)
    where = next(iter(values.values())).device
    out = torch.empty(len(indices), dtype=torch.float64)
    with perturbed(model, weights) as offsets:
        for i, index in enumerate(progress_bar(indices, progress, "Monte-Carlo")):
            offsets.set(draw(stds, generator_for(seed, index, where)))
            with parametrize.cached():
                correct, _ = _count_correct(model, data)
            out[i] = 100.0 * correct / seen
        offsets.set(None)
    return out


def _gather(local: Tensor, mine: Sequence[int], samples: int, world: int) -> Tensor:
    """Every rank's accuracies, put back in instance order."""
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
