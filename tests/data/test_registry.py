"""The registry of datasets (swimkit.data.DATASETS): names and aliases, and every
registered loader reading small files written in its own on-disk format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from formats import make_cifar, make_mnist, make_tiny

from swimkit.data import DATASETS, Dataset, load_dataset, register_dataset
from swimkit.errors import SwimkitError

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)

#: How to write a few examples of each registered dataset in its on-disk format, and how
#: many train and test images that gives.
WRITERS = {
    "mnist": (lambda root: make_mnist(root), (12, 5)),
    "fashion-mnist": (lambda root: make_mnist(root), (12, 5)),
    "cifar10": (lambda root: make_cifar(root), (15, 4)),
    "tiny-imagenet": (lambda root: make_tiny(root / "tiny-imagenet-200"), (6, 7)),
}


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_reads_its_own_format(tmp_path: Path, name: str):
    """Each loader reads small files in its format into a Dataset of uint8 images and
    int64 labels below its class count, with a mean and std per channel (a dataset
    registered later needs a writer here, in tests/formats.py's way)."""
    if name not in WRITERS:
        pytest.fail(f"dataset {name!r} has no writer of its on-disk format in WRITERS")
    write, (n_train, n_test) = WRITERS[name]
    write(tmp_path)
    ds = load_dataset(name, tmp_path, download=False)
    assert isinstance(ds, Dataset) and ds.name == name
    assert (len(ds.train), len(ds.test)) == (n_train, n_test)
    channels = ds.image_shape[0]
    assert len(ds.mean) == len(ds.std) == channels
    assert ds.augment in (None, "crop_flip")
    for split in (ds.train, ds.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert tuple(split.images.shape[1:]) == ds.image_shape
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < ds.num_classes


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_missing_is_one_line(tmp_path: Path, name: str):
    """Without its files and without download, each loader says in one line that the
    dataset was not found in the folder given."""
    with pytest.raises(SwimkitError) as info:
        load_dataset(name, tmp_path / "empty", download=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name} not found")
    assert str(tmp_path / "empty") in message


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_has_help_and_is_found_by_its_aliases(name: str):
    """Each entry has a one-line help, and each alias resolves to it."""
    entry = DATASETS.get(name)
    assert entry.help and "\n" not in entry.help and callable(entry.loader)
    for alias in (name, *entry.aliases, name.upper()):
        assert DATASETS.canonical(alias) == name


def test_a_loader_from_outside_is_checked():
    """A loader must be callable, and what it returns must be a Dataset."""
    with pytest.raises(SwimkitError, match="must be callable"):
        register_dataset("not-callable", "nope")
    register_dataset("returns-none", lambda data_dir, download: None, help="a test's toy")
    try:
        with pytest.raises(SwimkitError, match="returned NoneType, not a swimkit.data.Dataset"):
            load_dataset("returns-none")
    finally:
        DATASETS.remove("returns-none")
    assert "returns-none" not in DATASETS.names()


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("MNIST", "mnist"),
        ("fashion_mnist", "fashion-mnist"),
        ("fmnist", "fashion-mnist"),
        ("FashionMNIST", "fashion-mnist"),
        ("CIFAR", "cifar10"),
        ("cifar-10", "cifar10"),
        ("CIFAR10", "cifar10"),
        ("TIN", "tiny-imagenet"),
        ("tinyimagenet", "tiny-imagenet"),
        ("tiny_imagenet", "tiny-imagenet"),
    ],
)
def test_aliases(tmp_path: Path, alias: str, canonical: str):
    """Every alias of the built-in datasets loads the canonical one."""
    with pytest.raises(SwimkitError) as info:
        load_dataset(alias, tmp_path, download=False)
    assert str(info.value).startswith(f"{canonical} not found")


def test_unknown_name_lists_choices():
    """An unknown dataset lists the registered ones."""
    with pytest.raises(SwimkitError, match="mnist, fashion-mnist, cifar10, tiny-imagenet"):
        load_dataset("imagenet-1k")
