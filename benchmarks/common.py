"""Shared helpers of the benchmark scripts: timing, peak memory, data, machine facts."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

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


class _FlopCount(TorchDispatchMode):
    """Sums the FLOPs of every ATen op that :mod:`torch.utils.flop_counter` knows
    (matrix products, convolutions and their backward), without module hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func.overloadpacket)
        if count is not None:
            self.flops += int(count(*args, **kwargs, out_val=out))
        return out


def flops(fn: Callable[[], object]) -> int:
    """The matrix-product and convolution FLOPs of one call of ``fn`` (the arithmetic
    that bounds its time; element-wise ops are not counted)."""
    with _FlopCount() as counter:
        fn()
    return counter.flops


def peak_gflops(device: torch.device) -> float:
    """This machine's measured arithmetic peak (GFLOP/s, the current thread count): the
    fastest of 3x3 convolutions of ResNet-18's widths (batch 16: 128 channels at 16x16,
    256 at 8x8, 512 at 4x4; best of 30 each) and a 2048-square matrix product (best of 5).
    Convolution speed grows with the channels here, so no one shape stands for all."""
    gen = torch.Generator().manual_seed(0)
    rates = []
    with torch.inference_mode():
        for channels, size in ((128, 16), (256, 8), (512, 4)):
            x = torch.randn(16, channels, size, size, generator=gen).to(device)
            w = torch.randn(channels, channels, 3, 3, generator=gen).to(device)
            seconds = timed(lambda x=x, w=w: torch.conv2d(x, w, padding=1), repeat=30, warmup=3)
            rates.append(2 * 16 * size * size * channels * channels * 9 / seconds)
        a, b = (torch.randn(2048, 2048, generator=gen).to(device) for _ in range(2))
        rates.append(2 * 2048**3 / timed(lambda: a @ b, repeat=5, warmup=1))
    return max(rates) / 1e9
