"""Datasets in memory (swimkit.data.batches): splits, normalisation, batching in order or
shuffled by a generator, and the crop-and-flip augmentation."""

from __future__ import annotations

import pytest
import torch

from swimkit.data import (
    Batches,
    Dataset,
    Split,
    augment_crop_flip,
    batches,
    normalize,
    preload,
)
from swimkit.errors import SwimkitError


def toy_dataset(images: torch.Tensor, labels: torch.Tensor | None = None, **kw) -> Dataset:
    """A dataset around given images (train and test the same) for batching tests."""
    if labels is None:
        labels = torch.arange(images.shape[0], dtype=torch.int64)
    split = Split(images, labels)
    channels = images.shape[1]
    fields = dict(num_classes=10, mean=(0.0,) * channels, std=(1.0,) * channels, augment=None)
    fields.update(kw)
    return Dataset("toy", split, split, **fields)


def test_normalisation_values():
    """Images are scaled to [0, 1] and normalised per channel."""
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
    """Batches keep the order, or shuffle by the generator with images paired with their
    labels; a batch size of 0 is refused."""
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
    """Batches reshuffle on every pass; preload holds the plain batches in memory."""
    ds = _numbered(10)
    loader = Batches(ds.train, ds, 3, shuffle=True, generator=torch.Generator().manual_seed(1))
    assert len(loader) == 4
    epoch1 = torch.cat([y for _, y in loader])
    epoch2 = torch.cat([y for _, y in loader])
    assert sorted(epoch1.tolist()) == sorted(epoch2.tolist()) == list(range(10))
    assert not torch.equal(epoch1, epoch2)  # each pass reshuffles
    held = preload(ds.test, ds, 3, where="cpu")
    assert len(held) == 4
    for (x1, y1), (x2, y2) in zip(held, batches(ds.test, ds, 3), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_augment_only_when_asked_and_defined():
    """Augmentation acts only when asked and when the dataset has one."""
    ds = toy_dataset(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8), augment="crop_flip")
    ((x, _),) = batches(ds.train, ds, 8)
    ((xa, _),) = batches(ds.train, ds, 8, augment=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, normalize(ds.train.images, ds.mean, ds.std))
    assert xa.shape == x.shape and not torch.equal(xa, x)
    plain = toy_dataset(ds.train.images)  # augment None: augment=True changes nothing
    ((xp, _),) = batches(plain.train, plain, 8, augment=True)
    assert torch.equal(xp, x)


def test_crop_flip_shapes_and_reproducibility():
    """Crop-and-flip keeps shapes and dtype and follows its generator."""
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    a = augment_crop_flip(images, generator=torch.Generator().manual_seed(7))
    b = augment_crop_flip(images, generator=torch.Generator().manual_seed(7))
    c = augment_crop_flip(images, generator=torch.Generator().manual_seed(8))
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_flip_is_a_shifted_possibly_flipped_crop_of_the_padded_image():
    """Each augmented image is exactly one crop (possibly flipped) of its zero-padded
    original."""
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
    """subset cuts each split to its first examples, never beyond its size."""
    ds = _numbered(10)
    small = ds.subset(n_train=3)
    assert len(small.train) == 3 and len(small.test) == 10 and small.name == ds.name
    assert small.train.labels.tolist() == [0, 1, 2]
    assert len(ds.subset(n_test=20).test) == 10
    assert ds.image_shape == (1, 4, 4)


def test_split_checks_types():
    """A split takes uint8 images and one int64 label per image."""
    with pytest.raises(SwimkitError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(SwimkitError, match="int64"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
