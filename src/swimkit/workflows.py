"""The whole SWIM flow as resumable steps that read and write files.

train -> sensitivity -> select -> Monte-Carlo evaluation, for one point (``run``) or a
grid of methods and budgets (``sweep``). Every artefact is written atomically under
the output folder, and a rerun with the same settings picks up what is already there:
the trained model, the sensitivities, and each evaluated point of a sweep. Each cache
is keyed by everything that changes its content, so changed settings never reuse a
stale result.

Inside a torch.distributed group (torchrun) rank 0 trains and computes sensitivities,
the other ranks wait and load its files, and every rank takes a share of the
Monte-Carlo instances. Only rank 0 writes results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as data_mod
from . import distributed
from .checkpoints import load_checkpoint
from .devices import DeviceModel
from .errors import SwimkitError, check_fraction, is_number, require
from .mapping import device_weights, effective_weights, weight_scales
from .models import build_model, canonical_model_name, model_info
from .montecarlo import MCResult, accuracy, evaluate
from .programming import WriteVerify
from .reports import format_mc
from .selection import Plan, Scores, cut, default_write_verify, plan_programming, score
from .sensitivity import ENGINES, Sensitivity, sensitivity
from .storage import atomic_write_json

Log = Callable[[str], None]
NEEDS_SENSITIVITY = {"swim", "second", "uswim", "variance"}


def quiet(_: str) -> None:
    """A log that drops every line."""


@dataclass
class Settings:
    """Every setting of a run; defaults follow the SWIM reference (design §5)."""

    model: str = "lenet"
    dataset: str | None = None
    data_dir: str | None = None
    checkpoint: str | None = None
    bits: int | None = None
    epochs: int = 10
    batch_size: int = 128
    sigma_train: float = 0.0
    train_limit: int | None = None
    sigma: float = 0.3
    sigma_verified: float = 0.03
    bits_per_weight: int = 8
    bits_per_device: int = 1
    variation: str | None = None
    verified_variation: str | None = None
    engine: str = "swim"
    sens_batch_size: int = 128
    sens_limit: int | None = None
    methods: list[str] = field(default_factory=lambda: ["swim"])
    fractions: list[float] = field(default_factory=lambda: [0.1])
    speedups: list[float] = field(default_factory=list)
    time_budgets: list[float] = field(default_factory=list)
    samples: int = 100
    seed: int = 0
    test_batch_size: int = 256
    test_limit: int | None = None
    exclude: list[str] = field(default_factory=list)
    tolerance: float | None = None
    max_attempts: int = 100
    t_program: float = 100e-9
    t_read: float = 50e-9
    within: float | None = None
    search_steps: int = 10
    device: str = "cpu"
    out: str | None = None

    def __post_init__(self) -> None:
        """Check everything up front, before any training or sensitivity pass."""
        self.model = canonical_model_name(self.model)
        self.dataset = self.dataset or model_info(self.model).dataset
        for fraction in self.fractions:
            check_fraction(fraction)
        for name, values in (("speedup", self.speedups), ("time budget", self.time_budgets)):
            for value in values:
                require(is_number(value, finite=True) and value > 0,
                        f"{name} must be a number > 0 (got {value!r})")
        require(self.samples >= 1, f"samples must be >= 1 (got {self.samples})")
        require(self.engine in ENGINES, f"unknown engine {self.engine!r}; choose {ENGINES}")
        require(self.epochs >= 0, f"epochs must be >= 0 (got {self.epochs})")
        require(self.t_program + self.t_read > 0,
                "programming takes no time with --t-program 0 and --t-read 0; give one > 0")
        self.write_verify()  # validates sigma, the variation specs and the write-verify loop
        self.torch_device()

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}-{self.dataset}")

    def torch_device(self) -> torch.device:
        """Where models and data live: "cpu", "cuda", "cuda:1", ..."""
        return resolve_device(self.device)

    def device_model(self) -> DeviceModel:
        return DeviceModel(
            sigma=self.sigma,
            sigma_verified=self.sigma_verified,
            bits_per_weight=self.bits_per_weight,
            bits_per_device=self.bits_per_device,
            variation=self.variation,
            verified_variation=self.verified_variation,
        )

    def write_verify(self) -> WriteVerify:
        """The write-verify loop: ``tolerance`` if given, else the one reaching sigma_verified."""
        if self.tolerance is not None:
            return WriteVerify(self.tolerance, self.max_attempts, self.t_program, self.t_read)
        base = default_write_verify(self.device_model(), self.max_attempts)
        return WriteVerify(base.tolerance, self.max_attempts, self.t_program, self.t_read)

    def data_key(self) -> dict[str, Any]:
        """What decides the data a step sees."""
        return {"dataset": self.dataset, "data_dir": self.data_dir,
                "train_limit": self.train_limit, "test_limit": self.test_limit}


@dataclass
class Context:
    """What the steps share: settings, data, model and where files go."""

    settings: Settings
    dataset: data_mod.Dataset
    log: Log
    progress: bool
    model: nn.Module | None = None
    model_path: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    _test: list | None = field(default=None, init=False, repr=False)

    @property
    def test_batches(self) -> list:
        """The test set, normalised once and held in memory as batches."""
        if self._test is None:
            s = self.settings
            self._test = data_mod.preload(self.dataset.test, self.dataset, s.test_batch_size,
                                          s.torch_device())
        return self._test


def resolve_device(name: str) -> torch.device:
    """A torch device from its name, with a clear error when it is not available."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SwimkitError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SwimkitError("--device cuda asked for, but no CUDA GPU is available; use cpu")
    return device


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# --- steps -----------------------------------------------------------------------------


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
    dataset = data_mod.load_dataset(settings.dataset, settings.data_dir)
    if settings.train_limit or settings.test_limit:
        dataset = dataset.subset(settings.train_limit, settings.test_limit)
    check_fits(settings.model, dataset)
    return Context(settings, dataset, log, progress)


def obtain_model(ctx: Context) -> nn.Module:
    """The model of the run: from --checkpoint, from an earlier run, or trained now."""
    s = ctx.settings
    if s.checkpoint:
        model, _ = load_checkpoint(s.checkpoint, model_name=s.model)
        ctx.model_path = Path(s.checkpoint)
    else:
        train_dir = s.out_dir / "train"
        distributed.rank_zero_first(lambda: _train(ctx, train_dir))
        best = train_dir / ("best.pt" if (train_dir / "best.pt").is_file() else "last.pt")
        model, _ = load_checkpoint(best)
        ctx.model_path = best
    ctx.model = model.to(s.torch_device()).eval()
    ctx.files["model"] = str(ctx.model_path)
    return ctx.model


def _train(ctx: Context, train_dir: Path) -> None:
    from .training import TrainConfig, train

    s = ctx.settings
    _check_training_folder(train_dir, {"model": s.model, "bits": s.bits, **s.data_key()})
    model = build_model(s.model, bits=s.bits, seed=s.seed)
    config = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, sigma_train=s.sigma_train,
                         seed=s.seed)
    train(model, ctx.dataset, config, model_name=s.model, checkpoint_dir=train_dir,
          progress=ctx.progress, log=ctx.log, device=s.torch_device())


def _check_training_folder(train_dir: Path, key: dict[str, Any]) -> None:
    """Refuse to resume a training folder made for another model or other data."""
    path = train_dir / "settings.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = [k for k in key if stored.get(k) != key[k]]
        if changed:
            raise SwimkitError(
                f"{train_dir} holds a model trained with other settings ({changed[0]}="
                f"{stored.get(changed[0])!r}, now {key[changed[0]]!r}); use another --out"
            )
    else:
        atomic_write_json(key, path)


def obtain_sensitivity(ctx: Context) -> Sensitivity:
    """Sensitivities over the training set, reused when the model and settings match."""
    s = ctx.settings
    key = {
        "model": _file_digest(ctx.model_path), "engine": s.engine,
        "batch_size": s.sens_batch_size, "limit": s.sens_limit, "exclude": s.exclude,
        **s.data_key(),
    }
    path = s.out_dir / f"sensitivity-{s.engine}.pt"
    computed: list[Sensitivity] = []

    def compute() -> None:
        if _cached_sensitivity(path, key):
            return
        split = ctx.dataset.train.head(s.sens_limit) if s.sens_limit else ctx.dataset.train
        batches = data_mod.Batches(split, ctx.dataset, s.sens_batch_size,
                                   device=s.torch_device())
        sens = sensitivity(ctx.model, batches, s.engine, exclude=s.exclude or None,
                           progress=ctx.progress)
        sens.meta = {"key": key}
        sens.save(path)
        computed.append(sens)

    distributed.rank_zero_first(compute)
    ctx.files["sensitivity"] = str(path)
    return computed[0] if computed else Sensitivity.load(path)


def _cached_sensitivity(path: Path, key: dict) -> bool:
    if not path.is_file():
        return False
    try:
        return Sensitivity.load(path).meta.get("key") == key
    except SwimkitError:
        return False


class Results:
    """The evaluated points of a run, kept in one JSON file rewritten after each point."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.points: dict[str, dict] = {}
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                stored = {}
            if stored.get("key") == key:
                self.points = stored.get("points_by_id", {})

    def get(self, point_id: str) -> dict | None:
        return self.points.get(point_id)

    def put(self, point_id: str, value: dict) -> None:
        self.points[point_id] = value
        if distributed.is_rank_zero():
            atomic_write_json({"key": self.key, "points_by_id": self.points}, self.path)


def _plan_summary(plan: Plan) -> dict[str, Any]:
    return {
        "method": plan.method,
        "fraction_verified": plan.fraction_verified,
        "weights_verified": plan.weights_verified,
        "weights_total": plan.weights_total,
        "programming": plan.programming.to_dict() if plan.programming else None,
    }


def _budgets(settings: Settings) -> list[tuple[str, float]]:
    return (
        [("fraction", f) for f in settings.fractions]
        + [("speedup", x) for x in settings.speedups]
        + [("time_budget", t) for t in settings.time_budgets]
    )


@dataclass
class _Grid:
    """What every point of a sweep shares; scores are computed once per method."""

    ctx: Context
    sens: Sensitivity | None
    device: DeviceModel
    write_verify: WriteVerify
    results: Results
    scores: dict[str, Scores] = field(default_factory=dict)

    def evaluate(self, plan: Plan | str, point_id: str, extra: dict) -> dict[str, Any]:
        """Monte-Carlo accuracy of ``plan``, or the stored result of an earlier run."""
        done = self.results.get(point_id)
        if done is not None:
            return done
        s = self.ctx.settings
        res: MCResult = evaluate(
            self.ctx.model, self.ctx.test_batches, self.device, plan, samples=s.samples,
            seed=s.seed, exclude=s.exclude or None, progress=self.ctx.progress,
        )
        value = {**res.to_dict(), **extra}
        self.results.put(point_id, value)
        return value

    def method_scores(self, method: str) -> Scores:
        if method not in self.scores:
            s = self.ctx.settings
            sens = self.sens if method in NEEDS_SENSITIVITY else None
            self.scores[method] = score(self.ctx.model, sens, method, device=self.device,
                                        seed=s.seed, exclude=s.exclude or None)
        return self.scores[method]

    def point(self, method: str, kind: str, budget: float) -> dict[str, Any]:
        """Select with ``method`` under one budget and evaluate (or reuse) the plan."""
        plan = cut(self.method_scores(method), write_verify=self.write_verify,
                   **{kind: budget})
        stem = f"{method}-{kind}-{budget:g}"
        path = self.ctx.settings.out_dir / "plans" / f"{stem}.pt"
        if distributed.is_rank_zero():
            plan.save(path)
        point = self.evaluate(plan, stem, {**_plan_summary(plan), kind: budget,
                                           "masks": str(path)})
        self.ctx.log(f"{method} {kind} {budget:g}: {format_mc(point)} "
                     f"({point['weights_verified']:,} of {point['weights_total']:,} verified, "
                     f"speedup {point['programming']['speedup']:.2f}x)")
        return point

    def smallest_fraction(
        self, method: str, target: float, steps: int, full: dict[str, Any]
    ) -> dict[str, Any]:
        """Bisect for the smallest fraction whose mean accuracy reaches ``target``.

        Accuracy grows with the verified fraction; with common random numbers the curve
        is smooth enough for bisection. Fraction 1 is the full-verify result ``full``.
        """
        low, high = 0.0, 1.0
        best = {**full, "method": method, "fraction": 1.0}
        for _ in range(steps):
            middle = round((low + high) / 2, 4)
            if middle in (low, high):
                break
            point = self.point(method, "fraction", middle)
            if point["mean"] >= target:
                high, best = middle, point
            else:
                low = middle
        return {**best, "target": target}


def sweep(settings: Settings, log: Log = quiet, progress: bool = False) -> dict[str, Any]:
    """Run the flow for every method and budget of ``settings``; return the result dict."""
    ctx = prepare(settings, log, progress)
    model = obtain_model(ctx)
    clean = accuracy(model, ctx.test_batches)
    log(f"clean accuracy: {clean:.2f} %")
    s = settings
    sens = obtain_sensitivity(ctx) if NEEDS_SENSITIVITY & set(s.methods) else None
    device = s.device_model()
    write_verify = s.write_verify()
    key = _digest({"model": _file_digest(ctx.model_path), "device": device.describe(),
                   "samples": s.samples, "seed": s.seed, "exclude": s.exclude,
                   "engine": s.engine, "sens_batch_size": s.sens_batch_size,
                   "sens_limit": s.sens_limit, "test_batch_size": s.test_batch_size,
                   "write_verify": asdict(write_verify), **s.data_key()})
    grid = _Grid(ctx, sens, device, write_verify, Results(s.out_dir / "points.json", key))
    baseline = _baselines(grid, model)
    points = [grid.point(method, kind, budget)
              for method in s.methods for kind, budget in _budgets(s)]
    result = _assemble(ctx, clean, baseline, points, sens)
    if s.within is not None:
        target = baseline["full_verify"]["mean"] - s.within
        result["needed"] = {
            m: grid.smallest_fraction(m, target, s.search_steps, baseline["full_verify"])
            for m in s.methods
        }
    return result


def _baselines(grid: _Grid, model: nn.Module) -> dict[str, dict]:
    """No weight verified and every weight verified."""
    s = grid.ctx.settings
    values = effective_weights(device_weights(model, exclude=s.exclude or None))
    scales = weight_scales(values)
    baseline = {}
    for name, verify in (("no_verify", "none"), ("full_verify", "all")):
        plan = Plan.uniform(values, verify == "all")
        plan.programming = plan_programming(plan, values, scales, grid.device,
                                            grid.write_verify)
        baseline[name] = grid.evaluate(verify, name, _plan_summary(plan))
        grid.ctx.log(f"{name.replace('_', ' ')}: {format_mc(baseline[name])}")
    return baseline


def _assemble(ctx: Context, clean: float, baseline: dict, points: list, sens) -> dict[str, Any]:
    s = ctx.settings
    result: dict[str, Any] = {
        "clean_accuracy": clean,
        "no_verify": baseline["no_verify"],
        "full_verify": baseline["full_verify"],
        "points": points,
    }
    if len(points) == 1:
        point = points[0]
        result["selected"] = point
        for name in ("fraction_verified", "weights_verified", "weights_total", "programming"):
            result[name] = point[name]
    result["settings"] = {
        **asdict(s), "device_model": s.device_model().describe(),
        "write_verify": asdict(s.write_verify()),
        "sensitivity_samples": sens.samples if sens is not None else None,
        "threads": torch.get_num_threads(),
        "processes": distributed.world_size(),
    }
    result["files"] = dict(ctx.files)
    return result


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    """Write a result dict as JSON atomically (rank 0 only) and return the path."""
    path = Path(path)
    if distributed.is_rank_zero():
        atomic_write_json(result, path)
    return path


__all__ = ["Settings", "check_fits", "prepare", "quiet", "sweep", "write_result"]
