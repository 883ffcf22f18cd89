"""The built-in datasets, each loader registered beside it: MNIST and Fashion-MNIST (IDX
files), CIFAR-10 (python pickle batches) and Tiny ImageNet (its image folders), found where
:mod:`.locate` looks, downloaded with torchvision as a last resort."""

from __future__ import annotations

from pathlib import Path

from . import formats, locate
from .batches import Dataset
from .formats import read_idx
from .registry import Loader, register_dataset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
_CIFAR_HOW_TO = (
    "pass --data-dir with the python version of CIFAR-10 (cifar-10-batches-py, from "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz), or connect to the network "
    "to download"
)
_TINY_HOW_TO = (
    f"download {locate.TINY_IMAGENET_URL} and unzip it into --data-dir (giving "
    f"{formats.TINY_FOLDER}/), or connect to the network to download"
)


def _mnist_like(name: str) -> Loader:
    tv_name = locate.MNIST_LIKE[name]

    def load(data_dir: Path | None, download: bool) -> Dataset:
        candidates = locate.candidates(
            data_dir, lambda root: [root, root / tv_name / "raw", root / name],
            lambda system: [system / name])
        folder = locate.find_or_download(name, candidates, formats.has_idx_files,
                                         lambda root: [root / tv_name / "raw"], data_dir,
                                         download, _MNIST_HOW_TO[name])
        arrays = {key: read_idx(formats.idx_path(folder, stem))
                  for key, stem in formats.IDX_FILES.items()}
        train = formats.idx_split(arrays["train_images"], arrays["train_labels"], folder)
        test = formats.idx_split(arrays["test_images"], arrays["test_labels"], folder)
        return Dataset(name, train, test, 10, (0.0,), (1.0,), None)

    return load


def _cifar10(data_dir: Path | None, download: bool) -> Dataset:
    candidates = locate.candidates(
        data_dir, lambda root: [root, root / formats.CIFAR_FOLDER],
        lambda system: [system / formats.CIFAR_FOLDER, system / "cifar10" / formats.CIFAR_FOLDER])
    folder = locate.find_or_download("cifar10", candidates, formats.has_cifar_files,
                                     lambda root: [root / formats.CIFAR_FOLDER], data_dir,
                                     download, _CIFAR_HOW_TO)
    train = formats.cat_splits([formats.read_cifar_batch(folder / f) for f in formats.CIFAR_TRAIN])
    test = formats.cat_splits([formats.read_cifar_batch(folder / f) for f in formats.CIFAR_TEST])
    return Dataset("cifar10", train, test, 10, CIFAR10_MEAN, CIFAR10_STD, "crop_flip")


def _tiny_imagenet(data_dir: Path | None, download: bool) -> Dataset:
    candidates = locate.candidates(
        data_dir, lambda root: [root, root / formats.TINY_FOLDER],
        lambda system: [system / formats.TINY_FOLDER])
    folder = locate.find_or_download("tiny-imagenet", candidates, formats.is_tiny_root,
                                     lambda root: [root / formats.TINY_FOLDER], data_dir,
                                     download, _TINY_HOW_TO)
    train, test = formats.tiny_imagenet_splits(folder)
    return Dataset("tiny-imagenet", train, test, 200, IMAGENET_MEAN, IMAGENET_STD, "crop_flip")


register_dataset("mnist", _mnist_like("mnist"), help="MNIST digits, IDX files, 1x28x28")
register_dataset("fashion-mnist", _mnist_like("fashion-mnist"),
                 aliases=("fashion_mnist", "fashionmnist", "fmnist"),
                 help="Fashion-MNIST, IDX files, 1x28x28 (Debian: dataset-fashion-mnist)")
register_dataset("cifar10", _cifar10, aliases=("cifar-10", "cifar_10", "cifar"),
                 help="CIFAR-10 python pickle batches, 3x32x32, crop + flip")
register_dataset("tiny-imagenet", _tiny_imagenet,
                 aliases=("tiny_imagenet", "tinyimagenet", "tiny-imagenet-200", "tin"),
                 help="Tiny ImageNet folder, 200 classes, 3x64x64, crop + flip")


__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN", "IMAGENET_STD"]
