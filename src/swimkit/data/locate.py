"""Where dataset files are looked for, and the download of last resort.

In order: the user's data directory (and its usual sub-folders, the torchvision layout
among them), the system folders (Debian's ``dataset-fashion-mnist`` package installs to
/usr/share/datasets/fashion-mnist), then the download cache; torchvision downloads only
when nothing local is found and a network exists. A failure says where it looked and
how to get the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import SwimkitError, first_line

#: System folders searched after the user's data directory (``<dir>/<dataset-name>``).
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)

#: Where downloads go when no data directory is given; also searched like a data directory.
DEFAULT_CACHE_DIR: Path = Path.home() / ".cache" / "swimkit"

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MNIST_LIKE = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # name -> torchvision class


def find_or_download(
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
            download_with_torchvision(name, root)
        except Exception as exc:  # any failure: no network, disk full, bad archive
            reason = f"download failed ({first_line(exc, with_type=True)})"
        else:
            for folder in after_download(root):
                if is_complete(folder):
                    return folder
            reason = "download finished but the files were not where expected"
    else:
        reason = "download disabled"
    looked = ", ".join(str(c) for c in _unique(candidates))
    if data_dir is not None and not data_dir.is_dir():
        looked += f": {data_dir} does not exist"
    raise SwimkitError(f"{name} not found (looked in {looked}; {reason}); to get it: {how_to_get}")


def download_with_torchvision(name: str, root: Path) -> None:
    """Download ``name`` into ``root`` with torchvision (tests replace this function)."""
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    if name in MNIST_LIKE:
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        cls(root=str(root), train=True, download=True)
        cls(root=str(root), train=False, download=True)
    elif name == "cifar10":
        tvd.CIFAR10(root=str(root), train=True, download=True)
    else:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINY_IMAGENET_URL, download_root=str(root))


def _unique(paths: Sequence[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def candidates(
    data_dir: Path | None,
    user_layout: Callable[[Path], list[Path]],
    system_layout: Callable[[Path], list[Path]],
) -> list[Path]:
    """Folders to search, in order: an explicit data dir alone (it is used or the load
    fails: no silent fall-back to another copy); else the system dirs, then the download
    cache.

    ``user_layout`` lists where a dataset may sit under a user folder (the folder itself,
    the torchvision layout...); ``system_layout`` the same under a system folder.
    """
    if data_dir is not None:
        return _unique(user_layout(data_dir))
    folders: list[Path] = []
    for system_dir in SYSTEM_DATA_DIRS:
        folders += system_layout(Path(system_dir))
    return _unique(folders + user_layout(DEFAULT_CACHE_DIR))




__all__ = ["DEFAULT_CACHE_DIR", "MNIST_LIKE", "SYSTEM_DATA_DIRS", "TINY_IMAGENET_URL",
           "candidates", "download_with_torchvision", "find_or_download"]
