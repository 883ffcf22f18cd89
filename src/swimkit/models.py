"""The SWIM reference's models as plain ``torch.nn`` modules, and a registry of their names.

The models hold only standard layers (``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``,
``nn.LayerNorm``, ``nn.MultiheadAttention``);
quantization is attached from outside with :func:`swimkit.quantization.quantize`, so a
quantized model keeps the same layers and state-dict names. The convolutional nets use
3x3 convolutions with padding 1 (ResNet's 1x1 shortcut convolutions aside) and ReLU; the
ViT patches, attention and GELU. No forward pass has data-dependent control flow, so
``torch.fx`` can trace them.

Layer attribute names follow the reference checkpoints (``conv1``, ``fc1``, ...) and, for
ResNet-18, torchvision (``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import SwimkitError, require
from .quantization import OutputRange, quantize
from .registry import Entry, Registry


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
    """LeNet for 1x28x28 inputs: conv 1->6, pool, conv 6->16, pool, fc 784->120->84->10
    (other image sizes: fc1 takes what the two pools leave)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28
                 ) -> None:
        side = image_size // 4
        super().__init__(in_channels, [[6], [16]], [16 * side * side, 120, 84, num_classes])


class ConvNet(ConvPoolMLP):
    """The reference's CIFAR-10 network for 3x32x32 inputs (six convs, three pools, 3 fcs;
    other image sizes: fc1 takes what the three pools leave, 256 x 3 x 3 for 28 x 28)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32
                 ) -> None:
        side = image_size // 8
        super().__init__(
            in_channels,
            [[64, 64], [128, 128], [256, 256]],
            [256 * side * side, 1024, 1024, num_classes],
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

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 image_size: int | None = None) -> None:
        super().__init__()  # any image_size: the average pool adapts
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


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block: attention and an MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """A small vision transformer for 28x28 images, laid out like torchvision's ViT.

    Patches of ``patch`` x ``patch`` pixels (a strided convolution, ``conv_proj``), a class
    token and learned positional embeddings, ``depth`` pre-norm encoder blocks of width
    ``dim`` with ``heads`` heads (``nn.MultiheadAttention``) and an MLP of ``mlp_dim``, a
    final LayerNorm and a linear head on the class token. On a crossbar: ``conv_proj``,
    every block's packed q, k, v projection, ``out_proj`` and MLP, and the head.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 patch: int = 7, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_dim: int = 128) -> None:
        super().__init__()
        require(image_size % patch == 0, f"image_size {image_size} is not a multiple of the "
                                         f"patch size {patch}")
        tokens = (image_size // patch) ** 2
        self.conv_proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_dim) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        token = self.class_token.expand(x.shape[0], -1, -1)
        x = self.blocks(torch.cat([token, x], dim=1) + self.pos_embedding)
        return self.head(self.ln(x[:, 0]))


def resnet18_tiny(num_classes: int = 200, in_channels: int = 3, image_size: int = 64
                  ) -> ResNet18:
    """ResNet-18 for Tiny ImageNet (3x64x64 inputs, 200 classes)."""
    return ResNet18(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@dataclass(frozen=True)
class ModelInfo(Entry):
    """A registered model: how to build it and what the reference trained it on.

    ``architecture`` is the float model's name (``"lenet"`` for ``"qlenet"``);
    ``default_bits`` is the bit width :func:`build_model` quantizes to (None: float);
    ``adapts``: its builder takes ``in_channels`` and ``image_size``, so it is built for
    another dataset's square images too.
    """

    architecture: str = ""
    dataset: str = ""
    input_shape: tuple[int, ...] = ()
    num_classes: int = 10
    quantized: bool = False
    default_bits: int | None = None
    optimizer: str = "adam"
    builder: Callable[[], nn.Module] | None = field(default=None, compare=False, repr=False)
    adapts: bool = False


MODELS: Registry[ModelInfo] = Registry("model", entry_point_group="swimkit.models")
"""Every registered model by canonical name (aliases, case-insensitive, included)."""


def register_model(name: str, builder: Callable[[], nn.Module], *,
                   quantized_bits: int | None = None, **described: Any) -> ModelInfo:
    """Register a model: ``builder()`` returns a fresh ``nn.Module``.

    ``described`` are the :class:`ModelInfo` fields: ``dataset`` (the one it is trained on
    by default) and ``input_shape`` (both required), ``num_classes`` (10), ``optimizer``
    ("adam" or "sgd"), ``aliases``, ``help``. With ``quantized_bits`` the quantized
    variant ``"q" + name`` is registered too (its aliases are "Q" + each alias).
    """
    known = {"dataset", "input_shape", "num_classes", "optimizer", "aliases", "help", "adapts"}
    unknown = sorted(set(described) - known)
    require(not unknown, f"model {name!r}: unknown field {unknown[:1]}; give "
                         f"{', '.join(sorted(known))}")
    require("dataset" in described and "input_shape" in described,
            f"model {name!r}: give its dataset= and input_shape=")
    dataset, input_shape = described["dataset"], described["input_shape"]
    num_classes = described.get("num_classes", 10)
    optimizer = described.get("optimizer", "adam")
    aliases, help = tuple(described.get("aliases", ())), described.get("help", "")
    require(callable(builder), f"the builder of model {name!r} must be callable")
    require(isinstance(num_classes, int) and not isinstance(num_classes, bool)
            and num_classes >= 2, f"model {name!r}: num_classes must be an integer >= 2 "
                                  f"(got {num_classes!r})")
    require(len(tuple(input_shape)) >= 1 and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape),
        f"model {name!r}: input_shape must be positive integers, e.g. (1, 28, 28) "
        f"(got {input_shape!r})")
    require(optimizer in ("adam", "sgd"),
            f"model {name!r}: optimizer must be 'adam' or 'sgd' (got {optimizer!r})")
    common = {"architecture": name, "dataset": dataset, "input_shape": tuple(input_shape),
              "num_classes": num_classes, "optimizer": optimizer, "builder": builder,
              "adapts": bool(described.get("adapts", False))}
    info = MODELS.add(ModelInfo(name=name, aliases=tuple(aliases), help=help, **common))
    if quantized_bits is not None:
        MODELS.add(ModelInfo(
            name=f"q{name}", aliases=tuple(f"Q{a}" if a[:1].isupper() else f"q{a}"
                                           for a in aliases),
            help=f"{help}, quantized to {quantized_bits} bits" if help else "",
            quantized=True, default_bits=quantized_bits, **common))
    return info


register_model("lenet", LeNet, adapts=True, dataset="fashion-mnist", input_shape=(1, 28, 28),
               quantized_bits=4, aliases=("LeNet",),
               help="conv 1-6, pool, conv 6-16, pool, fc 784-120-84-10")
register_model("convnet", ConvNet, adapts=True, dataset="cifar10", input_shape=(3, 32, 32),
               quantized_bits=6, aliases=("CIFAR",),
               help="2x64, 2x128, 2x256 conv (3x3), pools, fc 4096-1024-1024-10")
register_model("resnet18", ResNet18, adapts=True, dataset="cifar10", input_shape=(3, 32, 32),
               optimizer="sgd", quantized_bits=8, aliases=("Res18",),
               help="BasicBlock [2,2,2,2], 3x3 stem, no max-pool")
register_model("resnet18_tiny", resnet18_tiny, adapts=True, dataset="tiny-imagenet",
               input_shape=(3, 64, 64), num_classes=200, optimizer="sgd", quantized_bits=8,
               aliases=("TIN", "resnet18-tiny"),
               help="ResNet-18 for Tiny ImageNet: 200 classes, 64x64 inputs")
register_model("vit", ViT, adapts=True, dataset="fashion-mnist", input_shape=(1, 28, 28),
               quantized_bits=8, aliases=("ViT",),
               help="vision transformer: 7x7 patches, 4 blocks of width 64, 4 heads, MLP 128")


def canonical_model_name(name: str) -> str:
    """The canonical registry name for ``name`` (e.g. ``"QRes18"`` -> ``"qresnet18"``)."""
    return MODELS.canonical(name)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model, by any accepted name."""
    return MODELS.get(name)


def build_model(
    name: str,
    *,
    bits: int | None = None,
    output_range: OutputRange = "running",
    seed: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Build a registered model with fresh weights.

    Quantized variants (``q...``) are quantized with ``bits`` (default: the reference's
    bit width) and ``output_range`` (see :func:`swimkit.quantization.quantize`). With
    ``seed`` the initial weights depend on it alone (the global RNG is left untouched).
    ``input_shape`` (channels, height, width; None: the registered one) builds a model
    that adapts for other images: the ConvNet and ResNet-18 for Fashion-MNIST's 1 x 28 x
    28 take one-channel stems (and the ConvNet's fc1 what its pools leave).
    """
    info = model_info(name)
    require(
        output_range in ("running", "batch"),
        f"output_range must be 'running' or 'batch' (got {output_range!r})",
    )
    shape = _shape_arguments(info, input_shape)
    if seed is None:
        model = info.builder(**shape)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = info.builder(**shape)
    if not isinstance(model, nn.Module):
        raise SwimkitError(f"the builder of model {info.name!r} returned "
                           f"{type(model).__name__}, not a torch.nn.Module")
    if not info.quantized:
        if bits is not None:
            raise SwimkitError(
                f"bits={bits!r} only applies to quantized models; "
                f"use 'q{info.name}' instead of {name!r}"
            )
        return model
    return quantize(model, info.default_bits if bits is None else bits, output_range)


def _shape_arguments(info: ModelInfo, input_shape: Sequence[int] | None) -> dict[str, int]:
    """What the builder takes to fit ``input_shape`` (nothing for the registered one)."""
    if input_shape is None or tuple(input_shape) == tuple(info.input_shape):
        return {}
    shape = tuple(int(n) for n in input_shape)
    require(info.adapts, f"model {info.name} takes {info.input_shape} inputs only (got "
                         f"{shape}); pick a matching --model or --dataset")
    require(len(shape) == 3 and shape[1] == shape[2] and min(shape) >= 1,
            f"model {info.name} adapts to square images (channels, size, size); got {shape}")
    return {"in_channels": shape[0], "image_size": shape[1]}


# --- what swimkit needs of any model ------------------------------------------------------


def require_logits(output: object) -> Tensor:
    """``output`` if it is one tensor of logits; else the one error every engine,
    evaluation and training give for a model returning a tuple, a dict or anything else."""
    if isinstance(output, Tensor):
        return output
    kind = type(output).__name__
    hint = " (e.g. out[0])" if isinstance(output, (tuple, list)) else (
        " (e.g. out['logits'])" if isinstance(output, dict) else "")
    raise SwimkitError(
        f"the model returns a {kind}, not one tensor of logits shaped (batch, classes): "
        f"swimkit's sensitivity engines, Monte-Carlo and training all need that; wrap the "
        f"model so that forward returns the logits{hint}")
