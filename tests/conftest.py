"""Shared fixtures: the reference parity fixture and small models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import swimkit

# A copy of shared/fixtures/reference_lenet.pt travels with the tests.
FIXTURE_CANDIDATES = [
    Path(__file__).resolve().parent / "fixtures" / "reference_lenet.pt",
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference_lenet.pt",
]


@pytest.fixture(scope="session")
def reference_path() -> Path:
    """Where the SWIM reference run on LeNet (design §4) is stored."""
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
