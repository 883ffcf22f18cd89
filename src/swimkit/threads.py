"""How many CPU threads torch uses: this process's share of the cores, and a warning
when more are asked for (oversubscribed cores make every chip many times slower)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch

from .errors import SwimkitError


def machine_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE, else 1)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_threads() -> int:
    """This process's share of the cores: the CPUs it may use over the local processes."""
    return max(1, machine_threads() // local_processes())


#: Threads beyond this many per core are refused (they only oversubscribe the cores).
MAX_THREADS_PER_CORE = 32


def check_threads(threads: int | None) -> int:
    """``threads``, or this process's share of the cores when None; warns when the
    threads of all local processes exceed the cores."""
    if threads is None:
        return process_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise SwimkitError(f"threads must be an integer >= 1 (got {threads!r})",
                           command_line=f"--threads must be >= 1 (got {threads!r})")
    cores, processes = machine_threads(), local_processes()
    if threads > MAX_THREADS_PER_CORE * cores:
        raise SwimkitError(
            f"threads={threads} is more than {MAX_THREADS_PER_CORE} per core on this machine's "
            f"{cores} cores: that only slows the run (and can exhaust the OpenMP runtime); "
            f"use at most {cores}",
            command_line=f"--threads {threads} is more than {MAX_THREADS_PER_CORE} per core "
                         f"({cores} cores here); use at most {cores}")
    if threads * processes > cores:
        warnings.warn(f"{threads} threads x {processes} process(es) on {cores} cores: the "
                      f"cores are oversubscribed and every chip runs slower; use --threads "
                      f"{max(1, cores // processes)}", stacklevel=3)
    return threads


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on ``count`` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["check_threads", "local_processes", "machine_threads", "process_threads",
           "torch_threads"]
