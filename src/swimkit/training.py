"""Training with the reference's settings, optional noise injection, and exact resume.

The reference settings: batch 128; LeNet and ConvNet train with Adam (lr 1e-3), ResNet-18 with SGD
(lr 0.01, momentum 0.9, weight decay 5e-4) under a cosine schedule. Noise-injection
training adds a fresh device-noise draw to the effective device weights for every
mini-batch; the update is applied to the clean weights (the offset's gradient is the
identity), so the model learns weights that tolerate variation.

Every epoch ends with the clean test accuracy and two checkpoints in the run folder:
``last.pt`` (always) and ``best.pt`` (when the test accuracy improved). ``last.pt``
holds everything needed to go on: model, optimizer and scheduler state, the global
torch RNG state, the history. The data order and the noise of epoch e come from
generators seeded by (seed, e) alone, so a run interrupted after epoch k and resumed
gives bit-identical weights and history to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import SGD, Adam, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from .checkpoints import save_checkpoint, weights_digest
from .chip import ChipSpec, as_chip
from .clipping import RANGE_LR_FACTOR, WeightClipping
from .data import Batches, Dataset, Split, preload
from .errors import SwimkitError, require
from .groups import (
    with_overrides,
)
from .models import ResNet18, canonical_model_name, model_info, require_logits
from .montecarlo import accuracy
from .noise_injection import NoiseInjector
from .plans import Plan
from .progress import progress_bar
from .resume import Progress, checkpoint_extra, resume_from
from .seeding import epoch_generator
from .threads import machine_threads, torch_threads
from .train_config import OPTIMIZERS, TrainConfig, results_key

__all__ = [
    "EVAL_BATCH_SIZE",
    "OPTIMIZERS",
    "TrainConfig",
    "TrainResult",
    "default_optimizer",
    "learning_rate",
    "make_optimizer",
    "train",
]

#: Family defaults (the reference settings): learning rate, weight decay, cosine or not.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "adam": {"lr": 1e-3, "weight_decay": 0.0, "schedule": "constant"},
    "sgd": {"lr": 0.01, "weight_decay": 5e-4, "schedule": "cosine"},
}

#: Batch size of the clean test evaluation after every epoch.
EVAL_BATCH_SIZE = 1000

LAST, BEST = "last.pt", "best.pt"

def default_optimizer(model: nn.Module, model_name: str | None = None) -> str:
    """The family optimizer: from the registry for a known name, else SGD for a ResNet-18."""
    if model_name is not None:
        with contextlib.suppress(SwimkitError):
            return model_info(model_name).optimizer
    return "sgd" if isinstance(model, ResNet18) else "adam"


def _resolve(config: TrainConfig, model: nn.Module, model_name: str | None) -> dict[str, Any]:
    """The settings actually used: optimizer, lr, momentum, weight decay and schedule."""
    optimizer = config.optimizer or default_optimizer(model, model_name)
    defaults = _DEFAULTS[optimizer]
    return {
        "optimizer": optimizer,
        "lr": float(config.lr if config.lr is not None else defaults["lr"]),
        "momentum": float(config.momentum) if optimizer == "sgd" else None,
        "weight_decay": float(
            config.weight_decay if config.weight_decay is not None else defaults["weight_decay"]
        ),
        "schedule": defaults["schedule"],
    }


def learning_rate(config: TrainConfig, model: nn.Module, model_name: str | None = None
                  ) -> float:
    """The learning rate ``config`` trains ``model`` with (its own, else the family's)."""
    return float(_resolve(config, model, model_name)["lr"])


def make_optimizer(
    model: nn.Module, config: TrainConfig, model_name: str | None = None,
    ranges: list[nn.Parameter] | None = None,
) -> tuple[Optimizer, LRScheduler | None]:
    """The optimizer and lr scheduler (None for a constant lr) for ``config``.

    The cosine schedule is ``lr * (1 + cos(pi * e / epochs)) / 2`` at epoch e (0-based),
    as ``CosineAnnealingLR(T_max=epochs)``, but in closed form, so a finished run
    resumed with more epochs follows the longer schedule from where it stands.
    Learned clipping ``ranges`` train in a group of their own, without weight decay, at
    :data:`~swimkit.clipping.RANGE_LR_FACTOR` times the learning rate.
    """
    config.validate()
    settings = _resolve(config, model, model_name)
    params = [p for p in model.parameters() if p.requires_grad]
    require(len(params) > 0, f"{type(model).__name__} has no trainable parameters")
    groups: list[dict[str, Any]] = [{"params": params}]
    if ranges:
        groups.append({"params": ranges, "weight_decay": 0.0,
                       "lr": settings["lr"] * RANGE_LR_FACTOR})
    if settings["optimizer"] == "sgd":
        optimizer: Optimizer = SGD(
            groups,
            lr=settings["lr"],
            momentum=settings["momentum"],
            weight_decay=settings["weight_decay"],
        )
    else:
        optimizer = Adam(groups, lr=settings["lr"], weight_decay=settings["weight_decay"])
    if settings["schedule"] == "constant":
        return optimizer, None
    return optimizer, LambdaLR(optimizer, _cosine(max(config.epochs, 1)))


def _cosine(epochs: int) -> Callable[[int], float]:
    def factor(epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))

    return factor


# --------------------------------------------------------------------------- result


@dataclass
class TrainResult:
    """What a training run produced.

    ``history`` has one dict per epoch (epoch, train_loss, train_accuracy, test_accuracy,
    lr, seconds; accuracies in percent). ``best_accuracy`` / ``best_epoch`` are None when
    no epoch was trained. ``model`` holds the last epoch's weights.
    """

    history: list[dict[str, Any]]
    best_accuracy: float | None
    best_epoch: int | None
    last_path: Path | None
    best_path: Path | None
    model: nn.Module


# --------------------------------------------------------------------------- training


def train(
    model: nn.Module,
    dataset: Dataset,
    settings: TrainConfig | None = None,
    *,
    chip: ChipSpec | Any = None,
    plan: Plan | None = None,
    teacher: nn.Module | None = None,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``model`` on ``dataset``; checkpoint and resume in a folder.

    ``settings`` (a :class:`TrainConfig`) with the keyword ``overrides`` of its fields
    applied to a copy (``epochs=``, ``sigma_train=``, ``model_name=``, ``resume=``, ...).
    The model trains where it is (its device). With ``checkpoint_dir``, ``last.pt`` is
    written after every epoch and ``best.pt`` whenever the clean test accuracy improves;
    if ``last.pt`` exists and ``resume`` is True, training continues after its epoch (or
    returns at once when it already reached ``epochs``).

    ``chip`` (a :class:`~swimkit.ChipSpec`, or a device model alone; None: the default
    Gaussian chip) is the chip the model is trained for: noise injection
    (``sigma_train`` > 0) draws from its device model at that plain-write sigma, on its
    crossbar (ranges, converters) and its device weights; ``plan`` draws the noise of
    that write-verify plan (plan-aware fine-tuning: verified devices get their residual);
    without either, a crossbar with converters or output noise is trained through at
    sigma 0. Clipping acts on the same device weights. ``teacher`` (with ``distill`` > 0)
    is the clean model the noisy one distils from, typically a copy of ``model`` before
    training; it runs noise-free in eval mode and is not trained. Training runs on ``threads``
    torch threads (default :func:`machine_threads`, whatever the environment set, e.g.
    torchrun's one thread per process), since CPU arithmetic depends on the thread
    count: the trained model is the same on any number of processes. The count is
    recorded in the checkpoints' settings.
    """
    config = with_overrides(TrainConfig, settings, overrides, "train")
    config.validate()
    chip = as_chip(chip)
    require(chip.placement.batchnorm == "digital",
            "a model trains with its BatchNorm (folding is how a chip holds the trained "
            "model): train for the chip with BatchNorm digital (chip.trained(); drop "
            "--batchnorm folded), then select and evaluate with it folded")
    require(len(dataset.train) > 0, "the training set is empty; give a dataset with examples")
    require(len(dataset.test) > 0, "the test set is empty; give a dataset with test examples")
    _check_teacher(model, teacher, config)
    if teacher is not None:
        teacher.eval()
    run = _Run.start(model, dataset, config, chip, plan, checkpoint_dir, teacher)
    say = log or (lambda _line: None)
    last = run.folder / LAST if run.folder is not None else None
    if config.resume and last is not None and last.is_file():
        run.state = resume_from(last, model, run.optimizer, run.scheduler, run.settings,
                                run.where, run.clipping)
        if run.state.epoch >= config.epochs:
            say(f"{last} already holds {run.state.epoch} epochs (asked for {config.epochs}): "
                "done")
            return run.result()
        say(f"resuming from epoch {run.state.epoch} of {config.epochs} ({last})")
    else:
        torch.manual_seed(config.seed)
    with torch_threads(run.threads):  # the same arithmetic whatever torchrun set
        for epoch in range(run.state.epoch + 1, config.epochs + 1):
            row = run.epoch(epoch)
            say(f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, train "
                f"acc {row['train_accuracy']:.2f}%, test acc {row['test_accuracy']:.2f}% "
                f"({row['seconds']:.1f} s)")
    return run.result()


@dataclass
class _Run:
    """One training run's parts: its noise, clipping, optimizer, data and progress."""

    model: nn.Module
    dataset: Dataset
    config: TrainConfig
    where: torch.device
    threads: int
    name: str
    settings: dict[str, Any]
    noise: NoiseInjector | None
    clipping: WeightClipping | None
    optimizer: Optimizer
    scheduler: LRScheduler | None
    folder: Path | None
    train_split: Split
    test_batches: list
    loss: Loss
    state: Progress = field(default_factory=Progress)

    @classmethod
    def start(cls, model: nn.Module, dataset: Dataset, config: TrainConfig, chip: ChipSpec,
              plan: Plan | None, checkpoint_dir: str | Path | None,
              teacher: nn.Module | None = None) -> _Run:
        """The parts of a run, before its first epoch (nothing is read from a folder)."""
        threads = config.threads if config.threads is not None else machine_threads()
        where = _model_device(model)
        name = config.model_name or type(model).__name__
        noise = NoiseInjector.create(model, config, chip, plan)
        clipping = _clipping(model, config, noise, plan, chip)
        settings = {"model_name": _canonical(name),
                    **_resolve(config, model, config.model_name),
                    "batch_size": config.batch_size, "sigma_train": float(config.sigma_train),
                    "scale_aware": bool(config.scale_aware), "seed": config.seed,
                    "augment": bool(config.augment and dataset.augment),
                    "noise": noise.describe() if noise is not None else None,
                    "ranges": clipping.describe() if clipping is not None else None,
                    "teacher": weights_digest(teacher) if config.distill else None,
                    "threads": threads, "data": data_identity(dataset),
                    "train": {k: v for k, v in results_key(config).items()
                              if k not in _MAY_CHANGE_ON_RESUME}}
        optimizer, scheduler = make_optimizer(
            model, config, config.model_name,
            clipping.parameters() if clipping is not None else None)
        return cls(model, dataset, config, where, threads, name, settings, noise, clipping,
                   optimizer, scheduler,
                   Path(checkpoint_dir) if checkpoint_dir is not None else None,
                   _to_device(dataset.train, where),
                   preload(dataset.test, dataset, EVAL_BATCH_SIZE, where),
                   training_loss(config, teacher))

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch, evaluate, record and checkpoint it; its history row."""
        config = self.config
        start = time.perf_counter()
        data = Batches(self.train_split, self.dataset, config.batch_size, shuffle=True,
                       augment=config.augment,
                       generator=epoch_generator(config.seed, "data", epoch))
        lr = float(self.optimizer.param_groups[0]["lr"])
        loss, train_acc = _train_epoch(self.model, data, self.optimizer, self.noise, epoch,
                                       config.progress, f"epoch {epoch}/{config.epochs}",
                                       self.clipping, self.loss)
        self._check_finite(epoch, loss)
        if self.scheduler is not None:
            self.scheduler.step()
        row = {"epoch": epoch, "train_loss": loss, "train_accuracy": train_acc,
               "test_accuracy": accuracy(self.model, self.test_batches), "lr": lr,
               "seconds": time.perf_counter() - start}
        improved = _record(self.state, row)
        if self.folder is not None:
            self._save(improved)
        return row

    def _check_finite(self, epoch: int, loss: float) -> None:
        """Refuse to go on (and to save) when training diverged: the last good checkpoint
        stays as it is."""
        weights = [p for p in self.model.parameters() if not bool(torch.isfinite(p).all())]
        if not weights and math.isfinite(loss):
            return
        kept = (f"; {self.folder / LAST} (epoch {self.state.epoch}) is kept"
                if self.folder is not None and self.state.epoch else "")
        raise SwimkitError(
            f"training diverged in epoch {epoch}: the loss is {loss:g} and "
            f"{len(weights)} weight tensor(s) hold NaN or infinite values, so nothing was "
            f"saved{kept}; lower the learning rate or --sigma-train, or add --clip-sigma")

    def _save(self, improved: bool) -> None:
        stored = {k: v for k, v in asdict(self.config).items() if k not in ("resume", "progress")}
        extra = checkpoint_extra(self.state, self.optimizer, self.scheduler, stored,
                                 self.settings, self.where, self.clipping)
        assert self.folder is not None
        shape = self.dataset.image_shape
        if improved:
            save_checkpoint(self.folder / BEST, self.model, model_name=self.name, extra=extra,
                            input_shape=shape)
        save_checkpoint(self.folder / LAST, self.model, model_name=self.name, extra=extra,
                        input_shape=shape)

    def result(self) -> TrainResult:
        return _result(self.state, self.model, self.folder)


def _train_epoch(
    model: nn.Module,
    data: Batches,
    optimizer: Optimizer,
    noise: NoiseInjector | None,
    epoch: int,
    progress: bool,
    desc: str,
    clipping: WeightClipping | None = None,
    loss_of: Loss | None = None,
) -> tuple[float, float]:
    """One pass over ``data`` in train mode; return the mean loss and accuracy (percent)."""
    loss_of = loss_of or _cross_entropy
    model.train()
    where = _model_device(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=where)
    correct = torch.zeros((), dtype=torch.int64, device=where)
    seen = 0
    noisy = noise.epoch(epoch) if noise is not None else contextlib.nullcontext()
    clipped = clipping.epoch() if clipping is not None else contextlib.nullcontext()
    with clipped, noisy as redraw:
        for x, y in progress_bar(data, progress, desc):
            if redraw is not None:
                redraw()
            logits = require_logits(model(x))
            loss = loss_of(logits, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if clipping is not None:
                clipping.clip()
            n = int(y.shape[0])
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(dim=-1) == y).sum()
            seen += n
    return float(loss_sum) / seen, 100.0 * int(correct) / seen


#: A training loss: (the model's logits, the batch's inputs, its labels) -> a scalar.
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(logits: torch.Tensor, _x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def training_loss(config: TrainConfig, teacher: nn.Module | None = None) -> Loss:
    """The loss of ``config``: cross-entropy, or with ``distill`` > 0 a mix of it and
    knowledge distillation from ``teacher``.

    Distillation is Hinton et al.'s: the KL divergence of the model's softened outputs
    (softmax at temperature T) from the teacher's, times T^2 so its gradients keep their
    size whatever T; the loss is ``(1 - distill) * CE + distill * T^2 * KL``. The
    teacher sees the same (augmented) batch, in eval mode, without noise or gradients.
    """
    if not config.distill:
        return _cross_entropy
    assert teacher is not None, "train() checks that distillation has its teacher"
    weight, temperature = float(config.distill), float(config.distill_temperature)

    def loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(require_logits(teacher(x)) / temperature, dim=-1)
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=-1), target,
                        reduction="batchmean", log_target=True)
        return (1 - weight) * F.cross_entropy(logits, y) + weight * temperature**2 * soft

    return loss


def _check_teacher(model: nn.Module, teacher: nn.Module | None, config: TrainConfig) -> None:
    """Distillation needs a teacher other than the model; a teacher needs distillation."""
    if not config.distill:
        require(teacher is None, "a teacher is only read by distillation: give distill > 0 "
                                 "(--distill), or no teacher")
        return
    require(teacher is not None,
            "distillation (distill > 0) needs the clean teacher model: pass teacher= (a copy "
            "of the model before training), or on the command line start from a "
            "--checkpoint")
    require(teacher is not model,
            "the teacher is the model being trained: pass a copy (copy.deepcopy(model)) made "
            "before training, so the teacher stays clean")
    require(_model_device(teacher) == _model_device(model),
            f"the teacher is on {_model_device(teacher)} and the model on "
            f"{_model_device(model)}: move the teacher to the model's device")


def _clipping(model: nn.Module, config: TrainConfig, noise: NoiseInjector | None,
              plan: Plan | None, chip: ChipSpec) -> WeightClipping | None:
    """The weight clipping of ``config`` on the device weights noise training perturbs
    (None without clipping)."""
    if not config.clips:
        return None
    weights = noise.weights if noise is not None else (
        plan.weights_in(model) if plan is not None else chip.weights(model))
    return WeightClipping(weights, config.clip_sigma, config.clip_per, config.learn_ranges)


#: Training settings a resumed run may change: the epochs grow, the threads are recorded
#: as resolved, the name apart.
_MAY_CHANGE_ON_RESUME = ("epochs", "threads", "model_name")


def data_identity(dataset: Dataset) -> dict[str, Any]:
    """What identifies the data a run trains on (resuming with other data is refused)."""
    return {"dataset": dataset.name, "train_images": len(dataset.train),
            "test_images": len(dataset.test)}


def _record(state: Progress, row: dict[str, Any]) -> bool:
    """Append an epoch to ``state``; True if its test accuracy is a new best."""
    state.epoch = int(row["epoch"])
    state.history.append(row)
    improved = state.best_accuracy is None or row["test_accuracy"] > state.best_accuracy
    if improved:
        state.best_accuracy, state.best_epoch = float(row["test_accuracy"]), state.epoch
    return improved


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _to_device(split: Split, device: torch.device) -> Split:
    """The split moved once to ``device`` (batches are then gathered there)."""
    if split.images.device == device:
        return split
    return Split(split.images.to(device), split.labels.to(device))


def _canonical(name: str) -> str:
    with contextlib.suppress(SwimkitError):
        return canonical_model_name(name)
    return name


# --------------------------------------------------------------------------- checkpoints


def _result(state: Progress, model: nn.Module, folder: Path | None) -> TrainResult:
    last = folder / LAST if folder is not None and (folder / LAST).is_file() else None
    best = folder / BEST if folder is not None and (folder / BEST).is_file() else None
    return TrainResult(
        history=list(state.history),
        best_accuracy=state.best_accuracy,
        best_epoch=state.best_epoch,
        last_path=last,
        best_path=best,
        model=model,
    )
