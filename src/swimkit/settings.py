"""Every setting of a run, grouped by what it configures; each default is stated once.

The groups are the settings classes of the concepts themselves where they exist
(:class:`~swimkit.training.TrainConfig`, :class:`~swimkit.devices.DeviceModel` with its
:class:`~swimkit.programming.WriteVerify` loop) and small dataclasses here for the rest.
The command line fills them; its defaults and help text are read from these classes.
Each group checks itself when it is made, and :class:`Settings` what ties the groups
together, before any training or pass; none changes a group it was given (a group it
completes, such as the dataset a model implies, it replaces with a completed copy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .devices import Device, DeviceModel, check_times, require_device
from .errors import SwimkitError, check_fraction, check_speedup, is_number, repeated, require
from .models import canonical_model_name, model_info
from .plans import check_menu
from .selection import METHODS, Budget, BudgetKind
from .selection.learned import LearnOptions
from .sensitivity import ENGINES
from .training import TrainConfig

#: The model without --model or a checkpoint.
DEFAULT_MODEL = "lenet"
#: The budget of a single run or selection without one given: this fraction.
DEFAULT_FRACTION = 0.1
#: What a sweep compares without --methods, --fractions, --speedups or --time-budgets.
SWEEP_METHODS = ("swim", "magnitude", "random")
SWEEP_FRACTIONS = (0.01, 0.03, 0.1, 0.3)


@dataclass
class ModelSettings:
    """Which model: a registered ``name`` (None: the one ``checkpoint`` was saved for,
    else :data:`DEFAULT_MODEL`), a trained ``checkpoint``, quantization ``bits``;
    ``trusted`` allows a checkpoint holding pickled Python objects (it can run code)."""

    name: str | None = None
    checkpoint: str | None = None
    bits: int | None = None
    trusted: bool = False

    def __post_init__(self) -> None:
        if self.name is None and not self.checkpoint:
            self.name = DEFAULT_MODEL
        if self.name is not None:
            self.name = canonical_model_name(self.name)


@dataclass
class DataSettings:
    """Which data: a registered ``dataset`` (default: the model's) found in ``data_dir``;
    ``train_limit`` / ``test_limit`` cut the sets (quick runs); ``test_batch_size``
    None chooses the evaluation batch per model and device."""

    dataset: str | None = None
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    test_batch_size: int | None = None

    def __post_init__(self) -> None:
        batch = self.test_batch_size
        require(batch is None or (isinstance(batch, int) and not isinstance(batch, bool)
                                  and batch >= 1),
                f"test_batch_size must be an integer >= 1, or None to choose it per model "
                f"and device (got {batch!r})")


@dataclass
class SensitivitySettings:
    """The sensitivity pass: ``engine``, its batch size, how many training images, and
    the engine's ``options`` (``probes`` and ``seed`` for hutchinson)."""

    engine: str = "swim"
    batch_size: int = 128
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.engine = ENGINES.canonical(self.engine)
        engine = ENGINES.get(self.engine)
        unknown = sorted(set(self.options) - set(engine.options))
        require(not unknown, f"option {unknown[:1]} is not one of engine "
                             f"{engine.name!r}'s ({', '.join(engine.options) or 'none'})")


@dataclass
class SelectionSettings:
    """Methods and budgets: every method is run at every budget.

    ``fractions`` (of weights; of devices for device-level methods), ``speedups`` over
    full verify, ``time_budgets`` in seconds; ``tolerances`` the menu of device-level
    methods (None: the default menu); ``exclude`` layers kept digital; ``learn`` the
    options of method ``learned`` (epochs, lr, price_step); ``plan_time`` the seconds
    after programming whose error the methods plan against (0: right after).
    """

    methods: list[str] = field(default_factory=lambda: ["swim"])
    fractions: list[float] = field(default_factory=list)
    speedups: list[float] = field(default_factory=list)
    time_budgets: list[float] = field(default_factory=list)
    tolerances: list[float] | None = None
    exclude: list[str] = field(default_factory=list)
    learn: dict[str, Any] = field(default_factory=dict)
    plan_time: float = 0.0

    def __post_init__(self) -> None:
        require(bool(self.methods), "give at least one selection method")
        self.methods = [METHODS.canonical(m) for m in self.methods]
        for what, values in (("methods", self.methods), ("fractions", self.fractions),
                             ("speedups", self.speedups), ("time budgets", self.time_budgets)):
            _once(what, values)
        for fraction in self.fractions:
            check_fraction(fraction)
        for speedup in self.speedups:
            check_speedup(speedup)
        for seconds in self.time_budgets:
            require(is_number(seconds, finite=True) and seconds > 0,
                    f"time budget must be a number of seconds > 0 (got {seconds!r})")
        check_menu(self.tolerances)
        LearnOptions.from_options(self.learn)
        planners = [m for m in self.methods if METHODS.get(m).needs_data]
        require(not (planners and self.fractions),
                f"method {planners[:1]} learns under a time budget: give speedups or time "
                "budgets, not fractions")
        require(is_number(self.plan_time, finite=True) and self.plan_time >= 0,
                f"plan_time must be seconds >= 0 after programming (got {self.plan_time!r})")

    def budgets(self) -> list[Budget]:
        """Every budget, fractions first, then speedups, then time budgets."""
        return ([Budget(BudgetKind.FRACTION, f) for f in self.fractions]
                + [Budget(BudgetKind.SPEEDUP, x) for x in self.speedups]
                + [Budget(BudgetKind.TIME_BUDGET, t) for t in self.time_budgets])


@dataclass
class EvaluationSettings:
    """Monte-Carlo: ``samples`` chips from ``seed``; ``within`` points of the best full
    verify count a chip as good (yield) and, when searching, a method as good enough;
    ``search`` finds per method the largest speedup whose mean (or, with
    ``yield_target``, whose yield) meets it, in ``search_steps`` bisection steps.

    ``ci_target`` (points; None or 0: always ``samples`` chips) stops a plan's chips once
    the 95 % CI of its gap to full verify (of its mean, for the baselines) is that
    narrow, after at least ``min_samples``; full verify, which every plan is paired
    with, always gets ``samples`` chips. ``chips_per_pass`` (None: chosen),
    ``compile`` and ``threads`` (None: this process's share of the cores) only change
    the speed. ``times`` (seconds after programming; None: right after only) reads every
    chip at each time; a point is judged at ``judge_time`` (default the first time).
    """

    samples: int = 100
    seed: int = 0
    ci_target: float | None = 0.5
    min_samples: int = 10
    chips_per_pass: int | None = None
    compile: bool = False
    threads: int | None = None
    within: float = 1.0
    search: bool = False
    yield_target: float | None = None
    search_steps: int = 8
    times: list[float] | None = None
    judge_time: float | None = None

    def __post_init__(self) -> None:
        require(isinstance(self.samples, int) and self.samples >= 1,
                f"samples must be >= 1 (got {self.samples})")
        require(self.ci_target is None or (is_number(self.ci_target, finite=True)
                                           and self.ci_target >= 0),
                f"ci_target must be a number of points >= 0 (got {self.ci_target!r})")
        require(isinstance(self.min_samples, int) and self.min_samples >= 2,
                f"min_samples must be an integer >= 2 (got {self.min_samples!r})")
        require(is_number(self.within, finite=True) and self.within >= 0,
                f"within must be a number of accuracy points >= 0 (got {self.within!r})")
        require(self.yield_target is None or 0 < self.yield_target <= 1,
                f"the yield target must be a fraction in (0, 1] (got {self.yield_target!r})")
        if self.times is not None:
            _once("times", self.times)
            self.times = list(check_times(self.times))
        require(self.judge_time is None or (self.times is not None
                                            and self.judge_time in self.times),
                f"judge_time {self.judge_time!r} must be one of the times ({self.times})")

    @property
    def judged(self) -> int:
        """Index in ``times`` of the time points are judged at (0 without times)."""
        if not self.times:
            return 0
        return 0 if self.judge_time is None else list(self.times).index(self.judge_time)


@dataclass
class Settings:
    """Every setting of a run or a sweep (see the groups).

    ``sigma_trains`` lists the noise-injection sigmas of the models compared (default: the
    one of ``train``); ``compare_scale_aware`` trains each sigma > 0 both with and without
    scale-aware noise.
    """

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    sigma_trains: list[float] | None = None
    compare_scale_aware: bool = False
    device_model: Device = field(default_factory=DeviceModel)
    sensitivity: SensitivitySettings = field(default_factory=SensitivitySettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    device: str = "cpu"
    out: str | None = None

    def __post_init__(self) -> None:
        """Check what ties the groups together, before any training or sensitivity pass."""
        if self.model.name is not None and self.data.dataset is None:
            self.data = dataclasses.replace(self.data,
                                            dataset=model_info(self.model.name).dataset)
        _once("sigma_trains", self.sigma_trains or [])
        self.train.validate()
        noisy = any(sigma > 0 for sigma in self.sigma_train_values)
        if not noisy and not self.model.checkpoint:
            require(not (self.train.scale_aware or self.compare_scale_aware),
                    "--scale-aware shapes noise-injection training: give --sigma-train > 0, "
                    "or drop --scale-aware")
            require(not self.train.noise_time,
                    "--noise-time is when noise-injection training reads the device: give "
                    "--sigma-train > 0, or drop --noise-time")
        for sigma in self.sigma_train_values:
            require(is_number(sigma, finite=True) and sigma >= 0,
                    f"sigma_train must be a number >= 0 (got {sigma!r})")
        require_device(self.device_model)
        self.device_model.loop  # noqa: B018 - solves (and so checks) the write-verify loop
        resolve_device(self.device)

    @property
    def sigma_train_values(self) -> list[float]:
        """The noise-injection sigmas of the models compared."""
        if self.sigma_trains:
            return [float(s) for s in self.sigma_trains]
        return [float(self.train.sigma_train)]

    def trainings(self) -> list[tuple[float, bool]]:
        """(sigma_train, scale_aware) of every model compared: one clean model for sigma 0,
        and for each sigma > 0 the scale-aware setting, or both with compare_scale_aware."""
        modes = [False, True] if self.compare_scale_aware else [bool(self.train.scale_aware)]
        out: list[tuple[float, bool]] = []
        for sigma in self.sigma_train_values:
            out += [(0.0, False)] if sigma == 0 else [(sigma, mode) for mode in modes]
        return out

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model.name}-{self.data.dataset}")

    def torch_device(self) -> torch.device:
        """Where models and data live: "cpu", "cuda", "cuda:1", ..."""
        return resolve_device(self.device)

    def data_key(self) -> dict[str, Any]:
        """What decides the data a step sees."""
        return {"dataset": self.data.dataset, "data_dir": self.data.data_dir,
                "train_limit": self.data.train_limit, "test_limit": self.data.test_limit}

    def describe(self) -> dict[str, Any]:
        """All settings, JSON-ready."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["device_model"] = self.device_model.describe()
        return out


def _once(what: str, values: list) -> None:
    """Refuse a list that repeats a value: each would be run twice."""
    twice = repeated(values)
    require(not twice, f"{what} repeat {', '.join(twice)}: each would be run twice; give "
                       "each once")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.name.startswith("_")}
    return value


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (for the command line's help)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(name)


def resolve_device(name: str) -> torch.device:
    """A torch device from its name, with a clear error when it is not available."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SwimkitError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type not in _ACCELERATORS:
        raise SwimkitError(f"device {name!r} cannot run swimkit; use cpu, cuda or cuda:N")
    module = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    count = _device_count(module)
    if count == 0:
        raise SwimkitError(f"device {name!r} asked for, but this machine has no "
                           f"{_ACCELERATORS[device.type]}; use cpu")
    if device.index is not None and device.index >= count:
        raise SwimkitError(f"device {name!r} asked for, but this machine has {count} "
                           f"{_ACCELERATORS[device.type]}(s), numbered from 0")
    return device


_ACCELERATORS = {"cuda": "CUDA GPU", "mps": "Apple GPU (MPS)", "xpu": "Intel GPU (XPU)"}


def _device_count(module: object) -> int:
    """How many devices of a torch backend module (cuda, xpu, backends.mps) this machine has."""
    try:
        if not module.is_available():
            return 0
        return int(module.device_count()) if hasattr(module, "device_count") else 1
    except Exception:  # noqa: BLE001 - a backend not built into this torch
        return 0


__all__ = ["DEFAULT_FRACTION", "DEFAULT_MODEL", "SWEEP_FRACTIONS", "SWEEP_METHODS",
           "DataSettings", "EvaluationSettings", "ModelSettings", "SelectionSettings",
           "SensitivitySettings", "Settings", "default", "resolve_device"]
