"""The whole flow as resumable steps that read and write files.

train -> sensitivity -> select -> Monte-Carlo evaluation, for one point (``run``) or
a grid of models (one per noise-injection sigma), methods and budgets (``sweep``).
Every artefact is written atomically under the output folder, and a rerun with the
same settings picks up what is already there: the trained models, the sensitivities,
and each evaluated point. Each cache is keyed by everything that changes its content,
so changed settings never reuse a stale result.

"Within P points" is measured against the best full-verify accuracy of all the models
compared, never a weaker model's own. Inside a torch.distributed group (torchrun) rank 0
trains, computes sensitivities and selects, the other ranks load its files, and every
rank takes a share of the Monte-Carlo chips. Only rank 0 writes results.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from . import distributed
from .caches import (
    PointCache,
    digest,
    evaluation_key,
    file_digest,
    find_sensitivity,
    key_of_0_2,
    sensitivity_key,
)
from .checkpoints import load_checkpoint
from .errors import SwimkitError
from .groups import flag_of, results_of
from .mapping import effective_weights
from .models import build_model
from .montecarlo import MCResult, accuracy
from .plans import Plan, Verify
from .results import ModelReport, PlanCounts, Point, Search, SweepResult
from .selection import METHODS, Budget, BudgetKind, Scores, cut, needs_sensitivity, score
from .sensitivity import Sensitivity
from .settings import Settings
from .steps import (
    Context,
    Log,
    check_fits,
    monte_carlo,
    open_model,
    plan_with,
    prepare,
    quiet,
    sensitivity_pass,
)
from .storage import atomic_write_json, folder_lock
from .train_config import FinetuneSettings
from .training import TrainConfig

# --- data and models ---------------------------------------------------------------------


@dataclass
class Candidate:
    """One model of the comparison and where it came from."""

    label: str
    sigma_train: float
    scale_aware: bool
    model: nn.Module
    path: Path
    digest: str
    sens: Sensitivity | None = None


def model_label(settings: Settings, sigma_train: float, scale_aware: bool) -> str:
    if settings.model.checkpoint:
        return Path(settings.model.checkpoint).stem
    scaled = " scale-aware" if scale_aware and sigma_train > 0 else ""
    return f"sigma_train {sigma_train:g}{scaled}"


def train_folder(sigma_train: float, scale_aware: bool, tag: str = "") -> str:
    """The training folder of one noise setting (``train`` for clean training), with the
    ``tag`` of the other settings that decide the model (:func:`training_tag`)."""
    if sigma_train == 0:
        return "train" + tag
    return f"train-sigma{sigma_train:g}" + ("-scale-aware" if scale_aware else "") + tag


def training_tag(settings: Settings, sigma_train: float) -> str:
    """What else decides a trained model: clipping, learned ranges and, for noise
    training or clipping, the weights on devices (--exclude, --map-params) and a
    crossbar other than the idealised one (each as a short digest)."""
    t = settings.train
    parts = [f"clip{t.clip_sigma:g}"] if t.clip_sigma is not None else []
    parts += ["learned-ranges"] if t.learn_ranges else []
    parts += ["per-channel"] if t.clips and t.clip_per == "channel" else []
    placement = settings.chip.placement
    if (sigma_train > 0 or t.clips) and (placement.exclude or placement.params):
        mapped = {"exclude": list(placement.exclude) or None,
                  "params": list(placement.params) or None}
        text = json.dumps(mapped, sort_keys=True)
        parts.append("weights-" + hashlib.sha256(text.encode()).hexdigest()[:8])
    crossbar = settings.chip.crossbar
    if (sigma_train > 0 or crossbar.converts) and not crossbar.is_default:
        text = json.dumps(crossbar.describe(), sort_keys=True)
        parts.append("crossbar-" + hashlib.sha256(text.encode()).hexdigest()[:8])
    return "".join(f"-{p}" for p in parts)


def check_before_work(settings: Settings, model: nn.Module, trained: bool = True) -> None:
    """Refuse, before any training or sensitivity pass (a typo costs a second, not
    minutes), --exclude patterns that match no layer of ``model`` and speedups or time
    budgets its devices cannot meet (writing every device once, verifying none). A
    value-dependent device model prices devices by their weights, so for it the budgets
    are checked on the ``trained`` model only (still before the sensitivity pass)."""
    grid, chip = settings.grid, settings.chip
    weights = chip.fit(model)
    by_weights = chip.device.prices_by_value
    if not (grid.speedups or grid.time_budgets) or (by_weights and not trained):
        return
    values = effective_weights(weights)
    full, none = chip.device.reference_times(values, chip.scales(values))
    top = full / none
    for speedup in grid.speedups:
        if speedup > top * (1 + 1e-9):
            raise SwimkitError(
                f"speedup {speedup:g} cannot be reached: writing every device once and "
                f"verifying none is {top:.4g}x faster than full verify on this model and "
                f"device model; ask for a speedup between 1 and {math.floor(top * 100) / 100:g}")
    for seconds in grid.time_budgets:
        if seconds < none * (1 - 1e-12):
            raise SwimkitError(
                f"time budget {seconds:g} s cannot be met: writing every device once takes "
                f"{none:.4g} s on this model; ask for at least that (full verify: {full:.4g} s)")


def obtain_model(ctx: Context, sigma_train: float, scale_aware: bool = False,
                 opened: nn.Module | None = None) -> Candidate:
    """The model of one noise setting: the ``opened`` checkpoint, one of an earlier run,
    or trained now."""
    s = ctx.settings
    if s.model.checkpoint:
        assert opened is not None, "sweep opens the checkpoint once and hands it on"
        model, path = opened, Path(s.model.checkpoint)
    else:
        folder = s.out_dir / train_folder(sigma_train, scale_aware,
                                          training_tag(s, sigma_train))
        distributed.rank_zero_first(lambda: _train(ctx, folder, sigma_train, scale_aware))
        path = folder / ("best.pt" if (folder / "best.pt").is_file() else "last.pt")
        model, _ = load_checkpoint(path)
    model = model.to(s.where()).eval()
    first = (sigma_train, scale_aware) == s.trainings()[0]
    folder_name = train_folder(sigma_train, scale_aware, training_tag(s, sigma_train))
    ctx.files["model" if first else f"model {folder_name}"] = str(path)
    return Candidate(model_label(s, sigma_train, scale_aware), sigma_train, scale_aware, model,
                     path, file_digest(path))


def _train(ctx: Context, folder: Path, sigma_train: float, scale_aware: bool) -> None:
    from .training import train

    s = ctx.settings
    _check_training_folder(folder, {"model": s.model.name, "bits": s.model.bits,
                                    **s.data_key()})
    model = build_model(s.model.name, bits=s.model.bits, seed=s.train.seed,
                        input_shape=ctx.dataset.image_shape).to(s.where())
    train(model, ctx.dataset, s.train, chip=s.chip.trained(), checkpoint_dir=folder, log=ctx.log,
          sigma_train=sigma_train, scale_aware=scale_aware, model_name=s.model.name)


def _check_training_folder(folder: Path, key: dict[str, Any]) -> None:
    """Refuse to resume a training folder made for another model or other data."""
    path = folder / "settings.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            stored = None
        if not isinstance(stored, dict):
            raise SwimkitError(f"{path} is damaged (not the settings swimkit wrote); delete "
                               f"{folder} to train again, or use another --out")
        changed = [k for k in key if stored.get(k) != key[k]]
        if changed:
            raise SwimkitError(
                f"{folder} holds a model trained with other settings ({changed[0]}="
                f"{stored.get(changed[0])!r}, now {key[changed[0]]!r}); use another --out"
            )
    else:
        atomic_write_json(key, path)


def obtain_sensitivity(ctx: Context, candidate: Candidate) -> Sensitivity:
    """Sensitivities over the training set, reused when the model and settings match."""
    s = ctx.settings
    sens_settings = s.sensitivity
    key = sensitivity_key(s, candidate.digest)
    suffix = train_folder(candidate.sigma_train, candidate.scale_aware,
                          training_tag(s, candidate.sigma_train)).removeprefix("train")
    if s.model.checkpoint:
        suffix = f"-{candidate.digest[:8]}"
    stem = f"sensitivity-{sens_settings.engine}{suffix}"
    on_rank_zero: list[tuple[Path, Sensitivity]] = []

    def find_or_compute() -> None:
        # looked up on rank 0 inside the step, so every rank takes the step alike,
        # whether or not another rank already sees the file rank 0 writes
        path, found = find_sensitivity(s.out_dir, stem, key)
        if found is None:
            found = sensitivity_pass(candidate.model, ctx)
            found.meta = {**found.meta, "key": key}
            found.save(path)
        on_rank_zero.append((path, found))

    distributed.rank_zero_first(find_or_compute)
    path, found = on_rank_zero[0] if on_rank_zero else find_sensitivity(s.out_dir, stem, key)
    ctx.files[f"sensitivity{suffix}"] = str(path)
    if found is None:
        raise SwimkitError(f"{path}: the sensitivities rank 0 wrote do not read back here; "
                           "give every rank the same --out folder")
    return found


@dataclass
class Evaluator:
    """Selects and evaluates plans of one model; scores are computed once per method."""

    ctx: Context
    candidate: Candidate
    cache: PointCache
    scores: dict[str, Scores] = field(default_factory=dict)
    full_verify: Point | None = None
    evaluated: list[Point] = field(default_factory=list)  # every plan point, in order

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    def _mc(self, plan: Plan | Verify) -> tuple[MCResult, list[MCResult] | None]:
        """Chips of ``plan``: all ``samples`` for full verify (every plan pairs with it),
        else until the CI target (the gap to full verify's, or the mean's) is met. With
        times: the result at the judged time, and the results at every time."""
        ev = self.settings.evaluation
        adaptive = plan is not Verify.ALL
        full = self.full_verify
        against = None
        if adaptive and ev.ci_target and full is not None:
            against = full.over_time if full.over_time is not None else full.mc
        results = monte_carlo(self.candidate.model, self.ctx.test_batches, plan,
                              self.settings, adaptive=adaptive, against=against)
        if ev.times is None:
            return results[0], None
        return results[self.settings.judged], results

    def baseline(self, verify: Verify) -> Point:
        """No device verified (``Verify.NONE``) or every device verified (``Verify.ALL``)."""
        point_id = f"{self.candidate.digest}-{verify}"
        found = self.cache.get(point_id)
        if found is None:
            chip = self.settings.chip
            values = effective_weights(chip.weights(chip.held(self.candidate.model)))
            plan = Plan.uniform(values, verify is Verify.ALL, chip.device.slicing.devices)
            report = chip.device.programming_report(values, chip.scales(values), plan)
            name = "full verify" if verify is Verify.ALL else "no verify"
            mc, over_time = self._mc(verify)
            found = Point(name, self.candidate.label, None, None, PlanCounts.of(plan), report,
                          mc, over_time=over_time)
            self.cache.put(point_id, found)
        if verify is Verify.ALL:
            self.full_verify = found
        self.ctx.log(f"[{self.candidate.label}] {found.method}: {found.mc}")
        return found

    def _select(self, method: str, budget: Budget) -> Plan:
        s = self.settings
        entry = METHODS.get(method)
        sens = self.candidate.sens if entry.needs_sensitivity else None
        point = s.point(method, budget)
        if entry.planner is not None:
            return plan_with(self.candidate.model, sens, point, s, self.ctx)
        if method not in self.scores:
            tolerances = point.tolerances
            one = replace(point, tolerances=tolerances[-1:] if tolerances else None)
            self.scores[method] = score(self.candidate.model, sens, one, s.chip)
        return cut(self.scores[method], budget)

    def point(self, method: str, budget: Budget) -> Point:
        """Select with ``method`` under ``budget`` and evaluate (or reuse) the plan."""
        kind, value = budget.kind.value, float(budget.value)
        stem = f"{method}-{kind}-{value:g}"
        point_id = f"{self.candidate.digest}-{stem}"
        found = self.cache.get(point_id)
        if found is None:
            name = f"{_safe(self.candidate.label)}-{stem}-{self.cache.key[:8]}.pt"
            path = self.settings.out_dir / "plans" / name

            def make_plan() -> None:
                self._select(method, Budget(kind, value)).save(path)

            distributed.rank_zero_first(make_plan)
            found = self._judge(method, budget, path, point_id)
        return self._record(found)

    def planned(self, method: str, budget: Budget, path: Path) -> Point:
        """The plan in ``path`` (made by ``method`` under ``budget``, for another model of
        the same shapes) judged on this model: programmed as the plan says."""
        kind, value = budget.kind.value, float(budget.value)
        point_id = (f"{self.candidate.digest}-{method}-{kind}-{value:g}-plan-"
                    f"{file_digest(path)[:8]}")
        found = self.cache.get(point_id)
        if found is None:
            found = self._judge(method, budget, path, point_id)
        return self._record(found)

    def _judge(self, method: str, budget: Budget, path: Path, point_id: str) -> Point:
        """Chips of the plan in ``path``, stored in the cache as ``point_id``."""
        plan = Plan.load(path)
        mc, over_time = self._mc(plan)
        found = Point(method, self.candidate.label, budget.kind.value, float(budget.value),
                      PlanCounts.of(plan), plan.programming, mc, str(path), plan.meta,
                      over_time=over_time)
        self.cache.put(point_id, found)
        return found

    def _record(self, found: Point) -> Point:
        """Pair a point with full verify, keep it and say it."""
        if self.full_verify is not None:
            found = found.paired_with(self.full_verify.mc)
        self.evaluated.append(found)
        speed = f", speedup {found.speedup:.2f}x" if found.speedup else ""
        self.ctx.log(f"[{self.candidate.label}] {found.label}: {found.mc} "
                     f"({found.counts.devices_verified:,} of {found.counts.devices_total:,} "
                     f"devices verified{speed})")
        return found

    def search(self, method: str, meets: Callable[[Point], bool], target: str) -> Search:
        """The largest speedup whose point meets the target (geometric bisection)."""
        full = self.full_verify
        assert full is not None
        if not meets(full):
            return Search(method, self.candidate.label, target, None)
        cap = full.programming.max_speedup
        top = self.point(method, _speedup(_floor3(cap)))
        if meets(top):
            return Search(method, self.candidate.label, target, top)
        low, high, best = self._bracket(method, meets, top.speedup or cap)
        for _ in range(self.settings.grid.steps):
            middle = _round3(math.sqrt(low * high))
            if not low < middle < high:
                break
            point = self.point(method, _speedup(middle))
            if meets(point):
                low, best = middle, point
            else:
                high = middle
        if best is None:
            best = self.point(method, _speedup(1.0))
        return Search(method, self.candidate.label, target, best)

    def _bracket(self, method: str, meets: Callable[[Point], bool], top: float
                 ) -> tuple[float, float, Point | None]:
        """Where the bisection starts: the largest speedup already evaluated for ``method``
        that meets the target (or 1x) and the smallest larger one that does not (or
        ``top``), so that the search never ends below a point known to pass."""
        known = [p for p in self.evaluated if p.method == method and p.speedup is not None]
        passing = [p for p in known if meets(p)]
        best = max(passing, key=lambda p: p.speedup, default=None)
        low = best.speedup if best is not None else 1.0
        above = [p.speedup for p in known if not meets(p) and p.speedup > low]
        return low, min([top, *above]), best


def _speedup(value: float) -> Budget:
    return Budget(BudgetKind.SPEEDUP, value)


def _round3(value: float) -> float:
    """Three significant digits (search points get stable names and cache entries)."""
    return float(f"{value:.3g}")


def _floor3(value: float) -> float:
    """``value`` rounded down to three significant digits."""
    step = 10.0 ** (math.floor(math.log10(value)) - 2)
    return float(f"{math.floor(value / step) * step:.3g}")


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


# --- the flow ------------------------------------------------------------------------------------


def sweep(settings: Settings, log: Log = quiet, *,
          before: Callable[[Settings], None] | None = None) -> SweepResult:
    """Run the flow for every model, method and budget of ``settings``. ``before`` is
    called with the settings, the model named, before any work (the command line checks
    there that every file it will write can be written)."""
    s = settings
    if s.model.checkpoint:
        _refuse_training(s)
    opened = None
    if s.model.checkpoint:  # a checkpoint is checked as it loads, training or not
        opened, s = open_model(s)
    if before is not None:
        before(s)
    ctx = prepare(s, log)
    if opened is None:
        check_before_work(s, build_model(s.model.name, bits=s.model.bits, seed=s.train.seed,
                                         input_shape=ctx.dataset.image_shape),
                          trained=False)
    lock = folder_lock(s.out_dir) if distributed.is_rank_zero() else contextlib.nullcontext()
    with lock:  # a second run in this folder waits, then reuses what this one wrote
        return _sweep(ctx, opened)


#: Training settings a sweep of a given checkpoint still uses (learned's batches, chips).
_USED_WITH_A_CHECKPOINT = ("seed", "batch_size", "model_name", "threads", "resume", "progress")


def _refuse_training(s: Settings) -> None:
    """With --checkpoint nothing is trained: a training setting given would not act."""
    given = [_named(f) for f in dataclasses.fields(TrainConfig)
             if f.name not in _USED_WITH_A_CHECKPOINT
             and getattr(s.train, f.name) != getattr(TrainConfig(), f.name)]
    if (len(s.trainings()) > 1 or s.trainings()[0] != (0.0, False)
            or s.grid.scale_aware != "off"):  # --scale-aware with no sigma trains nothing
        given = ["--sigma-train / --scale-aware", *given]
    if given:
        raise SwimkitError(f"--checkpoint gives a trained model, so the training settings "
                           f"({', '.join(given)}) would not act: drop them, or drop "
                           "--checkpoint to train the models compared")


def _named(field: dataclasses.Field) -> str:
    """A training setting by its flag (by its name where it has none)."""
    declared = flag_of(field)
    return declared.name if declared is not None and declared.names else field.name


def _sweep(ctx: Context, opened: nn.Module | None) -> SweepResult:
    s = ctx.settings
    log = ctx.log
    cache = PointCache(s.out_dir / "points.json", evaluation_key(s), (key_of_0_2(s),))
    evaluators, reports = [], []
    for sigma_train, scale_aware in s.trainings():
        candidate = obtain_model(ctx, sigma_train, scale_aware, opened)
        check_before_work(s, candidate.model)
        clean = accuracy(candidate.model, ctx.test_batches)
        log(f"[{candidate.label}] clean accuracy: {clean:.2f} %")
        if needs_sensitivity(s.grid.methods):
            candidate.sens = obtain_sensitivity(ctx, candidate)
        ev = Evaluator(ctx, candidate, cache)
        no_verify, full_verify = ev.baseline(Verify.NONE), ev.baseline(Verify.ALL)
        points = [ev.point(m, budget) for m in s.grid.methods for budget in s.grid.budgets()]
        evaluators.append(ev)
        reports.append(ModelReport(candidate.label, sigma_train, scale_aware,
                                   str(candidate.path), clean, no_verify, full_verify, points))
        if s.finetune.epochs:
            tuned = fine_tuned_under(ctx, candidate, points[0], cache)
            evaluators.append(tuned[1])
            reports.append(tuned[0])
    result = SweepResult(reports, s.grid.within_points, settings=s.describe(),
                         files=ctx.files)
    if s.grid.search:
        result = _searches(result, evaluators)
    return result.with_reference()


def fine_tuned_under(ctx: Context, base: Candidate, point: Point, cache: PointCache
                     ) -> tuple[ModelReport, Evaluator]:
    """The run's model fine-tuned under the plan of ``point`` (into
    OUT/finetune-PLAN-TAG, TAG naming the fine-tuning settings; resumed there) and judged
    on that plan: clean, no verify, full verify and the plan, on the same chips as the
    model it came from."""
    s = ctx.settings
    assert point.plan_path is not None and point.budget_kind is not None
    plan_path = Path(point.plan_path)
    tag = digest(results_of(s.finetune))[:8]  # other fine-tuning, another folder
    folder = s.out_dir / f"finetune-{plan_path.stem}-{tag}"
    distributed.rank_zero_first(lambda: _finetune(ctx, base, Plan.load(plan_path), folder))
    path = folder / ("best.pt" if (folder / "best.pt").is_file() else "last.pt")
    model, _ = load_checkpoint(path)
    model = model.to(s.where()).eval()
    label = f"{base.label} fine-tuned under {point.label}"
    ctx.files["fine-tuned model"] = str(path)
    candidate = Candidate(label, base.sigma_train, base.scale_aware, model, path,
                          file_digest(path))
    clean = accuracy(model, ctx.test_batches)
    ctx.log(f"[{label}] clean accuracy: {clean:.2f} %")
    ev = Evaluator(ctx, candidate, cache)
    no_verify, full_verify = ev.baseline(Verify.NONE), ev.baseline(Verify.ALL)
    budget = Budget(BudgetKind(point.budget_kind), float(point.budget_value))
    tuned = ev.planned(point.method, budget, plan_path)
    return ModelReport(label, base.sigma_train, base.scale_aware, str(path), clean, no_verify,
                       full_verify, [tuned]), ev


def _finetune(ctx: Context, base: Candidate, plan: Plan, folder: Path) -> None:
    """Train a copy of ``base``'s model under ``plan`` as the settings' fine-tuning says."""
    from .training import learning_rate, train

    s = ctx.settings
    f = s.finetune
    model = copy.deepcopy(base.model)
    lr = f.lr if f.lr is not None else (
        FinetuneSettings.LR_FACTOR * learning_rate(s.train, model, s.model.name))
    config = replace(s.train, epochs=f.epochs, sigma_train=f.sigma or 0.0,
                     scale_aware=f.scale_aware, lr=lr, distill=f.distill)
    teacher = copy.deepcopy(base.model) if f.distill else None
    train(model, ctx.dataset, config, chip=s.chip.trained(), plan=plan, teacher=teacher,
          checkpoint_dir=folder, log=ctx.log, model_name=s.model.name)


def _searches(result: SweepResult, evaluators: list[Evaluator]) -> SweepResult:
    """Per model and method: the largest speedup meeting the target. A point's mean is
    judged through its paired chips (:meth:`~swimkit.results.Point.mean_estimate`)."""
    grid = evaluators[0].settings.grid
    within = grid.within_points
    reference = result.reference_percent
    floor = reference - within
    if grid.yield_target is None:
        target = f"mean >= {floor:.2f} % ({within:g} points below {reference:.2f} %)"
    else:
        target = (f"{100 * grid.yield_target:g} % of chips >= {floor:.2f} % "
                  f"({within:g} points below {reference:.2f} %)")

    def judge(full: MCResult) -> Callable[[Point], bool]:
        if grid.yield_target is None:
            return lambda point: point.mean_estimate(full) >= floor
        return lambda point: (point.mc.yield_within(reference, within)
                              >= grid.yield_target - 1e-12)

    models = []
    for report, ev in zip(result.models, evaluators, strict=True):
        assert ev.full_verify is not None
        meets = judge(ev.full_verify.mc)
        models.append(replace(report, searches=[ev.search(m, meets, target)
                                                for m in ev.settings.grid.methods]))
    return replace(result, models=models)


def write_result(result: SweepResult | dict[str, Any], path: str | Path) -> Path:
    """Write a result as JSON atomically (rank 0 only) and return the path."""
    path = Path(path)
    if distributed.is_rank_zero():
        data = result.to_dict() if isinstance(result, SweepResult) else result
        atomic_write_json(data, path)
    return path


__all__ = ["Candidate", "Context", "Evaluator", "check_fits", "prepare", "quiet",
           "sweep", "write_result"]
