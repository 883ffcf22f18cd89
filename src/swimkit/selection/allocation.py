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

The greedy is done without listing the steps: devices with the same options share a
hull (a device kind), and a pass over the devices, piece by piece, gives each step its
efficiency from h and its kind's hull. A few passes find where the budget runs out
(:func:`~swimkit.selection.prefix.fit_prefix`: histograms of the efficiencies, then the
steps of the last bin in order), so the budget is exactly spent to within one device
step, and memory stays at a piece of the steps, h per weight and a kind per device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..errors import SwimkitError, check_fraction, require
from ..plans import Plan, check_menu
from .budget import time_budget_seconds, top_k
from .prefix import Cut, Entries, fit_prefix, float_key
from .registry import Budget, ScoreInputs, register_planner, require_pricing

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

#: Weights per piece of a layer's option tables (their memory is this times K times 1 + O).
TABLE_ROWS = 2**16
#: Hull steps per piece of a pass over every device's steps.
STEP_PIECE = 2**21


@dataclass
class Layer:
    """One layer's weights: h per weight (float64, > 0) and the hull row (device kind) of
    every device, ``(n, K)``, or ``(n, 1)`` where a weight's devices are alike (an
    expanded view where one kind serves the whole layer)."""

    name: str
    shape: torch.Size
    h: Tensor
    kind: Tensor

    @property
    def weights(self) -> int:
        return self.h.numel()


@dataclass
class Problem:
    """The allocation problem of one model: hulls per device kind and h per weight.

    A hull step of device j of weight i has the efficiency h_i * ratio * 4^(-j m); its
    key (:meth:`keys`) is the bit pattern of h_i * ratio less 2 j m exponent steps, in
    the same order. Steps are made piece by piece on every pass (:meth:`pieces`) and
    never held all at once.
    """

    layers: list[Layer]
    hulls: Hulls
    weights: Tensor          # (K,) 4^(-j m)
    base_time: float         # every device at its first hull point
    menu: tuple[float, ...]
    option_variance: Tensor  # (U, 1 + O) per device kind

    def __post_init__(self) -> None:
        self.ratio = self.hulls.ratio
        self.offsets = _exponent_offsets(self.weights)

    @classmethod
    def build(cls, inputs: ScoreInputs, menu: tuple[float, ...]) -> Problem:
        """The hulls of the options at the plan time, read layer by layer in pieces: the
        distinct option rows become the device kinds."""
        dm = inputs.device_model
        kinds = _Kinds()
        pieces = {name: [kinds.add(v, t) for v, t in option_pieces(
                      dm, value, inputs.scales[name], menu, inputs.plan_time)]
                  for name, value in inputs.values.items()}
        unique, kind_of = kinds.finish()
        options = unique.shape[1] // 2
        hulls = lower_hulls(unique[:, options:], unique[:, :options])
        h = _floored(inputs.h)
        layers = []
        for name, value in inputs.values.items():
            h_layer = h[name].detach().double().reshape(-1).cpu().clamp_min(0.0).nan_to_num(0.0)
            layers.append(Layer(name, value.shape, h_layer,
                                 _layer_kinds([kind_of[p] for p in pieces[name]], value.numel())))
        first = torch.gather(unique[:, options:], 1, hulls.options[:, :1]).squeeze(1)
        k = dm.slicing.devices
        base = sum(k // layer.kind.shape[1] * float(first[layer.kind.long()].sum())
                   for layer in layers)
        return cls(layers, hulls, dm.slicing.variance_weights(), base, menu,
                   unique[:, :options])

    # --- the hull steps, piece by piece ----------------------------------------------------

    def pieces(self) -> Iterator[tuple[Layer, slice, int]]:
        """(layer, rows, position of its first step) of every piece, in position order:
        steps are numbered by layer, weight, device, hull step."""
        per_weight = len(self.weights) * self.hulls.steps
        rows = max(1, STEP_PIECE // per_weight)
        start = 0
        for layer in self.layers:
            for first in range(0, layer.weights, rows):
                last = min(first + rows, layer.weights)
                yield layer, slice(first, last), start + first * per_weight
            start += layer.weights * per_weight

    def keys(self, layer: Layer, rows: slice) -> Tensor:
        """The efficiency keys of the devices' steps: int64 ``(rows, K, S)``, below
        :meth:`key_bounds` where there is no step."""
        product = layer.h[rows, None, None] * self.ratio[layer.kind[rows].long()]
        product.masked_fill_(product <= 0, -1.0)                      # (n, K or 1, S)
        return product.view(torch.int64) - self.offsets[:, None]

    def costs(self, layer: Layer, rows: slice) -> Tensor:
        """Seconds of each step: float64 ``(rows, K, S)`` (0 where there is none)."""
        kind = layer.kind[rows].long()
        shape = (kind.shape[0], len(self.weights), self.hulls.steps)
        return self.hulls.cost[kind].expand(shape)

    def steps(self) -> Iterator[Entries]:
        """Every device's hull steps, keyed by efficiency."""
        for layer, rows, start in self.pieces():
            yield Entries(self.keys(layer, rows).reshape(-1),
                          self.costs(layer, rows).reshape(-1), start)

    def key_bounds(self) -> tuple[int, int]:
        """The lowest and highest key a step can have."""
        ratio = self.ratio[self.ratio > 0]
        h = [layer.h for layer in self.layers if layer.weights]
        if not ratio.numel() or not h:
            return 0, 0
        low = min(float(v.min()) for v in h) * float(ratio.min())
        high = max(float(v.max()) for v in h) * float(ratio.max())
        return (float_key(low) - int(self.offsets.max()), float_key(high) - int(self.offsets.min()))

    def levels(self, cut: Cut, entries: Callable[[Layer, slice, int], Entries],
               climbed: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """Option levels of every device: the steps ``cut`` takes of the ``entries`` of
        each piece, counted per device by ``climbed`` (``(n, K, S)`` bool -> ``(n, K)``)."""
        out = {layer.name: torch.empty(layer.weights, len(self.weights), dtype=torch.uint8)
               for layer in self.layers}
        for layer, rows, start in self.pieces():
            taken = cut.taken(entries(layer, rows, start))
            steps = climbed(taken.view(rows.stop - rows.start, len(self.weights), -1))
            out[layer.name][rows] = self.options_at(layer.kind[rows], steps)
        return {layer.name: out[layer.name].reshape(*layer.shape, -1) for layer in self.layers}

    def options_at(self, kind: Tensor, steps: Tensor) -> Tensor:
        """The option (uint8) of devices of kinds ``kind`` after ``steps`` hull steps."""
        points = self.hulls.options.shape[1]
        return self.hulls.options.view(-1)[kind.long() * points + steps].to(torch.uint8)

    # --- the greedy ------------------------------------------------------------------------

    def spend(self, seconds: float) -> dict[str, Tensor]:
        """Levels of the greedy that spends ``seconds`` above the base time."""
        low, high = self.key_bounds()
        cut = fit_prefix(self.steps, seconds, (low, high))
        if not cut.count:
            require(seconds <= 1e-15, "no option of the menu lowers a device's variance, so "
                    "no verify time can be spent: give tolerances below the plain-write sigma")
            return self._counted(Cut(high, None, _NONE, 0.0, 0))
        if cut.total <= seconds * (1 + 1e-12):  # sums' rounding aside
            require(cut.total >= seconds * (1 - 1e-9) - 1e-15,
                    f"the menu's options can spend at most {cut.total:.4g} s above writing "
                    f"every device once, not the {seconds:.4g} s asked for: ask for a larger "
                    "speedup (a smaller time budget), or add tighter tolerances to the menu")
            return self._counted(Cut(low - 1, None, _NONE, cut.total, cut.count))
        return self._counted(cut)

    def _counted(self, cut: Cut) -> dict[str, Tensor]:
        """Levels with as many hull steps per device as ``cut`` takes of its steps."""
        return self.levels(cut, lambda layer, rows, start: Entries(
            self.keys(layer, rows).reshape(-1), _NONE, start), lambda taken: taken.sum(-1))

    def best_devices(self, count: int) -> dict[str, Tensor]:
        """Verify the ``count`` devices with the largest gain at their tightest option."""
        top = self.hulls.size - 1
        removed = torch.cat([torch.zeros(len(top), 1, dtype=torch.float64),
                             self.hulls.gain.cumsum(1)], 1)
        whole = torch.gather(removed, 1, top[:, None]).squeeze(1)
        k = len(self.weights)
        gains = torch.empty(sum(layer.weights for layer in self.layers) * k,
                            dtype=torch.float64)
        start = 0
        for layer in self.layers:
            size = layer.weights * k
            part = gains[start : start + size].view(layer.weights, k)
            torch.mul(layer.h[:, None] * whole[layer.kind.long()], self.weights, out=part)
            start += size
        chosen = top_k(gains, count)
        del gains
        levels, start = {}, 0
        for layer in self.layers:
            pick = chosen[start : start + layer.weights * k].view(layer.weights, k)
            start += pick.numel()
            steps = torch.where(pick, top[layer.kind.long()], 0)
            levels[layer.name] = self.options_at(layer.kind, steps).reshape(*layer.shape, -1)
        return levels


_NONE = torch.zeros(0, dtype=torch.long)


def _exponent_offsets(weights: Tensor) -> Tensor:
    """Per device, 2 j m exponent steps in float64 bits: 4^(-j m) is a power of two, so
    the bit pattern of x * 4^(-j m) is that of x less this (for normal numbers)."""
    mantissa, exponent = torch.frexp(weights.double())
    if not bool((mantissa == 0.5).all()):
        raise SwimkitError(f"device weights {weights.tolist()} are not powers of two")
    return (1 - exponent.long()) << 52


class _Kinds:
    """The distinct option rows (variances, then times) of pieces of option tables, and
    which of them each device of each piece has."""

    def __init__(self) -> None:
        self.rows: list[Tensor] = []
        self.inverse: list[Tensor] = []

    def add(self, variances: Tensor, times: Tensor) -> int:
        """Take one piece's tables; return its number."""
        table = torch.cat([variances.cpu(), times.cpu()], -1)
        rows, inverse = _distinct_rows(table.reshape(-1, table.shape[-1]).double())
        shape = (1, 1) if table.dim() == 1 else (table.shape[0], -1)
        self.rows.append(rows)
        self.inverse.append(inverse.to(_index_dtype(len(rows))).reshape(shape))
        return len(self.rows) - 1

    def finish(self) -> tuple[Tensor, list[Tensor]]:
        """The distinct rows of every piece, sorted, and each piece's devices' rows."""
        unique, where = torch.unique(torch.cat(self.rows), dim=0, return_inverse=True)
        dtype = _index_dtype(len(unique))
        kinds, start = [], 0
        for rows, inverse in zip(self.rows, self.inverse, strict=True):
            kinds.append(where[start : start + len(rows)].to(dtype)[inverse.long()])
            start += len(rows)
        return unique, kinds


#: Odd multipliers of a row's bit patterns, summed into one hash per row.
_HASH = torch.randint(1, 2**62, (64,), generator=torch.Generator().manual_seed(0)) | 1


def _distinct_rows(table: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of ``table`` (float64) in any order, and each row's index among
    them: rows are told apart by a hash of their bits, checked against every row (a
    collision falls back to comparing whole rows)."""
    columns = table.shape[1]
    if columns > len(_HASH):
        return torch.unique(table, dim=0, return_inverse=True)
    hashes = (table.view(torch.int64) * _HASH[:columns]).sum(1)
    keys, inverse = torch.unique(hashes, return_inverse=True)
    first = torch.empty(len(keys), dtype=torch.long).scatter_(0, inverse,
                                                              torch.arange(len(table)))
    rows = table[first]
    if torch.equal(rows[inverse], table):
        return rows, inverse
    return torch.unique(table, dim=0, return_inverse=True)


def _index_dtype(count: int) -> torch.dtype:
    """The smallest signed integer type that numbers ``count`` rows."""
    for dtype in (torch.int8, torch.int16, torch.int32):
        if count <= torch.iinfo(dtype).max + 1:
            return dtype
    return torch.int64


def _layer_kinds(pieces: list[Tensor], weights: int) -> Tensor:
    """A layer's device kinds from its pieces: ``(n, K)`` or ``(n, 1)``."""
    if len(pieces) == 1 and pieces[0].shape[0] == 1 and weights != 1:
        return pieces[0].expand(weights, pieces[0].shape[1])  # one kind for the layer
    devices = max(p.shape[1] for p in pieces)
    return torch.cat([p.expand(p.shape[0], devices) for p in pieces])


def option_pieces(dm: object, value: Tensor, scale: Tensor, menu: tuple[float, ...],
                  time: float) -> Iterator[tuple[Tensor, Tensor]]:
    """A layer's option tables (variances, times), its weights flattened, in pieces:
    ``(1 + O,)`` for devices all alike, ``(rows, 1 + O)`` per weight or ``(rows, K, 1 + O)``
    per device. A device model with ``option_tables`` gives them piece by piece (never the
    whole layer's tables at once); any other, whole."""
    pieces = getattr(dm, "option_tables", None)
    if pieces is not None:
        yield from pieces(value, scale, menu, time, TABLE_ROWS)
        return
    variances = dm.option_variances(value, scale, menu, time)
    times = dm.option_times(value, scale, menu)
    yield _flattened(variances, value), _flattened(times, value)


def _flattened(table: Tensor, value: Tensor) -> Tensor:
    if table.dim() == 1:
        return table
    per_device = table.dim() == value.dim() + 2
    return table.reshape(value.numel(), *table.shape[-2 if per_device else -1:])


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
        devices = sum(layer.weights for layer in problem.layers) * len(problem.weights)
        levels = problem.best_devices(round(budget.value * devices))
    else:
        levels = problem.spend(seconds_above_base(problem, inputs, budget))
    return Plan(levels={k: v.to(inputs.values[k].device) for k, v in levels.items()},
                menu=menu, method="allocate", meta={"menu": list(menu)})


register_planner(
    "allocate", allocate, plans_at_time=True,
    help="per device and per tolerance: min 1/2 sum h Var under the budget (convex-hull greedy)",
)


def allocate_one(inputs: ScoreInputs, budget: Budget) -> Plan:
    """``allocate`` with one tolerance, the device model's own loop: single devices, most
    sensitive first, no menu (the ablation that shows what the menu adds)."""
    require_pricing(inputs.device_model, "allocate-one")
    plan = allocate(replace(inputs, menu=(inputs.device_model.loop.tolerance,)), budget)
    return plan.recorded(method="allocate-one")


register_planner(
    "allocate-one", allocate_one, plans_at_time=True, tolerances=0,
    help="allocate with one tolerance, the device model's own (single devices, no menu)",
)
