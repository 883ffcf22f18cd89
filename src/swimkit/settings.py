"""Every setting of a run, grouped by what it configures; each default is stated once.

The groups are the settings of the steps themselves (:class:`~swimkit.training.TrainConfig`,
:class:`~swimkit.sensitivity.SensitivitySettings`, :class:`~swimkit.selection.SelectionSettings`,
:class:`~swimkit.montecarlo.EvaluationSettings`), the chip (:class:`~swimkit.ChipSpec`),
and small dataclasses here for the rest: the model, the data and a sweep's grid. Each
field declares its command-line flag (:mod:`swimkit.groups`), so the command line is
read from these classes. Each group checks itself when it is made, and :class:`Settings`
what ties the groups together, before any training or pass; none changes a group it was
given (a group it completes, such as the dataset a model implies, it replaces with a
completed copy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .chip import ChipSpec
from .data import DATASETS
from .devices import require_device
from .devices.protocol import require_time_acts
from .errors import SwimkitError, check_once, is_number, require
from .groups import (
    flag,
    fraction,
    internal,
    key_value,
    nonnegative,
    plain,
    positive_int,
    registered,
    speedup,
)
from .models import canonical_model_name, model_info
from .montecarlo import EvaluationSettings
from .options import typed_options
from .selection import DEFAULT_FRACTION, METHODS, Budget, BudgetKind, SelectionSettings
from .sensitivity import SensitivitySettings
from .train_config import FinetuneSettings
from .training import TrainConfig

#: The model without --model or a checkpoint.
DEFAULT_MODEL = "lenet"
#: What a sweep compares without --methods, --fractions, --speedups or --time-budgets.
SWEEP_METHODS = ("swim", "magnitude", "random")
SWEEP_FRACTIONS = (0.01, 0.03, 0.1, 0.3)
#: Points a chip may lose against the best full verify and still count as good.
DEFAULT_WITHIN = 1.0
#: Noise-injection modes of the models a sweep trains (--scale-aware).
SCALE_AWARE = ("off", "on", "both")


@dataclass
class ModelSettings:
    """Which model: a registered ``name`` (None: the one ``checkpoint`` was saved for,
    else :data:`DEFAULT_MODEL`), a trained ``checkpoint``, quantization ``bits``;
    ``trusted`` allows a checkpoint holding pickled Python objects (it can run code)."""

    name: str | None = field(default=None, metadata=flag(
        "--model", help=f"the model (aliases such as LeNet, QLeNet, Res18; default: the "
                        f"checkpoint's model, else {DEFAULT_MODEL})"))
    checkpoint: str | None = field(default=None, metadata=flag(
        "--checkpoint", help="use this trained model (swimkit or SWIM reference saved_B_*.pt)"))
    bits: int | None = field(default=None, metadata=flag(
        "--bits", kind=positive_int,
        help="bit width of a quantized model (default 4 LeNet, 6 ConvNet, 8 ResNet)"))
    trusted: bool = field(default=False, metadata=flag(
        "--trusted", kind=None,
        help="allow a --checkpoint that holds pickled Python objects (only for files you "
             "trust: loading them can run code)"))

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

    dataset: str | None = field(default=None, metadata=flag(
        "--dataset", kind=registered(DATASETS, "dataset"), help="the dataset (default: the "
                                                                "model's)"))
    data_dir: str | None = field(default=None, metadata=flag(
        "--data-dir", help="folder holding the dataset files"))
    train_limit: int | None = field(default=None, metadata=flag(
        "--train-limit", kind=positive_int,
        help="use only the first N training images (quick runs)"))
    test_limit: int | None = field(default=None, metadata=flag(
        "--test-limit", kind=positive_int, help="use only the first N test images (quick runs)"))
    test_batch_size: int | None = field(default=None, metadata=flag(
        "--test-batch-size", kind=positive_int,
        help="evaluation batch size (default: chosen per model and device, the power of two "
             "whose largest activation is nearest 4 MiB on the CPU, 256 MiB on a GPU)"))

    def __post_init__(self) -> None:
        batch = self.test_batch_size
        require(batch is None or (isinstance(batch, int) and not isinstance(batch, bool)
                                  and batch >= 1),
                f"test_batch_size must be an integer >= 1, or None to choose it per model "
                f"and device (got {batch!r})")

    def key(self) -> dict[str, Any]:
        """What decides the data a step sees."""
        return {"dataset": self.dataset, "data_dir": self.data_dir,
                "train_limit": self.train_limit, "test_limit": self.test_limit}


@dataclass
class SweepGrid:
    """What a comparison runs: the models trained (``sigma_trains``, each with and
    without scale-aware noise as ``scale_aware`` says: ``off``, ``on`` or ``both``), the
    ``methods``, each at every budget (``fractions``, ``speedups``, ``time_budgets``),
    the methods' options (``method_options``: each method takes the ones it declares),
    and what the comparison judges: a chip is good ``within`` points of the best full
    verify; ``search`` finds per method the largest speedup whose mean (or, with
    ``yield_target``, whose yield) meets it, in ``search_steps`` bisection steps, judged
    at ``judge_time`` (default the first time read). A run is a grid of one point.
    """

    sigma_trains: list[float] = field(default_factory=lambda: [0.0], metadata=flag(
        "--sigma-train", "--train_var", kind=nonnegative, several=True,
        help="noise-injection training: comma-separated sigmas, one model each, all in one "
             "comparison (0: none)"))
    scale_aware: str = field(default="off", metadata=flag(
        "--scale-aware", choices=SCALE_AWARE, const="on",
        help="noise injection follows each layer's range max|W| with its gradient, as "
             "device errors do (the model learns small ranges); 'both' compares each "
             "--sigma-train with and without it"))
    methods: list[str] = field(default_factory=lambda: list(SWEEP_METHODS), metadata=flag(
        "--methods", "--method", kind=registered(METHODS, "method"), several=True,
        help="comma-separated selection methods (SM = swim)"))
    fractions: list[float] | None = field(default=None, metadata=flag(
        "--fractions", "--fraction", "--mask_p", kind=fraction, several=True,
        help="comma-separated fractions of weights (of devices for device-level methods) to "
             "verify, where no speedups or time budgets are given"))
    speedups: list[float] = field(default_factory=list, metadata=flag(
        "--speedups", "--speedup", kind=speedup, several=True,
        help="comma-separated programming speedups over full verify"))
    time_budgets: list[float] = field(default_factory=list, metadata=flag(
        "--time-budgets", "--time-budget", kind=nonnegative, several=True,
        help="comma-separated programming-time budgets in seconds"))
    method_options: dict[str, Any] = field(default_factory=dict, metadata=flag(
        "--method-option", kind=key_value, repeat=True, metavar="KEY=VALUE",
        help="an option of the selection methods (repeat for several; each method takes "
             "the ones it declares), e.g. --method-option epochs=3 for learned"))
    within: float | None = field(default=None, metadata=flag(
        "--within", kind=nonnegative,
        help=f"a chip is good within this many points of the best full verify (default "
             f"{DEFAULT_WITHIN:g}); a sweep also finds per method the largest speedup whose "
             "mean is within it"))
    yield_target: float | None = field(default=None, metadata=flag(
        "--yield", kind=fraction,
        help="with --within: the largest speedup at which this share of chips is within it "
             "(e.g. 0.9)"))
    search_steps: int | None = field(default=None, metadata=flag(
        "--search-steps", kind=positive_int,
        help="bisection steps of the speedup search (default 8)"))
    judge_time: float | None = field(default=None, metadata=flag(
        "--judge-time", kind=nonnegative, metavar="SECONDS",
        help="with --times: the time plans are judged at (searches, gaps; default the first "
             "time)"))
    search: bool = field(default=False, metadata=internal())

    def __post_init__(self) -> None:
        self.sigma_trains = [float(s) for s in self.sigma_trains]
        check_once("sigma_trains", self.sigma_trains)
        for sigma in self.sigma_trains:
            require(is_number(sigma, finite=True) and sigma >= 0,
                    f"sigma_train must be a number >= 0 (got {sigma!r})")
        require(self.scale_aware in SCALE_AWARE, f"scale_aware must be one of "
                f"{', '.join(SCALE_AWARE)} (got {self.scale_aware!r})")
        require(bool(self.methods), "give at least one selection method")
        self.methods = [METHODS.canonical(m) for m in self.methods]
        for what in ("methods", "speedups", "time_budgets"):
            check_once(what, getattr(self, what))
        check_once("fractions", self.fractions or [])
        # each budget checked as the selection step checks it
        for budget in self.budgets():
            SelectionSettings(**{budget.kind.value: budget.value})
        self.method_options = dict(self.method_options or {})
        for key in self.method_options:
            takers = [m for m in self.methods if key in METHODS.get(m).options]
            require(bool(takers), f"method option {key!r} would have no effect: none of the "
                    f"methods ({', '.join(self.methods)}) takes it; add a method that does "
                    f"({_option_takers()}), or drop it")
        for method in self.methods:  # each method's options checked now, not after a pass
            self.options_of(method)
        require(self.within is None or (is_number(self.within, finite=True)
                                        and self.within >= 0),
                f"within must be a number of accuracy points >= 0 (got {self.within!r})")
        require(self.yield_target is None or self.within is not None,
                "--yield needs --within P: the points a chip may lose and count")
        require(self.yield_target is None or 0 < self.yield_target <= 1,
                f"the yield target must be a fraction in (0, 1] (got {self.yield_target!r})")
        require(self.search_steps is None or self.within is not None,
                "--search-steps would have no effect here: it sets the speedup search: give "
                "--within P, or drop it")

    @property
    def within_points(self) -> float:
        """Points a chip may lose and count as good (:data:`DEFAULT_WITHIN` unless given)."""
        return DEFAULT_WITHIN if self.within is None else float(self.within)

    @property
    def steps(self) -> int:
        """Bisection steps of the speedup search."""
        return 8 if self.search_steps is None else int(self.search_steps)

    def budgets(self) -> list[Budget]:
        """Every budget, fractions first, then speedups, then time budgets (default the
        sweep's fractions where none is given)."""
        fractions = self.fractions
        if fractions is None:
            fractions = [] if self.speedups or self.time_budgets else list(SWEEP_FRACTIONS)
        return ([Budget(BudgetKind.FRACTION, f) for f in fractions]
                + [Budget(BudgetKind.SPEEDUP, x) for x in self.speedups]
                + [Budget(BudgetKind.TIME_BUDGET, t) for t in self.time_budgets])

    def options_of(self, method: str) -> dict[str, Any]:
        """The options of ``method`` among the grid's (those it declares), typed."""
        entry = METHODS.get(method)
        mine = {k: v for k, v in self.method_options.items() if k in entry.options}
        return typed_options(f"method {entry.name!r}", entry.options, mine)

    def trainings(self, scale_aware: bool = False) -> list[tuple[float, bool]]:
        """(sigma_train, scale_aware) of every model compared: one clean model for sigma 0,
        and for each sigma > 0 the scale-aware setting, or both with ``both``."""
        modes = {"off": [False], "on": [True], "both": [False, True]}[self.scale_aware]
        out: list[tuple[float, bool]] = []
        for sigma in self.sigma_trains:
            out += [(0.0, False)] if sigma == 0 else [(sigma, mode) for mode in modes]
        return out


@dataclass
class Settings:
    """Every setting of a run or a sweep (see the groups): the model, the data, its
    training, the chip, the sensitivity pass, the selection of one point, the chips, the
    grid of a comparison, fine-tuning under the plan, where to compute (``torch_device``)
    and where to write (``out``)."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    chip: ChipSpec = field(default_factory=ChipSpec)
    sensitivity: SensitivitySettings = field(default_factory=SensitivitySettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    grid: SweepGrid = field(default_factory=SweepGrid)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    torch_device: str = field(default="cpu", metadata=flag(
        "--device", results=False, help="where to compute: cpu, cuda, cuda:N"))
    out: str | None = field(default=None, metadata=flag(
        "--out", results=False, help="output folder (default runs/MODEL-DATASET)"))

    def __post_init__(self) -> None:
        """Check what ties the groups together, before any training or sensitivity pass."""
        if self.model.name is not None and self.data.dataset is None:
            self.data = dataclasses.replace(self.data,
                                            dataset=model_info(self.model.name).dataset)
        self.train.validate()
        noisy = self.train.sigma_train > 0 or any(sigma > 0 for sigma, _ in self.trainings())
        if not noisy and not self.model.checkpoint:
            require(self.grid.scale_aware == "off" and not self.train.scale_aware,
                    "--scale-aware shapes noise-injection training: give --sigma-train > 0, "
                    "or drop --scale-aware")
            require(not self.train.noise_time,
                    "--noise-time is when noise-injection training reads the device: give "
                    "--sigma-train > 0, or drop --noise-time")
        require(not (self.evaluation.times is None and self.grid.judge_time is not None),
                "--judge-time is a time of --times: give --times, or drop --judge-time")
        self._check_points()
        self._check_finetune()
        require(self.grid.judge_time is None or self.grid.judge_time in self.evaluation.times,
                f"judge_time {self.grid.judge_time!r} must be one of the times "
                f"({self.evaluation.times})")
        require_device(self.chip.device_model)
        self.chip.device_model.loop  # noqa: B018 - solves (and so checks) the write-verify loop
        for what, seconds in (("--noise-time", self.train.noise_time),
                              ("--plan-time", self.selection.plan_time)):
            if seconds:
                require_time_acts(self.chip.device, what, f"{seconds:g} s")
        times = self.evaluation.times
        if times is not None and times != [0.0]:
            require_time_acts(self.chip.device, "--times", ",".join(f"{t:g}" for t in times))
        resolve_device(self.torch_device)

    def _check_points(self) -> None:
        """Every point of the grid checked as its selection will be, before any work; a
        menu of tolerances must act for one of the methods at least."""
        budget = self.grid.budgets()[0] if self.grid.budgets() else None
        for method in self.grid.methods:
            self.point(method, budget)
        takers = [m for m in self.grid.methods if METHODS.get(m).tolerances != 0]
        require(self.selection.tolerances is None or bool(takers),
                f"tolerances would have no effect: {', '.join(self.grid.methods)} verify with "
                "the device model's own loop only; drop --tolerances, or add 'allocate'")

    def _check_finetune(self) -> None:
        """Fine-tuning under the plan is for one model and one plan, without a search."""
        if not self.finetune.epochs:
            return
        points = len(self.grid.methods) * len(self.grid.budgets()) * len(self.trainings())
        require(points == 1, f"--finetune-epochs fine-tunes a model under one plan, and "
                             f"this asks for {points}: give one model, one method and one "
                             "budget (swimkit run)")
        require(not self.grid.search, "--finetune-epochs judges the fine-tuned model on the "
                                      "plan it was tuned for: drop --within / --yield")
        require(self.chip.placement.batchnorm == "digital",
                "--finetune-epochs trains the model, and a model trains with its BatchNorm "
                "digital: drop --batchnorm folded, or fine-tune with swimkit train --plan")
        if self.finetune.sigma is not None:
            try:
                self.chip.with_sigma(self.finetune.sigma).device_model.loop  # noqa: B018
            except SwimkitError as err:
                raise SwimkitError(f"--finetune-sigma {self.finetune.sigma:g} has no write-verify "
                                   f"loop for the chip's residual: {err}") from None

    @property
    def judged(self) -> int:
        """Index in the times read of the time points are judged at (0 without times)."""
        times = self.evaluation.times
        if not times or self.grid.judge_time is None:
            return 0
        return list(times).index(self.grid.judge_time)

    def trainings(self) -> list[tuple[float, bool]]:
        """(sigma_train, scale_aware) of every model compared (see
        :meth:`SweepGrid.trainings`)."""
        return self.grid.trainings()

    def point(self, method: str, budget: Budget | None = None) -> SelectionSettings:
        """The selection settings of one point of the grid: ``method`` at ``budget``
        (None: the grid's one budget), with its options and tolerances (a menu for the
        methods that take one, its last tolerance for the weight-level ones)."""
        if budget is None:
            budgets = self.grid.budgets()
            require(len(budgets) == 1, f"give one budget, not {len(budgets)}")
            budget = budgets[0]
        chosen: dict[str, float | None] = {kind.value: None for kind in BudgetKind}
        chosen[budget.kind.value] = budget.value
        menu, most = self.selection.tolerances, METHODS.get(method).tolerances
        if menu is not None and most is not None and len(self.grid.methods) > 1:
            menu = menu[-most:] if most else None  # each method takes what it can
        return dataclasses.replace(self.selection, method=method, tolerances=menu,
                                   options=self.grid.options_of(method), **chosen)

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model.name}-{self.data.dataset}")

    def where(self) -> torch.device:
        """Where models and data live (the torch device): "cpu", "cuda", "cuda:1", ..."""
        return resolve_device(self.torch_device)

    def data_key(self) -> dict[str, Any]:
        """What decides the data a step sees."""
        return self.data.key()

    def describe(self) -> dict[str, Any]:
        """All settings, JSON-ready (the chip by its description)."""
        out = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)
               if f.name != "chip"}
        out["device_model"] = self.chip.describe()
        out["chip"] = self.chip.describe_all()
        return out


def _option_takers() -> str:
    """Which registered methods take which options (for a refusal's way out)."""
    takers = [f"{name} takes {', '.join(METHODS.get(name).options)}" for name in METHODS.names()
              if METHODS.get(name).options]
    return "; ".join(takers) or "no method takes options"


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


__all__ = ["DEFAULT_FRACTION", "DEFAULT_MODEL", "DEFAULT_WITHIN", "SCALE_AWARE",
           "SWEEP_FRACTIONS", "SWEEP_METHODS", "DataSettings", "EvaluationSettings",
           "ModelSettings", "SelectionSettings", "SensitivitySettings", "Settings",
           "SweepGrid", "resolve_device"]
