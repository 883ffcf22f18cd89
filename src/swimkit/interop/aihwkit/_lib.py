"""Importing aihwkit (and aihwkit-lightning) on demand, with a one-line error naming the
install command where it is missing."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType

import torch

from ...errors import SwimkitError

INSTALL = 'pip install "swimkit[aihwkit]"'
INSTALL_311 = 'pip install --only-binary aihwkit "swimkit[aihwkit]"'


class NotInstalled(SwimkitError):
    """aihwkit (or aihwkit-lightning) is needed and not installed; the message says how to
    install it."""


def available() -> bool:
    """True when aihwkit can be imported."""
    try:
        importlib.import_module("aihwkit")
    except Exception:  # any failure to import (absent, a broken build) means unavailable
        return False
    return True


def _imported(name: str, install: str) -> ModuleType:
    """Module ``name``, or a one-line error saying ``install`` where aihwkit is missing."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and not err.name.startswith("aihwkit"):
            raise
        raise NotInstalled(f"{name} is not installed; install it with {install}") from None


def module(name: str = "aihwkit") -> ModuleType:
    """``aihwkit`` or one of its modules, or a one-line error saying how to install it."""
    return _imported(name, f"{INSTALL} (on Python 3.11: {INSTALL_311})")


def lightning(name: str = "aihwkit_lightning") -> ModuleType:
    """``aihwkit_lightning`` or one of its modules, or a one-line error."""
    return _imported(name, "pip install --no-deps aihwkit-lightning (it pins an older torch)")


@contextlib.contextmanager
def seeded(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Run aihwkit's draws (``randn_like`` on the global generator) from a seed that
    ``generator`` draws, leaving the global generator as it was; without a generator,
    draw from the global one."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


__all__ = ["INSTALL", "NotInstalled", "available", "lightning", "module", "seeded"]
