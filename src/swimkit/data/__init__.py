"""Datasets: a registry of loaders, the real on-disk formats, and in-memory batches.

:data:`DATASETS` holds every dataset by name, with its aliases, a one-line help and a
loader ``load(data_dir, download) -> Dataset``. ``register_dataset`` adds one (a
function returning a :class:`Dataset` of uint8 images); ``load_dataset`` and the
command line's ``--dataset`` then find it.

- :mod:`.registry`: the registry, ``register_dataset`` and ``load_dataset``;
- :mod:`.loaders`: the built-in datasets (MNIST, Fashion-MNIST, CIFAR-10, Tiny ImageNet);
- :mod:`.formats`: MNIST IDX files, CIFAR-10 pickle batches, the Tiny ImageNet folder;
- :mod:`.locate`: where files are looked for, and the download of last resort;
- :mod:`.batches`: :class:`Split`, :class:`Dataset` and fast batching in memory.
"""

from . import formats, locate
from . import loaders as _loaders  # noqa: F401 - registers the built-in datasets
from .batches import (
    Batches,
    Dataset,
    Split,
    augment_crop_flip,
    batches,
    normalize,
    preload,
)
from .formats import read_idx, reorganize_tiny_imagenet_val
from .loaders import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from .registry import DATASETS, DatasetInfo, load_dataset, register_dataset

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Batches",
    "Dataset",
    "DatasetInfo",
    "Split",
    "augment_crop_flip",
    "batches",
    "formats",
    "load_dataset",
    "locate",
    "normalize",
    "preload",
    "read_idx",
    "register_dataset",
    "reorganize_tiny_imagenet_val",
]
