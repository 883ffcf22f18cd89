"""ConvNet and ResNet-18 on CIFAR-sized data: training epoch, Monte-Carlo sample, sensitivity.

Prints, per model, the time of one training epoch over 50,000 images (batch 128), of one
Monte-Carlo sample (a chip, at the evaluation batch the command line chooses) over 10,000
test images against a plain eager forward of the same images (batch 256, same process,
timed in turn), and of the `swim` sensitivity pass over 50,000 images, on random
CIFAR-sized data (the time does not depend on the pixels).

A CPU needs minutes per figure for ResNet-18, so by default each pass runs over a part
of the images (--train-images, --test-images) and the full-size time is scaled linearly
from it (the work per image is the same at a fixed batch size); the output says which.

    python benchmarks/bench_models.py [--device cuda] [--train-images 50000 --test-images 10000]
"""

from __future__ import annotations

import argparse

import torch
from bench_montecarlo import FLOOR_BATCH, chip_against_floor, load_line
from common import machine_line, synthetic, timed

import swimkit
from swimkit.chips import evaluation_batch_size
from swimkit.data import Batches, preload
from swimkit.training import TrainConfig, train

FULL_TRAIN, FULL_TEST = 50_000, 10_000


def scaled(seconds: float, measured: int, full: int) -> str:
    if measured == full:
        return f"{seconds:.1f} s"
    return f"{seconds * full / measured:.1f} s (scaled from {measured:,} images: {seconds:.1f} s)"


def bench(name: str, args: argparse.Namespace, device: torch.device) -> None:
    data = synthetic("cifar10-sized", (3, 32, 32), args.train_images, args.test_images, 10)
    model = swimkit.build_model(name, seed=0).to(device)
    config = TrainConfig(epochs=1, batch_size=128, augment=True)
    epoch = timed(lambda: train(model, data, config, model_name=name))
    model.eval()
    chosen = evaluation_batch_size(model, data.image_shape, device)
    versus = chip_against_floor(model, preload(data.test, data, chosen, device),
                                preload(data.test, data, FLOOR_BATCH, device), args.samples)
    batches = list(Batches(data.train, data, 128, where=device))
    sens = timed(lambda: swimkit.sensitivity(model, batches))
    print(f"{name}: training epoch {scaled(epoch, args.train_images, FULL_TRAIN)}; "
          f"Monte-Carlo sample (batch {chosen}) "
          f"{scaled(versus.chip_s, args.test_images, FULL_TEST)}, plain eager forward "
          f"(batch {FLOOR_BATCH}) {scaled(versus.plain_s, args.test_images, FULL_TEST)}: "
          f"{versus.ratio:.2f}; swim sensitivity pass "
          f"{scaled(sens, args.train_images, FULL_TRAIN)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="convnet,resnet18")
    parser.add_argument("--train-images", type=int, default=5120)
    parser.add_argument("--test-images", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    print(machine_line())
    print(load_line())
    for name in args.models.split(","):
        bench(name.strip(), args, torch.device(args.device))
    print(load_line())


if __name__ == "__main__":
    main()
