"""The registry of datasets: one loader each, ``load(data_dir, download) -> Dataset``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SwimkitError, require
from ..registry import Entry, Registry
from .batches import Dataset

Loader = Callable[[Path | None, bool], Dataset]


@dataclass(frozen=True)
class DatasetInfo(Entry):
    """A registered dataset: ``loader(data_dir, download)`` returns it in memory."""

    loader: Loader | None = None


DATASETS: Registry[DatasetInfo] = Registry("dataset", entry_point_group="swimkit.datasets")


def register_dataset(name: str, loader: Loader, *, aliases: Sequence[str] = (),
                     help: str = "") -> DatasetInfo:
    """Add a dataset: ``loader(data_dir, download)`` returns a :class:`Dataset`."""
    require(callable(loader), f"the loader of dataset {name!r} must be callable")
    return DATASETS.add(DatasetInfo(name=name, aliases=tuple(aliases), help=help, loader=loader))


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Load a registered dataset (``mnist``, ``fashion-mnist``, ``cifar10``,
    ``tiny-imagenet``, ...) into memory.

    Looks in ``data_dir`` (and its usual sub-folders) when given, and nowhere else; else in
    the system folders, then the download cache. Downloads with torchvision (into
    ``data_dir`` or the cache) only if that fails and ``download`` is True.
    """
    info = DATASETS.get(name)
    folder = Path(data_dir).expanduser() if data_dir is not None else None
    dataset = info.loader(folder, download)
    if not isinstance(dataset, Dataset):
        raise SwimkitError(f"the loader of dataset {info.name!r} returned "
                           f"{type(dataset).__name__}, not a swimkit.data.Dataset")
    return dataset


__all__ = ["DATASETS", "DatasetInfo", "Loader", "load_dataset", "register_dataset"]
