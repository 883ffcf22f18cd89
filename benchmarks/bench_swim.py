"""SWIM on LeNet / Fashion-MNIST: the sensitivity pass and one Monte-Carlo sample.

Prints (a) seconds of the `swim` sensitivity pass over the 60,000 training images and
(b) seconds per Monte-Carlo sample over the 10,000 test images, against a plain eager
forward of the same images in the same process (timed in turn), with the machine line.
Targets on a 2-core CPU: (a) <= 10 s, (b) <= 0.25 s and at most 0.6 of the plain forward.

    python benchmarks/bench_swim.py [--device cuda] [--samples 20]
"""

from __future__ import annotations

import argparse

import torch
from bench_montecarlo import chip_against_floor, load_line
from common import fashion_mnist_or_random, machine_line, timed

import swimkit
from swimkit import data as data_mod


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=20, help="Monte-Carlo samples timed")
    parser.add_argument("--sens-batch-size", type=int, default=128)
    parser.add_argument("--test-batch-size", type=int, default=256)
    parser.add_argument("--model", default="lenet", help="lenet or qlenet")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(machine_line())
    print(load_line())
    dataset = fashion_mnist_or_random()
    model = swimkit.build_model(args.model).to(device).eval()
    if swimkit.quantization.quantization_bits(model):
        model.train()
        model(data_mod.preload(dataset.train.head(512), dataset, 512, device)[0][0])
        model.eval()
    train = data_mod.preload(dataset.train, dataset, args.sens_batch_size, device)
    test = data_mod.preload(dataset.test, dataset, args.test_batch_size, device)

    sens_seconds = timed(lambda: swimkit.sensitivity(model, train), repeat=2, warmup=0)
    sens = swimkit.sensitivity(model, train)
    plan = swimkit.select(model, sens, fraction=0.1)
    versus = chip_against_floor(model, test, test, args.samples, repeat=2, plan=plan)
    print(f"{args.model}: swim sensitivity pass over {sum(len(y) for _, y in train):,} "
          f"training images (loader batch {args.sens_batch_size}): {sens_seconds:.2f} s "
          f"(target <= 10 s)")
    print(f"{args.model}: Monte-Carlo sample over {sum(len(y) for _, y in test):,} test images "
          f"(batch {args.test_batch_size}): {versus.chip_s:.3f} s per sample (target <= 0.25 s); "
          f"plain eager forward {versus.plain_s:.3f} s: {versus.ratio:.2f} (target <= 0.6)")


if __name__ == "__main__":
    main()
