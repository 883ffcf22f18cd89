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

from .devices import Device, DeviceModel, require_device
from .errors import SwimkitError, check_once, is_number, require
from .models import canonical_model_name, model_info
from .montecarlo import EvaluationSettings
from .selection import SelectionSettings
from .sensitivity import SensitivitySettings
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
        check_once("sigma_trains", self.sigma_trains or [])
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
