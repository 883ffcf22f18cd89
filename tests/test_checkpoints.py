"""Checkpoints: swimkit round trips and the SWIM reference code's saved_B_*.pt files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from swimkit.checkpoints import (
    CHECKPOINT_KIND,
    load_checkpoint,
    load_plain_state_dict,
    plain_state_dict,
    reference_state_dict,
    save_checkpoint,
    weights_digest,
)
from swimkit.errors import SwimkitError
from swimkit.models import MODELS, LeNet, build_model, model_info
from swimkit.quantization import OutputQuantizer, quantization_bits, quantize

REFERENCE_ALIASES = {
    "lenet": "LeNet",
    "convnet": "CIFAR",
    "resnet18": "Res18",
    "resnet18_tiny": "TIN",
    "qlenet": "QLeNet",
    "qconvnet": "QCIFAR",
    "qresnet18": "QRes18",
    "qresnet18_tiny": "QTIN",
}


def fresh(name: str, seed: int = 0) -> nn.Module:
    """A registered model with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = build_model(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def reference_format(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s weights as the reference code saves them.

    Each layer wraps its torch layer as ``op`` (``conv1.op.weight``), conv / linear layers
    carry a ``weightS`` noise tensor, and ResNet shortcuts are called ``shortcut``.
    """
    state: dict[str, Tensor] = {}
    for key, value in plain_state_dict(model).items():
        if ".output_quantizer." in key:
            continue
        module, leaf = key.rsplit(".", 1)
        state[f"{module.replace('downsample', 'shortcut')}.op.{leaf}"] = value.clone()
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            state[f"{name.replace('downsample', 'shortcut')}.weightS"] = torch.full(
                m.weight.shape, 0.01
            )
    return state


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """Plain state without output-quantizer calibration (which reference files lack)."""
    return {k: v for k, v in plain_state_dict(model).items() if ".output_quantizer." not in k}


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def sample(name: str, n: int = 2, seed: int = 1) -> Tensor:
    """A fixed input batch; ResNets get 8x8 images (their adaptive pool allows it) for speed."""
    info = model_info(name)
    shape = (3, 8, 8) if info.architecture.startswith("resnet") else info.input_shape
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def one_line_error(excinfo: pytest.ExceptionInfo[SwimkitError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- reference checkpoints --------------------------------------------------------------


#: The models the original SWIM code trained (the ViT is swimkit's own: no reference file).
REFERENCE_MODELS = [n for n in MODELS.names() if MODELS.get(n).architecture != "vit"]


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_reference_checkpoint_loads_exactly(name: str, tmp_path: Path) -> None:
    """Each reference model's saved_B_*.pt loads exactly, the model told by the file
    name."""
    source = fresh(name, seed=1)
    path = tmp_path / f"saved_B_{REFERENCE_ALIASES[name]}.pt"
    torch.save(reference_format(source), path)

    loaded, info = load_checkpoint(path)  # the model is told by the file name

    assert info["format"] == "reference"
    assert info["model_name"] == name
    assert info["bits"] == model_info(name).default_bits == quantization_bits(loaded)
    assert all(k.endswith(".weightS") for k in info["dropped_keys"])
    assert len(info["dropped_keys"]) == sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) for m in source.modules()
    )
    assert_same_state(model_state(loaded), model_state(source))
    x = sample(name)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), source(x), rtol=0, atol=0)


def test_reference_checkpoint_into_a_given_model(tmp_path: Path) -> None:
    """A reference state dict loads into a given model, its extra entries kept."""
    source = fresh("qlenet", seed=2)
    path = tmp_path / "saved_B_anything.pt"
    torch.save({"state_dict": reference_format(source), "epoch": 5, "acc": 0.91}, path)
    target = build_model("qlenet")
    loaded, info = load_checkpoint(path, model=target)
    assert loaded is target
    assert info["extra"] == {"epoch": 5, "acc": 0.91}
    assert_same_state(model_state(loaded), model_state(source))
    assert not any(bool(m.calibrated) for m in loaded.modules() if isinstance(m, OutputQuantizer))


def test_reference_resnet_with_dataparallel_prefix_linear_head_and_no_step_counter(
    tmp_path: Path,
) -> None:
    """A DataParallel prefix, a linear head and missing step counters are taken."""
    source = fresh("resnet18", seed=3)
    state = {
        "module." + k.replace("fc.op.", "linear.op."): v
        for k, v in reference_format(source).items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "saved_B_Res18.pt"
    torch.save(state, path)
    loaded, _ = load_checkpoint(path)
    expected = model_state(source)
    for key, value in model_state(loaded).items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, expected[key]), key


def test_reference_mapping_of_single_keys() -> None:
    """Reference keys map to swimkit's names; noise tensors are dropped."""
    target = plain_state_dict(build_model("resnet18"))
    mapped, dropped = reference_state_dict(
        {
            "conv1.op.weight": 1,
            "bn1.op.running_mean": 2,
            "bn1.op.num_batches_tracked": 3,
            "layer2.0.shortcut.0.op.weight": 4,
            "layer2.0.shortcut.1.op.running_var": 5,
            "layer1.1.conv2.op.weight": 6,
            "conv1.weightS": 7,
            "conv1.noise": 8,
            "fc.mask": 9,
        },
        target,
    )
    assert mapped == {
        "conv1.weight": 1,
        "bn1.running_mean": 2,
        "bn1.num_batches_tracked": 3,
        "layer2.0.downsample.0.weight": 4,
        "layer2.0.downsample.1.running_var": 5,
        "layer1.1.conv2.weight": 6,
    }
    assert dropped == ["conv1.weightS", "conv1.noise", "fc.mask"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.pop("fc2.op.bias"), "missing keys fc2.bias; unexpected keys (none)"),
        (
            lambda s: s.update({"fc9.op.weight": torch.zeros(1)}),
            "missing keys (none); unexpected keys fc9.weight",
        ),
        (
            lambda s: s.update({"conv1.op.junk": torch.zeros(1)}),
            "unexpected keys conv1.junk",
        ),
        (
            lambda s: s.update({"fc1.op.weight": torch.zeros(120, 400)}),
            "fc1.weight is (120, 400) in the checkpoint but (120, 784) in the model",
        ),
    ],
)
def test_reference_mismatch_is_one_clear_line(change, expected: str, tmp_path: Path) -> None:
    """A file that does not fit is one line naming the keys and shapes."""
    state = reference_format(fresh("lenet"))
    change(state)
    path = tmp_path / "saved_B_LeNet.pt"
    torch.save(state, path)
    with pytest.raises(SwimkitError) as excinfo:
        load_checkpoint(path)
    message = one_line_error(excinfo)
    assert expected in message
    assert "does not fit the LeNet model" in message
    assert "saved for model 'lenet'" in message


def test_long_key_lists_are_truncated(tmp_path: Path) -> None:
    """Long key lists are cut with a count of the rest."""
    path = tmp_path / "saved_B_LeNet.pt"
    torch.save(reference_format(fresh("lenet")), path)
    with pytest.raises(SwimkitError) as excinfo:
        load_checkpoint(path, model=build_model("resnet18"))
    message = one_line_error(excinfo)
    assert "missing keys bn1.weight, bn1.bias, bn1.running_mean" in message
    assert "(+96 more); unexpected keys conv1.bias, conv2.weight" in message
    assert "saved for model 'lenet'" in message  # told by the file name


def test_reference_file_name_without_model_needs_model_name(tmp_path: Path) -> None:
    """A file name that names no model asks for model_name."""
    path = tmp_path / "saved_B_0.pt"
    torch.save(reference_format(fresh("lenet")), path)
    with pytest.raises(SwimkitError, match="pass model_name="):
        load_checkpoint(path)
    model, info = load_checkpoint(path, model_name="LeNet")
    assert info["model_name"] == "lenet"
    assert isinstance(model, LeNet)


def test_parity_fixture_loads(tmp_path: Path, reference_path: Path) -> None:
    """The stored reference run loads into LeNet and into a quantized LeNet."""
    state = torch.load(reference_path, weights_only=True)["state_dict"]
    strict = LeNet()
    strict.load_state_dict(state, strict=True)
    model, info = load_checkpoint(reference_path, model_name="lenet")
    assert_same_state(plain_state_dict(model), dict(state))
    assert info["dropped_keys"] == []
    assert "x" in info["extra"]
    quantized = build_model("qlenet")
    load_plain_state_dict(quantized, state)
    assert_same_state(model_state(quantized), dict(state))


# --- swimkit checkpoints ----------------------------------------------------------------


def test_swimkit_round_trip_float(tmp_path: Path) -> None:
    """A swimkit checkpoint round-trips the weights, optimizer and extras, atomically."""
    model = fresh("lenet").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(sample("lenet")).sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt" / "lenet.pt"
    extra = {"epoch": 3, "accuracy": 0.875, "optimizer": optimizer.state_dict()}
    assert save_checkpoint(path, model, model_name="LeNet", extra=extra) == path
    assert [p.name for p in path.parent.iterdir()] == ["lenet.pt"]  # no temporary left

    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == CHECKPOINT_KIND and raw["model_name"] == "lenet"
    loaded, info = load_checkpoint(path)
    assert isinstance(loaded, LeNet)
    assert info["format"] == "swimkit" and info["model_name"] == "lenet" and info["bits"] is None
    assert info["extra"]["epoch"] == 3 and info["extra"]["accuracy"] == 0.875
    restored = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    restored.load_state_dict(info["extra"]["optimizer"])
    assert_same_state(plain_state_dict(loaded), plain_state_dict(model))
    x = sample("lenet")
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


def calibrate(model: nn.Module, name: str) -> None:
    """Train-mode forwards, which calibrate the output quantizers' running ranges."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(sample(name, n=4, seed=seed))
    model.eval()


@pytest.mark.parametrize("name", ["qlenet", "qresnet18"])
def test_swimkit_round_trip_quantized_keeps_calibration(name: str, tmp_path: Path) -> None:
    """A quantized checkpoint keeps its output quantizers' calibration."""
    model = fresh(name)
    calibrate(model, name)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, model, model_name=name)
    assert all(".parametrizations." not in k for k in torch.load(path)["state_dict"])

    loaded, info = load_checkpoint(path)
    assert info["bits"] == quantization_bits(loaded) == model_info(name).default_bits
    assert_same_state(plain_state_dict(loaded), plain_state_dict(model))
    quantizers = [m for m in loaded.modules() if isinstance(m, OutputQuantizer)]
    assert quantizers and all(bool(q.calibrated) for q in quantizers)
    x = sample(name)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)


def test_quantized_checkpoint_keeps_bits_and_output_range(tmp_path: Path) -> None:
    """The bits and output range travel with the checkpoint."""
    model = build_model("qlenet", bits=3, output_range="batch")
    path = tmp_path / "q.pt"
    save_checkpoint(path, model, model_name="lenet")  # float name, quantized state
    loaded, info = load_checkpoint(path)
    assert info["bits"] == quantization_bits(loaded) == 3
    assert loaded.fc1.output_quantizer.output_range == "batch"


def test_float_checkpoint_into_quantized_model(tmp_path: Path) -> None:
    """A float checkpoint loads into a quantized model, uncalibrated."""
    float_model = fresh("lenet")
    path = tmp_path / "float.pt"
    save_checkpoint(path, float_model, model_name="lenet")

    by_name, info = load_checkpoint(path, model_name="qlenet")
    assert quantization_bits(by_name) == 4 and info["model_name"] == "lenet"
    given, _ = load_checkpoint(path, model=build_model("qlenet", bits=5))
    assert quantization_bits(given) == 5
    for loaded in (by_name, given):
        assert_same_state(model_state(loaded), plain_state_dict(float_model))
        assert not any(
            bool(m.calibrated) for m in loaded.modules() if isinstance(m, OutputQuantizer)
        )
    expected = quantize(copy.deepcopy(float_model), 4).eval()
    x = sample("lenet")
    torch.testing.assert_close(by_name.eval()(x), expected(x), rtol=0, atol=0)


def test_quantized_checkpoint_does_not_fit_a_float_model(tmp_path: Path) -> None:
    """A quantized checkpoint does not fit a float model: one line."""
    path = tmp_path / "q.pt"
    save_checkpoint(path, build_model("qlenet"), model_name="qlenet")
    with pytest.raises(SwimkitError) as excinfo:
        load_checkpoint(path, model=LeNet())
    message = one_line_error(excinfo)
    assert "unexpected keys conv1.output_quantizer.running_max" in message
    assert "saved for model 'qlenet'" in message


def test_plain_state_dict_names() -> None:
    """Plain state dicts use the unparametrized names, and raw ones load too."""
    quantized = build_model("qlenet")
    raw = quantized.state_dict()
    assert "conv1.parametrizations.weight.original" in raw
    plain = plain_state_dict(quantized)
    weights = {k for k in plain if ".output_quantizer." not in k}
    assert weights == set(LeNet().state_dict())
    assert "conv1.output_quantizer.running_max" in plain
    other = build_model("qlenet")
    load_plain_state_dict(other, raw)  # raw parametrized names load as well
    assert_same_state(plain_state_dict(other), plain)


def test_load_plain_state_dict_shape_error_names_the_model() -> None:
    """A shape mismatch names the weight and both shapes."""
    state = plain_state_dict(LeNet())
    state["conv2.weight"] = torch.zeros(16, 6, 5, 5)
    with pytest.raises(SwimkitError) as excinfo:
        load_plain_state_dict(LeNet(), state, saved_for="lenet")
    message = one_line_error(excinfo)
    assert "conv2.weight is (16, 6, 5, 5) in the checkpoint but (16, 6, 3, 3)" in message


# --- bad files --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is one line."""
    with pytest.raises(SwimkitError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_damaged_file(tmp_path: Path) -> None:
    """Damaged, empty and truncated files are one line each."""
    path = tmp_path / "saved_B_LeNet.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SwimkitError, match="trusted=True"):
        load_checkpoint(path)
    with pytest.raises(SwimkitError, match="is not a PyTorch checkpoint; give the file"):
        load_checkpoint(path, trusted=True)
    path.write_bytes(b"")
    with pytest.raises(SwimkitError, match="is not a PyTorch checkpoint; give the file"):
        load_checkpoint(path)
    path.write_bytes(b"PK\x03\x04 cut short")  # a truncated archive
    with pytest.raises(SwimkitError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    """A pickled module loads only with trusted=True."""
    source = fresh("lenet")
    path = tmp_path / "saved_B_LeNet.pt"
    torch.save(source, path)
    with pytest.raises(SwimkitError, match="trusted=True"):
        load_checkpoint(path)
    loaded, _ = load_checkpoint(path, trusted=True)
    assert_same_state(plain_state_dict(loaded), plain_state_dict(source))


def test_not_a_state_dict(tmp_path: Path) -> None:
    """A file that holds no state dict is one line."""
    path = tmp_path / "saved_B_LeNet.pt"
    torch.save({"epoch": 1}, path)
    with pytest.raises(SwimkitError, match="neither a swimkit checkpoint nor a state dict"):
        load_checkpoint(path)


def test_swimkit_checkpoint_of_an_unregistered_model(tmp_path: Path) -> None:
    """A checkpoint of an unregistered model needs the model given."""
    model = nn.Sequential(nn.Linear(3, 2))
    path = tmp_path / "mine.pt"
    save_checkpoint(path, model, model_name="my-mlp")
    with pytest.raises(
        SwimkitError, match="holds 'my-mlp', which is not registered; pass model_name="
    ):
        load_checkpoint(path)
    target = nn.Sequential(nn.Linear(3, 2))
    loaded, info = load_checkpoint(path, model=target)
    assert info["model_name"] == "my-mlp"
    assert_same_state(plain_state_dict(loaded), plain_state_dict(model))


def test_the_weights_digest_follows_the_values_not_the_file(tmp_path) -> None:
    """The same weights give the same digest after a round trip through a file; one value
    changed gives another."""
    model = build_model("lenet")
    save_checkpoint(tmp_path / "m.pt", model, model_name="lenet")
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert weights_digest(loaded) == weights_digest(model)
    with torch.no_grad():
        loaded.fc3.bias[0] += 1e-6
    assert weights_digest(loaded) != weights_digest(model)
