"""Cost of the `swim` engine relative to a plain forward + backward pass.

For LeNet (1x28x28) and ResNet-18 (3x32x32, CIFAR-sized) prints the time and the peak
memory of one `swim` sensitivity pass and of a plain training-style forward + backward
pass over the same batches, and their ratios (target: at most 3x each).

    python benchmarks/bench_engine_cost.py [--device cuda] [--images 2048]

Each measurement runs in a fresh process so that peak-memory readings do not mix.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
import torch.nn.functional as F
from common import machine_line, peak_memory

import swimkit

SHAPES = {"lenet": (1, 28, 28), "resnet18": (3, 32, 32)}


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
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = swimkit.build_model(model_name).to(device).eval()
    data = batches(model_name, images, batch, device)
    if what == "plain":
        plain_pass(model, data[:1])  # warm-up
        seconds, peak = peak_memory(lambda: plain_pass(model, data), device)
    else:
        swimkit.sensitivity(model, data[:1])
        seconds, peak = peak_memory(lambda: swimkit.sensitivity(model, data), device)
    return {"seconds": seconds, "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=None,
                        help="images per pass (default 10240 LeNet, 1024 ResNet-18)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.images, args.batch,
                                 args.device)))
        return
    print(machine_line())
    for model_name, default_images in (("lenet", 10240), ("resnet18", 1024)):
        images = args.images or default_images
        got = {}
        for what in ("plain", "swim"):
            cmd = [sys.executable, __file__, "--child", model_name, what, "--images",
                   str(images), "--batch", str(args.batch), "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            got[what] = json.loads(out.strip().splitlines()[-1])
        plain, swim = got["plain"], got["swim"]
        mib = 2**20
        print(f"{model_name}: {images} images, batch {args.batch}: "
              f"forward+backward {plain['seconds']:.2f} s, "
              f"peak {plain['peak_bytes'] / mib:.0f} MiB; swim {swim['seconds']:.2f} s, "
              f"peak {swim['peak_bytes'] / mib:.0f} MiB; "
              f"time ratio {swim['seconds'] / plain['seconds']:.2f}x, "
              f"memory ratio {swim['peak_bytes'] / max(plain['peak_bytes'], 1):.2f}x "
              f"(targets <= 3x)")


if __name__ == "__main__":
    main()
