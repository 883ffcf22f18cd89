"""Shared fixtures: the reference parity fixture and small models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from formats import make_learnable_mnist

import swimkit
from swimkit import data

# The SWIM reference run on LeNet, stored with the tests.
FIXTURE_CANDIDATES = [Path(__file__).resolve().parent / "fixtures" / "reference_lenet.pt"]


@pytest.fixture(scope="session")
def reference_path() -> Path:
    """Where the SWIM reference run on LeNet is stored."""
    for path in FIXTURE_CANDIDATES:
        if path.is_file():
            return path
    pytest.fail(f"parity fixture not found in {[str(p) for p in FIXTURE_CANDIDATES]}")


@pytest.fixture(scope="session")
def reference(reference_path: Path) -> dict:
    """The SWIM reference run on LeNet: weights, data, h, g, S, masks."""
    return torch.load(reference_path, map_location="cpu", weights_only=False)


@pytest.fixture()
def small_models() -> list:
    """(name, model, input shape) for swimkit's own models, float and quantized."""
    torch.manual_seed(0)
    out = []
    for name, shape in (
        ("lenet", (1, 28, 28)),
        ("qlenet", (1, 28, 28)),
        ("convnet", (3, 32, 32)),
        ("qconvnet", (3, 32, 32)),
        ("resnet18", (3, 32, 32)),
        ("qresnet18", (3, 32, 32)),
    ):
        out.append((name, swimkit.models.build_model(name).eval(), shape))
    return out


@pytest.fixture()
def fmnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small learnable Fashion-MNIST-shaped dataset; the system data and network are off."""
    folder = tmp_path / "data"
    make_learnable_mnist(folder, n_train=3000, n_test=300)

    def no_network(name: str, root: Path) -> None:
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(data.locate, "download_with_torchvision", no_network)
    monkeypatch.setattr(data.locate, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(data.locate, "SYSTEM_DATA_DIRS", (tmp_path / "system",))
    return folder


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture):
    """The command line run in this process: ``cli(*args)`` -> (exit status, stdout,
    stderr); argparse's own exits (--help, a bad value) give their status too."""
    from swimkit.cli import main

    def run(*args) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as ended:
            code = ended.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture()
def flow_args(fmnist: Path):
    """The flags of a quick flow on the small Fashion-MNIST:
    ``flow_args(out, epochs=2, samples=4)``."""

    def args(out: Path, epochs: int = 2, samples: int = 4) -> list[str]:
        return ["--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--epochs",
                str(epochs), "--samples", str(samples), "--out", str(out), "--no-progress",
                "--sigma", "0.5"]

    return args
