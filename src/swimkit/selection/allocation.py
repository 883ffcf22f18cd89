"""Method ``allocate``: verify time spent device by device and tolerance by tolerance.

Predicted loss increase (second order, independent zero-mean errors):

    E[dL] = 1/2 sum_i h_i Var_i,   Var_i = sum_j 4^(-j m) v(o_ij),

where o_ij is the option of device j of weight i (plain write, or write-verify to one
tolerance of the menu) and v(o) its variance. Each option also has a time c(o). Per
device, only the options on the lower convex hull of the (c, v) points can be optimal;
taking hull steps (from the cheaper to the next point) in decreasing order of

    h_i * 4^(-j m) * (v_before - v_after) / (c_after - c_before)

until the budget is spent is the optimum of the relaxed problem, and the efficiency of
a device's steps falls along its hull, so each device climbs its own hull in order. The
most significant devices, with the largest 4^(-j m), get the tightest tolerances first.

The greedy is done without listing the steps: the time of all steps above an efficiency
threshold is a sum of counts over sorted h (one sort per hull step), so the threshold
that spends the budget is found by bisection, and the few steps at the threshold are
taken in order until the budget is exactly spent (to within one device step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..errors import check_fraction, require
from ..plans import Plan, check_menu
from .budget import time_budget_seconds, top_k
from .registry import Budget, ScoreInputs, require_pricing

# --- convex hulls of the options ---------------------------------------------------------


@dataclass
class Hulls:
    """Lower convex hulls of (time, variance) option points, one per distinct device kind.

    ``options[u, p]`` is the option index of hull point p (padded with the last point),
    ``size[u]`` the number of points, ``cost[u, s]`` / ``gain[u, s]`` the seconds added and
    the variance removed by hull step s (0 beyond the hull).
    """

    options: Tensor
    size: Tensor
    cost: Tensor
    gain: Tensor

    @property
    def steps(self) -> int:
        return self.cost.shape[1]

    @property
    def ratio(self) -> Tensor:
        """Variance removed per second of each step (0 beyond the hull)."""
        return torch.where(self.cost > 0, self.gain / self.cost.clamp_min(1e-300),
                           torch.zeros_like(self.gain))


def lower_hulls(times: Tensor, variances: Tensor) -> Hulls:
    """Lower convex hulls of the rows of ``times`` / ``variances`` (shape (U, O)).

    A point is kept if no cheaper-or-equal point has a lower-or-equal variance and it
    lies strictly below the chord of its neighbours: Andrew's monotone chain, run for
    every row at once.
    """
    times, variances = times.double(), variances.double()
    rows, points = times.shape
    order = _by_time_then_variance(times, variances)
    c = torch.gather(times, 1, order)
    v = torch.gather(variances, 1, order)
    stack = torch.zeros(rows, points, dtype=torch.long)
    size = torch.ones(rows, dtype=torch.long)
    every = torch.arange(rows)
    for p in range(1, points):
        last = stack[every, size - 1]
        active = v[:, p] < v[every, last]
        for _ in range(points):
            can = active & (size >= 2)
            if not bool(can.any()):
                break
            a = stack[every, (size - 2).clamp_min(0)]
            b = stack[every, size - 1]
            left = (v[every, b] - v[every, a]) * (c[:, p] - c[every, b])
            right = (v[:, p] - v[every, b]) * (c[every, b] - c[every, a])
            pop = can & (left >= right)
            if not bool(pop.any()):
                break
            size = size - pop.long()
        stack[every[active], size[active]] = p
        size = size + active.long()
    index = torch.arange(points).expand(rows, points)
    padded = torch.where(index < size[:, None], stack,
                         stack[every, size - 1][:, None].expand(rows, points))
    options = torch.gather(order, 1, padded)
    hull_c = torch.gather(c, 1, padded)
    hull_v = torch.gather(v, 1, padded)
    return Hulls(options=options, size=size, cost=hull_c[:, 1:] - hull_c[:, :-1],
                 gain=hull_v[:, :-1] - hull_v[:, 1:])


def _by_time_then_variance(times: Tensor, variances: Tensor) -> Tensor:
    """Per row, the option order by time, equal times by variance (two stable sorts)."""
    by_v = torch.argsort(variances, dim=1, stable=True)
    by_t = torch.argsort(torch.gather(times, 1, by_v), dim=1, stable=True)
    return torch.gather(by_v, 1, by_t)


# --- the problem: device kinds, sensitivities, hull steps ---------------------------------


@dataclass
class _Layer:
    """One layer's rows: a row per weight, or per device when devices differ (``devices``
    K, the rows then weight i's device j at i * K + j, h already times 4^(-j m))."""

    name: str
    shape: torch.Size
    h: Tensor        # (rows,) float64, >= 0
    kind: Tensor     # (rows,) long: row of the hull table
    devices: int = 1

    @property
    def weights(self) -> int:
        return self.h.numel() // self.devices


@dataclass
class Problem:
    """The allocation problem of one model: hulls per device kind and h per weight."""

    layers: list[_Layer]
    hulls: Hulls
    weights: Tensor          # (K,) 4^(-j m)
    base_time: float         # every device at its first hull point
    menu: tuple[float, ...]
    option_variance: Tensor  # (U, 1 + O) per device kind

    @classmethod
    def build(cls, inputs: ScoreInputs, menu: tuple[float, ...]) -> Problem:
        """The hulls of the options at the plan time. Where devices of one weight differ
        (multi-level cells, drift by level), every device is a row of its own."""
        dm = inputs.device_model
        k = dm.slicing.devices
        variances, times = [], []
        for name, value in inputs.values.items():
            scale = inputs.scales[name]
            variances.append(dm.option_variances(value, scale, menu, inputs.plan_time).cpu())
            times.append(dm.option_times(value, scale, menu).cpu())
        per_device = any(v.dim() == inputs.values[n].dim() + 2
                         for n, v in zip(inputs.values, variances, strict=True))
        rows = [_rows(v, inputs.values[n], per_device, k)
                for n, v in zip(inputs.values, variances, strict=True)]
        row_times = [_rows(t, inputs.values[n], per_device, k)
                     for n, t in zip(inputs.values, times, strict=True)]
        table = torch.cat([torch.cat([v, t], 1) for v, t in zip(rows, row_times, strict=True)])
        unique, inverse = torch.unique(table, dim=0, return_inverse=True)
        options = rows[0].shape[-1]
        hulls = lower_hulls(unique[:, options:], unique[:, :options])
        weights = dm.slicing.variance_weights()
        layers, start = [], 0
        h = _floored(inputs.h)
        for (name, value), part in zip(inputs.values.items(), rows, strict=True):
            n = value.numel()
            kind = inverse[start : start + part.shape[0]]
            start += part.shape[0]
            h_layer = h[name].detach().double().reshape(-1).cpu().clamp_min(0.0).nan_to_num(0.0)
            if per_device:
                layers.append(_Layer(name, value.shape, (h_layer[:, None] * weights).reshape(-1),
                                     kind.expand(n * k) if part.shape[0] == 1 else kind, k))
            else:
                layers.append(_Layer(name, value.shape, h_layer,
                                     kind.expand(n) if part.shape[0] == 1 else kind))
        first = torch.gather(unique[:, options:], 1, hulls.options[:, :1]).squeeze(1)
        per_row = 1 if per_device else k
        base = sum(per_row * float(first[layer.kind].sum()) for layer in layers)
        return cls(layers, hulls, torch.ones(1, dtype=torch.float64) if per_device else weights,
                   base, menu, unique[:, :options])

    # --- greedy by threshold ---------------------------------------------------------------

    def _sorted_steps(self) -> list[tuple[Tensor, Tensor]]:
        """Per hull step s: h_i * ratio ascending, and the suffix sums of the step's time."""
        ratio, cost = self.hulls.ratio, self.hulls.cost
        kind = torch.cat([layer.kind for layer in self.layers])
        h = torch.cat([layer.h for layer in self.layers])
        out = []
        for s in range(self.hulls.steps):
            key = h * ratio[kind, s]
            order = torch.argsort(key)
            step_cost = cost[kind, s][order]
            suffix = torch.flip(torch.cumsum(torch.flip(step_cost, [0]), 0), [0])
            out.append((key[order], torch.cat([suffix, suffix.new_zeros(1)])))
        return out

    def time_above(self, threshold: float, table: list[tuple[Tensor, Tensor]]) -> float:
        """Seconds of every step whose efficiency is >= ``threshold``."""
        total = 0.0
        for w in self.weights.tolist():
            bound = torch.tensor(threshold / w, dtype=torch.float64)
            for keys, suffix in table:
                total += float(suffix[int(torch.searchsorted(keys, bound))])
        return total

    def _keys(self, layer: _Layer) -> Tensor:
        """h_i * ratio of each hull step: (n, S), the efficiency before the 4^(-j m)."""
        return layer.h[:, None] * self.hulls.ratio[layer.kind]

    def _bounds(self, threshold: float) -> Tensor:
        """threshold / 4^(-j m) per device: a step is taken if its key reaches it."""
        return torch.tensor([threshold / w for w in self.weights.tolist()], dtype=torch.float64)

    def steps_taken(self, layer: _Layer, threshold: float) -> Tensor:
        """Hull steps taken by every device of ``layer`` at ``threshold``: (n, K) long."""
        keys = self._keys(layer)
        return (keys[:, None, :] >= self._bounds(threshold)[None, :, None]).sum(-1)

    def plan_levels(self, threshold: float, extra: dict[str, Tensor] | None = None
                    ) -> dict[str, Tensor]:
        """Option levels of every device at ``threshold`` (plus ``extra`` steps)."""
        levels = {}
        for layer in self.layers:
            steps = self.steps_taken(layer, threshold)
            if extra and layer.name in extra:
                steps = steps + extra[layer.name]
            opts = torch.gather(self.hulls.options[layer.kind], 1, steps)
            levels[layer.name] = opts.to(torch.uint8).reshape(*layer.shape, -1)
        return levels

    def spend(self, seconds: float) -> dict[str, Tensor]:
        """Levels of the greedy that spends ``seconds`` above the base time."""
        table = self._sorted_steps()
        positive = [keys[keys > 0] for keys, _ in table]
        if not any(p.numel() for p in positive):
            require(seconds <= 1e-15, "no option of the menu lowers a device's variance, so "
                    "no verify time can be spent: give tolerances below the plain-write sigma")
            return self.plan_levels(math.inf)
        low = min(float(p.min()) for p in positive if p.numel()) * float(self.weights.min())
        high = max(float(p.max()) for p in positive if p.numel()) * float(self.weights.max())
        most = self.time_above(low, table)
        if most <= seconds * (1 + 1e-12):  # sums' rounding aside
            require(most >= seconds * (1 - 1e-9) - 1e-15,
                    f"the menu's options can spend at most {most:.4g} s above writing every "
                    f"device once, not the {seconds:.4g} s asked for: ask for a larger "
                    "speedup (a smaller time budget), or add tighter tolerances to the menu")
            return self.plan_levels(low)
        high *= 1 + 1e-9
        for _ in range(200):  # bisection in log space
            middle = math.sqrt(low * high)
            if self.time_above(middle, table) <= seconds:
                high = middle
            else:
                low = middle
            if high <= low * (1 + 1e-13):
                break
        left = seconds - self.time_above(high, table)
        return self.plan_levels(high, self._boundary(high, low, left))

    def _boundary(self, high: float, low: float, left: float) -> dict[str, Tensor]:
        """The next steps with efficiency in [low, high), taken best first while they fit."""
        upper, lower = self._bounds(high), self._bounds(low)
        found = []
        for layer in self.layers:
            keys = self._keys(layer)
            steps = (keys[:, None, :] >= upper[None, :, None]).sum(-1)
            room = steps < keys.shape[1]
            nxt = torch.gather(keys, 1, steps.clamp_max(keys.shape[1] - 1))
            hit = room & (nxt >= lower) & (nxt < upper) & (nxt > 0)
            idx = torch.nonzero(hit)
            if idx.numel():
                cost = self.hulls.cost[layer.kind[idx[:, 0]], steps[idx[:, 0], idx[:, 1]]]
                eff = nxt[hit] * self.weights[idx[:, 1]]
                found.append((layer.name, idx, eff, cost, steps.shape))
        extra: dict[str, Tensor] = {}
        if not found:
            return extra
        effs = torch.cat([f[2] for f in found])
        costs = torch.cat([f[3] for f in found])
        order = torch.argsort(effs, descending=True, stable=True)
        fits = torch.cumsum(costs[order], 0) <= left
        chosen = torch.zeros(effs.numel(), dtype=torch.bool)
        chosen[order[fits]] = True
        start = 0
        for name, idx, eff, _, shape in found:
            pick = chosen[start : start + eff.numel()]
            start += eff.numel()
            add = torch.zeros(shape, dtype=torch.long)
            add[idx[pick, 0], idx[pick, 1]] = 1
            extra[name] = add
        return extra

    def best_devices(self, count: int) -> dict[str, Tensor]:
        """Verify the ``count`` devices with the largest gain at their tightest option."""
        top = self.hulls.size - 1
        removed = torch.cat([torch.zeros(len(top), 1, dtype=torch.float64),
                             self.hulls.gain.cumsum(1)], 1)
        whole = torch.gather(removed, 1, top[:, None]).squeeze(1)
        gains = [(layer.h * whole[layer.kind])[:, None] * self.weights[None, :]
                 for layer in self.layers]
        chosen = top_k(torch.cat([g.reshape(-1) for g in gains]), count)
        levels, start = {}, 0
        for layer, gain in zip(self.layers, gains, strict=True):
            pick = chosen[start : start + gain.numel()].reshape(gain.shape)
            start += gain.numel()
            steps = torch.where(pick, top[layer.kind][:, None].expand(gain.shape), 0)
            opts = torch.gather(self.hulls.options[layer.kind], 1, steps)
            levels[layer.name] = opts.to(torch.uint8).reshape(*layer.shape, -1)
        return levels


def _rows(table: Tensor, value: Tensor, per_device: bool, devices: int) -> Tensor:
    """An option table as rows: one row (all alike), a row per weight, or per device."""
    options = table.shape[-1]
    if table.dim() == 1:
        return table.reshape(1, options)
    if per_device and table.dim() == value.dim() + 1:  # per weight: every device alike
        return table.reshape(-1, 1, options).expand(-1, devices, options).reshape(-1, options)
    return table.reshape(-1, options)


#: h below this share of the mean h counts as this share: every device then has a positive
#: efficiency, so the budget is always spent (a speedup of 1 verifies every device), and
#: devices the quadratic model calls indifferent are taken last, most significant first.
H_FLOOR = 1e-9


def _floored(h: Mapping[str, Tensor]) -> dict[str, Tensor]:
    total = sum(float(v.double().clamp_min(0).nan_to_num(0.0).sum()) for v in h.values())
    count = sum(v.numel() for v in h.values())
    floor = H_FLOOR * max(total / max(count, 1), 1e-300)
    return {k: v.double().nan_to_num(0.0).clamp_min(floor) for k, v in h.items()}


def menu_of(inputs: ScoreInputs) -> tuple[float, ...]:
    """The menu asked for, or the default one; the device model must price options."""
    require_pricing(inputs.device_model, "a device-level method")
    return check_menu(inputs.menu) if inputs.menu is not None else (
        inputs.device_model.default_menu())


def seconds_above_base(problem: Problem, inputs: ScoreInputs, budget: Budget) -> float:
    """The seconds a time budget leaves above every device's cheapest option."""
    full, base = inputs.device_model.reference_times(inputs.values, inputs.scales)
    seconds = time_budget_seconds(budget, base, full)
    require(seconds >= problem.base_time * (1 - 1e-12),
            f"the budget {seconds:.4g} s is below the time of the cheapest options "
            f"({problem.base_time:.4g} s)")
    return seconds - problem.base_time


def allocate(inputs: ScoreInputs, budget: Budget) -> Plan:
    """The relaxed optimum of 1/2 sum_i h_i Var_i under ``budget`` (see the module doc)."""
    menu = menu_of(inputs)
    problem = Problem.build(inputs, menu)
    if budget.kind == "fraction":
        check_fraction(budget.value)
        devices = sum(layer.h.numel() for layer in problem.layers) * len(problem.weights)
        levels = problem.best_devices(round(budget.value * devices))
    else:
        levels = problem.spend(seconds_above_base(problem, inputs, budget))
    return Plan(levels={k: v.to(inputs.values[k].device) for k, v in levels.items()},
                menu=menu, method="allocate", meta={"menu": list(menu)})


def allocate_one(inputs: ScoreInputs, budget: Budget) -> Plan:
    """``allocate`` with one tolerance, the device model's own loop: single devices, most
    sensitive first, no menu (the ablation that shows what the menu adds)."""
    require_pricing(inputs.device_model, "allocate-one")
    plan = allocate(replace(inputs, menu=(inputs.device_model.loop.tolerance,)), budget)
    return plan.recorded(method="allocate-one")



