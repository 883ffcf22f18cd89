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
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as data_mod
from . import distributed
from .caches import PointCache, evaluation_key, file_digest, find_sensitivity
from .checkpoints import load_checkpoint
from .chips import evaluation_batch_size
from .errors import SwimkitError
from .mapping import device_weights, effective_weights, weight_scales
from .models import build_model, model_info
from .montecarlo import MCResult, accuracy, evaluate
from .plans import Plan
from .results import ModelReport, PlanCounts, Point, Search, SweepResult
from .selection import METHODS, Budget, Scores, cut, needs_sensitivity, score, select
from .sensitivity import Sensitivity, sensitivity
from .settings import Settings
from .storage import atomic_write_json, folder_lock

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """A log that drops every line."""


@dataclass
class Context:
    """What the steps share: settings, data, log and the files written."""

    settings: Settings
    dataset: data_mod.Dataset
    log: Log
    progress: bool
    files: dict[str, str] = field(default_factory=dict)
    _test: list | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        if s.data.test_batch_size is None:  # chosen per model and device, then fixed
            check_fits(s.model.name, self.dataset)
            chosen = evaluation_batch_size(build_model(s.model.name, seed=0),
                                           self.dataset.image_shape, s.torch_device())
            # a copy: the caller's settings stay as given
            self.settings = replace(s, data=replace(s.data, test_batch_size=chosen))

    @property
    def test_batches(self) -> list:
        """The test set, normalised once and held in memory as batches."""
        if self._test is None:
            s = self.settings
            self._test = data_mod.preload(self.dataset.test, self.dataset,
                                          s.data.test_batch_size, s.torch_device())
        return self._test

    def train_batches(self, batch_size: int, limit: int | None = None, shuffle: bool = False
                      ) -> data_mod.Batches:
        split = self.dataset.train.head(limit) if limit else self.dataset.train
        generator = torch.Generator().manual_seed(self.settings.evaluation.seed)
        return data_mod.Batches(split, self.dataset, batch_size, shuffle=shuffle,
                                generator=generator if shuffle else None,
                                device=self.settings.torch_device())


# --- data and models ---------------------------------------------------------------------


def check_fits(model_name: str, dataset: data_mod.Dataset) -> None:
    """Raise a clear error when the model's input shape is not the dataset's."""
    info = model_info(model_name)
    if tuple(dataset.image_shape) != tuple(info.input_shape):
        raise SwimkitError(
            f"model {info.name} takes {info.input_shape} inputs but {dataset.name} has "
            f"{tuple(dataset.image_shape)} images; pick a matching --model or --dataset"
        )


def prepare(settings: Settings, log: Log = quiet, progress: bool = False) -> Context:
    """Load the dataset (and check it fits the model)."""
    d = settings.data
    dataset = data_mod.load_dataset(d.dataset, d.data_dir)
    if d.train_limit or d.test_limit:
        dataset = dataset.subset(d.train_limit, d.test_limit)
    check_fits(settings.model.name, dataset)
    return Context(settings, dataset, log, progress)


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


def train_folder(sigma_train: float, scale_aware: bool) -> str:
    """The training folder of one noise setting (``train`` for clean training)."""
    if sigma_train == 0:
        return "train"
    return f"train-sigma{sigma_train:g}" + ("-scale-aware" if scale_aware else "")


def check_before_work(settings: Settings, model: nn.Module, trained: bool = True) -> None:
    """Refuse, before any training or sensitivity pass (a typo costs a second, not
    minutes), --exclude patterns that match no layer of ``model`` and speedups or time
    budgets its devices cannot meet (writing every device once, verifying none). A
    value-dependent device model prices devices by their weights, so for it the budgets
    are checked on the ``trained`` model only (still before the sensitivity pass)."""
    sel = settings.selection
    weights = device_weights(model, exclude=sel.exclude or None)
    by_weights = settings.device_model.prices_by_value
    if not (sel.speedups or sel.time_budgets) or (by_weights and not trained):
        return
    values = effective_weights(weights)
    full, none = settings.device_model.reference_times(values, weight_scales(values))
    top = full / none
    for speedup in sel.speedups:
        if speedup > top * (1 + 1e-9):
            raise SwimkitError(
                f"speedup {speedup:g} cannot be reached: writing every device once and "
                f"verifying none is {top:.4g}x faster than full verify on this model and "
                f"device model; ask for a speedup between 1 and {math.floor(top * 100) / 100:g}")
    for seconds in sel.time_budgets:
        if seconds < none * (1 - 1e-12):
            raise SwimkitError(
                f"time budget {seconds:g} s cannot be met: writing every device once takes "
                f"{none:.4g} s on this model; ask for at least that (full verify: {full:.4g} s)")


def obtain_model(ctx: Context, sigma_train: float, scale_aware: bool = False) -> Candidate:
    """The model of one noise setting: from --checkpoint, an earlier run, or trained now."""
    s = ctx.settings
    if s.model.checkpoint:
        model, _ = load_checkpoint(s.model.checkpoint, model_name=s.model.name,
                                   trusted=s.model.trusted)
        path = Path(s.model.checkpoint)
    else:
        folder = s.out_dir / train_folder(sigma_train, scale_aware)
        distributed.rank_zero_first(lambda: _train(ctx, folder, sigma_train, scale_aware))
        path = folder / ("best.pt" if (folder / "best.pt").is_file() else "last.pt")
        model, _ = load_checkpoint(path)
    model = model.to(s.torch_device()).eval()
    first = (sigma_train, scale_aware) == s.trainings()[0]
    ctx.files["model" if first else f"model {train_folder(sigma_train, scale_aware)}"] = str(path)
    return Candidate(model_label(s, sigma_train, scale_aware), sigma_train, scale_aware, model,
                     path, file_digest(path))


def _train(ctx: Context, folder: Path, sigma_train: float, scale_aware: bool) -> None:
    from .training import train

    s = ctx.settings
    _check_training_folder(folder, {"model": s.model.name, "bits": s.model.bits,
                                    **s.data_key()})
    model = build_model(s.model.name, bits=s.model.bits, seed=s.train.seed)
    config = replace(s.train, sigma_train=sigma_train, scale_aware=scale_aware)
    train(model, ctx.dataset, config, model_name=s.model.name, checkpoint_dir=folder,
          progress=ctx.progress, log=ctx.log, device=s.torch_device(),
          noise_model=s.device_model if sigma_train > 0 else None)


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
    key = {"model": candidate.digest, "engine": sens_settings.engine,
           "batch_size": sens_settings.batch_size, "limit": sens_settings.limit,
           "options": sens_settings.options, "exclude": s.selection.exclude, **s.data_key()}
    suffix = train_folder(candidate.sigma_train, candidate.scale_aware).removeprefix("train")
    if s.model.checkpoint:
        suffix = f"-{candidate.digest[:8]}"
    path, found = find_sensitivity(s.out_dir, f"sensitivity-{sens_settings.engine}{suffix}",
                                   key)
    ctx.files[f"sensitivity{suffix}"] = str(path)
    if found is not None:
        return found
    computed: list[Sensitivity] = []

    def compute() -> None:
        batches = ctx.train_batches(sens_settings.batch_size, sens_settings.limit)
        sens = sensitivity(candidate.model, batches, sens_settings.engine,
                           exclude=s.selection.exclude or None, progress=ctx.progress,
                           **sens_settings.options)
        sens.meta = {**sens.meta, "key": key}
        sens.save(path)
        computed.append(sens)

    distributed.rank_zero_first(compute)
    return computed[0] if computed else Sensitivity.load(path)


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

    def _mc(self, plan: Plan | str) -> tuple[MCResult, list[MCResult] | None]:
        """Chips of ``plan``: all ``samples`` for full verify (every plan pairs with it),
        else until the CI target (the gap to full verify's, or the mean's) is met. With
        times: the result at the judged time, and the results at every time."""
        s = self.settings
        ev = s.evaluation
        adaptive = bool(ev.ci_target) and plan != "all"
        full = self.full_verify
        against = None
        if adaptive and full is not None:
            against = full.over_time if full.over_time is not None else full.mc
        result = evaluate(self.candidate.model, self.ctx.test_batches, s.device_model, plan,
                          samples=ev.samples, seed=ev.seed,
                          ci_target=ev.ci_target if adaptive else None,
                          min_samples=ev.min_samples, against=against,
                          chips_per_pass=ev.chips_per_pass, compile=ev.compile,
                          threads=ev.threads, exclude=s.selection.exclude or None,
                          progress=self.ctx.progress, times=ev.times)
        if ev.times is None:
            return result, None
        return result[ev.judged], result

    def baseline(self, verify: str) -> Point:
        """No device verified ("none") or every device verified ("all")."""
        point_id = f"{self.candidate.digest}-{verify}"
        found = self.cache.get(point_id)
        if found is None:
            s = self.settings
            weights = device_weights(self.candidate.model, exclude=s.selection.exclude or None)
            values = effective_weights(weights)
            plan = Plan.uniform(values, verify == "all", s.device_model.slicing.devices)
            report = s.device_model.programming_report(values, weight_scales(values), plan)
            name = "full verify" if verify == "all" else "no verify"
            mc, over_time = self._mc(verify)
            found = Point(name, self.candidate.label, None, None, PlanCounts.of(plan), report,
                          mc, over_time=over_time)
            self.cache.put(point_id, found)
        if verify == "all":
            self.full_verify = found
        self.ctx.log(f"[{self.candidate.label}] {found.method}: {found.mc}")
        return found

    def _select(self, method: str, budget: Budget) -> Plan:
        s = self.settings
        entry = METHODS.get(method)
        sens = self.candidate.sens if entry.needs_sensitivity else None
        if entry.planner is not None:
            data = (self.ctx.train_batches(s.train.batch_size, s.data.train_limit, True)
                    if entry.needs_data else None)
            return select(self.candidate.model, sens, method=method, device_model=s.device_model,
                          tolerances=s.selection.tolerances, data=data, seed=s.evaluation.seed,
                          plan_time=s.selection.plan_time,
                          exclude=s.selection.exclude or None, options=s.selection.learn
                          if entry.needs_data else None, **budget.describe())
        if method not in self.scores:
            tolerances = s.selection.tolerances
            self.scores[method] = score(
                self.candidate.model, sens, method, device_model=s.device_model,
                tolerances=tolerances[-1:] if tolerances else None, seed=s.evaluation.seed,
                exclude=s.selection.exclude or None, plan_time=s.selection.plan_time)
        return cut(self.scores[method], budget)

    def point(self, method: str, kind: str, value: float) -> Point:
        """Select with ``method`` under one budget and evaluate (or reuse) the plan."""
        value = float(value)
        stem = f"{method}-{kind}-{value:g}"
        point_id = f"{self.candidate.digest}-{stem}"
        found = self.cache.get(point_id)
        if found is None:
            name = f"{_safe(self.candidate.label)}-{stem}-{self.cache.key[:8]}.pt"
            path = self.settings.out_dir / "plans" / name

            def make_plan() -> None:
                self._select(method, Budget(kind, value)).save(path)

            distributed.rank_zero_first(make_plan)
            plan = Plan.load(path)
            mc, over_time = self._mc(plan)
            found = Point(method, self.candidate.label, kind, value, PlanCounts.of(plan),
                          plan.programming, mc, str(path), plan.meta, over_time=over_time)
            self.cache.put(point_id, found)
        if self.full_verify is not None:
            found.gap = found.mc.paired_difference(self.full_verify.mc)
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
        top = self.point(method, "speedup", _floor3(cap))
        if meets(top):
            return Search(method, self.candidate.label, target, top)
        low, high, best = self._bracket(method, meets, top.speedup or cap)
        for _ in range(self.settings.evaluation.search_steps):
            middle = _round3(math.sqrt(low * high))
            if not low < middle < high:
                break
            point = self.point(method, "speedup", middle)
            if meets(point):
                low, best = middle, point
            else:
                high = middle
        if best is None:
            best = self.point(method, "speedup", 1.0)
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


def _round3(value: float) -> float:
    """Three significant digits (search points get stable names and cache entries)."""
    return float(f"{value:.3g}")


def _floor3(value: float) -> float:
    """``value`` rounded down to three significant digits."""
    step = 10.0 ** (math.floor(math.log10(value)) - 2)
    return float(f"{math.floor(value / step) * step:.3g}")


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def budgets(settings: Settings) -> list[tuple[str, float]]:
    sel = settings.selection
    return ([("fraction", f) for f in sel.fractions] + [("speedup", x) for x in sel.speedups]
            + [("time_budget", t) for t in sel.time_budgets])


# --- the flow ------------------------------------------------------------------------------------


def sweep(settings: Settings, log: Log = quiet, progress: bool = False) -> SweepResult:
    """Run the flow for every model, method and budget of ``settings``."""
    ctx = prepare(settings, log, progress)
    s = settings
    if s.model.checkpoint and (len(s.trainings()) > 1 or s.trainings()[0][0] > 0
                               or s.trainings()[0][1] or s.train.noise_time):
        raise SwimkitError("--checkpoint gives a trained model, so --sigma-train, "
                           "--scale-aware and --noise-time would not act: drop them, or drop "
                           "--checkpoint to train the models compared")
    if not s.model.checkpoint:  # a checkpoint is checked as it loads, training or not
        check_before_work(s, build_model(s.model.name, bits=s.model.bits, seed=s.train.seed),
                          trained=False)
    lock = folder_lock(s.out_dir) if distributed.is_rank_zero() else contextlib.nullcontext()
    with lock:  # a second run in this folder waits, then reuses what this one wrote
        return _sweep(ctx)


def _sweep(ctx: Context) -> SweepResult:
    s = ctx.settings
    log = ctx.log
    cache = PointCache(s.out_dir / "points.json", evaluation_key(s))
    evaluators, reports = [], []
    for sigma_train, scale_aware in s.trainings():
        candidate = obtain_model(ctx, sigma_train, scale_aware)
        check_before_work(s, candidate.model)
        clean = accuracy(candidate.model, ctx.test_batches)
        log(f"[{candidate.label}] clean accuracy: {clean:.2f} %")
        if needs_sensitivity(s.selection.methods):
            candidate.sens = obtain_sensitivity(ctx, candidate)
        ev = Evaluator(ctx, candidate, cache)
        report = ModelReport(candidate.label, sigma_train, scale_aware, str(candidate.path), clean,
                             ev.baseline("none"), ev.baseline("all"))
        report.points = [ev.point(m, kind, value) for m in s.selection.methods
                         for kind, value in budgets(s)]
        evaluators.append(ev)
        reports.append(report)
    result = SweepResult(reports, s.evaluation.within, settings=s.describe(),
                         files=ctx.files)
    if s.evaluation.search:
        _searches(result, evaluators)
    result.set_reference()
    return result


def _searches(result: SweepResult, evaluators: list[Evaluator]) -> None:
    """Per model and method: the largest speedup meeting the target. A point's mean is
    judged through its paired chips (:meth:`~swimkit.results.Point.mean_estimate`)."""
    s = evaluators[0].settings.evaluation
    reference = result.reference_percent
    floor = reference - s.within
    if s.yield_target is None:
        target = f"mean >= {floor:.2f} % ({s.within:g} points below {reference:.2f} %)"
    else:
        target = (f"{100 * s.yield_target:g} % of chips >= {floor:.2f} % "
                  f"({s.within:g} points below {reference:.2f} %)")

    def judge(full: MCResult) -> Callable[[Point], bool]:
        if s.yield_target is None:
            return lambda point: point.mean_estimate(full) >= floor
        return lambda point: (point.mc.yield_within(reference, s.within)
                              >= s.yield_target - 1e-12)

    for report, ev in zip(result.models, evaluators, strict=True):
        assert ev.full_verify is not None
        meets = judge(ev.full_verify.mc)
        report.searches = [ev.search(m, meets, target) for m in ev.settings.selection.methods]


def write_result(result: SweepResult | dict[str, Any], path: str | Path) -> Path:
    """Write a result as JSON atomically (rank 0 only) and return the path."""
    path = Path(path)
    if distributed.is_rank_zero():
        data = result.to_dict() if isinstance(result, SweepResult) else result
        atomic_write_json(data, path)
    return path


__all__ = ["Candidate", "Context", "Evaluator", "check_fits", "prepare", "quiet",
           "sweep", "write_result"]
