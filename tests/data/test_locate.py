"""Where dataset files are looked for (swimkit.data.locate): data_dir and its usual
layouts, the system folders, the download of last resort, and the message when nothing
is found."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from formats import make_mnist

from swimkit import data
from swimkit.data import load_dataset
from swimkit.errors import SwimkitError


@pytest.mark.parametrize(
    ("name", "sub"),
    [
        ("fashion-mnist", "FashionMNIST/raw"),
        ("mnist", "MNIST/raw"),
        ("fashion-mnist", "fashion-mnist"),
        ("mnist", "mnist"),
    ],
)
def test_torchvision_and_named_layouts(tmp_path: Path, name: str, sub: str):
    """torchvision's raw layout and a folder named for the dataset are both found."""
    arrays = make_mnist(tmp_path / sub, gz=False)
    ds = load_dataset(name, tmp_path, download=False)
    assert np.array_equal(ds.train.labels.numpy(), arrays["train_labels"])


def test_search_order(tmp_path: Path):
    """data_dir itself, then its torchvision layout, then <name>/; without data_dir the
    system folder. An explicit data_dir never falls back to the system copy."""
    make_mnist(tmp_path / "system" / "fashion-mnist", seed=4)
    make_mnist(tmp_path / "d" / "fashion-mnist", seed=3)
    make_mnist(tmp_path / "d" / "FashionMNIST" / "raw", seed=2)
    make_mnist(tmp_path / "d", seed=1)

    def first_labels(data_dir: Path | None) -> np.ndarray:
        return load_dataset("fashion-mnist", data_dir, download=False).train.labels.numpy()

    expected = [make_mnist(tmp_path / f"ref{s}", seed=s)["train_labels"] for s in range(1, 5)]
    assert np.array_equal(first_labels(tmp_path / "d"), expected[0])
    for f in (tmp_path / "d").glob("*.gz"):
        f.unlink()
    assert np.array_equal(first_labels(tmp_path / "d"), expected[1])
    shutil.rmtree(tmp_path / "d" / "FashionMNIST")
    assert np.array_equal(first_labels(tmp_path / "d"), expected[2])
    shutil.rmtree(tmp_path / "d" / "fashion-mnist")
    with pytest.raises(SwimkitError, match="fashion-mnist not found"):
        first_labels(tmp_path / "d")
    assert np.array_equal(first_labels(None), expected[3])


@pytest.mark.parametrize("where", ["missing", "empty", "incomplete"])
def test_explicit_data_dir_is_used_or_the_load_fails(tmp_path: Path, where: str):
    """An explicit data_dir that lacks the files fails, never falling back to the system
    copy."""
    make_mnist(tmp_path / "system" / "fashion-mnist", seed=9)
    folder = tmp_path / "d"
    if where != "missing":
        folder.mkdir()
    if where == "incomplete":
        make_mnist(folder)
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SwimkitError, match="fashion-mnist not found") as info:
        load_dataset("fmnist", folder, download=False)
    assert str(tmp_path / "system") not in str(info.value)
    assert ("does not exist" in str(info.value)) == (where == "missing")


def test_download_is_last_resort_and_its_files_are_read(tmp_path: Path, monkeypatch, isolated):
    """Download runs only when nothing is found, into data_dir or the user cache, and
    its files are read."""
    def fake_download(name: str, root: Path) -> None:
        isolated.append((name, root))
        make_mnist(root / "FashionMNIST" / "raw", seed=5)

    monkeypatch.setattr(data.locate, "download_with_torchvision", fake_download)
    ds = load_dataset("FashionMNIST", tmp_path / "dl", download=True)
    assert isolated == [("fashion-mnist", tmp_path / "dl")]
    assert np.array_equal(
        ds.test.labels.numpy(), make_mnist(tmp_path / "ref", seed=5)["test_labels"]
    )
    load_dataset("FashionMNIST", tmp_path / "dl", download=True)  # now found locally
    assert len(isolated) == 1
    monkeypatch.setattr(data.locate, "download_with_torchvision",
                        lambda n, r: make_mnist(r / "MNIST" / "raw"))
    ds = load_dataset("mnist")  # no data_dir: downloads into, then reads from, the user cache
    assert (data.locate.DEFAULT_CACHE_DIR / "MNIST" / "raw").is_dir() and len(ds.train) == 12


def test_missing_data_message(tmp_path: Path, isolated):
    """The not-found message is one line: where it looked, how to install, why the
    download failed."""
    with pytest.raises(SwimkitError) as info:
        load_dataset("fashion-mnist", tmp_path / "empty")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("fashion-mnist not found")
    assert str(tmp_path / "empty") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    assert "download failed" in message and "no network" in message
    assert isolated == [("fashion-mnist", tmp_path / "empty")]


def test_no_download_when_disabled(tmp_path: Path, isolated):
    """download=False never calls the download."""
    with pytest.raises(SwimkitError, match="download disabled"):
        load_dataset("mnist", tmp_path, download=False)
    assert isolated == []


def test_tiny_imagenet_missing_message(tmp_path: Path):
    """Missing Tiny ImageNet says where to get the zip."""
    with pytest.raises(SwimkitError, match="tiny-imagenet-200.zip"):
        load_dataset("tiny-imagenet", tmp_path, download=False)
