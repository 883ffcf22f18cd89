"""Where the time of the swim pass and of a chip goes: the top ops and their shares.

Per model, one `swim` sensitivity pass over ``--images`` training images (given in
batches of 128, run at the pass's own batch) and one Monte-Carlo chip over the test
images (at the evaluation batch), each under torch.profiler after a warm-up; prints the
ops with the largest shares of the CPU time (self time) and the total. LeNet and QLeNet
run on the real Fashion-MNIST when installed, ConvNet on random CIFAR-sized images.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/profile_swim.py \\
        [--models lenet,qlenet,convnet] [--images 10240] [--top 8]
"""

from __future__ import annotations

import argparse
import os

import torch
from bench_montecarlo import DEVICE_MODEL, load_line, test_batches
from common import machine_line
from torch.profiler import ProfilerActivity, profile

import swimkit
from swimkit import data as data_mod
from swimkit.chips import evaluation_batch_size


def shares(run, top: int) -> str:
    """The ``top`` ops by self CPU time of one call of ``run``, with their shares."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        run()
    ops = sorted(profiled.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1
    lines = [f"      {e.key.removeprefix('aten::'):40s} "
             f"{100 * e.self_cpu_time_total / total:5.1f} %  ({e.count} calls)" for e in ops[:top]]
    rest = sum(e.self_cpu_time_total for e in ops[top:])
    lines.append(f"      {'other':40s} {100 * rest / total:5.1f} %")
    return f"    total {total / 1e6:.3f} s profiled\n" + "\n".join(lines)


def profile_model(name: str, args: argparse.Namespace, device: torch.device) -> None:
    """The pass's and a chip's top ops for model ``name``."""
    model, dataset, note = test_batches(name, args, device)
    images = args.images if dataset.name == "fashion-mnist" else args.cifar_images
    train = data_mod.preload(dataset.train.head(images), dataset, 128, device)
    test = data_mod.preload(dataset.test, dataset, evaluation_batch_size(
        model, dataset.image_shape, device), device)
    swimkit.sensitivity(model, train[:2])
    swimkit.evaluate(model, test, DEVICE_MODEL, samples=1)
    print(f"\n{name}: swim pass over {images:,} training images")
    print(shares(lambda: swimkit.sensitivity(model, train), args.top))
    print(f"{name}: one chip over {note}")
    print(shares(lambda: swimkit.evaluate(model, test, DEVICE_MODEL, samples=1), args.top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet,qlenet,convnet")
    parser.add_argument("--images", type=int, default=10240, help="training images a pass")
    parser.add_argument("--cifar-images", type=int, default=512,
                        help="random CIFAR-sized images (ConvNet) a pass and a chip")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    print(machine_line())
    print(load_line())
    for name in filter(None, args.models.split(",")):
        profile_model(name, args, device)
    print(load_line())


if __name__ == "__main__":
    main()
