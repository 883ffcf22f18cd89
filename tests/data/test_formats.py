"""The on-disk formats (swimkit.data.formats): MNIST IDX files, CIFAR-10 pickle batches
and the Tiny ImageNet folder, read exactly and refused when damaged or crafted.

Every test builds its own small files in the real formats and never touches the
network or the system's datasets.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from formats import make_cifar, make_mnist, make_tiny, write_idx

from swimkit import data
from swimkit.data import Split, load_dataset, read_idx, reorganize_tiny_imagenet_val
from swimkit.errors import SwimkitError

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)

# --------------------------------------------------------------------------- MNIST / IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_exact(tmp_path: Path, gz: bool):
    """IDX files (gzipped or not) are read exactly into uint8 images and int64 labels."""
    arrays = make_mnist(tmp_path / "d", gz=gz)
    ds = load_dataset("fashion-mnist", tmp_path / "d", download=False)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.mean == (0.0,) and ds.std == (1.0,) and ds.augment is None
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.train.images.shape == (12, 1, 28, 28) and ds.test.images.shape == (5, 1, 28, 28)
    assert np.array_equal(ds.train.images[:, 0].numpy(), arrays["train_images"])
    assert np.array_equal(ds.train.labels.numpy(), arrays["train_labels"])
    assert np.array_equal(ds.test.images[:, 0].numpy(), arrays["test_images"])
    assert np.array_equal(ds.test.labels.numpy(), arrays["test_labels"])


def test_corrupt_idx_files(tmp_path: Path):
    """A wrong magic number, a truncated file and a damaged gzip are one clear error
    each."""
    make_mnist(tmp_path / "d", gz=False)
    images = tmp_path / "d" / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(SwimkitError, match="magic"):
        load_dataset("mnist", tmp_path / "d", download=False)
    images.write_bytes(good[:-10])
    with pytest.raises(SwimkitError, match="truncated"):
        load_dataset("mnist", tmp_path / "d", download=False)
    images.write_bytes(good[:10])
    with pytest.raises(SwimkitError, match="truncated"):
        read_idx(images)
    bad_gz = tmp_path / "x-idx1-ubyte.gz"
    bad_gz.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(SwimkitError, match="cannot read"):
        read_idx(bad_gz)


def test_mismatched_idx_counts(tmp_path: Path):
    """Image and label files of different lengths are refused."""
    make_mnist(tmp_path / "d", gz=False)
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(SwimkitError, match="do not match"):
        load_dataset("mnist", tmp_path / "d", download=False)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_cifar_round_trip(tmp_path: Path, sub: str):
    """CIFAR-10 batches are read exactly, channel-major, train batches in order."""
    written = make_cifar(tmp_path / sub if sub else tmp_path)
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.num_classes == 10 and ds.augment == "crop_flip"
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    assert ds.train.images.shape == (15, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    train_data = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert np.array_equal(ds.train.images.reshape(15, -1).numpy(), train_data)
    assert ds.train.labels.tolist() == train_labels
    assert np.array_equal(ds.test.images.reshape(4, -1).numpy(), written["test_batch"][b"data"])
    assert ds.test.labels.tolist() == written["test_batch"][b"labels"]
    # channel-major rows: the first 1024 bytes of a row are the red plane
    assert np.array_equal(
        ds.test.images[0, 0].reshape(-1).numpy(), written["test_batch"][b"data"][0, :1024]
    )


def test_cifar_missing_and_corrupt(tmp_path: Path):
    """Missing CIFAR files point to --data-dir; a damaged batch is named."""
    with pytest.raises(SwimkitError, match="cifar10 not found.*--data-dir"):
        load_dataset("cifar10", tmp_path, download=False)
    make_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(SwimkitError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, download=False)


class _WritesMarker:
    """Unpickling this calls ``Path.write_text``: what a crafted batch could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_cannot_run_code(tmp_path: Path, protocol: int):
    """A pickled batch that would run code is refused before it runs."""
    make_cifar(tmp_path)
    marker = tmp_path / "marker"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [1],
             b"payload": _WritesMarker(marker)}
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(SwimkitError, match="data_batch_2.*refused to load"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_of_any_protocol_load(tmp_path: Path, protocol: int):
    """Batches pickled with any protocol load."""
    written = make_cifar(tmp_path)
    batch = written["data_batch_1"]
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    ds = load_dataset("cifar10", tmp_path, download=False)
    first = torch.from_numpy(batch[b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(ds.train.images[: len(first)], first)


# --------------------------------------------------------------------------- Tiny ImageNet


def _fingerprints(split: Split) -> set[tuple[int, str]]:
    """(label, hash of image) pairs: compares splits whose order may differ."""
    return {
        (int(y), hashlib.sha1(x.numpy().tobytes()).hexdigest())
        for x, y in zip(split.images, split.labels, strict=True)
    }


def test_tiny_imagenet_original_layout(tmp_path: Path):
    """The original Tiny ImageNet layout is read with its labels, grayscale images as
    three channels."""
    expected = make_tiny(tmp_path / "tiny-imagenet-200")
    ds = load_dataset("tiny-imagenet", tmp_path, download=False)
    assert ds.num_classes == 200 and ds.augment == "crop_flip"
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    assert ds.train.images.shape == (6, 3, 64, 64) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (7, 3, 64, 64)
    assert ds.train.labels.tolist() == expected["train"]
    assert ds.test.labels.tolist() == expected["val"]
    gray = ds.train.images[1]  # the grayscale JPEG: three equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])
    assert not torch.equal(ds.train.images[0][0], ds.train.images[0][1])


def test_tiny_imagenet_reorganized_layout(tmp_path: Path):
    """A validation folder reorganised by class reads the same examples."""
    root = tmp_path / "tiny-imagenet-200"
    make_tiny(root)
    before = load_dataset("TIN", root, download=False)
    (root / data.formats.TINY_CACHE_NAME).unlink()
    assert reorganize_tiny_imagenet_val(root) == 7
    assert reorganize_tiny_imagenet_val(root) == 0  # idempotent
    assert not (root / "val" / "images").exists()
    assert len(list((root / "val" / "n01000000" / "images").glob("*.JPEG"))) == 2
    after = load_dataset("TIN", root, download=False)
    assert _fingerprints(after.test) == _fingerprints(before.test)
    assert torch.equal(after.train.images, before.train.images)


def test_tiny_imagenet_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The decoded images are cached, and rebuilt when the files change."""
    decode = data.formats._decode_image
    root = tmp_path / "tiny-imagenet-200"
    make_tiny(root)
    first = load_dataset("tiny-imagenet", tmp_path, download=False)
    assert (root / data.formats.TINY_CACHE_NAME).is_file()
    assert not list(root.glob("*.tmp"))

    def must_not_decode(path):
        raise AssertionError(f"decoded {path} although the cache is valid")

    monkeypatch.setattr(data.formats, "_decode_image", must_not_decode)
    second = load_dataset("tiny-imagenet", tmp_path, download=False)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    monkeypatch.setattr(data.formats, "_decode_image", decode)
    shutil.copy(root / "val" / "images" / "val_0.JPEG", root / "val" / "images" / "val_9.JPEG")
    with (root / "val" / "val_annotations.txt").open("a") as f:
        f.write("val_9.JPEG\tn02000000\t0\t0\t63\t63\n")
    third = load_dataset("tiny-imagenet", tmp_path, download=False)  # files changed: rebuilt
    assert len(third.test) == 8 and third.test.labels[-1].item() == 1


def test_tiny_imagenet_missing_annotation(tmp_path: Path):
    """A validation image without an annotation is named."""
    root = tmp_path / "tiny-imagenet-200"
    make_tiny(root)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01000000\n")
    with pytest.raises(SwimkitError, match="val_1.JPEG"):
        load_dataset("tiny-imagenet", root, download=False)
