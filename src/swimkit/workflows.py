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
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from . import distributed
from .caches import (
    PointCache,
    evaluation_key,
    file_digest,
    find_sensitivity,
    key_of_0_2,
    sensitivity_key,
)
from .checkpoints import load_checkpoint
from .errors import SwimkitError
from .evaluator import Candidate, Evaluator
from .finetuning import fine_tuned_under
from .groups import flag_of
from .mapping import effective_weights
from .models import build_model
from .montecarlo import MCResult, accuracy
from .plans import Verify
from .results import ModelReport, Point, SweepResult
from .selection import needs_sensitivity
from .sensitivity import Sensitivity
from .settings import Settings
from .steps import (
    Context,
    Log,
    check_fits,
    open_model,
    prepare,
    quiet,
    sensitivity_pass,
)
from .storage import atomic_write_json, folder_lock
from .training import TrainConfig

# --- data and models ---------------------------------------------------------------------



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
