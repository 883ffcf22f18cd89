"""Atomic file writes: a result is either fully written or not there at all; a lock per
output folder, so two runs in one folder never lose each other's work."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import SwimkitError, first_line


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SwimkitError(f"could not write {path} ({exc.strerror or exc}); choose a "
                           "writable output folder") from exc
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only folder, quota...
        Path(tmp).unlink(missing_ok=True)
        raise SwimkitError(f"could not write {path} ({exc.strerror or exc}); free space or "
                           "choose another output folder, then run again") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(path: str | Path, option: str) -> None:
    """Refuse, before any work, an output ``path`` whose folder cannot be written."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".swimkit-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SwimkitError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc}); "
                           "choose a writable place") from None


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename.

    Saved through an open file, so the archive holds no temporary name: the same object
    saved twice gives byte-identical files (caches keyed on a file's hash survive)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as exc:  # torch's writer on a full disk: "unexpected pos"
                raise OSError(errno.ENOSPC, "the file could not be written whole (torch: "
                              f"{first_line(exc)}); the disk may be full") from None

    return atomic_write(path, write)


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, Infinity) as None: strict JSON, which
    every reader parses."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented, strict JSON (no NaN or Infinity) to ``path`` atomically."""
    text = json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False)
    return atomic_write_text(text + "\n", path)


LOCK_NAME = ".swimkit.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the output folder ``folder`` for this run: a second run in it waits until the
    first is done (said once through ``say``), then sees everything the first wrote. The
    lock is the operating system's (``flock``): a killed run releases it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held for the block
    except OSError as exc:
        raise SwimkitError(f"cannot use the output folder {folder} ({exc.strerror or exc}); "
                           "choose a writable one") from exc
    try:
        if sys.platform != "win32":
            import fcntl

            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                (say or (lambda line: print(line, file=sys.stderr, flush=True)))(
                    f"waiting for another swimkit run in {folder} to finish")
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock


def load_kind(path: str | Path, kind: str, what: str) -> dict:
    """Load a swimkit torch file of ``kind``, or raise a clear error naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise SwimkitError(f"{what} file {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file gets the same message
        data = None
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise SwimkitError(
            f"{str(path)!r} is not a swimkit {what} file; give the file swimkit wrote"
        )
    return data
