"""SWIM on LeNet / Fashion-MNIST: the sensitivity pass and one Monte-Carlo sample.

Prints (a) seconds of the `swim` sensitivity pass over the 60,000 training images and
(b) seconds per Monte-Carlo sample over the 10,000 test images, with the thread count.
Targets on a 2-core CPU: (a) <= 10 s, (b) <= 0.25 s.

    python benchmarks/bench_swim.py [--device cuda] [--samples 20]
"""

from __future__ import annotations

import argparse

import torch
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
    device_model = swimkit.DeviceModel(sigma=0.3, sigma_verified=0.03)
    swimkit.evaluate(model, test, device_model, plan, samples=1)  # warm-up
    mc_seconds = timed(
        lambda: swimkit.evaluate(model, test, device_model, plan, samples=args.samples)
    ) / args.samples
    print(f"{args.model}: swim sensitivity pass over {sum(len(y) for _, y in train):,} "
          f"training images (batch {args.sens_batch_size}): {sens_seconds:.2f} s "
          f"(target <= 10 s)")
    print(f"{args.model}: Monte-Carlo sample over {sum(len(y) for _, y in test):,} test images "
          f"(batch {args.test_batch_size}): {mc_seconds:.3f} s per sample (target <= 0.25 s)")


if __name__ == "__main__":
    main()
