"""Small training runs shared by the training, resume, clipping and noise-injection tests."""

from __future__ import annotations

import torch
from torch import nn

from swimkit.checkpoints import plain_state_dict
from swimkit.data import Dataset, Split
from swimkit.models import build_model
from swimkit.training import TrainResult, train


def patterns(n: int, seed: int, channels: int = 1, size: int = 28) -> Split:
    """Noise images with a bright block whose position is the label (learnable quickly)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, channels, size, size), generator=g, dtype=torch.uint8)
    rows, cols = size // 2 - 4, size // 5
    for k in range(10):
        r, c = divmod(k, 5)
        top, left = 2 + r * rows, c * cols
        images[labels == k, :, top : top + 8, left : left + cols] = 255
    return Split(images, labels)


def toy(n_train: int = 128, n_test: int = 64) -> Dataset:
    """A tiny MNIST-like dataset (1x28x28, 10 classes, no augmentation)."""
    return Dataset("toy", patterns(n_train, 0), patterns(n_test, 1), 10, (0.0,), (1.0,), None)


def cifar_like(n: int = 4) -> Dataset:
    """A tiny CIFAR-like dataset (3x32x32, with the crop/flip augmentation)."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train_split, test_split = patterns(n, 2, 3, 32), patterns(n, 3, 3, 32)
    return Dataset("toy-cifar", train_split, test_split, 10, mean, std, "crop_flip")


def fresh(name: str = "lenet", seed: int = 0) -> nn.Module:
    """A registered model initialised from ``seed``."""
    torch.manual_seed(seed)
    return build_model(name)


def fit(name: str = "lenet", init_seed: int = 0, dataset: Dataset | None = None,
        **settings) -> TrainResult:
    """Train a fresh model at batch 32; ``settings`` are train()'s keywords (TrainConfig
    fields as overrides, and chip=, plan=, checkpoint_dir=, log=)."""
    settings.setdefault("batch_size", 32)
    return train(fresh(name, init_seed), dataset or toy(), model_name=name, **settings)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """Bit-identical plain state dicts."""
    sa, sb = plain_state_dict(a), plain_state_dict(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_time(history: list[dict]) -> list[dict]:
    """A training history without its wall-clock seconds."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


class CountingStuckAt:
    """A device model from outside swimkit: weights stuck at zero with probability ``p``;
    ``draws`` counts the chips drawn by it and every model ``with_sigma`` made from it."""

    from swimkit.slicing import BitSlicing

    slicing = BitSlicing(8, 1)

    def __init__(self, p: float, draws: list[int] | None = None) -> None:
        self.p = p
        self._draws = draws if draws is not None else [0]

    @property
    def draws(self) -> int:
        return self._draws[0]

    def with_sigma(self, sigma):
        """sigma_train sets this model's stuck probability."""
        return CountingStuckAt(sigma, self._draws)

    def sampler(self, values, scales, plan=None, times=(0.0,)):
        def draw(generator):
            self._draws[0] += 1
            chip = {k: -v * (torch.rand(v.shape, generator=generator, device=v.device) < self.p)
                    for k, v in values.items()}
            return [chip] * len(times)

        return draw

    def variance(self, values, scales, plan=None, time=0.0):
        return {k: self.p * (1 - self.p) * (v / scales[k]) ** 2 for k, v in values.items()}

    def describe(self):
        return {"kind": "stuck-at", "p": self.p}
