"""The settings of a training run (:class:`TrainConfig`): what the command line's training
flags declare, checked when made; :mod:`swimkit.training` runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .clipping import CLIP_PER
from .errors import is_integer, is_number, require
from .groups import epochs as epochs_type
from .groups import (
    flag,
    fraction,
    integer,
    internal,
    nonnegative,
    positive,
    positive_int,
    results_of,
)

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")

#: Training settings added after their first release, with the value every earlier run
#: trained with: keys and recorded runs hold them only where they differ from it, so a
#: folder written before keeps its cached results and goes on training.
ADDED_LATER: dict[str, Any] = {"distill": 0.0, "distill_temperature": 2.0}


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
    :mod:`swimkit.clipping`). ``distill`` > 0 mixes knowledge distillation from a clean
    teacher (the starting model, kept noise-free) into the loss with that weight, at
    softmax temperature ``distill_temperature``: the noisy model learns to give the clean
    model's outputs, not only its labels. ``augment`` uses the dataset's augmentation if it has one.

    ``model_name`` (a registry name) picks the family defaults and is stored in the
    checkpoints; ``threads`` (None: :func:`~swimkit.threads.machine_threads`) sets torch's
    CPU threads, which CPU arithmetic depends on; ``resume`` goes on from a folder's
    ``last.pt``; ``progress`` shows progress bars.
    """

    epochs: int = field(default=10, metadata=flag(
        "--epochs", "--train_epoch", kind=epochs_type, help="training epochs"))
    batch_size: int = field(default=128, metadata=flag(
        "--batch-size", kind=positive_int, help="training batch size"))
    optimizer: str | None = field(default=None, metadata=flag(
        "--optimizer", choices=OPTIMIZERS,
        help="adam or sgd (default: the model family's: adam for LeNet and ConvNet, sgd for "
             "ResNet-18)"))
    lr: float | None = field(default=None, metadata=flag(
        "--lr", kind=positive, help="learning rate (default: 1e-3 with adam, 0.01 with sgd)"))
    momentum: float = field(default=0.9, metadata=flag(
        "--momentum", kind=nonnegative, help="SGD momentum"))
    weight_decay: float | None = field(default=None, metadata=flag(
        "--weight-decay", kind=nonnegative,
        help="weight decay (default: 0 with adam, 5e-4 with sgd)"))
    sigma_train: float = field(default=0.0, metadata=flag(
        "--sigma-train", "--train_var", kind=nonnegative,
        help="noise-injection training: sigma of a fresh draw per mini-batch (0: none)"))
    scale_aware: bool = field(default=False, metadata=flag(
        "--scale-aware", kind=None,
        help="noise injection follows each layer's range max|W| with its gradient, as "
             "device errors do (the model learns small ranges)"))
    noise_time: float = field(default=0.0, metadata=flag(
        "--noise-time", kind=nonnegative, metavar="SECONDS",
        help="noise-injection training reads the device this long after programming "
             "(train for the drifted device)"))
    clip_sigma: float | None = field(default=None, metadata=flag(
        "--clip-sigma", kind=positive, metavar="K",
        help="clamp every device weight to +-K standard deviations after each step (e.g. "
             "2.5; with --learn-ranges: where the learned ranges start)"))
    clip_per: str = field(default="tensor", metadata=flag(
        "--clip-per", choices=CLIP_PER, help="clip per tensor or per output channel"))
    learn_ranges: bool = field(default=False, metadata=flag(
        "--learn-ranges", kind=None,
        help="learn a clipping range per tensor (or channel) with the model"))
    distill: float = field(default=0.0, metadata=flag(
        "--distill", kind=fraction, metavar="WEIGHT",
        help="distil from the clean starting model: this share of the loss is the "
             "divergence of the noisy model's outputs from the clean model's (0: none; "
             "e.g. 0.5; needs --checkpoint)"))
    distill_temperature: float = field(default=2.0, metadata=flag(
        "--distill-temperature", kind=positive, metavar="T",
        help="softmax temperature of --distill (higher: more weight on the clean model's "
             "lesser classes)"))
    seed: int = field(default=0, metadata=flag(
        "--seed", kind=integer, help="seed of training, selection and chips"))
    augment: bool = field(default=True, metadata=flag(
        "--no-augment", kind=None, invert=True,
        help="train without the dataset's augmentation (random crops and flips of CIFAR "
             "and Tiny ImageNet)"))
    model_name: str | None = field(default=None, metadata=internal())
    threads: int | None = field(default=None, metadata=internal())
    resume: bool = field(default=True, metadata=flag(
        "--no-resume", kind=None, invert=True, results=False,
        help="start again from scratch (default: go on from the folder's last.pt)"))
    progress: bool = field(default=False, metadata=flag(
        "--no-progress", kind=None, invert=True, results=False, command_default=True,
        help="no progress bars"))

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
        require(_weight(self.distill), _bad("distill", self.distill, "a weight between 0 and 1"))
        require(_positive(self.distill_temperature),
                _bad("distill_temperature", self.distill_temperature, "a number > 0"))
        require(is_integer(self.seed), f"seed must be an integer (got {self.seed!r})")
        require(self.threads is None or (is_integer(self.threads) and self.threads >= 1),
                f"threads must be an integer >= 1, or None (got {self.threads!r})")
        for name in ("augment", "resume", "progress"):
            require(isinstance(getattr(self, name), bool),
                    _bad(name, getattr(self, name), "True or False"))

    @property
    def clips(self) -> bool:
        """True when training clips weights (at k std, or to learned ranges)."""
        return self.clip_sigma is not None or self.learn_ranges



@dataclass
class FinetuneSettings:
    """Fine-tuning under the plan, inside ``swimkit run``: the recipe of the LeNet results.

    With ``epochs`` > 0, once the run's plan is made and judged, a copy of the model
    trains that many epochs under the plan's own device errors (each mini-batch a fresh
    chip programmed by the plan), and the fine-tuned model is judged on the same plan:
    the programming time does not change, the weights learn the errors the plan leaves.
    ``sigma`` is the plain-write sigma of the unverified devices while fine-tuning (None:
    the chip's; above it trains a margin, as 0.4 on a chip of 0.3 did best on LeNet);
    ``lr`` defaults to 0.3 times the model family's; ``distill`` mixes in distillation
    from the model as planned (its weight in the loss); ``scale_aware`` lets the noise
    follow each layer's range with its gradient.
    """

    epochs: int = field(default=0, metadata=flag(
        "--finetune-epochs", kind=integer, metavar="N",
        help="after planning, fine-tune the model N epochs under the plan's device errors "
             "and judge it on the same plan (0: no)"))
    sigma: float | None = field(default=None, metadata=flag(
        "--finetune-sigma", kind=positive, metavar="SIGMA",
        help="plain-write sigma of the unverified devices while fine-tuning (default: the "
             "chip's; e.g. 0.4 on a chip of 0.3)"))
    lr: float | None = field(default=None, metadata=flag(
        "--finetune-lr", kind=positive, metavar="LR",
        help="learning rate of the fine-tuning (default: 0.3 x the model family's)"))
    distill: float = field(default=0.0, metadata=flag(
        "--finetune-distill", kind=fraction, metavar="WEIGHT",
        help="distil from the model as planned while fine-tuning (this share of the loss)"))
    scale_aware: bool = field(default=False, metadata=flag(
        "--finetune-scale-aware", kind=None,
        help="the fine-tuning's noise follows each layer's range max|W| with its gradient"))

    def __post_init__(self) -> None:
        require(is_integer(self.epochs) and self.epochs >= 0,
                _bad("finetune epochs", self.epochs, "an integer >= 0"))
        require(self.sigma is None or _positive(self.sigma),
                _bad("finetune sigma", self.sigma, "a number > 0"))
        require(self.lr is None or _positive(self.lr),
                _bad("finetune lr", self.lr, "a number > 0"))
        require(_weight(self.distill),
                _bad("finetune distill", self.distill, "a weight between 0 and 1"))
        shaped = (self.sigma is not None or self.lr is not None or self.distill > 0
                  or self.scale_aware)
        require(self.epochs > 0 or not shaped,
                "the --finetune-* settings shape fine-tuning under the plan: give "
                "--finetune-epochs N (e.g. 6), or drop them")

    #: The share of the family's learning rate fine-tuning starts from by default.
    LR_FACTOR = 0.3


def results_key(config: TrainConfig) -> dict[str, Any]:
    """The settings of ``config`` that change results, without those added later while
    they keep the value earlier runs had (see :data:`ADDED_LATER`)."""
    return {k: v for k, v in results_of(config).items()
            if not (k in ADDED_LATER and v == ADDED_LATER[k])}


def _positive(value: Any) -> bool:
    return is_number(value, finite=True) and value > 0


def _weight(value: Any) -> bool:
    return is_number(value, finite=True) and 0 <= value <= 1


def _nonnegative(value: Any) -> bool:
    return is_number(value, finite=True) and value >= 0


def _bad(name: str, value: Any, condition: str) -> str:
    return f"{name} must be {condition} (got {value!r})"


__all__ = ["ADDED_LATER", "OPTIMIZERS", "FinetuneSettings", "TrainConfig", "results_key"]
