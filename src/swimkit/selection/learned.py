"""Method ``learned``: a per-device plan learned under sampled device errors.

The second-order prediction behind ``allocate`` is local: at sigma 0.3 a plain write
already costs tens of accuracy points, far outside a quadratic model. ``learned`` keeps
``allocate``'s options (the lower convex hull of each device's (time, variance) points)
but chooses among them by the model's actual loss:

- every device gets a relaxed position t on its hull, between two adjacent options;
  its variance and time follow the hull linearly (the convex relaxation);
- t is trained on the training set by minimising the cross-entropy of the model under
  reparameterised Gaussian device errors whose variance follows t (a fresh draw per
  batch), plus a price on the modelled programming time; the price is a Lagrange
  multiplier raised or lowered after every batch so the relaxed plan spends the budget;
- training starts from ``allocate``'s plan; at the end the hull steps are ranked by how
  far the relaxed plan took them (then by ``allocate``'s efficiency) and taken in that
  order until the budget is spent, so the budget holds exactly.

Its cost, a few epochs of noisy forward and backward passes, is recorded in the plan's
``meta`` (seconds, epochs, batches).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SwimkitError, is_number, require
from ..mapping import perturbed, require_logits
from ..plans import Plan
from ..seeding import seeded_generator
from .allocation import Problem, menu_of, seconds_above_base
from .registry import Budget, ScoreInputs


@dataclass(frozen=True)
class LearnOptions:
    """Settings of the learned plan: epochs over the data, Adam's learning rate on the
    hull positions, and the step of the time price (relative, per batch)."""

    epochs: int = 2
    lr: float = 0.02
    price_step: float = 0.05

    @classmethod
    def from_options(cls, options: dict) -> LearnOptions:
        known = {"epochs", "lr", "price_step"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise SwimkitError(f"unknown option {unknown[0]!r} for method 'learned'; valid "
                               f"options: {', '.join(sorted(known))}")
        made = cls(**options)
        require(isinstance(made.epochs, int) and made.epochs >= 1,
                f"learned epochs must be an integer >= 1 (got {made.epochs!r})")
        for name in ("lr", "price_step"):
            value = getattr(made, name)
            require(is_number(value, finite=True) and value > 0,
                    f"learned {name} must be a number > 0 (got {value!r})")
        return made


class _Relaxed:
    """Hull positions of every device and what they imply (variance, time)."""

    def __init__(self, problem: Problem, start: dict[str, Tensor]) -> None:
        self.problem = problem
        hulls = problem.hulls
        self.top = (hulls.size - 1).double()
        # cumulative hull points: variance and time at integer positions
        zeros = torch.zeros(hulls.cost.shape[0], 1, dtype=torch.float64)
        self.point_time = torch.cat([zeros, hulls.cost.cumsum(1)], 1)
        self.point_var = torch.cat([zeros, -hulls.gain.cumsum(1)], 1)  # relative to point 0
        self.positions: dict[str, Tensor] = {}
        for layer in problem.layers:
            steps = _steps_of(hulls.options[layer.kind], start[layer.name].reshape(
                layer.h.numel(), -1))
            top = self.top[layer.kind][:, None].clamp_min(1.0)
            share = (steps.double() / top).clamp(0.02, 0.98)
            self.positions[layer.name] = torch.logit(share).requires_grad_(True)

    def position(self, name: str, kind: Tensor) -> Tensor:
        return torch.sigmoid(self.positions[name]) * self.top[kind][:, None]

    def interpolate(self, table: Tensor, kind: Tensor, t: Tensor) -> Tensor:
        """table[kind, t] with linear interpolation between integer positions."""
        low = t.detach().floor().long().clamp_max(table.shape[1] - 2).clamp_min(0)
        rows = table[kind]
        a = torch.gather(rows, 1, low)
        b = torch.gather(rows, 1, low + 1)
        return a + (t - low.double()) * (b - a)

    def weight_variance(self, base_var: dict[str, Tensor]) -> dict[str, Tensor]:
        """Var(dW / s) per weight: sum_j 4^(-j m) v_j(t_j), differentiable in t."""
        out = {}
        w = self.problem.weights
        for layer in self.problem.layers:
            t = self.position(layer.name, layer.kind)
            dv = self.interpolate(self.point_var, layer.kind, t)
            rows = base_var[layer.name] + (dv * w).sum(1)
            out[layer.name] = rows.reshape(-1, layer.devices).sum(1)  # per weight
        return out

    def time(self) -> Tensor:
        """Seconds above the base time of the relaxed plan."""
        total = torch.zeros((), dtype=torch.float64)
        for layer in self.problem.layers:
            t = self.position(layer.name, layer.kind)
            total = total + self.interpolate(self.point_time, layer.kind, t).sum()
        return total

    def parameters(self) -> list[Tensor]:
        return list(self.positions.values())


def _steps_of(options: Tensor, levels: Tensor) -> Tensor:
    """Hull index of each device's option (its number of hull steps): (n, K) long."""
    match = options[:, None, :] == levels.long()[:, :, None]   # (n, K, P)
    return match.long().argmax(-1)


def learned(inputs: ScoreInputs, budget: Budget) -> Plan:
    """Learn per-device positions on the options' hulls under sampled errors, then round."""
    require(inputs.model is not None and inputs.weights is not None and inputs.data is not None,
            "method 'learned' needs the model, its weights and training data")
    opts = LearnOptions.from_options(inputs.options)
    require(budget.kind != "fraction",
            "method 'learned' takes a time budget (speedup= or time_budget=), not a fraction")
    menu = menu_of(inputs)
    started = time.perf_counter()
    problem = Problem.build(inputs, menu)
    seconds = seconds_above_base(problem, inputs, budget)
    relaxed = _Relaxed(problem, problem.spend(seconds))  # allocate's plan to start from
    batches = _train(inputs, problem, relaxed, seconds, opts)
    levels = _round(problem, relaxed, seconds)
    meta = {"menu": list(menu), "learn_seconds": time.perf_counter() - started,
            "learn_epochs": opts.epochs, "learn_batches": batches, "learn_lr": opts.lr}
    return Plan(levels={k: v.to(inputs.values[k].device) for k, v in levels.items()},
                menu=menu, method="learned", meta=meta)


def _train(inputs: ScoreInputs, problem: Problem, relaxed: _Relaxed, seconds: float,
           opts: LearnOptions) -> int:
    """Adam on the hull positions; the time price follows the budget (dual ascent)."""
    model, weights = inputs.model, inputs.weights
    hulls = problem.hulls
    base_var = {layer.name: torch.zeros(layer.h.numel(), dtype=torch.float64)
                for layer in problem.layers}
    first = torch.gather(problem.option_variance, 1, hulls.options[:, :1]).squeeze(1)
    w_sum = float(problem.weights.sum())
    for layer in problem.layers:
        base_var[layer.name] += first[layer.kind] * w_sum
    optimizer = torch.optim.Adam(relaxed.parameters(), lr=opts.lr)
    where = next(iter(inputs.values.values())).device
    generator = seeded_generator("swimkit-learned", inputs.seed, device=where)
    price, batches = 1.0, 0
    scale = max(seconds, 1e-30)
    was_training = model.training
    model.eval()
    try:
        with perturbed(model, weights) as offsets:
            for _ in range(opts.epochs):
                for x, y in inputs.data:
                    variance = relaxed.weight_variance(base_var)
                    noise = {}
                    for name, var in variance.items():
                        shape = inputs.values[name].shape
                        eps = torch.randn(shape, generator=generator, device=where)
                        std = var.clamp_min(0).sqrt().reshape(shape).to(where, torch.float32)
                        noise[name] = eps * std * inputs.scales[name]
                    offsets.set(noise)
                    loss = F.cross_entropy(require_logits(model(x)), y)
                    spent = relaxed.time()
                    objective = loss + price * (spent / scale).to(loss.dtype)
                    grads = torch.autograd.grad(objective, relaxed.parameters())
                    for param, grad in zip(relaxed.parameters(), grads, strict=True):
                        param.grad = grad
                    optimizer.step()
                    with torch.no_grad():
                        over = float(relaxed.time()) / scale - 1.0
                    price = max(price * math.exp(opts.price_step * over), 1e-6)
                    batches += 1
                    offsets.set(None)
    finally:
        model.train(was_training)
    if batches == 0:
        raise SwimkitError("method 'learned' got no training batches: pass a non-empty loader")
    return batches


def _round(problem: Problem, relaxed: _Relaxed, seconds: float) -> dict[str, Tensor]:
    """Take hull steps by the relaxed plan's fill, then allocate's efficiency, to budget."""
    fills, effs, costs, shapes = [], [], [], []
    steps = problem.hulls.steps
    with torch.no_grad():
        for layer in problem.layers:
            t = relaxed.position(layer.name, layer.kind)                     # (n, K)
            s = torch.arange(steps, dtype=torch.float64)
            fill = (t[:, :, None] - s).clamp(0.0, 1.0)                       # (n, K, S)
            key = layer.h[:, None, None] * problem.weights[None, :, None] * (
                problem.hulls.ratio[layer.kind][:, None, :])
            cost = problem.hulls.cost[layer.kind][:, None, :].expand_as(fill)
            fill = torch.where(cost > 0, fill, torch.full_like(fill, -1.0))
            fills.append(fill.reshape(-1))
            effs.append(key.reshape(-1))
            costs.append(cost.reshape(-1))
            shapes.append(fill.shape)
    fill, eff, cost = torch.cat(fills), torch.cat(effs), torch.cat(costs)
    by_eff = torch.argsort(eff, descending=True, stable=True)
    order = by_eff[torch.argsort(fill[by_eff], descending=True, stable=True)]
    usable = fill[order] >= 0
    spent = torch.cumsum(torch.where(usable, cost[order], torch.zeros_like(cost[order])), 0)
    take = usable & (spent <= seconds)
    # a device climbs its hull in order: stop each device at its first skipped step
    chosen = torch.zeros(fill.numel(), dtype=torch.bool)
    chosen[order[take]] = True
    levels, start = {}, 0
    for layer, shape in zip(problem.layers, shapes, strict=True):
        part = chosen[start : start + shape.numel()].reshape(shape)
        start += shape.numel()
        climbed = part.long().cumprod(-1).sum(-1)                             # (n, K)
        opts = torch.gather(problem.hulls.options[layer.kind], 1, climbed)
        levels[layer.name] = opts.to(torch.uint8).reshape(*layer.shape, -1)
    return levels


