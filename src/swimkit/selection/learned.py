"""Method ``learned``: a per-device plan learned under sampled device errors.

The second-order prediction behind ``allocate`` is local: at sigma 0.3 a plain write
already costs tens of accuracy points, far outside a quadratic model. ``learned`` keeps
``allocate``'s options (the lower convex hull of each device's (time, variance) points)
but chooses among them by the model's actual loss:

- every device gets a relaxed position t on its hull, between two adjacent options;
  its variance and time follow the hull linearly (the convex relaxation), and a weight's
  variance is its devices' weighted by 4^(-j m), as the device model's is;
- t is trained on the training set by minimising the cross-entropy of the model under
  reparameterised Gaussian device errors whose variance follows t (a fresh draw per
  batch), plus a price on the modelled programming time; the price is a Lagrange
  multiplier raised or lowered after every batch so the relaxed plan spends the budget;
- training starts from ``allocate``'s plan; at the end the hull steps are ranked by how
  far the relaxed plan took them (then by ``allocate``'s efficiency) and taken in that
  order until the budget is spent, so the budget holds exactly (found in passes over the
  devices, :func:`~swimkit.selection.prefix.fit_prefix`, never every step at once).

Its cost, a few epochs of noisy forward and backward passes, is recorded in the plan's
``meta`` (seconds, epochs, batches): epochs times batches times a batch's cost, a plain
forward and backward of the model plus a few passes over the devices' positions (held
in float64, with Adam's two moments). Fewer epochs or batches (the data given) bound it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SwimkitError, is_number, require
from ..mapping import perturbed
from ..models import require_logits
from ..plans import Plan
from ..progress import progress_bar
from ..seeding import seeded_generator
from .allocation import Layer, Problem, menu_of, seconds_above_base
from .prefix import Entries, fit_prefix, float_key
from .registry import Budget, ScoreInputs, register_planner


@dataclass(frozen=True)
class LearnOptions:
    """Settings of the learned plan: epochs over the data, Adam's learning rate on the
    hull positions, and the step of the time price (relative, per batch).

    ``epochs`` may end in a fraction of an epoch (0.25: the first quarter of the batches,
    at least one), the knob that bounds the cost of learning on a large training set."""

    epochs: float = 2
    lr: float = 0.02
    price_step: float = 0.05

    def batches_per_epoch(self, data: Iterable) -> list[int | None]:
        """How many batches of ``data`` each epoch takes (None: all of them)."""
        whole = math.floor(self.epochs)
        if whole == self.epochs:
            return [None] * whole
        require(hasattr(data, "__len__"), f"learned epochs {self.epochs:g} take a share "
                "of an epoch: give training data whose batches can be counted (a list)")
        return [None] * whole + [max(1, math.ceil((self.epochs - whole) * len(data)))]

    @classmethod
    def from_options(cls, options: dict) -> LearnOptions:
        known = {"epochs", "lr", "price_step"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise SwimkitError(f"unknown option {unknown[0]!r} for method 'learned'; valid "
                               f"options: {', '.join(sorted(known))}")
        made = cls(**options)
        for name in ("epochs", "lr", "price_step"):
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
        self.step_time, self.step_var = _steps(self.point_time), _steps(self.point_var)
        index = _hull_index(hulls.options, problem.option_variance.shape[1])
        self.positions: dict[str, Tensor] = {}
        for layer in problem.layers:
            kind = layer.kind.long()
            levels = start[layer.name].reshape(layer.weights, -1).long()
            steps = index.view(-1)[kind * index.shape[1] + levels]
            share = (steps.double() / self.top[kind].clamp_min(1.0)).clamp(0.02, 0.98)
            self.positions[layer.name] = torch.logit(share).requires_grad_(True)

    def position(self, layer: Layer, rows: slice = slice(None)) -> Tensor:
        """Hull positions of the devices of ``rows`` of ``layer``: ``(n, K)`` float64."""
        return torch.sigmoid(self.positions[layer.name][rows]) * self.top[layer.kind[rows].long()]

    def variance_and_time(self, base_var: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Var(dW / s) per weight, sum_j 4^(-j m) v_j(t_j), and the seconds above the base
        time of the relaxed plan, both differentiable in the positions (one
        :class:`_HullFill` per layer: in pieces of rows, nothing device-sized kept)."""
        variance, total = {}, torch.zeros((), dtype=torch.float64)
        for layer in self.problem.layers:
            added, seconds = _HullFill.apply(self.positions[layer.name], self, layer)
            variance[layer.name] = base_var[layer.name] + added
            total = total + seconds
        return variance, total

    def interpolate(self, layer: Layer, positions: Tensor, rows: slice
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For the devices of ``rows`` (``positions``: the layer's): the sigmoid of their
        positions, their hull's last position (t = sigmoid * that), the flat table index
        of the hull point below t, and how far t is past it."""
        kind = layer.kind[rows].long()
        sigmoid = torch.sigmoid(positions[rows].detach())
        top = self.top[kind]
        t = sigmoid * top
        low = t.floor().clamp_(0, self.point_var.shape[1] - 2)
        index = low.long().add_(kind * self.point_var.shape[1])
        return sigmoid, top, index.view(-1), t.sub_(low)

    def base_variance(self, option_variance: Tensor) -> dict[str, Tensor]:
        """Var(dW / s) per weight with every device at its first hull point."""
        first = torch.gather(option_variance, 1, self.problem.hulls.options[:, :1]).squeeze(1)
        w = self.problem.weights
        out = {}
        for layer in self.problem.layers:
            kind = layer.kind.long()
            if kind.shape[1] == 1:  # a weight's devices alike
                out[layer.name] = first[kind[:, 0]] * float(w.sum())
            else:
                out[layer.name] = (first[kind] * w).sum(1)
        return out

    def parameters(self) -> list[Tensor]:
        return list(self.positions.values())


#: Where torch's fused Adam runs.
FUSED_ADAM_DEVICES = ("cpu", "cuda")
#: Devices per piece of :class:`_HullFill`: its temporaries stay in the CPU's caches.
PIECE_DEVICES = 1 << 16


class _HullFill(torch.autograd.Function):
    """One layer's relaxed variance per weight and seconds from its hull positions.

    Forward and backward each make one pass over the layer in pieces of rows (about
    :data:`PIECE_DEVICES` devices), recomputing the interpolation in the backward, so no
    device-sized tensor is made or kept: on ResNet-18's 89 M devices this is several
    times faster than autograd over the whole tensors and saves gigabytes. The gradient
    is the interpolation's: d/dt of a hull table is its step at t, times dt/dposition.
    """

    @staticmethod
    def forward(ctx, positions: Tensor, relaxed: _Relaxed, layer: Layer
                ) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.relaxed, ctx.layer = relaxed, layer
        ctx.save_for_backward(positions)
        w = relaxed.problem.weights
        added = positions.new_empty(positions.shape[0])
        seconds = positions.new_zeros(())
        for rows in _row_pieces(positions):
            _, _, index, fraction = relaxed.interpolate(layer, positions, rows)
            added[rows] = (_between(relaxed.point_var, relaxed.step_var, index, fraction)
                           * w).sum(1)
            seconds += _between(relaxed.point_time, relaxed.step_time, index, fraction).sum()
        return added, seconds

    @staticmethod
    def backward(ctx, grad_added: Tensor, grad_seconds: Tensor
                 ) -> tuple[Tensor, None, None]:  # type: ignore[override]
        relaxed, layer = ctx.relaxed, ctx.layer
        (positions,) = ctx.saved_tensors
        w = relaxed.problem.weights
        grad = torch.empty_like(positions)
        for rows in _row_pieces(positions):
            sigmoid, top, index, _ = relaxed.interpolate(layer, positions, rows)
            shape = sigmoid.shape
            step_var = relaxed.step_var.view(-1).index_select(0, index).view(shape)
            step_time = relaxed.step_time.view(-1).index_select(0, index).view(shape)
            d_t = grad_added[rows, None] * w * step_var + grad_seconds * step_time
            grad[rows] = torch.ops.aten.sigmoid_backward(d_t * top, sigmoid)
        return grad, None, None


def _row_pieces(positions: Tensor) -> Iterable[slice]:
    """Slices of rows of ``positions`` holding about :data:`PIECE_DEVICES` devices."""
    rows = max(1, PIECE_DEVICES // max(positions.shape[1], 1))
    return (slice(first, min(first + rows, positions.shape[0]))
            for first in range(0, positions.shape[0], rows))


def _steps(points: Tensor) -> Tensor:
    """From each hull point to the next (0 after the last), shaped like ``points``."""
    return torch.cat([points[:, 1:] - points[:, :-1], torch.zeros_like(points[:, :1])], 1)


def _between(points: Tensor, steps: Tensor, index: Tensor, fraction: Tensor) -> Tensor:
    """The hull points at the flat ``index`` moved ``fraction`` of a step to the next."""
    def at(table: Tensor) -> Tensor:
        return table.view(-1).index_select(0, index).view(fraction.shape)

    return at(points) + fraction * at(steps)


def _hull_index(options: Tensor, count: int) -> Tensor:
    """Per device kind, the hull point of each of the ``count`` options (its number of
    hull steps; 0 for an option off the hull)."""
    index = torch.zeros(options.shape[0], count, dtype=torch.long)
    for point in reversed(range(options.shape[1])):  # the first point holding an option wins
        index.scatter_(1, options[:, point : point + 1], point)
    return index


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


register_planner(
    "learned", learned, needs_data=True, plans_at_time=True,
    options=asdict(LearnOptions()), check=LearnOptions.from_options,
    option_flags={"--learn-epochs": "epochs", "--learn-lr": "lr"},
    help="per device, options on allocate's hulls learned under sampled device errors, "
         "then rounded to the budget",
)


def _train(inputs: ScoreInputs, problem: Problem, relaxed: _Relaxed, seconds: float,
           opts: LearnOptions) -> int:
    """Adam on the hull positions; the time price follows the budget (dual ascent): after
    every step it is raised or lowered by how far the relaxed plan's time is off."""
    model = inputs.model
    base_var = relaxed.base_variance(problem.option_variance)
    where = next(iter(inputs.values.values())).device
    # fused: one pass over the positions per step (on 89 M devices, 8x the default's speed)
    optimizer = torch.optim.Adam(relaxed.parameters(), lr=opts.lr,
                                 fused=relaxed.parameters()[0].device.type in FUSED_ADAM_DEVICES)
    generator = seeded_generator("swimkit-learned", inputs.seed, where=where)
    price, batches = 1.0, 0
    scale = max(seconds, 1e-30)
    was_training = model.training
    model.eval()
    try:
        with perturbed(model, inputs.weights) as offsets:
            for epoch, count in enumerate(opts.batches_per_epoch(inputs.data), 1):
                shown = f"learned, epoch {epoch}"
                for x, y in progress_bar(itertools.islice(inputs.data, count), inputs.progress,
                                         shown):
                    variance, spent = relaxed.variance_and_time(base_var)
                    if batches:  # the time the last step left
                        over = float(spent.detach()) / scale - 1.0
                        price = max(price * math.exp(opts.price_step * over), 1e-6)
                    offsets.set(_noise(inputs, variance, generator))
                    loss = F.cross_entropy(require_logits(model(x)), y)
                    objective = loss + price * (spent / scale).to(loss.dtype)
                    grads = torch.autograd.grad(objective, relaxed.parameters())
                    for param, grad in zip(relaxed.parameters(), grads, strict=True):
                        param.grad = grad
                    optimizer.step()
                    batches += 1
                    offsets.set(None)
    finally:
        model.train(was_training)
    if batches == 0:
        raise SwimkitError("method 'learned' got no training batches: pass a non-empty loader")
    return batches


def _noise(inputs: ScoreInputs, variance: dict[str, Tensor],
           generator: torch.Generator) -> dict[str, Tensor]:
    """One draw of the weight errors (weight units) of the variances, differentiable."""
    noise = {}
    for name, var in variance.items():
        shape = inputs.values[name].shape
        eps = torch.randn(shape, generator=generator, device=generator.device)
        std = var.clamp_min(0).sqrt().reshape(shape).to(generator.device, torch.float32)
        noise[name] = eps * std * inputs.scales[name]
    return noise


def _round(problem: Problem, relaxed: _Relaxed, seconds: float) -> dict[str, Tensor]:
    """Take hull steps by the relaxed plan's fill, then allocate's efficiency, to budget;
    a device climbs its hull in order, so it stops at its first step not taken."""

    def entries(layer: Layer, rows: slice, start: int) -> Entries:
        costs = problem.costs(layer, rows)
        with torch.no_grad():
            t = relaxed.position(layer, rows)
        steps = torch.arange(costs.shape[-1], dtype=torch.float64)
        fill = (t[:, :, None] - steps).clamp_(0.0, 1.0).add_(0.0)  # no -0.0: keys by bits
        fill.masked_fill_(costs <= 0, -1.0)  # no step there: below every key
        return Entries(fill.view(torch.int64).reshape(-1), costs.reshape(-1), start,
                       problem.keys(layer, rows).reshape(-1))

    cut = fit_prefix(lambda: (entries(*piece) for piece in problem.pieces()), seconds,
                     (0, float_key(1.0)), problem.key_bounds())
    return problem.levels(cut, entries, lambda taken: taken.long().cumprod(-1).sum(-1))
