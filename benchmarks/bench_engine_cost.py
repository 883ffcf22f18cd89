"""Cost of the `swim` engine relative to a plain forward + backward pass.

For LeNet (1x28x28) and ResNet-18 (3x32x32, CIFAR-sized) prints the time and the peak
memory of one `swim` sensitivity pass and of a plain training-style forward + backward
pass over the same batches, and their ratios (targets: time at most 1.8x, memory 3x).

    python benchmarks/bench_engine_cost.py [--device cuda] [--images 2048]

The two times are measured in one process, interleaved (best of three each); each memory
reading runs in a fresh process of its own, so that peak-memory readings do not mix. On the
CPU the peak is the resident set's high-water mark above the level before the pass, with
glibc told to map every block over 64 KiB on its own (MALLOC_MMAP_THRESHOLD_), so freed
tensors leave the resident set at once and the mark follows the live tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from common import machine_line, peak_memory, timed

import swimkit

SHAPES = {"lenet": (1, 28, 28), "vit": (1, 28, 28), "resnet18": (3, 32, 32)}


def batches(model_name: str, images: int, batch: int, device: torch.device) -> list:
    gen = torch.Generator().manual_seed(0)
    shape = SHAPES[model_name]
    return [
        (torch.randn(batch, *shape, generator=gen).to(device),
         torch.randint(0, 10, (batch,), generator=gen).to(device))
        for _ in range(images // batch)
    ]


def plain_pass(model: torch.nn.Module, data: list) -> None:
    for x, y in data:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()


def measure(model_name: str, what: str, images: int, batch: int, device_name: str) -> dict:
    """Seconds (best of 2 after a warm-up) or peak extra bytes of one pass."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = swimkit.build_model(model_name).to(device).eval()
    data = batches(model_name, images, batch, device)
    passes = {"plain": lambda: plain_pass(model, data),
              "swim": lambda: swimkit.sensitivity(model, data)}
    if what == "time":  # both in this process, interleaved, best of three each
        for run in passes.values():
            run()
        best = {kind: float("inf") for kind in passes}
        for _ in range(3):
            for kind, run in passes.items():
                best[kind] = min(best[kind], timed(run))
        return {f"{kind}_seconds": seconds for kind, seconds in best.items()}
    kind = what.split("-")[0]
    passes[kind]()  # warm-up: one-time allocations (thread pools, kernels) are not the pass's
    return {f"{kind}_peak_bytes": peak_memory(passes[kind], device)[1]}


def child(args: argparse.Namespace, model_name: str, what: str, images: int) -> dict:
    """Run one measurement in a fresh process (memory ones with mmap'd blocks)."""
    cmd = [sys.executable, __file__, "--child", model_name, what, "--images", str(images),
           "--batch", str(args.batch), "--device", args.device]
    env = dict(os.environ)
    if what.endswith("memory"):
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


#: Images per pass of each model unless --images is given.
DEFAULT_IMAGES = {"lenet": 10240, "vit": 2048, "resnet18": 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=None,
                        help="images per pass (default 10240 LeNet, 1024 ResNet-18)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default="lenet,resnet18",
                        help="comma-separated, of: " + ", ".join(DEFAULT_IMAGES))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.images, args.batch,
                                 args.device)))
        return
    print(machine_line())
    for model_name in args.models.split(","):
        images = args.images or DEFAULT_IMAGES[model_name]
        got = child(args, model_name, "time", images)
        for kind in ("plain", "swim"):
            got.update(child(args, model_name, f"{kind}-memory", images))
        mib = 2**20
        print(f"{model_name}: {images} images, batch {args.batch}: "
              f"forward+backward {got['plain_seconds']:.2f} s, "
              f"peak {got['plain_peak_bytes'] / mib:.0f} MiB; swim {got['swim_seconds']:.2f} s, "
              f"peak {got['swim_peak_bytes'] / mib:.0f} MiB; "
              f"time ratio {got['swim_seconds'] / got['plain_seconds']:.2f}x (target <= 1.8x), "
              f"memory ratio {got['swim_peak_bytes'] / max(got['plain_peak_bytes'], 1):.2f}x "
              f"(target <= 3x)")


if __name__ == "__main__":
    main()
