"""Dataset loading from the real on-disk formats, and batching / augmentation.

Every test builds its own small files in the real formats (IDX, CIFAR pickle batches,
a Tiny ImageNet folder of JPEGs) and never touches the network or the system's datasets,
except the one ``realdata`` test, which reads the installed Fashion-MNIST.
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
from swimkit.data import (
    Batches,
    Dataset,
    Split,
    augment_crop_flip,
    batches,
    load_dataset,
    normalize,
    preload,
    read_idx,
    reorganize_tiny_imagenet_val,
)
from swimkit.errors import SwimkitError

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)

@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest):
    """Keep tests off the network, the user's cache and (except realdata) /usr/share/datasets."""
    calls: list[tuple[str, Path]] = []

    def no_network(name: str, root: Path) -> None:
        calls.append((name, root))
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(data.locate, "download_with_torchvision", no_network)
    monkeypatch.setattr(data.locate, "DEFAULT_CACHE_DIR", tmp_path / "user-cache")
    if request.node.get_closest_marker("realdata") is None:
        monkeypatch.setattr(data.locate, "SYSTEM_DATA_DIRS", (tmp_path / "system",))
    return calls


def toy_dataset(images: torch.Tensor, labels: torch.Tensor | None = None, **kw) -> Dataset:
    """A dataset around given images (train and test the same) for batching tests."""
    if labels is None:
        labels = torch.arange(images.shape[0], dtype=torch.int64)
    split = Split(images, labels)
    channels = images.shape[1]
    fields = dict(num_classes=10, mean=(0.0,) * channels, std=(1.0,) * channels, augment=None)
    fields.update(kw)
    return Dataset("toy", split, split, **fields)


# --------------------------------------------------------------------------- MNIST / IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_exact(tmp_path: Path, gz: bool):
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
    with pytest.raises(SwimkitError, match="download disabled"):
        load_dataset("mnist", tmp_path, download=False)
    assert isolated == []


def test_corrupt_idx_files(tmp_path: Path):
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
    make_mnist(tmp_path / "d", gz=False)
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(SwimkitError, match="do not match"):
        load_dataset("mnist", tmp_path / "d", download=False)


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
    with pytest.raises(SwimkitError) as info:
        load_dataset(alias, tmp_path, download=False)
    assert str(info.value).startswith(f"{canonical} not found")


def test_unknown_name_lists_choices():
    with pytest.raises(SwimkitError, match="mnist, fashion-mnist, cifar10, tiny-imagenet"):
        load_dataset("imagenet-1k")


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_cifar_round_trip(tmp_path: Path, sub: str):
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
    root = tmp_path / "tiny-imagenet-200"
    make_tiny(root)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01000000\n")
    with pytest.raises(SwimkitError, match="val_1.JPEG"):
        load_dataset("tiny-imagenet", root, download=False)


def test_tiny_imagenet_missing_message(tmp_path: Path):
    with pytest.raises(SwimkitError, match="tiny-imagenet-200.zip"):
        load_dataset("tiny-imagenet", tmp_path, download=False)


# --------------------------------------------------------------------------- batching


def test_normalisation_values():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    out = normalize(images.contiguous(), mean, std)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 2, 2)
    for i, v in enumerate((0.0, 0.2, 1.0)):
        for c in range(3):
            assert torch.allclose(out[i, c], torch.tensor((v - mean[c]) / std[c]))
    gray = toy_dataset(torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8))
    ((x, y),) = preload(gray.test, gray, 8)
    assert torch.equal(x, torch.tensor([[[[0.0, 128 / 255, 1.0]]]]))


def _numbered(n: int) -> Dataset:
    """Images whose pixels all equal their index, labels equal to the index."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return toy_dataset(images)


def test_batches_order_sizes_and_pairing():
    ds = _numbered(10)
    plain = list(batches(ds.train, ds, 4))
    assert [len(y) for _, y in plain] == [4, 4, 2]
    assert torch.cat([y for _, y in plain]).tolist() == list(range(10))
    shuffled = list(
        batches(ds.train, ds, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    )
    labels = torch.cat([y for _, y in shuffled])
    assert sorted(labels.tolist()) == list(range(10)) and labels.tolist() != list(range(10))
    for x, y in shuffled:  # images stay with their labels
        assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), y)
    again = list(batches(ds.train, ds, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.cat([y for _, y in again]), labels)
    with pytest.raises(SwimkitError):
        next(batches(ds.train, ds, 0))


def test_batches_object_is_reiterable_and_preload():
    ds = _numbered(10)
    loader = Batches(ds.train, ds, 3, shuffle=True, generator=torch.Generator().manual_seed(1))
    assert len(loader) == 4
    epoch1 = torch.cat([y for _, y in loader])
    epoch2 = torch.cat([y for _, y in loader])
    assert sorted(epoch1.tolist()) == sorted(epoch2.tolist()) == list(range(10))
    assert not torch.equal(epoch1, epoch2)  # each pass reshuffles
    held = preload(ds.test, ds, 3, device="cpu")
    assert len(held) == 4
    for (x1, y1), (x2, y2) in zip(held, batches(ds.test, ds, 3), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_augment_only_when_asked_and_defined():
    ds = toy_dataset(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8), augment="crop_flip")
    ((x, _),) = batches(ds.train, ds, 8)
    ((xa, _),) = batches(ds.train, ds, 8, augment=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, normalize(ds.train.images, ds.mean, ds.std))
    assert xa.shape == x.shape and not torch.equal(xa, x)
    plain = toy_dataset(ds.train.images)  # augment None: augment=True changes nothing
    ((xp, _),) = batches(plain.train, plain, 8, augment=True)
    assert torch.equal(xp, x)


def test_crop_flip_shapes_and_reproducibility():
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    a = augment_crop_flip(images, generator=torch.Generator().manual_seed(7))
    b = augment_crop_flip(images, generator=torch.Generator().manual_seed(7))
    c = augment_crop_flip(images, generator=torch.Generator().manual_seed(8))
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_flip_is_a_shifted_possibly_flipped_crop_of_the_padded_image():
    n, pad = 64, 4
    images = torch.randint(1, 256, (n, 2, 6, 7), dtype=torch.uint8)  # no zeros: padding shows
    out = augment_crop_flip(images, padding=pad, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    seen = set()
    for i in range(n):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, dy : dy + 6, dx : dx + 7].flip(-1)
                if flip
                else padded[i, :, dy : dy + 6, dx : dx + 7],
            )
        ]
        assert len(matches) == 1, f"image {i} is not a single crop/flip of its padded input"
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10
    assert (out == 0).any()  # some crops reach into the zero padding
    assert sum(torch.equal(out[i], images[i]) for i in range(n)) < n // 4


def test_subset():
    ds = _numbered(10)
    small = ds.subset(n_train=3)
    assert len(small.train) == 3 and len(small.test) == 10 and small.name == ds.name
    assert small.train.labels.tolist() == [0, 1, 2]
    assert len(ds.subset(n_test=20).test) == 10
    assert ds.image_shape == (1, 4, 4)


def test_split_checks_types():
    with pytest.raises(SwimkitError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(SwimkitError, match="int64"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.train.images.shape == (60000, 1, 28, 28)
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.train.labels.min() == 0 and ds.train.labels.max() == 9
    assert torch.equal(ds.train.labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(ds.test.labels.bincount(), torch.full((10,), 1000))
    x, y = next(iter(batches(ds.test, ds, 128)))
    assert x.shape == (128, 1, 28, 28) and x.min() >= 0.0 and x.max() <= 1.0
