"""The SWIM reference's models as plain ``torch.nn`` modules, and a registry of their names.

The models hold only standard layers (``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``);
quantization is attached from outside with :func:`swimkit.quantization.quantize`, so a
quantized model keeps the same layers and state-dict names. All convolutions are 3x3 with
padding 1 (ResNet's 1x1 shortcut convolutions aside), activations are ReLU, and the
forward passes have no data-dependent control flow, so ``torch.fx`` can trace them.

Layer attribute names follow the reference checkpoints (``conv1``, ``fc1``, ...) and, for
ResNet-18, torchvision (``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import SwimkitError, choose, require
from .quantization import OutputRange, quantize


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """A 3x3 convolution with padding 1 (the only kernel size the reference uses)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)


class ConvPoolMLP(nn.Module):
    """Stages of (3x3 conv + ReLU)* followed by a 2x2 max-pool, then an MLP.

    The layers are attributes ``conv1..convN`` and ``fc1..fcM`` in forward order, which is
    how the reference names them. ``stages`` lists the output channels of each stage's
    convolutions; ``features`` the MLP widths, from the flattened input to the classes.
    Every linear layer but the last is followed by a ReLU.
    """

    def __init__(
        self, in_channels: int, stages: Sequence[Sequence[int]], features: Sequence[int]
    ) -> None:
        super().__init__()
        require(len(features) >= 2, "an MLP needs at least an input and an output width")
        self._stages: list[list[str]] = []
        channels, index = in_channels, 0
        for stage in stages:
            names = []
            for out_channels in stage:
                index += 1
                names.append(f"conv{index}")
                self.add_module(names[-1], conv3x3(channels, out_channels))
                channels = out_channels
            self._stages.append(names)
        self._linears = [f"fc{i}" for i in range(1, len(features))]
        for name, n_in, n_out in zip(self._linears, features[:-1], features[1:], strict=True):
            self.add_module(name, nn.Linear(n_in, n_out))

    def forward(self, x: Tensor) -> Tensor:
        for stage in self._stages:
            for name in stage:
                x = F.relu(getattr(self, name)(x))
            x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        for name in self._linears[:-1]:
            x = F.relu(getattr(self, name)(x))
        return getattr(self, self._linears[-1])(x)


class LeNet(ConvPoolMLP):
    """LeNet for 1x28x28 inputs: conv 1->6, pool, conv 6->16, pool, fc 784->120->84->10."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(in_channels, [[6], [16]], [16 * 7 * 7, 120, 84, num_classes])


class ConvNet(ConvPoolMLP):
    """The reference's CIFAR-10 network for 3x32x32 inputs (six convs, three pools, 3 fcs)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(
            in_channels,
            [[64, 64], [128, 128], [256, 256]],
            [256 * 4 * 4, 1024, 1024, num_classes],
        )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, with a 1x1 conv + BN shortcut when needed."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stride-1 stem, no max-pool, [2, 2, 2, 2] basic blocks.

    The adaptive average pool makes it work for any input size (32x32 for CIFAR-10,
    64x64 for Tiny ImageNet).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, 64, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._stage(64, 64, stride=1)
        self.layer2 = self._stage(64, 128, stride=2)
        self.layer3 = self._stage(128, 256, stride=2)
        self.layer4 = self._stage(256, 512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    @staticmethod
    def _stage(in_channels: int, channels: int, stride: int, blocks: int = 2) -> nn.Sequential:
        first = BasicBlock(in_channels, channels, stride)
        return nn.Sequential(first, *(BasicBlock(channels, channels) for _ in range(blocks - 1)))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_tiny(num_classes: int = 200) -> ResNet18:
    """ResNet-18 for Tiny ImageNet (3x64x64 inputs, 200 classes)."""
    return ResNet18(num_classes=num_classes)


@dataclass(frozen=True)
class ModelInfo:
    """What the reference trained a registered model on, and with which settings.

    ``architecture`` is the float model's name (``"lenet"`` for ``"qlenet"``);
    ``default_bits`` is the bit width :func:`build_model` quantizes to (None: float).
    """

    name: str
    architecture: str
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    quantized: bool
    default_bits: int | None
    optimizer: str


_ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], str, tuple[int, int, int], int, int, str]]
_ARCHITECTURES = {
    # name: (builder, dataset, input shape, classes, bits of the q-variant, optimizer)
    "lenet": (LeNet, "fashion-mnist", (1, 28, 28), 10, 4, "adam"),
    "convnet": (ConvNet, "cifar10", (3, 32, 32), 10, 6, "adam"),
    "resnet18": (ResNet18, "cifar10", (3, 32, 32), 10, 8, "sgd"),
    "resnet18_tiny": (resnet18_tiny, "tiny-imagenet", (3, 64, 64), 200, 8, "sgd"),
}


def _registry() -> dict[str, ModelInfo]:
    models = {}
    for arch, (_, dataset, shape, classes, bits, optimizer) in _ARCHITECTURES.items():
        for quantized in (False, True):
            name = f"q{arch}" if quantized else arch
            models[name] = ModelInfo(
                name=name,
                architecture=arch,
                dataset=dataset,
                input_shape=shape,
                num_classes=classes,
                quantized=quantized,
                default_bits=bits if quantized else None,
                optimizer=optimizer,
            )
    return models


MODELS: dict[str, ModelInfo] = _registry()
"""Every registered model by canonical name."""

_REFERENCE_NAMES = {
    "LeNet": "lenet",
    "CIFAR": "convnet",
    "Res18": "resnet18",
    "TIN": "resnet18_tiny",
}

MODEL_ALIASES: dict[str, str] = {
    **{name: name for name in MODELS},
    **_REFERENCE_NAMES,
    **{f"Q{alias}": f"q{name}" for alias, name in _REFERENCE_NAMES.items()},
    "resnet18-tiny": "resnet18_tiny",
    "qresnet18-tiny": "qresnet18_tiny",
}
"""Accepted names (matched case-insensitively), including the reference scripts' names."""


def canonical_model_name(name: str) -> str:
    """The canonical registry name for ``name`` (e.g. ``"QRes18"`` -> ``"qresnet18"``)."""
    require(isinstance(name, str), f"a model name must be a string (got {name!r})")
    return choose(name, MODEL_ALIASES, "model")


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model, by any accepted name."""
    return MODELS[canonical_model_name(name)]


def build_model(
    name: str,
    *,
    bits: int | None = None,
    output_range: OutputRange = "running",
    seed: int | None = None,
) -> nn.Module:
    """Build a registered model with fresh weights.

    Quantized variants (``q...``) are quantized with ``bits`` (default: the reference's
    bit width) and ``output_range`` (see :func:`swimkit.quantization.quantize`). With
    ``seed`` the initial weights depend on it alone (the global RNG is left untouched).
    """
    info = model_info(name)
    require(
        output_range in ("running", "batch"),
        f"output_range must be 'running' or 'batch' (got {output_range!r})",
    )
    if seed is None:
        model = _ARCHITECTURES[info.architecture][0]()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _ARCHITECTURES[info.architecture][0]()
    if not info.quantized:
        if bits is not None:
            raise SwimkitError(
                f"bits={bits!r} only applies to quantized models; "
                f"use 'q{info.name}' instead of {name!r}"
            )
        return model
    return quantize(model, info.default_bits if bits is None else bits, output_range)
