"""Writers of small datasets in the real on-disk formats (IDX, CIFAR pickles, Tiny ImageNet).

Shared by the tests; nothing here touches the network.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_jpeg

IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_mnist(folder: Path, gz: bool = True, seed: int = 0, n_train: int = 12, n_test: int = 5):
    """The four MNIST IDX files with random content; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, stem in IDX_STEMS.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


def make_cifar(folder: Path, per_batch: int = 3, n_test: int = 4, seed: int = 0):
    """CIFAR-10 python batches (pickled dicts with bytes keys); returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = batch
    return written


TINY_WNIDS = ["n03000000", "n01000000", "n02000000"]  # deliberately not sorted


def make_tiny(root: Path, seed: int = 0) -> dict[str, list[int]]:
    """A 3-class Tiny ImageNet folder in the original layout; returns expected labels.

    Train: two images per class, one of them grayscale and one 48x48 (resized on load).
    Val: flat ``val/images`` with ``val_annotations.txt``.
    """
    gen = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    order = sorted(TINY_WNIDS)
    train_labels = []
    for wnid in order:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for k in range(2):
            channels = 1 if (wnid, k) == (order[0], 1) else 3
            size = 48 if (wnid, k) == (order[1], 0) else 64
            image = torch.randint(0, 256, (channels, size, size), dtype=torch.uint8, generator=gen)
            write_jpeg(image, str(folder / f"{wnid}_{k}.JPEG"))
            train_labels.append(order.index(wnid))
    val = root / "val" / "images"
    val.mkdir(parents=True)
    val_wnids = [TINY_WNIDS[i % 3] for i in range(7)]
    lines = []
    for i, wnid in enumerate(val_wnids):
        image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=gen)
        write_jpeg(image, str(val / f"val_{i}.JPEG"))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {"train": train_labels, "val": [order.index(w) for w in val_wnids]}




def make_learnable_mnist(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0):
    """Fashion-MNIST-shaped IDX files whose classes a LeNet learns in one epoch.

    Each class lights a different 7x7 block of the 28x28 image, plus noise.
    """
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 4)
            images[i, 7 * row : 7 * row + 7, 7 * col : 7 * col + 7] += 180
        return images, labels

    train_images, train_labels = split(n_train)
    test_images, test_labels = split(n_test)
    arrays = {"train_images": train_images, "train_labels": train_labels,
              "test_images": test_images, "test_labels": test_labels}
    for key, stem in IDX_STEMS.items():
        write_idx(folder / (stem + ".gz"), arrays[key])
    return arrays
