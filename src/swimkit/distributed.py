"""torch.distributed helpers: which rank this is, rank-0-first steps, and gathers that end
the job when a rank stops answering.

Every function works without a process group (one process, rank 0 of 1). Under torchrun
no rank waits on a stopped or wedged one for longer than :func:`timeout_seconds`
(``SWIMKIT_DIST_TIMEOUT``, default 300 s): a collective that takes longer ends the job
with one line. Rank 0's own long steps (training, a sensitivity pass) do not count
against it: the other ranks wait on the group's key-value store while rank 0 says it is
alive every few seconds, and end the job only when it falls silent for that long.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

from .errors import SwimkitError, first_line

T = TypeVar("T")

#: Environment variable: seconds a rank may stay silent before the job is ended.
TIMEOUT_VARIABLE = "SWIMKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
#: Seconds between rank 0's signs of life while the others wait for it.
HEARTBEAT_S = 2.0

_steps = [0]  # rank-0-first steps so far: every rank counts them alike


def active() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def timeout_seconds() -> float:
    """How long a rank may stay silent (``SWIMKIT_DIST_TIMEOUT`` seconds, default 300)."""
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise SwimkitError(f"{TIMEOUT_VARIABLE} must be a number of seconds > 0 (got {text!r})")
    return seconds


def silent(what: str) -> SwimkitError:
    """The error of a rank that stopped answering."""
    return SwimkitError(f"{what} did not answer within {timeout_seconds():g} s (stopped, "
                        f"wedged or killed); the job is ended: run it again (set "
                        f"{TIMEOUT_VARIABLE} to wait longer)")


def rank_zero_first(step: Callable[[], Any]) -> None:
    """Run ``step`` on rank 0 while the others wait; every rank raises if it failed.

    Used for work whose result rank 0 writes to files that the others then read
    (training, sensitivities).
    """
    if not active():
        step()
        return
    _steps[0] += 1
    key = f"swimkit/step/{_steps[0]}"
    store = _store()
    if is_rank_zero():
        error = _run_alive(step, store, key)
        store.set(f"{key}/done", "" if error is None else f"!{error}")
    else:
        error = _wait_for(store, key)
    if error is not None:
        raise SwimkitError(error)


def _run_alive(step: Callable[[], Any], store: Any, key: str) -> str | None:
    """Run ``step`` on rank 0, counting up ``key/alive`` meanwhile; its error, if any."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            store.add(f"{key}/alive", 1)

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        step()
        return None
    except SwimkitError as exc:  # under torchrun: the command line's wording
        return exc.command_line or str(exc)
    except Exception as exc:  # noqa: BLE001 - every rank learns of it
        return f"rank 0 failed: {type(exc).__name__}: {exc}"
    finally:
        stop.set()
        beating.join()


def _wait_for(store: Any, key: str) -> str | None:
    """Wait for rank 0 to finish step ``key``; its error, if any. Ends the job when rank
    0 says nothing for :func:`timeout_seconds`."""
    limit = timeout_seconds()
    beats, heard = -1, time.monotonic()
    while not store.check([f"{key}/done"]):
        now = store.add(f"{key}/alive", 0)
        if now != beats:
            beats, heard = now, time.monotonic()
        elif time.monotonic() - heard > limit:
            raise silent("rank 0")
        time.sleep(min(HEARTBEAT_S / 2, limit))
    done = store.get(f"{key}/done").decode()
    return done[1:] if done.startswith("!") else None


def _store() -> Any:
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()  # noqa: SLF001 - the group's own store


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's ``value`` (rank order); a rank silent for longer than
    :func:`timeout_seconds` ends the job with one line."""
    if not active():
        return [value]
    parts: list[Any] = [None] * world_size()
    try:
        dist.all_gather_object(parts, value)
    except RuntimeError as exc:
        if "timed out" in str(exc).lower() or "timeout" in str(exc).lower():
            raise silent("another rank") from None
        raise SwimkitError(f"a rank failed while the chips were gathered "
                           f"({first_line(exc)}); run the job again") from None
    return parts


def init_from_environment() -> bool:
    """Join the torchrun group when launched with several processes (gloo backend),
    with the bounded timeout of :func:`timeout_seconds`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return False
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_seconds()))
    return True


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


__all__ = ["DEFAULT_TIMEOUT_S", "TIMEOUT_VARIABLE", "T", "active", "all_gather_object",
           "init_from_environment", "is_rank_zero", "rank", "rank_zero_first", "shutdown",
           "silent", "timeout_seconds", "world_size"]
