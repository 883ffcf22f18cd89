"""Datasets as in-memory tensors, and fast batching on top of them.

The datasets used here are small enough to hold whole in memory as ``uint8`` tensors
(Tiny ImageNet's 100,000 training images take 1.2 GB). Batches are then slices of one
tensor, augmented and normalised on the whole batch at once, with no per-image Python
work and no DataLoader workers. Sensitivity and Monte-Carlo passes evaluate the same
test set hundreds of times, so that matters.

Data is read from the real on-disk formats (MNIST IDX files, CIFAR-10 pickle batches,
the Tiny ImageNet folder), looked for in the user's data directory, the torchvision
layout and the system location (Debian's ``dataset-fashion-mnist`` package), and
downloaded with torchvision only when nothing local is found and a network exists.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import shutil
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import SwimkitError, choose
from .storage import atomic_save

__all__ = [
    "DATASETS",
    "Batches",
    "Dataset",
    "Split",
    "augment_crop_flip",
    "batches",
    "load_dataset",
    "normalize",
    "preload",
    "read_idx",
    "reorganize_tiny_imagenet_val",
]

#: System folders searched after the user's data directory (``<dir>/<dataset-name>``).
#: Debian's ``dataset-fashion-mnist`` package installs to /usr/share/datasets/fashion-mnist.
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)

#: Where downloads go when no data directory is given; also searched like a data directory.
DEFAULT_CACHE_DIR: Path = Path.home() / ".cache" / "swimkit"

#: Canonical dataset names and the aliases accepted for them (matched case-insensitively).
DATASETS: dict[str, str] = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar": "cifar10",
    "tiny-imagenet": "tiny-imagenet",
    "tiny_imagenet": "tiny-imagenet",
    "tinyimagenet": "tiny-imagenet",
    "tiny-imagenet-200": "tiny-imagenet",
    "tin": "tiny-imagenet",
}

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PADDING = 4

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_SIZE = 64
TINY_CACHE_NAME = "swimkit-cache.pt"
_TINY_CACHE_VERSION = 1
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_TV_IO_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


# --------------------------------------------------------------------------- containers


@dataclass
class Split:
    """One part of a dataset: ``uint8`` images (N x C x H x W) and ``int64`` labels (N)."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise SwimkitError(
                f"Split images must be a uint8 N x C x H x W tensor "
                f"(got {self.images.dtype}, shape {tuple(self.images.shape)})"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise SwimkitError(
                f"Split labels must be an int64 tensor with one label per image "
                f"(got {self.labels.dtype}, shape {tuple(self.labels.shape)} for "
                f"{self.images.shape[0]} images)"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int | None) -> Split:
        """The first ``n`` examples (all of them when ``n`` is None)."""
        if n is None:
            return self
        if n < 0:
            raise SwimkitError(f"a subset size must be >= 0 (got {n})")
        return Split(self.images[:n], self.labels[:n])


@dataclass
class Dataset:
    """A dataset in memory, with the normalisation and augmentation it is trained with."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str | None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Channels, height and width of one image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> Dataset:
        """The same dataset cut to its first ``n_train`` / ``n_test`` examples (quick runs)."""
        return replace(self, train=self.train.head(n_train), test=self.test.head(n_test))


# --------------------------------------------------------------------------- loading


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Load ``mnist``, ``fashion-mnist``, ``cifar10`` or ``tiny-imagenet`` into memory.

    Looks in ``data_dir`` (and its usual sub-folders), then the system folders, then the
    download cache; downloads with torchvision only if that fails and ``download`` is True.
    """
    canonical = choose(name, DATASETS, "dataset")
    data_dir = Path(data_dir).expanduser() if data_dir is not None else None
    if canonical in _MNIST_LIKE:
        return _load_mnist_like(canonical, data_dir, download)
    if canonical == "cifar10":
        return _load_cifar10(data_dir, download)
    return _load_tiny_imagenet(data_dir, download)


def _find_or_download(
    name: str,
    candidates: list[Path],
    is_complete: Callable[[Path], bool],
    after_download: Callable[[Path], list[Path]],
    data_dir: Path | None,
    download: bool,
    how_to_get: str,
) -> Path:
    """The first candidate folder holding the complete data, downloading as a last resort."""
    for folder in candidates:
        if is_complete(folder):
            return folder
    root = data_dir if data_dir is not None else DEFAULT_CACHE_DIR
    if download:
        try:
            _download(name, root)
        except Exception as exc:  # any failure: no network, disk full, bad archive
            reason = f"download failed ({_first_line(exc)})"
        else:
            for folder in after_download(root):
                if is_complete(folder):
                    return folder
            reason = "download finished but the files were not where expected"
    else:
        reason = "download disabled"
    looked = ", ".join(str(c) for c in _unique(candidates))
    raise SwimkitError(f"{name} not found (looked in {looked}; {reason}); to get it: {how_to_get}")


def _download(name: str, root: Path) -> None:
    """Download ``name`` into ``root`` with torchvision (tests replace this function)."""
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    if name in _MNIST_LIKE:
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        cls(root=str(root), train=True, download=True)
        cls(root=str(root), train=False, download=True)
    elif name == "cifar10":
        tvd.CIFAR10(root=str(root), train=True, download=True)
    else:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINY_IMAGENET_URL, download_root=str(root))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _unique(paths: Sequence[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _candidates(
    data_dir: Path | None,
    user_layout: Callable[[Path], list[Path]],
    system_layout: Callable[[Path], list[Path]],
) -> list[Path]:
    """Folders to search, in order: the user's data dir, the system dirs, the download cache.

    ``user_layout`` lists where a dataset may sit under a user folder (the folder itself,
    the torchvision layout...); ``system_layout`` the same under a system folder.
    """
    folders = user_layout(data_dir) if data_dir is not None else []
    for system_dir in SYSTEM_DATA_DIRS:
        folders += system_layout(Path(system_dir))
    if data_dir is None:
        folders += user_layout(DEFAULT_CACHE_DIR)
    return _unique(folders)


# --------------------------------------------------------------------------- MNIST (IDX)

_MNIST_LIKE = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # name -> torchvision class
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MNIST_HOW_TO = {
    "fashion-mnist": (
        "apt-get install dataset-fashion-mnist, or pass --data-dir with the IDX files "
        "(train-images-idx3-ubyte.gz etc.), or connect to the network to download"
    ),
    "mnist": (
        "pass --data-dir with the IDX files (train-images-idx3-ubyte.gz etc.), "
        "or connect to the network to download"
    ),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a numpy array of its stored type and shape."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise SwimkitError(f"{path} is not an IDX file (bad magic number); replace the file")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SwimkitError(f"{path} is truncated (incomplete IDX header); replace the file")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = math.prod(dims)
    if len(data) != header + count * dtype.itemsize:
        raise SwimkitError(
            f"{path} is truncated or corrupt: header says {dims} values, file has "
            f"{len(data) - header} bytes of data; replace the file"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims).copy()


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzipped."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise SwimkitError(f"cannot read {path} ({_first_line(exc)}); replace the file") from exc


def _idx_path(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (plain first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_idx_files(folder: Path) -> bool:
    return all(_idx_path(folder, stem) is not None for stem in _IDX_FILES.values())


def _mnist_candidates(name: str, data_dir: Path | None) -> list[Path]:
    """Search order: the folder itself, the torchvision layout, a folder named after the set."""
    tv_name = _MNIST_LIKE[name]
    return _candidates(
        data_dir,
        lambda root: [root, root / tv_name / "raw", root / name],
        lambda system: [system / name],
    )


def _load_mnist_like(name: str, data_dir: Path | None, download: bool) -> Dataset:
    tv_name = _MNIST_LIKE[name]
    folder = _find_or_download(
        name,
        _mnist_candidates(name, data_dir),
        _has_idx_files,
        lambda root: [root / tv_name / "raw"],
        data_dir,
        download,
        _MNIST_HOW_TO[name],
    )
    arrays = {key: read_idx(_idx_path(folder, stem)) for key, stem in _IDX_FILES.items()}
    train = _idx_split(arrays["train_images"], arrays["train_labels"], folder)
    test = _idx_split(arrays["test_images"], arrays["test_labels"], folder)
    return Dataset(name, train, test, 10, (0.0,), (1.0,), None)


def _idx_split(images: np.ndarray, labels: np.ndarray, folder: Path) -> Split:
    """Check an image/label pair of IDX arrays and turn it into a :class:`Split`."""
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise SwimkitError(
            f"IDX files in {folder} do not match: images {images.shape}, labels {labels.shape} "
            "(expected N x H x W images and N labels)"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise SwimkitError(f"IDX labels in {folder} must be 0..9; replace the files")
    return Split(
        torch.from_numpy(images.astype(np.uint8)).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]
_CIFAR_HOW_TO = (
    "pass --data-dir with the python version of CIFAR-10 (cifar-10-batches-py, from "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz), or connect to the network "
    "to download"
)


def _has_cifar_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _CIFAR_TRAIN + _CIFAR_TEST)


def _load_cifar10(data_dir: Path | None, download: bool) -> Dataset:
    candidates = _candidates(
        data_dir,
        lambda root: [root, root / _CIFAR_FOLDER],
        lambda system: [system / _CIFAR_FOLDER, system / "cifar10" / _CIFAR_FOLDER],
    )
    folder = _find_or_download(
        "cifar10",
        candidates,
        _has_cifar_files,
        lambda root: [root / _CIFAR_FOLDER],
        data_dir,
        download,
        _CIFAR_HOW_TO,
    )
    train = _cat_splits([_read_cifar_batch(folder / f) for f in _CIFAR_TRAIN])
    test = _cat_splits([_read_cifar_batch(folder / f) for f in _CIFAR_TEST])
    return Dataset("cifar10", train, test, 10, CIFAR10_MEAN, CIFAR10_STD, "crop_flip")


def _read_cifar_batch(path: Path) -> Split:
    """One CIFAR pickle batch: a dict with ``b"data"`` (N x 3072 uint8) and ``b"labels"``."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except Exception as exc:  # unpickling errors come in many types
        raise SwimkitError(
            f"{path} is not a CIFAR-10 python batch ({_first_line(exc)}); replace the file"
        ) from exc
    in_range = labels.size == 0 or (labels.min() >= 0 and labels.max() <= 9)
    if images.shape[0] != labels.shape[0] or not in_range:
        raise SwimkitError(f"{path} has mismatched or out-of-range labels; replace the file")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels))


def _cat_splits(splits: list[Split]) -> Split:
    return Split(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]))


# --------------------------------------------------------------------------- Tiny ImageNet

_TINY_FOLDER = "tiny-imagenet-200"
_TINY_HOW_TO = (
    f"download {TINY_IMAGENET_URL} and unzip it into --data-dir (giving {_TINY_FOLDER}/), "
    "or connect to the network to download"
)


def _is_tiny_root(folder: Path) -> bool:
    return (
        (folder / "wnids.txt").is_file()
        and (folder / "train").is_dir()
        and (folder / "val").is_dir()
    )


def _load_tiny_imagenet(data_dir: Path | None, download: bool) -> Dataset:
    candidates = _candidates(
        data_dir, lambda root: [root, root / _TINY_FOLDER], lambda system: [system / _TINY_FOLDER]
    )
    folder = _find_or_download(
        "tiny-imagenet",
        candidates,
        _is_tiny_root,
        lambda root: [root / _TINY_FOLDER],
        data_dir,
        download,
        _TINY_HOW_TO,
    )
    train, test = _tiny_imagenet_splits(folder)
    return Dataset("tiny-imagenet", train, test, 200, IMAGENET_MEAN, IMAGENET_STD, "crop_flip")


def _tiny_imagenet_splits(root: Path) -> tuple[Split, Split]:
    """Decoded train and val splits, from the cache when it matches the folder's files."""
    wnids = _read_wnids(root)
    train_files = _tiny_train_files(root, wnids)
    val_files = _tiny_val_files(root, wnids)
    signature = _tiny_signature(wnids, train_files, val_files)
    for cache in _tiny_cache_paths(root):
        cached = _read_tiny_cache(cache, signature)
        if cached is not None:
            return cached
    train, test = _decode_split(train_files), _decode_split(val_files)
    _write_tiny_cache(root, signature, train, test)
    return train, test


def _read_wnids(root: Path) -> list[str]:
    """Class ids in sorted order; a class index is the position in this list."""
    wnids = sorted({line.strip() for line in (root / "wnids.txt").read_text().splitlines()} - {""})
    if not wnids:
        raise SwimkitError(f"{root / 'wnids.txt'} lists no classes; replace it")
    return wnids


def _image_files(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    found = [
        Path(dirpath) / f
        for dirpath, _, files in os.walk(folder)
        for f in files
        if Path(f).suffix.lower() in _IMAGE_SUFFIXES
    ]
    return sorted(found)


def _tiny_train_files(root: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    files = [(p, i) for i, w in enumerate(wnids) for p in _image_files(root / "train" / w)]
    if not files:
        raise SwimkitError(f"no training images under {root / 'train'}; re-extract {_TINY_FOLDER}")
    return files


def _tiny_val_files(root: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    """Validation images with labels, in the original layout (annotations) or reorganised."""
    files = [(p, i) for i, w in enumerate(wnids) for p in _image_files(root / "val" / w)]
    flat = _image_files(root / "val" / "images")  # the original layout (or a partial move)
    if flat:
        index = {w: i for i, w in enumerate(wnids)}
        annotations = _read_val_annotations(root)
        for path in flat:
            if annotations.get(path.name) not in index:
                raise SwimkitError(
                    f"{path.name} has no known class in {root / 'val' / 'val_annotations.txt'}"
                )
            files.append((path, index[annotations[path.name]]))
    if not files:
        raise SwimkitError(f"no validation images under {root / 'val'}; re-extract {_TINY_FOLDER}")
    return files


def _read_val_annotations(root: Path) -> dict[str, str]:
    """``val_annotations.txt``: file name -> wnid (tab-separated, bounding box ignored)."""
    path = root / "val" / "val_annotations.txt"
    if not path.is_file():
        raise SwimkitError(f"{path} is missing; it is needed to label the validation images")
    rows = (line.split("\t") for line in path.read_text().splitlines() if line.strip())
    return {row[0].strip(): row[1].strip() for row in rows if len(row) >= 2}


def reorganize_tiny_imagenet_val(root: str | Path) -> int:
    """Move ``val/images/*`` into ``val/<wnid>/images/`` by ``val_annotations.txt``.

    This is the usual preprocessing that makes ``val/`` look like ``train/``. Running it
    again does nothing. Returns the number of images moved.
    """
    root = Path(root)
    flat = root / "val" / "images"
    if not flat.is_dir():
        return 0
    annotations = _read_val_annotations(root)
    moved = 0
    for path in _image_files(flat):
        wnid = annotations.get(path.name)
        if wnid is None:
            continue
        target = root / "val" / wnid / "images" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        moved += 1
    if not any(flat.iterdir()):
        flat.rmdir()
    return moved


def _decode_split(files: list[tuple[Path, int]]) -> Split:
    """Decode image files to one uint8 tensor (threads: decoding releases the GIL)."""
    with warnings.catch_warnings(), ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        # torchvision >= 0.29 warns on every decode that torchvision.io is deprecated
        warnings.filterwarnings("ignore", _TV_IO_DEPRECATION, DeprecationWarning)
        images = list(pool.map(_decode_image, [p for p, _ in files]))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Split(torch.stack(images), labels)


def _decode_image(path: Path) -> Tensor:
    """An image file as 3 x 64 x 64 uint8 RGB (grayscale expanded, other sizes resized)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise SwimkitError(f"cannot decode {path} ({_first_line(exc)}); replace it") from exc
    size = TINY_IMAGENET_SIZE
    if image.shape[1:] != (size, size):
        from torchvision.transforms.v2.functional import resize

        image = resize(image, [size, size], antialias=True)
    return image


def _tiny_signature(
    wnids: list[str], train: list[tuple[Path, int]], val: list[tuple[Path, int]]
) -> str:
    """A hash of the class list and each split's (file name, label) pairs.

    File names rather than paths, so reorganising ``val/`` keeps the cache valid.
    """
    h = hashlib.sha256("\n".join(wnids).encode())
    for tag, files in (("train", train), ("val", val)):
        h.update(tag.encode())
        for path, label in sorted((p.name, lab) for p, lab in files):
            h.update(f"{path}\t{label}\n".encode())
    return h.hexdigest()


def _tiny_cache_paths(root: Path) -> list[Path]:
    """The cache next to the data, then one in the user cache (for read-only data folders)."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / TINY_CACHE_NAME, DEFAULT_CACHE_DIR / f"tiny-imagenet-{key}.pt"]


def _read_tiny_cache(path: Path, signature: str) -> tuple[Split, Split] | None:
    """The cached splits, or None when missing, unreadable or made from other files."""
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
        if cache.get("version") != _TINY_CACHE_VERSION or cache.get("signature") != signature:
            return None
        return (
            Split(cache["train_images"], cache["train_labels"]),
            Split(cache["test_images"], cache["test_labels"]),
        )
    except Exception:  # a damaged cache is rebuilt, not fatal
        return None


def _write_tiny_cache(root: Path, signature: str, train: Split, test: Split) -> Path | None:
    """Save decoded splits next to the data, or in the user cache if that is read-only."""
    cache = {
        "version": _TINY_CACHE_VERSION,
        "signature": signature,
        "train_images": train.images,
        "train_labels": train.labels,
        "test_images": test.images,
        "test_labels": test.labels,
    }
    for path in _tiny_cache_paths(root):
        try:
            return atomic_save(cache, path)
        except OSError:
            continue
    return None  # nowhere writable: the next load decodes again


# --------------------------------------------------------------------------- batching


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``uint8`` images to float32 ``(x / 255 - mean) / std``, per channel."""
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return (images.to(torch.float32) / 255.0 - m) / s


def augment_crop_flip(
    images: Tensor, padding: int = CROP_PADDING, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop after zero padding, and random horizontal flip, for a whole batch at once.

    Each image gets its own offsets in ``[0, 2 * padding]`` and its own coin for the flip,
    as torchvision's RandomCrop(padding) + RandomHorizontalFlip would give it. The random
    numbers come from ``generator`` (on the CPU), so a seed reproduces the batch.
    """
    n, _, h, w = images.shape
    device = images.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(h, device=device)  # N x H
    cols = torch.arange(w, device=device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]  # N x W
    picked = padded.permute(0, 2, 3, 1)[
        torch.arange(n, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]
    ]  # N x H x W x C
    return picked.permute(0, 3, 1, 2).contiguous()


_AUGMENTATIONS: dict[str, Callable[..., Tensor]] = {"crop_flip": augment_crop_flip}


@dataclass
class Batches:
    """Normalised float32 image batches and their labels; re-iterable.

    ``shuffle`` permutes the examples, ``augment`` applies the dataset's augmentation
    (if it has one); both draw from ``generator``, and each pass continues its random
    stream, so epochs differ but a seeded generator reproduces the whole sequence. The
    last batch may be smaller.
    """

    split: Split
    dataset: Dataset
    batch_size: int
    shuffle: bool = False
    augment: bool = False
    generator: torch.Generator | None = None
    device: torch.device | str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SwimkitError(f"batch size must be >= 1 (got {self.batch_size})")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        split, gen, n = self.split, self.generator, len(self.split)
        order = torch.randperm(n, generator=gen) if self.shuffle else None
        name = self.dataset.augment
        augment_fn = _AUGMENTATIONS.get(name) if self.augment and name else None
        for start in range(0, n, self.batch_size):
            if order is None:
                part = slice(start, start + self.batch_size)
                x, y = split.images[part], split.labels[part]
            else:
                idx = order[start : start + self.batch_size].to(split.images.device)
                x, y = split.images[idx], split.labels[idx.to(split.labels.device)]
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if augment_fn is not None:
                x = augment_fn(x, generator=gen)
            yield normalize(x, self.dataset.mean, self.dataset.std), y

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)


def batches(
    split: Split, dataset: Dataset, batch_size: int, **options: Any
) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass of :class:`Batches` (same options: shuffle, augment, generator, device)."""
    return iter(Batches(split, dataset, batch_size, **options))


def preload(
    split: Split,
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """All batches of ``split``, normalised once and kept (for repeated evaluation)."""
    return list(batches(split, dataset, batch_size, device=device))
