"""Choosing the weights to write-verify, under a fraction or a programming-time budget.

Every method turns sensitivities into one score per weight; the weights with the
highest scores over ALL layers together (one global threshold) are verified:

- ``swim``: alpha * |h + 2 g| + |w_hat| (SWIM, alpha = 1e6; |w_hat| breaks ties);
- ``second``: |h|;
- ``magnitude``: |w_hat|;
- ``random``: a uniformly random subset (seeded);
- ``uswim``: the SWIM score with |S| multiplied by the weight's variation factor
  (value-dependent devices, after U-SWIM);
- ``variance``: the expected loss reduction of verifying the weight,
  1/2 * h * c * (sigma_i^2 - sigma_verified_i^2), from the second-order expansion
  E[dL] = 1/2 sum_i h_i Var(dw_hat_i).

The budget is either a fraction (exactly round(fraction * total) weights are verified)
or a programming time, given as a speedup over verifying everything or in seconds:
then weights are taken in score order while the modelled time stays within budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .devices import DeviceModel, _level
from .errors import SwimkitError, check_fraction, choose, is_number, require
from .mapping import device_weights, effective_weights, safe_scale, weight_scales
from .programming import ProgrammingReport, WriteVerify, programming_report, verify_cost
from .sensitivity import Sensitivity
from .sensitivity.result import _load_kind
from .storage import atomic_save

METHODS = ("swim", "second", "magnitude", "random", "uswim", "variance")
SWIM_ALPHA = 1e6


@dataclass
class Plan:
    """Which weights to write-verify: one bool mask per device weight (True = verify)."""

    masks: dict[str, Tensor]
    method: str
    requested: dict[str, Any] = field(default_factory=dict)
    programming: ProgrammingReport | None = None

    @property
    def weights_total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def weights_verified(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    @property
    def fraction_verified(self) -> float:
        total = self.weights_total
        return self.weights_verified / total if total else 0.0

    def per_layer(self) -> dict[str, dict[str, float]]:
        """Verified count and fraction of every layer."""
        return {
            name: {
                "verified": int(m.sum()),
                "total": m.numel(),
                "fraction": float(m.float().mean()) if m.numel() else 0.0,
            }
            for name, m in self.masks.items()
        }

    @classmethod
    def uniform(cls, weights: Mapping[str, Tensor], verify: bool) -> Plan:
        """No weight verified (``verify=False``) or every weight verified.

        ``weights`` maps names to tensors shaped like the weights (e.g. their values).
        """
        masks = {
            k: torch.full(v.shape, verify, dtype=torch.bool, device=v.device)
            for k, v in weights.items()
        }
        return cls(masks=masks, method="all" if verify else "none")

    def save(self, path: str | Path) -> Path:
        """Write the masks (bool tensors) and settings as a torch file, atomically."""
        return atomic_save(
            {
                "kind": "swimkit.plan",
                "masks": {k: v.cpu() for k, v in self.masks.items()},
                "method": self.method,
                "requested": self.requested,
                "programming": self.programming.to_dict() if self.programming else None,
            },
            path,
        )

    def export_npz(self, path: str | Path) -> Path:
        """Write the masks as a NumPy ``.npz`` of bool arrays for a programming flow."""
        from .storage import _atomic_write

        arrays = {k: v.cpu().numpy() for k, v in self.masks.items()}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        return _atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        data = _load_kind(path, "swimkit.plan", "write-verify plan")
        report = data.get("programming")
        return cls(
            masks=data["masks"],
            method=data["method"],
            requested=data.get("requested", {}),
            programming=ProgrammingReport(**report) if report else None,
        )


@dataclass
class Scores:
    """One method's score for every device weight, ready to cut at any budget.

    Computing scores once and cutting them many times (a sweep over budgets, a
    bisection) avoids recomputing them per budget.
    """

    method: str
    scores: dict[str, Tensor]
    values: dict[str, Tensor]
    scales: dict[str, Tensor]
    device: DeviceModel

    @cached_property
    def flat(self) -> Tensor:
        return _flatten(self.scores)

    @property
    def total(self) -> int:
        return self.flat.numel()


def score(
    model: nn.Module,
    sens: Sensitivity | None,
    method: str = "swim",
    *,
    device: DeviceModel | None = None,
    seed: int = 0,
    alpha: float = SWIM_ALPHA,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> Scores:
    """Scores of ``method`` for the device weights of ``model`` (see :func:`select`)."""
    method = choose(method, list(METHODS), "selection method")
    weights = _chosen_weights(model, sens, layers, exclude)
    values = effective_weights(weights)
    scales = weight_scales(values)
    device = device or DeviceModel()
    return Scores(method, _scores(method, sens, values, scales, device, seed, alpha), values,
                  scales, device)


def select(
    model: nn.Module,
    sens: Sensitivity | None,
    fraction: float | None = None,
    method: str = "swim",
    *,
    device: DeviceModel | None = None,
    write_verify: WriteVerify | None = None,
    speedup: float | None = None,
    time_budget: float | None = None,
    seed: int = 0,
    alpha: float = SWIM_ALPHA,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> Plan:
    """Choose the weights of ``model`` to write-verify.

    Give exactly one budget: ``fraction`` of the weights, a ``speedup`` over verifying
    every weight, or a ``time_budget`` in seconds (the last two use the programming
    model ``write_verify``; by default the loop whose residual sigma is the device's
    ``sigma_verified``). ``sens`` may be None for ``magnitude`` and ``random``.
    ``layers`` / ``exclude`` choose the layers on devices (default: those of ``sens``).
    The plan carries its modelled programming time when the loop can be modelled.
    """
    scores = score(model, sens, method, device=device, seed=seed, alpha=alpha, layers=layers,
                   exclude=exclude)
    return cut(scores, fraction, speedup=speedup, time_budget=time_budget,
               write_verify=write_verify)


def cut(
    scores: Scores,
    fraction: float | None = None,
    *,
    speedup: float | None = None,
    time_budget: float | None = None,
    write_verify: WriteVerify | None = None,
) -> Plan:
    """The plan verifying the best-scored weights within one budget."""
    budgets = [b for b in (fraction, speedup, time_budget) if b is not None]
    require(
        len(budgets) == 1,
        "give exactly one budget: a fraction, a speedup or a time budget (seconds)",
    )
    device = scores.device
    if write_verify is None:
        with suppress(SwimkitError):  # a fraction needs no loop; the report is then left out
            write_verify = default_write_verify(device)
    if fraction is not None:
        check_fraction(fraction)
        flat = _top_k(scores.flat, round(fraction * scores.total))
        requested: dict[str, Any] = {"fraction": fraction}
    else:
        if write_verify is None:
            write_verify = default_write_verify(device)  # raises the clear error
        flat = _within_time(scores, write_verify, speedup, time_budget)
        requested = {"speedup": speedup} if speedup is not None else {"time_budget": time_budget}
    plan = Plan(masks=_unflatten(flat, scores.scores), method=scores.method, requested=requested)
    if write_verify is not None:
        plan.programming = plan_programming(plan, scores.values, scores.scales, device,
                                            write_verify)
    return plan


def _chosen_weights(
    model: nn.Module,
    sens: Sensitivity | None,
    layers: Sequence[str] | None,
    exclude: Sequence[str] | None,
) -> dict:
    if sens is None or layers or exclude:
        weights = device_weights(model, layers=layers, exclude=exclude)
        missing = [n for n in weights if sens is not None and n not in sens.second]
        if missing:
            raise SwimkitError(
                f"the sensitivities have no {missing[0]}: compute them for the same layers"
            )
        return weights
    return _weights_named(model, sens.names)


def plan_programming(
    plan: Plan,
    values: Mapping[str, Tensor],
    scales: Mapping[str, Tensor],
    device: DeviceModel,
    write_verify: WriteVerify | None = None,
) -> ProgrammingReport:
    """The modelled programming time of ``plan`` and its speedup over full verify."""
    write_verify = write_verify or default_write_verify(device)
    sigma = _plain_sigma(values, scales, device)
    return programming_report(sigma, plan.masks, device.devices_per_weight, write_verify)


def default_write_verify(device: DeviceModel, max_attempts: int = 100) -> WriteVerify:
    """The write-verify loop whose residual sigma is ``device.sigma_verified``.

    Its tolerance is solved from the loop's final error, counting devices that run out
    of attempts; 100 attempts make that share negligible at the usual settings.
    """
    return WriteVerify.for_residual(device.sigma, device.sigma_verified, max_attempts=max_attempts)


def _plain_sigma(
    values: Mapping[str, Tensor], scales: Mapping[str, Tensor], device: DeviceModel
) -> dict[str, Tensor | float]:
    if not device.value_dependent:
        return {name: device.sigma for name in values}
    return {name: device.weight_sigma(v, scales[name]) for name, v in values.items()}


def _weights_named(model: nn.Module, names: list[str]) -> dict:
    every = device_weights(model)
    missing = [n for n in names if n not in every]
    if missing:
        raise SwimkitError(
            f"the sensitivities name weights the model does not have ({missing[0]!r}); "
            "compute them for this model"
        )
    return {n: every[n] for n in names}


def _scores(
    method: str,
    sens: Sensitivity | None,
    values: Mapping[str, Tensor],
    scales: Mapping[str, Tensor],
    device: DeviceModel,
    seed: int,
    alpha: float,
) -> dict[str, Tensor]:
    normalised = {k: v / safe_scale(scales[k]) for k, v in values.items()}
    if method == "magnitude":
        return {k: w.abs() for k, w in normalised.items()}
    if method == "random":
        gen = torch.Generator().manual_seed(int(seed))
        return {k: torch.rand(w.shape, generator=gen).to(w.device) for k, w in normalised.items()}
    if sens is None:
        raise SwimkitError(f"method {method!r} needs sensitivities: run the sensitivity pass")
    _check_shapes(sens, values)
    if method == "second":
        return {k: sens.second[k].abs() for k in values}
    if method == "swim":
        return {k: alpha * sens.combined[k].abs() + normalised[k].abs() for k in values}
    if method == "uswim":
        return {
            k: alpha * sens.combined[k].abs() * device.weight_sigma(values[k], scales[k])
            / max(device.sigma, 1e-30) + normalised[k].abs()
            for k in values
        }
    return {  # variance
        k: 0.5 * device.slice_factor * sens.second[k] * (
            device.weight_sigma(values[k], scales[k]).square()
            - device.level_sigma(_level(values[k], scales[k]), verified=True).square()
        )
        for k in values
    }


def _check_shapes(sens: Sensitivity, values: Mapping[str, Tensor]) -> None:
    for name, value in values.items():
        if tuple(sens.second[name].shape) != tuple(value.shape):
            raise SwimkitError(
                f"sensitivity of {name} has shape {tuple(sens.second[name].shape)} but the "
                f"weight has {tuple(value.shape)}: recompute the sensitivities for this model"
            )


def _total(scores: Mapping[str, Tensor]) -> int:
    return sum(s.numel() for s in scores.values())


def _flatten(scores: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([s.detach().reshape(-1).cpu() for s in scores.values()])


def _unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    masks, start = {}, 0
    for name, s in like.items():
        masks[name] = flat[start : start + s.numel()].reshape(s.shape).to(s.device)
        start += s.numel()
    return masks


def _top_k(flat_scores: Tensor, k: int) -> Tensor:
    """Bool mask of the k highest scores (topk works beyond 2^24 elements)."""
    mask = torch.zeros(flat_scores.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat_scores, k, sorted=False).indices] = True
    return mask


def _within_time(
    scores: Scores,
    write_verify: WriteVerify,
    speedup: float | None,
    time_budget: float | None,
) -> Tensor:
    """Verify weights in score order while the modelled programming time fits the budget."""
    sigma = _plain_sigma(scores.values, scores.scales, scores.device)
    k_dev = scores.device.devices_per_weight
    extra = torch.cat([
        torch.as_tensor(verify_cost(sigma[k], k_dev, write_verify), dtype=torch.float64)
        .expand(v.shape).reshape(-1).cpu()
        for k, v in scores.values.items()
    ])
    nothing = {k: torch.zeros(v.shape, dtype=torch.bool) for k, v in scores.values.items()}
    base = float(programming_report(sigma, nothing, k_dev, write_verify).time_no_verify)
    full = base + float(extra.sum())
    if speedup is not None:
        require(is_number(speedup, finite=True) and speedup > 0,
                f"speedup must be a number > 0 (got {speedup!r}); e.g. 10")
        time_budget = full / speedup
    require(is_number(time_budget, finite=True) and time_budget >= 0,
            f"the time budget must be a number of seconds >= 0 (got {time_budget!r})")
    if time_budget < base * (1 - 1e-12):
        ask = "a smaller speedup" if speedup is not None else "a larger time budget"
        raise SwimkitError(
            f"the budget {time_budget:.4g} s is below the time of writing every weight once "
            f"({base:.4g} s, a speedup of {full / base:.3g}x): ask for {ask}"
        )
    order = torch.sort(scores.flat, descending=True, stable=True).indices
    spent = torch.cumsum(extra[order], 0)
    budget = torch.tensor(time_budget - base, dtype=torch.float64)
    count = int(torch.searchsorted(spent, budget, right=True))
    mask = torch.zeros(order.numel(), dtype=torch.bool)
    mask[order[:count]] = True
    return mask


__all__ = ["METHODS", "Plan", "Scores", "cut", "default_write_verify", "plan_programming", "score",
           "select"]
