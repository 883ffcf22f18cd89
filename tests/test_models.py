"""The models (swimkit.models) match the SWIM reference's layer shapes exactly, the registry
resolves names, and every registered model builds, runs and passes the swim graph check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from swimkit.data import DATASETS
from swimkit.errors import SwimkitError
from swimkit.mapping import device_weights
from swimkit.models import (
    MODELS,
    ConvNet,
    LeNet,
    ModelInfo,
    ResNet18,
    build_model,
    canonical_model_name,
    model_info,
    require_logits,
    resnet18_tiny,
)
from swimkit.quantization import is_quantized, quantization_bits
from swimkit.sensitivity.swim import CurvaturePass, trace
from swimkit.training import OPTIMIZERS


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(m.weight.shape)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


# --- expected shapes: the SWIM reference's LeNet, ConvNet and ResNet-18 -----------------

LENET_SHAPES = {
    "conv1": (6, 1, 3, 3),
    "conv2": (16, 6, 3, 3),
    "fc1": (120, 784),
    "fc2": (84, 120),
    "fc3": (10, 84),
}
CONVNET_SHAPES = {
    "conv1": (64, 3, 3, 3),
    "conv2": (64, 64, 3, 3),
    "conv3": (128, 64, 3, 3),
    "conv4": (128, 128, 3, 3),
    "conv5": (256, 128, 3, 3),
    "conv6": (256, 256, 3, 3),
    "fc1": (1024, 4096),
    "fc2": (1024, 1024),
    "fc3": (10, 1024),
}


def resnet18_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    shapes = {"conv1": (64, 3, 3, 3)}
    in_ch = 64
    for layer, ch in zip((1, 2, 3, 4), (64, 128, 256, 512), strict=True):
        for block in (0, 1):
            prefix = f"layer{layer}.{block}"
            shapes[f"{prefix}.conv1"] = (ch, in_ch, 3, 3)
            shapes[f"{prefix}.conv2"] = (ch, ch, 3, 3)
            if in_ch != ch:
                shapes[f"{prefix}.downsample.0"] = (ch, in_ch, 1, 1)
            in_ch = ch
    shapes["fc"] = (num_classes, 512)
    return shapes


def test_lenet_parameter_count_and_shapes() -> None:
    """LeNet has the reference's layer shapes and 106,154 parameters."""
    model = LeNet()
    expected = (
        6 * 1 * 9 + 6
        + 16 * 6 * 9 + 16
        + 784 * 120 + 120
        + 120 * 84 + 84
        + 84 * 10 + 10
    )  # fmt: skip
    assert expected == 106_154
    assert n_params(model) == expected
    assert weight_shapes(model) == LENET_SHAPES
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_convnet_parameter_count_and_shapes() -> None:
    """ConvNet has the reference's layer shapes and parameter count."""
    model = ConvNet()
    expected = (
        64 * 3 * 9 + 64
        + 64 * 64 * 9 + 64
        + 128 * 64 * 9 + 128
        + 128 * 128 * 9 + 128
        + 256 * 128 * 9 + 256
        + 256 * 256 * 9 + 256
        + 4096 * 1024 + 1024
        + 1024 * 1024 + 1024
        + 1024 * 10 + 10
    )  # fmt: skip
    assert n_params(model) == expected
    assert weight_shapes(model) == CONVNET_SHAPES
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def resnet18_count(num_classes: int) -> int:
    bn = 2  # weight and bias per channel
    stem = 64 * 3 * 9 + bn * 64
    layer1 = 4 * (64 * 64 * 9 + bn * 64)
    layer2 = (128 * 64 * 9 + bn * 128) + 3 * (128 * 128 * 9 + bn * 128) + (128 * 64 + bn * 128)
    layer3 = (256 * 128 * 9 + bn * 256) + 3 * (256 * 256 * 9 + bn * 256) + (256 * 128 + bn * 256)
    layer4 = (512 * 256 * 9 + bn * 512) + 3 * (512 * 512 * 9 + bn * 512) + (512 * 256 + bn * 512)
    fc = 512 * num_classes + num_classes
    return stem + layer1 + layer2 + layer3 + layer4 + fc


def test_resnet18_parameter_count_and_shapes() -> None:
    """ResNet-18 is the CIFAR variant: 11,173,962 parameters, a 3x3 stride-1 stem, no
    max-pool."""
    model = ResNet18()
    assert resnet18_count(10) == 11_173_962  # the well-known CIFAR ResNet-18 size
    assert n_params(model) == resnet18_count(10)
    assert weight_shapes(model) == resnet18_shapes(10)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 8 * 2 + 3
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.conv1.stride == (1, 1)


def test_resnet18_tiny_parameter_count_and_shapes() -> None:
    """The Tiny ImageNet ResNet-18 differs only in its 200-class head."""
    model = resnet18_tiny()
    assert n_params(model) == resnet18_count(200)
    assert weight_shapes(model) == resnet18_shapes(200)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def test_all_convs_are_3x3_pad_1_except_shortcuts() -> None:
    """Every convolution but the 1x1 shortcuts is 3x3 with padding 1."""
    for name in ("lenet", "convnet", "resnet18"):
        for layer_name, m in build_model(name).named_modules():
            if isinstance(m, nn.Conv2d) and "downsample" not in layer_name:
                assert m.kernel_size == (3, 3) and m.padding == (1, 1), (name, layer_name)


def test_lenet_forward_order_matches_functional_definition() -> None:
    """relu(conv1) -> pool -> relu(conv2) -> pool -> flatten -> relu(fc1) -> relu(fc2) -> fc3."""
    torch.manual_seed(0)
    model = LeNet().eval()
    x = torch.randn(3, 1, 28, 28)
    h = F.max_pool2d(F.relu(model.conv1(x)), 2)
    h = F.max_pool2d(F.relu(model.conv2(h)), 2).flatten(1)
    h = F.relu(model.fc2(F.relu(model.fc1(h))))
    torch.testing.assert_close(model(x), model.fc3(h), rtol=0, atol=0)


def test_lenet_in_channels_and_classes() -> None:
    """LeNet takes other input channels and class counts."""
    model = LeNet(num_classes=5, in_channels=3)
    assert model.conv1.weight.shape == (6, 3, 3, 3)
    assert model(torch.randn(1, 3, 28, 28)).shape == (1, 5)


@pytest.mark.parametrize("name", ["lenet", "convnet", "resnet18", "vit"])
def test_models_are_fx_traceable(name: str) -> None:
    """The models trace with torch.fx and the traced graph computes the same."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    shape = (3, 8, 8) if name == "resnet18" else model_info(name).input_shape  # small: speed
    x = torch.randn(2, *shape)
    torch.testing.assert_close(traced(x), model(x))


# --- registry ---------------------------------------------------------------------------


def test_registry_names_and_infos() -> None:
    """The registry holds the reference's models and their settings."""
    assert set(MODELS.names()) == {
        "lenet",
        "convnet",
        "resnet18",
        "resnet18_tiny",
        "qlenet",
        "qconvnet",
        "qresnet18",
        "qresnet18_tiny",
        "vit",
        "qvit",
    }
    assert model_info("qlenet") == ModelInfo(
        name="qlenet",
        aliases=("QLeNet",),
        help="conv 1-6, pool, conv 6-16, pool, fc 784-120-84-10, quantized to 4 bits",
        architecture="lenet",
        dataset="fashion-mnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        quantized=True,
        default_bits=4,
        optimizer="adam",
    )
    assert model_info("convnet").dataset == "cifar10"
    assert model_info("convnet").optimizer == "adam"
    assert model_info("qconvnet").default_bits == 6
    assert model_info("resnet18").optimizer == "sgd"
    assert model_info("qresnet18").default_bits == 8
    assert model_info("resnet18_tiny").dataset == "tiny-imagenet"
    assert model_info("resnet18_tiny").input_shape == (3, 64, 64)
    assert model_info("resnet18_tiny").num_classes == 200
    assert model_info("lenet").default_bits is None


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("LeNet", "lenet"),
        ("CIFAR", "convnet"),
        ("Res18", "resnet18"),
        ("TIN", "resnet18_tiny"),
        ("QLeNet", "qlenet"),
        ("QCIFAR", "qconvnet"),
        ("QRes18", "qresnet18"),
        ("QTIN", "qresnet18_tiny"),
        ("lenet", "lenet"),
        ("LENET", "lenet"),
        ("qres18", "qresnet18"),
        ("cifar", "convnet"),
        ("resnet18-tiny", "resnet18_tiny"),
        ("ResNet18_Tiny", "resnet18_tiny"),
        ("qresnet18-tiny", "qresnet18_tiny"),
    ],
)
def test_aliases(alias: str, canonical: str) -> None:
    """The reference's names and spellings resolve to the registry's names."""
    assert canonical_model_name(alias) == canonical


def test_unknown_model_name_is_one_clear_line() -> None:
    """An unknown model is one line listing the choices."""
    with pytest.raises(SwimkitError, match="unknown model 'vgg16'; choose one of") as err:
        canonical_model_name("vgg16")
    assert "\n" not in str(err.value)
    assert "qresnet18_tiny" in str(err.value)


@pytest.mark.parametrize(("name", "bits"), [("qlenet", 4), ("qconvnet", 6), ("QRes18", 8),
                                           ("qvit", 8)])
def test_quantized_variants_use_the_reference_bits(name: str, bits: int) -> None:
    """The quantized variants use the reference's bit widths."""
    model = build_model(name)
    assert is_quantized(model)
    assert quantization_bits(model) == bits


def test_build_model_bits_and_output_range() -> None:
    """build_model sets the bits and output range of a quantized model and refuses bits
    for a float one."""
    model = build_model("qlenet", bits=3, output_range="batch")
    assert quantization_bits(model) == 3
    assert model.fc1.output_quantizer.output_range == "batch"
    assert type(model) is LeNet
    assert not is_quantized(build_model("lenet"))
    with pytest.raises(SwimkitError, match="use 'qlenet'"):
        build_model("lenet", bits=4)
    with pytest.raises(SwimkitError, match="output_range"):
        build_model("qlenet", output_range="nope")  # type: ignore[arg-type]


def test_quantized_model_keeps_parameter_count_and_outputs_shape() -> None:
    """Quantizing keeps the parameters and the output shape."""
    model = build_model("qconvnet")
    assert n_params(model) == n_params(ConvNet())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_seeded_build_is_reproducible_and_leaves_global_rng():
    """A seeded build is reproducible and leaves the global RNG alone."""
    state = torch.random.get_rng_state()
    a = build_model("lenet", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_model("lenet", seed=3)
    c = build_model("lenet", seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


# --- every registered model ----------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_builds_and_gives_logits(name: str) -> None:
    """Each model builds (seeded: the same weights twice), and a forward on its input
    shape gives finite logits, one per class; a quantized one has its default bits."""
    info = model_info(name)
    model = build_model(name, seed=0).eval()
    again = build_model(name, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values(), strict=True))
    x = torch.randn(2, *info.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = require_logits(model(x))
    assert logits.shape == (2, info.num_classes) and bool(torch.isfinite(logits).all())
    assert is_quantized(model) == info.quantized
    assert quantization_bits(model) == (info.default_bits if info.quantized else None)
    assert info.optimizer in OPTIMIZERS and info.dataset in DATASETS.names()


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_passes_the_swim_graph_check(name: str) -> None:
    """The swim engine has a rule for every op on each model's path to its logits, and
    each model has device weights."""
    model = build_model(name, seed=0).eval()
    weights = device_weights(model)
    assert weights
    run = CurvaturePass(model, trace(model), weights)
    assert run.rules and run.carries_gradient


@pytest.mark.parametrize("name", [n for n in MODELS.names() if not model_info(n).quantized])
def test_every_float_model_has_a_quantized_variant_that_builds(name: str) -> None:
    """For each float architecture a quantized entry exists and builds at its bits."""
    info = model_info(name)
    variants = [n for n in MODELS.names() if model_info(n).quantized
                and model_info(n).architecture == info.architecture
                and model_info(n).num_classes == info.num_classes]
    assert len(variants) == 1, variants
    quantized = build_model(variants[0])
    assert quantization_bits(quantized) == model_info(variants[0]).default_bits
    assert type(quantized) is type(build_model(name))
