"""Cutting one score per weight at a budget: a fraction of the weights or a time.

With a fraction, exactly round(fraction * total) weights are verified (top-k, which
works beyond 2^24 elements, unlike torch.quantile). With a programming-time budget
(a speedup over verifying every weight, or seconds), weights are taken in score order
while the modelled time stays within it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..errors import SwimkitError, check_fraction, check_speedup, is_number, require
from .registry import Budget, BudgetKind


def time_budget_seconds(budget: Budget, base: float, full: float) -> float:
    """Seconds a time budget allows (checked against writing every device once)."""
    speedup = budget.kind is BudgetKind.SPEEDUP
    seconds = full / check_speedup(budget.value) if speedup else budget.value
    require(is_number(seconds, finite=True) and seconds >= 0,
            f"the time budget must be a number of seconds >= 0 (got {seconds!r})")
    if seconds < base * (1 - 1e-12):
        ask = "a smaller speedup" if speedup else "a larger time budget"
        raise SwimkitError(
            f"the budget {seconds:.4g} s is below the time of writing every weight once "
            f"({base:.4g} s, a speedup of {full / base:.3g}x): ask for {ask}"
        )
    return seconds


@dataclass
class FlatScores:
    """Scores of every weight, flattened in layer order, with the layers' shapes."""

    scores: dict[str, Tensor]

    @cached_property
    def flat(self) -> Tensor:
        return torch.cat([s.detach().reshape(-1).cpu() for s in self.scores.values()])

    @property
    def total(self) -> int:
        return self.flat.numel()

    def masks(self, flat_mask: Tensor) -> dict[str, Tensor]:
        """The flat mask cut back into per-layer masks on each score's device."""
        masks, start = {}, 0
        for name, s in self.scores.items():
            masks[name] = flat_mask[start : start + s.numel()].reshape(s.shape).to(s.device)
            start += s.numel()
        return masks

    def top_fraction(self, fraction: float) -> Tensor:
        check_fraction(fraction)
        return top_k(self.flat, round(fraction * self.total))

    def within_time(self, extra: Tensor, allowed_seconds: float) -> Tensor:
        """Verify weights in score order while their ``extra`` seconds (each weight's,
        flattened like the scores) fit in ``allowed_seconds``."""
        order = torch.sort(self.flat, descending=True, stable=True).indices
        spent = torch.cumsum(extra[order], 0)
        allowed = torch.tensor(allowed_seconds, dtype=torch.float64)
        count = int(torch.searchsorted(spent, allowed, right=True))
        mask = torch.zeros(order.numel(), dtype=torch.bool)
        mask[order[:count]] = True
        return mask


def top_k(flat_scores: Tensor, k: int) -> Tensor:
    """Bool mask of the k highest scores (topk works beyond 2^24 elements)."""
    mask = torch.zeros(flat_scores.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat_scores, k, sorted=False).indices] = True
    return mask


def extra_seconds(option_times: Mapping[str, Tensor], shapes: Mapping[str, torch.Size],
                  devices: int) -> Tensor:
    """Per weight (flattened in layer order): the seconds that verifying all its devices at
    option 1 adds over writing them once. ``option_times[name]`` is (O,), (*shape, O) or,
    per device, (*shape, K, O)."""
    out = []
    for name, times in option_times.items():
        added = (times[..., 1] - times[..., 0]).double()
        if added.dim() == len(shapes[name]) + 1:  # per device: their sum
            out.append(added.sum(-1).reshape(-1).cpu())
        else:
            out.append((devices * added).expand(shapes[name]).reshape(-1).cpu())
    return torch.cat(out)


__all__ = ["FlatScores", "extra_seconds", "time_budget_seconds", "top_k"]
