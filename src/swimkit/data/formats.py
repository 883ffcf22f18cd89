"""Reading the real on-disk formats: MNIST IDX files, CIFAR-10 pickle batches, and the
Tiny ImageNet folder (decoded once and cached).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import SwimkitError, first_line
from ..storage import atomic_save
from . import locate
from .batches import Split

TINY_IMAGENET_SIZE = 64
TINY_CACHE_NAME = "swimkit-cache.pt"
TINY_FOLDER = "tiny-imagenet-200"
_TINY_CACHE_VERSION = 1
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_TV_IO_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"

IDX_FILES = {
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

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]


# --------------------------------------------------------------------------- IDX

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
        raise SwimkitError(f"cannot read {path} ({first_line(exc, with_type=True)}); "
                           "replace the file") from exc


def idx_path(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (plain first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def has_idx_files(folder: Path) -> bool:
    return all(idx_path(folder, stem) is not None for stem in IDX_FILES.values())


def idx_split(images: np.ndarray, labels: np.ndarray, folder: Path) -> Split:
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


def has_cifar_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in CIFAR_TRAIN + CIFAR_TEST)


# What a CIFAR-10 batch may name: numpy's array reconstruction (protocol 5: _frombuffer)
# and the bytes codec of protocol-2 pickles. Anything else (os.system, eval...) is refused.
CIFAR_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain containers, bytes, str, numbers and numpy arrays, nothing else:
    a crafted batch file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in CIFAR_ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays, "
                "lists, bytes and numbers")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> Split:
    """One CIFAR pickle batch: a dict with ``b"data"`` (N x 3072 uint8) and ``b"labels"``.

    Read with a restricted unpickler (:data:`CIFAR_ALLOWED_GLOBALS`)."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except Exception as exc:  # unpickling errors come in many types
        raise SwimkitError(
            f"{path} is not a CIFAR-10 python batch ({first_line(exc, with_type=True)}); "
            "replace the file"
        ) from exc
    in_range = labels.size == 0 or (labels.min() >= 0 and labels.max() <= 9)
    if images.shape[0] != labels.shape[0] or not in_range:
        raise SwimkitError(f"{path} has mismatched or out-of-range labels; replace the file")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels))


def cat_splits(splits: list[Split]) -> Split:
    return Split(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]))



# --------------------------------------------------------------------------- Tiny ImageNet


def is_tiny_root(folder: Path) -> bool:
    return (
        (folder / "wnids.txt").is_file()
        and (folder / "train").is_dir()
        and (folder / "val").is_dir()
    )


def tiny_imagenet_splits(root: Path) -> tuple[Split, Split]:
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
        raise SwimkitError(f"no training images under {root / 'train'}; re-extract {TINY_FOLDER}")
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
        raise SwimkitError(f"no validation images under {root / 'val'}; re-extract {TINY_FOLDER}")
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
        raise SwimkitError(f"cannot decode {path} ({first_line(exc, with_type=True)}); "
                           "replace it") from exc
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
    return [root / TINY_CACHE_NAME, locate.DEFAULT_CACHE_DIR / f"tiny-imagenet-{key}.pt"]


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


__all__ = ["CIFAR_FOLDER", "CIFAR_TEST", "CIFAR_TRAIN", "IDX_FILES", "TINY_FOLDER", "cat_splits",
           "has_cifar_files", "has_idx_files", "idx_path", "idx_split", "is_tiny_root",
           "read_cifar_batch", "read_idx", "reorganize_tiny_imagenet_val",
           "tiny_imagenet_splits"]
