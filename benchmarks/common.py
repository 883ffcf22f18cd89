"""Shared helpers of the benchmark scripts: timing, peak memory, data, machine facts."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from swimkit import data as data_mod


def machine_line() -> str:
    """Torch version, thread count, CPU model and GPU (if any)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} CPUs ({cpu}), GPU: {gpu}")


def timed(fn: Callable[[], object], repeat: int = 1, warmup: int = 0) -> float:
    """Best wall-clock seconds of ``repeat`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[float, int]:
    """(seconds, peak extra bytes) of one call of ``fn``.

    On a GPU: the CUDA allocator's peak above what was allocated before. On the CPU:
    the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) above
    the resident set before the call.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        seconds = timed(fn)
        return seconds, torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    seconds = timed(fn)
    return seconds, (_status_kib("VmHWM") - before) * 1024


def fashion_mnist_or_random(n_train: int = 60_000, n_test: int = 10_000) -> data_mod.Dataset:
    """The real Fashion-MNIST when installed, else random images of the same shape."""
    try:
        return data_mod.load_dataset("fashion-mnist", download=False)
    except Exception:  # noqa: BLE001 - fall back to synthetic data of the same size
        print("(Fashion-MNIST not found: timing random images of the same shape)")
        return synthetic("fashion-mnist", (1, 28, 28), n_train, n_test, 10)


def synthetic(name: str, shape: tuple[int, int, int], n_train: int, n_test: int,
              classes: int) -> data_mod.Dataset:
    """Random uint8 images and labels shaped like a real dataset (for timing only)."""
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> data_mod.Split:
        return data_mod.Split(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen),
                              torch.randint(0, classes, (n,), generator=gen))

    mean = (0.5,) * shape[0]
    return data_mod.Dataset(name, split(n_train), split(n_test), classes, mean, mean, None)
