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

from . import distributed
from .chips import ChipRunner, auto_chips_per_pass, check_chips_fit, check_chips_per_pass
from .devices import NoiseModel, Sampler, check_times, generator_for, require_noise_model
from .errors import SwimkitError, is_number, require
from .mapping import (
    DeviceWeight,
    device_weights,
    effective_weights,
    require_logits,
    weight_scales,
)
from .plans import Plan, Verify
from .progress import progress_bar
from .threads import check_threads, torch_threads

Batches = Iterable[tuple[Tensor, Tensor]]


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    require(dof >= 1, "a confidence interval needs at least two samples")
    return float(stats.t.ppf(0.975, dof))


@dataclass(frozen=True)
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
    ci_target: float | None = None   # adaptive runs: the CI half-width asked for (points)
    ci_of: str = "mean"              # ... of the mean or of the paired difference
    ci_reached: float | None = None  # ... and the half-width reached when it stopped

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
        correct = correct + (require_logits(model(x)).argmax(dim=-1) == y).sum()
        seen += int(y.shape[0])
    return int(correct), seen


def evaluate(
    model: nn.Module,
    batches: Batches,
    device_model: NoiseModel,
    plan: Plan | Verify | str | None = None,
    samples: int = 100,
    seed: int = 0,
    *,
    ci_target: float | None = None,
    min_samples: int = 10,
    against: MCResult | None = None,
    chips_per_pass: int | None = None,
    compile: bool = False,
    threads: int | None = None,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: bool = False,
    times: Sequence[float] | None = None,
) -> Any:
    """Accuracy of ``model`` under device variation over up to ``samples`` chips.

    Returns one :class:`MCResult`; with ``times`` (seconds after programming) a list of
    them, one per time, from the same chips: each chip is programmed once and read at
    every time (common random numbers across times), so the drop from one time to the
    next is not sampling noise.

    ``device_model`` is any :class:`~swimkit.devices.NoiseModel`. ``plan`` says how the
    devices are programmed: a :class:`~swimkit.plans.Plan`, ``Verify.NONE`` (``"none"``,
    or None: nothing verified) or ``Verify.ALL`` (``"all"``). The test batches are held in
    memory once and every chip evaluates all of them.

    With ``ci_target`` (points) chips are evaluated in rounds (see :func:`round_ends`) and
    the run stops after the first round at which the 95 % confidence interval's
    half-width is at most ``ci_target``, between ``min_samples`` and ``samples`` chips:
    the CI of the mean accuracy, or, given ``against`` (a result of the same seed with at
    least ``samples`` chips, e.g. full verify; with ``times``, a list of one per time),
    of the paired per-chip difference to it; with ``times`` the widest CI over the
    times decides.
    The result's ``samples`` is the number of chips used.

    ``chips_per_pass`` chips are evaluated per forward pass (None chooses: see
    :func:`~swimkit.chips.auto_chips_per_pass`); ``compile`` compiles the forward once;
    ``threads`` sets torch's CPU threads for the run (default: this process's share of
    the cores). Inside a torch.distributed group each round's chips are dealt out among
    the ranks and every rank returns the full result; the numbers do not depend on the
    number of processes.
    """
    require(isinstance(samples, int) and samples >= 1, f"samples must be >= 1 (got {samples!r})")
    at = (0.0,) if times is None else check_times(times)
    stop = _check_stopping(ci_target, min_samples, against, samples, seed, len(at))
    require_noise_model(device_model)
    chips_per_pass = check_chips_per_pass(chips_per_pass)
    weights = _plan_weights(model, plan, layers, exclude)
    chosen = _as_plan(plan, weights, device_model)
    data = batches if isinstance(batches, (list, tuple)) else list(batches)
    require(len(data) > 0, "no test batches: give a non-empty loader")
    was_training = model.training
    model.eval()
    try:
        values = effective_weights(weights)  # read before the runner swaps its own in
        sample = device_model.sampler(values, weight_scales(values), chosen, at)
        with (torch_threads(check_threads(threads)),
              _runner(model, data, values, chips_per_pass, compile) as runner):
            accuracies = _run_rounds(runner, values, sample, seed, samples, stop, progress,
                                     len(at))
    finally:
        model.train(was_training)
    meta = {"plan": plan.method if isinstance(plan, Plan) else str(plan or "none"),
            "chips_per_pass": runner.chips_per_pass, "compiled": runner.compiled}
    results = [MCResult(accuracies=accuracies[:, column].clone(), seed=seed,
                        meta=meta if times is None else {**meta, "time_s": time},
                        **_stopped(stop, accuracies[:, column : column + 1]))
               for column, time in enumerate(at)]
    return results[0] if times is None else results


def _stopped(stop: Stopping | None, accuracies: Tensor) -> dict[str, Any]:
    """The fields of an adaptive run's result: the CI asked for, of what, and reached."""
    if stop is None:
        return {}
    return {"ci_target": stop.target, "ci_of": stop.of,
            "ci_reached": stop.half_width(accuracies)}


@dataclass(frozen=True)
class Stopping:
    """When an adaptive run stops: ``target`` points of CI half-width, at least
    ``minimum`` chips; of the mean, or of the paired difference to ``against``."""

    target: float
    minimum: int
    against: Tensor | None = None

    @property
    def of(self) -> str:
        return "mean" if self.against is None else "paired difference"

    def half_width(self, accuracies: Tensor) -> float:
        """The widest CI half-width over the columns (times) of ``accuracies`` (chips, T)."""
        if accuracies.dim() == 1:
            accuracies = accuracies[:, None]
        values = accuracies if self.against is None else (
            accuracies - self.against[: accuracies.shape[0], : accuracies.shape[1]])
        return max(ci_half_width(values[:, c]) for c in range(values.shape[1]))


def ci_half_width(values: Tensor) -> float:
    """Half-width (points) of the 95 % Student-t interval of the mean of ``values``."""
    n = int(values.numel())
    if n < 2:
        return math.inf
    return t_quantile_975(n - 1) * float(values.double().std(unbiased=True)) / math.sqrt(n)


ROUND_GROWTH = 1.5  # a round at most adds half the chips already evaluated ...
ROUND_MIN = 4       # ... and at least this many


def round_ends(done: int, half_width: float, target: float, samples: int) -> int:
    """Where the next round of an adaptive run ends, from ``done`` chips whose CI
    half-width is ``half_width``: the chips the current spread says are needed
    (half-width shrinks as 1/sqrt(n)), at least ROUND_MIN more and at most
    ROUND_GROWTH times ``done``, never past ``samples``. It depends on the accuracies
    only, so every process count stops at the same chip."""
    needed = math.ceil(done * (half_width / target) ** 2) if math.isfinite(half_width) else samples
    grown = min(needed, math.ceil(ROUND_GROWTH * done))
    return min(samples, max(done + ROUND_MIN, grown))


def _check_stopping(ci_target: float | None, min_samples: int, against: Any,
                    samples: int, seed: int, times: int = 1) -> Stopping | None:
    if ci_target is None:
        require(against is None, "against= pairs the stopping rule with a reference: give "
                "ci_target as well")
        return None
    require(is_number(ci_target, finite=True) and float(ci_target) > 0,
            f"ci_target must be a number of points > 0, e.g. 0.5 (got {ci_target!r})")
    require(isinstance(min_samples, int) and min_samples >= 2,
            f"min_samples must be an integer >= 2 (got {min_samples!r})")
    if against is None:
        return Stopping(float(ci_target), min(min_samples, samples))
    references = list(against) if isinstance(against, (list, tuple)) else [against]
    require(len(references) in (1, times), f"against gives {len(references)} results for "
            f"{times} times: give one per time (or one for all)")
    for ref in references:
        require(isinstance(ref, MCResult), f"against must be an MCResult (got "
                f"{type(ref).__name__})")
        require(ref.seed == seed, f"against was evaluated with seed {ref.seed}, this run "
                f"with {seed}: a paired difference needs the same chips (the same seed)")
        require(ref.samples >= samples, f"against has {ref.samples} chips but this run may "
                f"use {samples}: evaluate the reference with at least samples={samples}")
    columns = torch.stack([r.accuracies[:samples].double() for r in references], dim=1)
    return Stopping(float(ci_target), min(min_samples, samples),
                    columns.expand(samples, times))


def _runner(model: nn.Module, data: Sequence[tuple[Tensor, Tensor]],
            values: Mapping[str, Tensor], chips_per_pass: int | None,
            compile: bool) -> ChipRunner:
    where = next(iter(values.values())).device
    parameters = sum(v.numel() for v in values.values())
    if chips_per_pass is None:
        chips_per_pass = auto_chips_per_pass(where, data, parameters)
    check_chips_fit(chips_per_pass, where, data, parameters)
    return ChipRunner(model, data, values, chips_per_pass=chips_per_pass, compile=compile)


def _plan_weights(
    model: nn.Module, plan: Plan | str | None, layers, exclude
) -> dict[str, DeviceWeight]:
    if not isinstance(plan, Plan):
        require(plan is None or isinstance(plan, str),
                f"plan must be a Plan, 'none' or 'all' (got {type(plan).__name__})")
        return device_weights(model, layers=layers, exclude=exclude)
    kept = device_weights(model, layers=layers, exclude=exclude)
    outside = [name for name in plan.names if name not in kept]
    if outside and (layers or exclude):  # a plan names its weights: they must agree
        raise SwimkitError(f"the plan programs {outside[0]!r}, which the excluded layers "
                           f"({', '.join(exclude or ())}) keep digital: make the plan "
                           "with the same exclusion")
    left = [name for name in kept if name not in plan.names]
    if left:
        raise SwimkitError(
            f"the plan leaves out {len(left)} layer(s) on devices ({', '.join(left[:3])}): "
            "they would be evaluated as exact; select again for this model, or keep them "
            f"digital with exclude=[{', '.join(repr(n.rsplit('.', 1)[0]) for n in left[:3])}]"
            " (--exclude)")
    return plan.weights_in(model)


def _as_plan(plan: Plan | str | None, weights: Mapping[str, DeviceWeight],
             device_model: NoiseModel) -> Plan | None:
    """The plan to draw with: a Plan, None for "none", a full-verify plan for "all"."""
    if isinstance(plan, Plan):
        return plan
    if Verify.of(plan) is Verify.NONE:
        return None
    return Plan.uniform(effective_weights(weights), verify=True,
                        devices_per_weight=device_model.slicing.devices)


def _run_rounds(runner: ChipRunner, values: Mapping[str, Tensor], sample: Sampler, seed: int,
                samples: int, stop: Stopping | None, progress: bool, times: int = 1) -> Tensor:
    """Chip accuracies ``(chips, times)``, round by round, until the stopping rule holds
    (or ``samples``)."""
    seen = sum(int(y.shape[0]) for _, y in runner.data)
    where = next(iter(values.values())).device
    rank, world = distributed.rank(), distributed.world_size()
    bar = progress_bar(range(samples), progress and rank == 0, "Monte-Carlo")
    done: list[Tensor] = []
    count, end = 0, samples if stop is None else stop.minimum
    while True:
        mine = list(range(count + rank, end, world))
        chips = ({name: values[name] + delta for name, delta in read.items()}
                 for index in mine
                 for read in sample(generator_for(seed, index, where)))  # drawn as evaluated
        local = torch.tensor([100.0 * c / seen for c in runner.correct(chips)],
                             dtype=torch.float64).reshape(len(mine), times)
        done.append(_gather(local, mine, range(count, end), world))
        for _ in range(end - count):
            next(bar, None)
        count = end
        accuracies = torch.cat(done)
        if stop is None or count >= samples:
            return accuracies
        half = stop.half_width(accuracies)
        if half <= stop.target:
            return accuracies
        end = round_ends(count, half, stop.target, samples)


def _gather(local: Tensor, mine: Sequence[int], chips: range, world: int) -> Tensor:
    """Every rank's accuracies of ``chips``, in chip order."""
    if world == 1:
        return local
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (list(mine), local.tolist()))
    result = torch.empty(len(chips), local.shape[1], dtype=torch.float64)
    for indices, values in parts:
        where = torch.as_tensor(indices, dtype=torch.long) - chips.start
        result[where] = torch.as_tensor(values, dtype=torch.float64).reshape(-1, local.shape[1])
    return result


__all__ = ["MCResult", "Stopping", "accuracy", "ci_half_width", "evaluate", "round_ends",
           "t_quantile_975"]
