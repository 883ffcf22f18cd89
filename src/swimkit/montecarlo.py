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

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed
from .chip import ChipSpec, as_chip
from .chips import ChipRunner, auto_chips_per_pass, check_chips_fit
from .chipstats import MCResult, ci_half_width
from .converters import AnalogReads, mark_weights
from .crossbar import Crossbar
from .devices import NoiseModel, Sampler, check_times
from .devices.protocol import require_time_acts
from .errors import SwimkitError, check_once, is_integer, is_number, require
from .groups import (
    at_least_two,
    flag,
    integer,
    nonnegative,
    positive_int,
    with_overrides,
)
from .mapping import DeviceWeight, aliases, effective_weights
from .models import require_logits
from .plans import Plan, Verify
from .progress import progress_bar
from .seeding import generator_for, seeded_generator
from .threads import check_threads, torch_threads

Batches = Iterable[tuple[Tensor, Tensor]]

#: Chips before an adaptive run may stop.
DEFAULT_MIN_SAMPLES = 10


@dataclass
class EvaluationSettings:
    """Monte-Carlo chips: up to ``samples`` chips, chip k drawn from (``seed``, k).

    ``ci_target`` (points; None or 0: always ``samples`` chips) stops a plan's chips once
    the 95 % CI of its gap to a reference (``against``; of its mean without one) is that
    narrow, after at least ``min_samples``. ``times`` (seconds after programming; None:
    right after only) reads every chip at each time. ``chips_per_pass`` (None: chosen),
    ``compile`` and ``threads`` (None: this process's share of the cores) only change
    the speed, ``progress`` only what is shown.
    """

    samples: int = field(default=100, metadata=flag(
        "--samples", "--noise_epoch", kind=positive_int, help="Monte-Carlo chips"))
    seed: int = field(default=0, metadata=flag(
        "--seed", kind=integer, help="seed of training, selection and chips"))
    ci_target: float | None = field(default=None, metadata=flag(
        "--ci-target", kind=nonnegative, metavar="P", command_default=0.5,
        help="stop a plan's chips once the 95% CI of its gap to full verify (of its mean, "
             "without one) is within +-P points (0: always --samples)"))
    min_samples: int = field(default=DEFAULT_MIN_SAMPLES, metadata=flag(
        "--min-samples", kind=at_least_two, help="chips before --ci-target may stop"))
    chips_per_pass: int | None = field(default=None, metadata=flag(
        "--chips-per-pass", kind=positive_int, metavar="C", results=False,
        help="chips evaluated per forward pass, weights stacked (default: chosen; 1 on the "
             "CPU)"))
    compile: bool = field(default=False, metadata=flag(
        "--compile", kind=None, results=False,
        help="compile the forward once with torch.compile (falls back to eager, with a "
             "message, where it cannot run)"))
    threads: int | None = field(default=None, metadata=flag(
        "--threads", kind=positive_int, results=False,
        help="torch CPU threads of Monte-Carlo (default: this process's share of the "
             "cores; a warning when more)"))
    times: list[float] | None = field(default=None, metadata=flag(
        "--times", kind=nonnegative, several=True, metavar="T1,T2,...",
        help="read every chip at these seconds after programming (one result per time, "
             "the same chips), e.g. 1,3600,86400,31536000"))
    progress: bool = field(default=False, metadata=flag(
        "--no-progress", kind=None, invert=True, results=False, command_default=True,
        help="no progress bars"))

    def __post_init__(self) -> None:
        require(is_integer(self.samples) and self.samples >= 1,
                f"samples must be an integer >= 1 (got {self.samples!r})")
        require(is_integer(self.seed), f"seed must be an integer (got {self.seed!r})")
        require(self.ci_target is None or (is_number(self.ci_target, finite=True)
                                           and self.ci_target >= 0),
                f"ci_target must be a number of points >= 0, 0 or None for a fixed number "
                f"of chips (got {self.ci_target!r})")
        if self.ci_target == 0:  # 0 and None both mean a fixed number of chips
            self.ci_target = None
        require(is_integer(self.min_samples) and self.min_samples >= 2,
                f"min_samples must be an integer >= 2 (got {self.min_samples!r})")
        require(self.ci_target is not None or self.min_samples == DEFAULT_MIN_SAMPLES,
                "min_samples would have no effect: it sets when ci_target may stop the chips; "
                "give ci_target > 0 (--ci-target), or drop min_samples (--min-samples)")
        require(self.chips_per_pass is None or (is_integer(self.chips_per_pass)
                                                and self.chips_per_pass >= 1),
                f"chips_per_pass must be an integer >= 1, or None to choose (got "
                f"{self.chips_per_pass!r})")
        require(self.threads is None or (is_integer(self.threads) and self.threads >= 1),
                f"threads must be an integer >= 1, or None (got {self.threads!r})")
        require(isinstance(self.compile, bool) and isinstance(self.progress, bool),
                "compile and progress must be True or False")
        if self.times is not None:
            check_once("times", self.times)
            self.times = list(check_times(self.times))


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
    chip: ChipSpec | NoiseModel | None = None,
    plan: Plan | Verify | str | None = None,
    settings: EvaluationSettings | None = None,
    *,
    against: MCResult | Sequence[MCResult] | None = None,
    **overrides: Any,
) -> Any:
    """Accuracy of ``model`` under device variation over up to ``samples`` chips.

    ``chip`` is the :class:`~swimkit.ChipSpec` the model is programmed on (a device model
    alone stands for the idealised crossbar with every conv, linear and attention weight
    on devices; None: the default Gaussian chip). ``plan`` says how its devices are
    programmed: a :class:`~swimkit.plans.Plan`, ``Verify.NONE`` (``"none"``, or None:
    nothing verified) or ``Verify.ALL`` (``"all"``). The chips are set by
    ``settings`` (an :class:`EvaluationSettings`) with the keyword ``overrides`` of its
    fields applied to a copy (``samples=``, ``seed=``, ``ci_target=``, ``times=``, ...).

    Returns one :class:`MCResult`; with ``times`` (seconds after programming) a list of
    them, one per time, from the same chips: each chip is programmed once and read at
    every time (common random numbers across times), so the drop from one time to the
    next is not sampling noise. The test batches are held in memory once and every chip
    evaluates all of them.

    With ``ci_target`` (points) chips are evaluated in rounds (see :func:`round_ends`) and
    the run stops after the first round at which the 95 % confidence interval's
    half-width is at most ``ci_target``, between ``min_samples`` and ``samples`` chips:
    the CI of the mean accuracy, or, given ``against`` (a result of the same seed with at
    least ``samples`` chips, e.g. full verify; with ``times``, a list of one per time),
    of the paired per-chip difference to it; with ``times`` the widest CI over the
    times decides. The result's ``samples`` is the number of chips used.

    Inside a torch.distributed group each round's chips are dealt out among the ranks
    and every rank returns the full result; the numbers do not depend on the number of
    processes.
    """
    ev = with_overrides(EvaluationSettings, settings, overrides, "evaluate")
    return _evaluate(model, batches, as_chip(chip), plan, ev, against)


def _evaluate(model: nn.Module, batches: Batches, chip: ChipSpec,
              plan: Plan | Verify | str | None, ev: EvaluationSettings,
              against: MCResult | Sequence[MCResult] | None) -> Any:
    """:func:`evaluate` on ``chip`` with its chips' settings ``ev``."""
    samples, seed, times = ev.samples, ev.seed, ev.times
    at = (0.0,) if times is None else tuple(times)
    stop = _check_stopping(ev.ci_target, ev.min_samples, against, samples, seed,
                           len(at))
    device = chip.device
    model = chip.held(model)  # BatchNorm folded where the chip folds it
    if times is not None and at != (0.0,):
        require_time_acts(device, "times", list(at))
    weights = _plan_weights(model, plan, chip)
    chosen = _as_plan(plan, weights, device)
    data = batches if isinstance(batches, (list, tuple)) else list(batches)
    require(len(data) > 0, "no test batches: give a non-empty loader")
    was_training = model.training
    model.eval()
    chips_per_pass, compile_ = ev.chips_per_pass, ev.compile
    if chip.crossbar.converts:
        chips_per_pass, compile_ = _one_chip_eager(chips_per_pass, compile_)
    try:
        values = effective_weights(weights)  # read before the runner swaps its own in
        sample = device.sampler(values, chip.scales(values), chosen, at)
        shared = aliases(weights)  # every use of a tied weight reads the chip's one value
        used = {**values, **{alias: values[name] for alias, name in shared.items()}}
        with (torch_threads(check_threads(ev.threads)),
              _runner(model, data, used, chips_per_pass, compile_) as runner,
              _converters(chip.crossbar, runner, used) as reads):
            accuracies = _run_rounds(runner, used, _with_aliases(sample, shared), seed,
                                     samples, stop, ev.progress, len(at), reads)
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


def _plan_weights(model: nn.Module, plan: Plan | str | None, chip: ChipSpec
                  ) -> dict[str, DeviceWeight]:
    """The device weights a run draws errors for: those of ``plan`` (which must agree
    with the chip's placement), or for "none" / "all" the chip's."""
    kept = chip.weights(model)
    if isinstance(plan, Plan):
        chip.check_plan(plan)
    if not isinstance(plan, Plan):
        require(plan is None or isinstance(plan, str),
                f"plan must be a Plan, 'none' or 'all' (got {type(plan).__name__})")
        return kept
    outside = [name for name in plan.names if name not in kept]
    placement = chip.placement
    if outside and not placement.is_default:  # a plan names its weights: they must agree
        raise SwimkitError(f"the plan programs {outside[0]!r}, which the chip's placement "
                           f"(exclude {', '.join(placement.exclude) or 'none'}) keeps "
                           "digital: make the plan for the same chip")
    left = [name for name in kept if name not in plan.names]
    if left:
        layers = ", ".join(repr(n.rsplit(".", 1)[0]) for n in left[:3])
        raise SwimkitError(
            f"the plan leaves out {len(left)} layer(s) on devices ({', '.join(left[:3])}): "
            "they would be evaluated as exact; select again for this model, or keep them "
            f"digital with Placement(exclude=[{layers}]) (--exclude)")
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
                samples: int, stop: Stopping | None, progress: bool, times: int = 1,
                reads: AnalogReads | None = None) -> Tensor:
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
        chips = _chips(values, sample, seed, mine, where, reads)  # drawn as evaluated
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


def _chips(values: Mapping[str, Tensor], sample: Sampler, seed: int, indices: Sequence[int],
           where: torch.device, reads: AnalogReads | None) -> Iterator[dict[str, Tensor]]:
    """The chips ``indices``, each read at every time, drawn as they are evaluated; with
    converters, each read's output noise from a generator of its own (chip, read)."""
    for index in indices:
        for read, deltas in enumerate(sample(generator_for(seed, index, where))):
            if reads is not None:
                reads.generator = seeded_generator("swimkit-output-noise", int(seed), index,
                                                   read, where=where)
            yield {name: values[name] + delta for name, delta in deltas.items()}


def _with_aliases(sample: Sampler, shared: Mapping[str, str]) -> Sampler:
    """``sample`` drawing each tied weight's error once and handing it to every use."""
    if not shared:
        return sample

    def draw(generator: torch.Generator | None) -> list[dict[str, Tensor]]:
        return [{**read, **{alias: read[name] for alias, name in shared.items()}}
                for read in sample(generator)]

    return draw


def _one_chip_eager(chips_per_pass: int | None, compile: bool) -> tuple[int, bool]:
    """Chips read through converters are evaluated one a pass, uncompiled (the
    converters intercept the layers' calls on the chip's own weight tensors)."""
    if chips_per_pass not in (None, 1) or compile:
        warnings.warn("a crossbar with converters or output noise is evaluated one chip a "
                      "pass, without compiling", stacklevel=4)
    return 1, False


@contextlib.contextmanager
def _converters(crossbar: Crossbar, runner: ChipRunner, values: Mapping[str, Tensor]
                ) -> Iterator[AnalogReads | None]:
    """The crossbar's converters on the runner's weights while the block runs (None
    when it has none)."""
    if not crossbar.converts:
        yield None
        return
    reads = AnalogReads(crossbar)
    mark_weights(reads, runner.inputs, values)
    with reads:
        yield reads


def _gather(local: Tensor, mine: Sequence[int], chips: range, world: int) -> Tensor:
    """Every rank's accuracies of ``chips``, in chip order."""
    if world == 1:
        return local
    parts = distributed.all_gather_object((list(mine), local.tolist()))
    result = torch.empty(len(chips), local.shape[1], dtype=torch.float64)
    for indices, values in parts:
        where = torch.as_tensor(indices, dtype=torch.long) - chips.start
        result[where] = torch.as_tensor(values, dtype=torch.float64).reshape(-1, local.shape[1])
    return result


__all__ = ["EvaluationSettings", "MCResult", "Stopping", "accuracy", "evaluate", "round_ends"]
