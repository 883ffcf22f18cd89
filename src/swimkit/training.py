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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import SGD, Adam, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from .checkpoints import save_checkpoint
from .clipping import CLIP_PER, RANGE_LR_FACTOR, WeightClipping
from .data import Batches, Dataset, Split, preload
from .devices import NoiseModel
from .errors import SwimkitError, is_integer, is_number, require
from .mapping import device_weights, require_logits
from .models import ResNet18, canonical_model_name, model_info
from .montecarlo import accuracy
from .noise_injection import NoiseInjector
from .plans import Plan
from .progress import progress_bar
from .resume import Progress, checkpoint_extra, resume_from
from .seeding import epoch_generator
from .threads import machine_threads, torch_threads

__all__ = [
    "EVAL_BATCH_SIZE",
    "OPTIMIZERS",
    "TrainConfig",
    "TrainResult",
    "default_optimizer",
    "make_optimizer",
    "train",
]

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")

#: Family defaults (the reference settings): learning rate, weight decay, cosine or not.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "adam": {"lr": 1e-3, "weight_decay": 0.0, "schedule": "constant"},
    "sgd": {"lr": 0.01, "weight_decay": 5e-4, "schedule": "cosine"},
}

#: Batch size of the clean test evaluation after every epoch.
EVAL_BATCH_SIZE = 1000

LAST, BEST = "last.pt", "best.pt"

# --------------------------------------------------------------------------- settings


@dataclass
class TrainConfig:
    """Training settings; None means the model family's default.

    ``optimizer`` is ``"adam"`` or ``"sgd"``. Adam defaults to lr 1e-3, no weight decay,
    a constant lr; SGD to lr 0.01, weight decay 5e-4 and a cosine schedule over
    ``epochs`` (``momentum`` applies to SGD only). ``sigma_train`` > 0 turns on
    noise-injection training with that device sigma. ``scale_aware`` lets the injected
    noise follow each layer's range max|W| with its gradient, as device errors do: the
    model then learns to keep its ranges, and so its device errors, small. ``clip_sigma``
    clamps every device weight to +-k standard deviations after each step (``clip_per``
    tensor or output channel); ``learn_ranges`` learns a clipping range per tensor or
    channel instead (started at ``clip_sigma`` std, else at max|W|; see
    :mod:`swimkit.clipping`). ``augment`` uses the dataset's augmentation if it has one.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    sigma_train: float = 0.0
    scale_aware: bool = False
    noise_time: float = 0.0
    clip_sigma: float | None = None
    clip_per: str = "tensor"
    learn_ranges: bool = False
    seed: int = 0
    augment: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a one-line :class:`SwimkitError` for a setting out of range."""
        require(
            is_integer(self.epochs) and self.epochs >= 0,
            _bad("epochs", self.epochs, "an integer >= 0"),
        )
        require(
            is_integer(self.batch_size) and self.batch_size >= 1,
            _bad("batch_size", self.batch_size, "an integer >= 1"),
        )
        if self.optimizer is not None:
            require(
                isinstance(self.optimizer, str) and self.optimizer.lower() in OPTIMIZERS,
                f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}",
            )
            self.optimizer = self.optimizer.lower()
        require(self.lr is None or _positive(self.lr), _bad("lr", self.lr, "a number > 0"))
        require(_nonnegative(self.momentum), _bad("momentum", self.momentum, "a number >= 0"))
        require(
            self.weight_decay is None or _nonnegative(self.weight_decay),
            _bad("weight_decay", self.weight_decay, "a number >= 0"),
        )
        require(
            _nonnegative(self.sigma_train), _bad("sigma_train", self.sigma_train, "a number >= 0")
        )
        require(isinstance(self.scale_aware, bool),
                _bad("scale_aware", self.scale_aware, "True or False"))
        require(_nonnegative(self.noise_time),
                _bad("noise_time", self.noise_time, "seconds >= 0 after programming"))
        require(self.clip_sigma is None or _positive(self.clip_sigma),
                _bad("clip_sigma", self.clip_sigma, "a number of standard deviations > 0"))
        require(self.clip_per in CLIP_PER,
                _bad("clip_per", self.clip_per, f"one of {', '.join(CLIP_PER)}"))
        require(isinstance(self.learn_ranges, bool),
                _bad("learn_ranges", self.learn_ranges, "True or False"))
        require(self.clip_per == "tensor" or self.clips,
                "clip_per says how weights are clipped: give clip_sigma (--clip-sigma) or "
                "learn_ranges (--learn-ranges), or drop it")
        require(is_integer(self.seed), f"seed must be an integer (got {self.seed!r})")

    @property
    def clips(self) -> bool:
        """True when training clips weights (at k std, or to learned ranges)."""
        return self.clip_sigma is not None or self.learn_ranges



def _positive(value: Any) -> bool:
    return is_number(value, finite=True) and value > 0


def _nonnegative(value: Any) -> bool:
    return is_number(value, finite=True) and value >= 0


def _bad(name: str, value: Any, condition: str) -> str:
    return f"{name} must be {condition} (got {value!r})"


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
    config: TrainConfig,
    *,
    model_name: str | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = False,
    device: torch.device | str | None = None,
    log: Callable[[str], None] | None = None,
    noise_model: NoiseModel | None = None,
    plan: Plan | None = None,
    threads: int | None = None,
    exclude: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` with ``config``; checkpoint and resume in a folder.

    ``model_name`` (a registry name) picks the family defaults and is stored in the
    checkpoints. With ``checkpoint_dir``, ``last.pt`` is written after every epoch and
    ``best.pt`` whenever the clean test accuracy improves; if ``last.pt`` exists and
    ``resume`` is True, training continues after its epoch (or returns at once when it
    already reached ``config.epochs``). Noise injection: ``config.sigma_train`` > 0 draws
    from ``noise_model`` (default the Gaussian DeviceModel) at that plain-write sigma;
    with sigma_train 0, any ``noise_model`` (:class:`~swimkit.devices.NoiseModel`) is
    used as it is. ``plan`` draws the noise of
    that write-verify plan (plan-aware fine-tuning: verified devices get their residual).
    ``exclude`` / ``params`` choose the weights on devices, which noise injection and
    clipping act on (as :func:`~swimkit.device_weights` does; a plan names its own).
    Training runs on ``threads`` torch threads (default :func:`machine_threads`, whatever
    the environment set, e.g. torchrun's one thread per process), since CPU arithmetic
    depends on the thread count: the trained model is the same on any number of
    processes. The count is recorded in the checkpoints' settings.
    """
    config.validate()
    threads = threads if threads is not None else machine_threads()
    require(isinstance(threads, int) and threads >= 1, f"threads must be >= 1 (got {threads!r})")
    require(len(dataset.train) > 0, "the training set is empty; give a dataset with examples")
    require(len(dataset.test) > 0, "the test set is empty; give a dataset with test examples")
    where = torch.device(device) if device is not None else _model_device(model)
    model.to(where)
    name = model_name or type(model).__name__
    settings = {"model_name": _canonical(name), **_resolve(config, model, model_name)}
    noise = NoiseInjector.create(model, config, noise_model, plan, exclude, params)
    clipping = _clipping(model, config, noise, plan, exclude, params)
    settings.update(
        batch_size=config.batch_size,
        sigma_train=float(config.sigma_train),
        scale_aware=bool(config.scale_aware),
        seed=config.seed,
        augment=bool(config.augment and dataset.augment),
        noise=noise.describe() if noise is not None else None,
        ranges=clipping.describe() if clipping is not None else None,
        threads=threads,
    )
    optimizer, scheduler = make_optimizer(
        model, config, model_name, clipping.parameters() if clipping is not None else None)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    say = log or (lambda _line: None)

    state = Progress()
    last = folder / LAST if folder is not None else None
    if resume and last is not None and last.is_file():
        state = resume_from(last, model, optimizer, scheduler, settings, where, clipping)
        if state.epoch >= config.epochs:
            say(f"{last} already holds {state.epoch} epochs (asked for {config.epochs}): done")
            return _result(state, model, folder)
        say(f"resuming from epoch {state.epoch} of {config.epochs} ({last})")
    else:
        torch.manual_seed(config.seed)

    train_split = _to_device(dataset.train, where)
    test_batches = preload(dataset.test, dataset, EVAL_BATCH_SIZE, where)
    with torch_threads(threads):  # the same arithmetic whatever torchrun set
        for epoch in range(state.epoch + 1, config.epochs + 1):
            start = time.perf_counter()
            data = Batches(
                train_split,
                dataset,
                config.batch_size,
                shuffle=True,
                augment=config.augment,
                generator=epoch_generator(config.seed, "data", epoch),
            )
            lr = float(optimizer.param_groups[0]["lr"])
            desc = f"epoch {epoch}/{config.epochs}"
            loss, train_acc = _train_epoch(model, data, optimizer, noise, epoch, progress, desc,
                                           clipping)
            if scheduler is not None:
                scheduler.step()
            test_acc = accuracy(model, test_batches)
            row = {
                "epoch": epoch,
                "train_loss": loss,
                "train_accuracy": train_acc,
                "test_accuracy": test_acc,
                "lr": lr,
                "seconds": time.perf_counter() - start,
            }
            improved = _record(state, row)
            if folder is not None:
                extra = checkpoint_extra(state, optimizer, scheduler, asdict(config),
                                         settings, where, clipping)
                if improved:
                    save_checkpoint(folder / BEST, model, model_name=name, extra=extra)
                save_checkpoint(folder / LAST, model, model_name=name, extra=extra)
            say(
                f"epoch {epoch}/{config.epochs}: train loss {loss:.4f}, train acc "
                f"{train_acc:.2f}%, test acc {test_acc:.2f}% ({row['seconds']:.1f} s)"
            )
    return _result(state, model, folder)


def _train_epoch(
    model: nn.Module,
    data: Batches,
    optimizer: Optimizer,
    noise: NoiseInjector | None,
    epoch: int,
    progress: bool,
    desc: str,
    clipping: WeightClipping | None = None,
) -> tuple[float, float]:
    """One pass over ``data`` in train mode; return the mean loss and accuracy (percent)."""
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
            loss = F.cross_entropy(logits, y)
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


def _clipping(model: nn.Module, config: TrainConfig, noise: NoiseInjector | None,
              plan: Plan | None, exclude: Sequence[str] | None,
              params: Sequence[str] | None) -> WeightClipping | None:
    """The weight clipping of ``config`` on the device weights noise training perturbs
    (None without clipping)."""
    if not config.clips:
        return None
    weights = noise.weights if noise is not None else (
        plan.weights_in(model) if plan is not None
        else device_weights(model, exclude=exclude, params=params))
    return WeightClipping(weights, config.clip_sigma, config.clip_per, config.learn_ranges)


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
