"""torch.distributed helpers: which rank this is, and rank-0-first steps.

Every function works without a process group (one process, rank 0 of 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

from .errors import SwimkitError

T = TypeVar("T")


def active() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def rank_zero_first(step: Callable[[], Any]) -> None:
    """Run ``step`` on rank 0 while the others wait; every rank raises if it failed.

    Used for work whose result rank 0 writes to files that the others then read
    (training, sensitivities).
    """
    error: str | None = None
    if is_rank_zero():
        try:
            step()
        except SwimkitError as exc:  # under torchrun: the command line's wording
            error = exc.command_line or str(exc)
        except Exception as exc:
            error = f"rank 0 failed: {type(exc).__name__}: {exc}"
            if not active():
                raise
    if active():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise SwimkitError(error)


def init_from_environment(timeout_hours: float = 24.0) -> bool:
    """Join the torchrun group when launched with several processes (gloo backend).

    The long timeout lets the other ranks wait while rank 0 trains.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return False
    dist.init_process_group("gloo", timeout=timedelta(hours=timeout_hours))
    return True


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


__all__ = ["T", "active", "init_from_environment", "is_rank_zero", "rank",
           "rank_zero_first", "shutdown", "world_size"]
