"""Shared fixtures: the reference parity fixture and small models."""

from __future__ import annotations

import copy
import math
import types
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


# --- damaged files: every field of a file swimkit reads, damaged five ways ---------------

DAMAGES = {"wrong type": lambda v: "x" if not isinstance(v, str) else 12345,
           "missing": None, "NaN": lambda v: math.nan, "empty": lambda v: [] if not isinstance(
               v, list) else {}, "out of range": lambda v: -1e9}


def field_paths(obj, prefix=()):
    """Every field path of a JSON-like object (lists: their first item)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from field_paths(v, (*prefix, k))
    elif isinstance(obj, list) and obj and isinstance(obj[0], (dict, list)):
        yield from field_paths(obj[0], (*prefix, 0))


def damaged(obj, path, damage):
    """A copy of ``obj`` with the field at ``path`` damaged (a key of :data:`DAMAGES`)."""
    out = copy.deepcopy(obj)
    node = out
    for key in path[:-1]:
        node = node[key]
    if damage == "missing":
        if isinstance(node, dict):
            del node[path[-1]]
        else:
            node.pop(path[-1])
    else:
        node[path[-1]] = DAMAGES[damage](node[path[-1]])
    return out


@pytest.fixture()
def damages():
    """The ways a field is damaged, every field path of a file, and a damaged copy."""
    return types.SimpleNamespace(kinds=DAMAGES, paths=field_paths, damaged=damaged)


def fuzz_sweep(folder: Path, out: Path) -> list[str]:
    """The toy sweep whose files the damage tests start from."""
    return ["sweep", "--model", "lenet", "--dataset", "fashion-mnist", "--data-dir",
            str(folder / "data"), "--epochs", "1", "--samples", "3", "--out", str(out),
            "--no-progress", "--methods", "magnitude", "--fractions", "0.1", "--sigma", "0.5"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real sweep's files (sweep.json, points.json, the training folder) to damage:
    (folder, output folder, the sweep's arguments)."""
    from swimkit.cli import main

    folder = tmp_path_factory.mktemp("swept")
    make_learnable_mnist(folder / "data", n_train=600, n_test=100)
    out = folder / "o"
    saved = data.locate.SYSTEM_DATA_DIRS
    data.locate.SYSTEM_DATA_DIRS = (folder / "system",)
    try:
        assert main(fuzz_sweep(folder, out)) == 0
    finally:
        data.locate.SYSTEM_DATA_DIRS = saved
    return folder, out, fuzz_sweep(folder, out)


# --- tests that need aihwkit ------------------------------------------------------------


def _aihwkit_models() -> set[str]:
    """The device models the aihwkit interop registers (through its entry point)."""
    from swimkit.devices import DEVICE_MODELS

    return {entry.name for entry in DEVICE_MODELS
            if getattr(entry.build, "__module__", "").startswith("swimkit.interop.aihwkit")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``aihwkit`` every test parametrized by a device model of the aihwkit interop: the
    registry-wide tests read every registered model, and the interop registers its models
    whether aihwkit is installed or not."""
    models = _aihwkit_models()
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(value, str) and value in models for value in params.values()):
            item.add_marker(pytest.mark.aihwkit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test marked ``aihwkit`` that stops because aihwkit is not installed is skipped (the
    same test runs where it is); the others run in full without it."""
    from swimkit.interop.aihwkit._lib import NotInstalled

    try:
        return (yield)
    except NotInstalled as missing:
        if item.get_closest_marker("aihwkit") is None:
            raise
        pytest.skip(str(missing))
