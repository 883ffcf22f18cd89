"""Datasets in memory, and fast batching on top of them.

The datasets used here are small enough to hold whole in memory as ``uint8`` tensors
(Tiny ImageNet's 100,000 training images take 1.2 GB). Batches are then slices of one
tensor, augmented and normalised on the whole batch at once, with no per-image Python
work and no DataLoader workers. Sensitivity and Monte-Carlo passes evaluate the same
test set hundreds of times, so that matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..errors import SwimkitError

CROP_PADDING = 4


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
    where: torch.device | str | None = None

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
            x = x.to(self.where, non_blocking=True)
            y = y.to(self.where, non_blocking=True)
            if augment_fn is not None:
                x = augment_fn(x, generator=gen)
            yield normalize(x, self.dataset.mean, self.dataset.std), y

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)


def batches(
    split: Split, dataset: Dataset, batch_size: int, **options: Any
) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass of :class:`Batches` (same options: shuffle, augment, generator, where)."""
    return iter(Batches(split, dataset, batch_size, **options))


def preload(
    split: Split,
    dataset: Dataset,
    batch_size: int,
    where: torch.device | str | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """All batches of ``split``, normalised once and kept (for repeated evaluation) on the
    torch device ``where``."""
    return list(batches(split, dataset, batch_size, where=where))


__all__ = ["CROP_PADDING", "Batches", "Dataset", "Split", "augment_crop_flip", "batches",
           "normalize", "preload"]
