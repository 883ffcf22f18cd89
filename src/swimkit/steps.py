"""The steps of the flow, one function each: the settings in, a result type out.

``train_model``, ``sensitivity_of_checkpoint``, ``select_plan`` and ``evaluate_plan``
are the separate steps the command line runs (``swimkit train``, ``sensitivity``,
``select``, ``evaluate``); :mod:`swimkit.workflows` runs the same pieces for a whole
sweep. What both need stands here once: the shared :class:`Context` (data and settings),
opening a checkpoint, a sensitivity pass, a selection and a Monte-Carlo evaluation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from . import data as data_mod
from .checkpoints import load_checkpoint
from .chips import evaluation_batch_size
from .errors import SwimkitError, require
from .models import build_model, model_info
from .montecarlo import DEFAULT_MIN_SAMPLES, MCResult, accuracy, evaluate
from .plans import Plan, Verify
from .results import Evaluation
from .selection import METHODS, SelectionSettings, select
from .sensitivity import Sensitivity, sensitivity
from .settings import Settings
from .training import TrainResult, train

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """A log that drops every line."""


@dataclass
class Context:
    """What the steps share: settings, data, log and the files written."""

    settings: Settings
    dataset: data_mod.Dataset
    log: Log
    files: dict[str, str] = field(default_factory=dict)
    _test: list | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        if s.data.test_batch_size is None:  # chosen per model and device, then fixed
            check_fits(s.model.name, self.dataset)
            model = build_model(s.model.name, seed=0, input_shape=self.dataset.image_shape)
            chosen = evaluation_batch_size(model,
                                           self.dataset.image_shape, s.where())
            # a copy: the caller's settings stay as given
            self.settings = replace(s, data=replace(s.data, test_batch_size=chosen))

    @property
    def test_batches(self) -> list:
        """The test set, normalised once and held in memory as batches."""
        if self._test is None:
            s = self.settings
            self._test = data_mod.preload(self.dataset.test, self.dataset,
                                          s.data.test_batch_size, s.where())
        return self._test

    def train_batches(self, batch_size: int, limit: int | None = None, shuffle: bool = False
                      ) -> data_mod.Batches:
        split = self.dataset.train.head(limit) if limit else self.dataset.train
        generator = torch.Generator().manual_seed(self.settings.evaluation.seed)
        return data_mod.Batches(split, self.dataset, batch_size, shuffle=shuffle,
                                generator=generator if shuffle else None,
                                where=self.settings.where())


def check_fits(model_name: str, dataset: data_mod.Dataset) -> None:
    """Raise a clear error when the model neither takes the dataset's images nor adapts to
    them (a one-channel stem for Fashion-MNIST: :func:`~swimkit.build_model`)."""
    info = model_info(model_name)
    if tuple(dataset.image_shape) != tuple(info.input_shape) and not info.adapts:
        raise SwimkitError(
            f"model {info.name} takes {info.input_shape} inputs but {dataset.name} has "
            f"{tuple(dataset.image_shape)} images; pick a matching --model or --dataset"
        )


def prepare(settings: Settings, log: Log = quiet) -> Context:
    """Load the dataset (and check it fits the model)."""
    d = settings.data
    dataset = data_mod.load_dataset(d.dataset, d.data_dir)
    if d.train_limit or d.test_limit:
        dataset = dataset.subset(d.train_limit, d.test_limit)
    check_fits(settings.model.name, dataset)
    return Context(settings, dataset, log)


def open_model(settings: Settings) -> tuple[nn.Module, Settings]:
    """The model of the settings' checkpoint in eval mode, the file read once, and the
    settings naming that model (the one it was saved for, unless a name was given)."""
    m = settings.model
    if not m.checkpoint:
        raise SwimkitError("--checkpoint is required: the trained model to work on")
    model, info = load_checkpoint(m.checkpoint, model_name=m.name, trusted=m.trusted)
    name = m.name or info.get("model_name")
    if not name:
        raise SwimkitError(f"cannot tell which model {m.checkpoint} holds; give --model")
    settings.chip.fit(model)  # a tile smaller than a kernel: said now, not after a pass
    return model.eval(), replace(settings, model=replace(m, name=name))


# --- the shared pieces ---------------------------------------------------------------------


def sensitivity_pass(model: nn.Module, ctx: Context) -> Sensitivity:
    """The sensitivity pass of the settings over the training set."""
    s = ctx.settings
    batches = ctx.train_batches(s.sensitivity.loader_batch, s.sensitivity.limit)
    return sensitivity(model, batches, s.sensitivity, chip=s.chip)


def plan_with(model: nn.Module, sens: Sensitivity | None, selection: SelectionSettings,
              settings: Settings, ctx: Context | None) -> Plan:
    """The plan of ``selection`` (one method at one budget) on the settings' chip; a
    method that learns on data draws shuffled training batches from ``ctx``."""
    learns = METHODS.get(selection.method).needs_data
    data = (ctx.train_batches(settings.train.batch_size, settings.data.train_limit, True)
            if learns and ctx is not None else None)
    return select(model, sens, selection, chip=settings.chip, data=data)


def monte_carlo(model: nn.Module, batches: list, plan: Plan | Verify, settings: Settings, *,
                adaptive: bool = True, against: MCResult | list[MCResult] | None = None
                ) -> list[MCResult]:
    """Chips of ``plan`` with the evaluation settings: one result per time read (one
    without times); ``adaptive`` stops at the CI target where one is set."""
    ev = settings.evaluation
    fixed = {"ci_target": None, "min_samples": DEFAULT_MIN_SAMPLES}  # every chip
    found = evaluate(model, batches, settings.chip, plan, ev, against=against,
                     **({} if adaptive else fixed))
    return found if ev.times is not None else [found]


def _plan_on_chip(plan_file: str, model: nn.Module, settings: Settings,
                  reprice: bool) -> Plan:
    """The plan of ``plan_file``, checked against the settings' chip, or re-priced for it."""
    plan = Plan.load(plan_file)
    if reprice:
        return settings.chip.priced(plan, model)
    settings.chip.check_plan(plan)  # before any data is read
    return plan


# --- the separate steps ---------------------------------------------------------------------


def train_model(settings: Settings, plan_file: str | None = None, *, reprice: bool = False,
                teacher_file: str | None = None, log: Log = quiet) -> TrainResult:
    """Train the settings' model from scratch (into OUT/train), or go on from its
    checkpoint (into OUT/finetune): with noise, under ``plan_file``'s device errors, or
    distilling from a clean teacher (``teacher_file``, else the checkpoint as it was)."""
    if plan_file and not settings.model.checkpoint:
        raise SwimkitError("--plan fine-tunes a trained model: give its --checkpoint")
    if settings.train.distill and not settings.model.checkpoint:
        raise SwimkitError("--distill learns from the clean model it starts from: give its "
                           "--checkpoint")
    if teacher_file and not settings.train.distill:
        raise SwimkitError("--teacher is read by distillation only: give --distill W (e.g. "
                           "0.5), or drop --teacher")
    if teacher_file and not Path(teacher_file).is_file():
        raise SwimkitError(f"--teacher {teacher_file} is not a file: give the checkpoint of "
                           "the clean model to distil from")
    model = None
    if settings.model.checkpoint:
        model, settings = open_model(settings)
    dataset = prepare(settings).dataset  # cut to the train / test limits already
    if model is None:
        model = build_model(settings.model.name, bits=settings.model.bits,
                            input_shape=dataset.image_shape,
                            seed=settings.train.seed)
    plan = _plan_on_chip(plan_file, model, settings, reprice) if plan_file else None
    t = settings.train
    if plan is None and not t.sigma_train and (t.scale_aware or t.noise_time):
        raise SwimkitError("--scale-aware and --noise-time shape noise-injection training: "
                           "give --sigma-train > 0 (or --plan), or drop them")
    crossbar = settings.chip.crossbar
    if plan is None and not t.sigma_train and not crossbar.is_default and not crossbar.converts:
        raise SwimkitError("--tile, --ranges and --signed shape the device errors of "
                           "noise-injection training: give --sigma-train > 0, or drop them")
    model = model.to(settings.where())
    teacher = _teacher(model, teacher_file, settings) if t.distill else None
    out = settings.out_dir / ("finetune" if settings.model.checkpoint else "train")
    return train(model, dataset, t, chip=settings.chip, plan=plan, teacher=teacher,
                 checkpoint_dir=out, log=log, model_name=settings.model.name)


def _teacher(model: nn.Module, teacher_file: str | None, settings: Settings) -> nn.Module:
    """The clean model distillation learns from: ``teacher_file``'s, else a copy of the
    starting model, on the model's device."""
    if not teacher_file:
        return copy.deepcopy(model)
    teacher, _ = load_checkpoint(teacher_file, trusted=settings.model.trusted)
    return teacher.to(settings.where())


def sensitivity_of_checkpoint(settings: Settings, *, log: Log = quiet) -> Sensitivity:
    """The sensitivities of the settings' checkpoint over its training set."""
    model, settings = open_model(settings)
    ctx = prepare(settings, log)
    return sensitivity_pass(model.to(settings.where()), ctx)


def select_plan(settings: Settings, sensitivity_file: str | None = None, *,
                log: Log = quiet) -> Plan:
    """The plan of the settings' one method and budget for their checkpoint (the data
    is read only for a method that learns on it)."""
    model, settings = open_model(settings)
    methods, budgets = settings.grid.methods, settings.grid.budgets()
    require(len(methods) == 1 and len(budgets) == 1,
            f"select makes one plan: give one method and one budget (got {len(methods)} "
            f"method(s) and {len(budgets)} budget(s))")
    point = settings.point(methods[0], budgets[0])
    sens = Sensitivity.load(sensitivity_file) if sensitivity_file else None
    ctx = prepare(settings, log) if METHODS.get(point.method).needs_data else None
    return plan_with(model.to(settings.where()), sens, point, settings, ctx)


def evaluate_plan(settings: Settings, plan_file: str | None = None,
                  verify: Verify = Verify.NONE, reference: float | None = None, *,
                  reprice: bool = False, log: Log = quiet) -> Evaluation:
    """Clean accuracy and Monte-Carlo accuracy of the settings' checkpoint programmed
    by ``plan_file`` (else verifying no device or every one); chip yields are measured
    against ``reference`` (percent) when it is given. A plan made for another chip is
    refused, unless ``reprice`` moves it to this one."""
    model, settings = open_model(settings)
    model.to(settings.where())
    plan = _plan_on_chip(plan_file, model, settings, reprice) if plan_file else verify
    ctx = prepare(settings, log)
    clean = accuracy(model, ctx.test_batches)
    results = monte_carlo(model, ctx.test_batches, plan, settings)
    if reference is not None:
        within = settings.grid.within_points
        results = [replace(r, reference=reference, within=within) for r in results]
    return Evaluation(clean, tuple(results), settings.evaluation.times,
                      plan_file or verify.value, settings.chip.describe())


__all__ = ["Context", "check_fits", "evaluate_plan", "monte_carlo", "open_model",
           "plan_with", "prepare", "quiet", "select_plan", "sensitivity_of_checkpoint",
           "sensitivity_pass", "train_model"]
