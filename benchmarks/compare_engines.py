"""What SWIM's approximation costs: the `swim` engine against the exact `ggn` diagonal.

For LeNet and the ViT on Fashion-MNIST (trained checkpoints if given, else trained here
for a few epochs) and ResNet-18 (a checkpoint trained on Fashion-MNIST if given, else on
CIFAR-sized random images, briefly trained so the curvature is not that of a random
network), prints for the second derivative h:
- the Spearman rank correlation between the two engines over all device weights,
- the overlap of their top-10% sets (|A & B| / |A|),
- and the time of each engine over the same images;
and for the ViT and ResNet-18 the Spearman correlation per layer (attention's dropped
cross terms and the skip connections add up with depth, so the agreement is reported
where it varies).

    python benchmarks/compare_engines.py [--lenet-checkpoint runs/.../best.pt]
        [--vit-checkpoint runs/.../best.pt] [--resnet-checkpoint runs/.../best.pt]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import fashion_mnist_or_random, machine_line, synthetic
from scipy.stats import spearmanr

import swimkit
from swimkit.data import Batches
from swimkit.training import TrainConfig, train


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation (scipy's, ties averaged)."""
    return float(spearmanr(a.double().numpy(), b.double().numpy()).statistic)


def top_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1) -> float:
    k = round(fraction * a.numel())
    top_a = set(torch.topk(a, k).indices.tolist())
    top_b = set(torch.topk(b, k).indices.tolist())
    return len(top_a & top_b) / k


def flat(sens: swimkit.Sensitivity) -> torch.Tensor:
    return torch.cat([h.reshape(-1) for h in sens.second.values()])


def compare(name: str, model: torch.nn.Module, batches, per_layer: bool = False) -> None:
    timings, results = {}, {}
    for engine in ("swim", "ggn"):
        start = time.perf_counter()
        results[engine] = swimkit.sensitivity(model, batches, engine=engine)
        timings[engine] = time.perf_counter() - start
    swim, ggn = flat(results["swim"]), flat(results["ggn"])
    images = results["swim"].samples
    print(f"{name}: {swim.numel():,} weights, {images:,} images: "
          f"Spearman(swim, ggn) = {spearman(swim, ggn):.3f}, "
          f"top-10% overlap = {100 * top_overlap(swim, ggn):.1f} %, "
          f"time swim {timings['swim']:.2f} s, ggn {timings['ggn']:.2f} s "
          f"({timings['ggn'] / timings['swim']:.1f}x)")
    if per_layer:
        for layer in results["swim"].names:
            rho = spearman(results["swim"].second[layer].reshape(-1),
                           results["ggn"].second[layer].reshape(-1))
            print(f"  {layer:45s} Spearman {rho:.3f}")


def trained(name: str, checkpoint: str | None, data, epochs: int) -> torch.nn.Module:
    """The checkpoint's model, or ``name`` trained here for ``epochs``."""
    if checkpoint:
        return swimkit.checkpoints.load_checkpoint(checkpoint)[0]
    model = swimkit.build_model(name, seed=0)
    train(model, data, TrainConfig(epochs=epochs))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lenet-checkpoint", default=None)
    parser.add_argument("--vit-checkpoint", default=None)
    parser.add_argument("--resnet-checkpoint", default=None,
                        help="a ResNet-18 trained on Fashion-MNIST (else one trained here "
                             "on CIFAR-sized random images)")
    parser.add_argument("--lenet-images", type=int, default=10_000)
    parser.add_argument("--vit-images", type=int, default=2_000)
    parser.add_argument("--resnet-images", type=int, default=256)
    parser.add_argument("--models", default="lenet,vit,resnet18",
                        help="comma-separated, of: lenet, vit, resnet18")
    args = parser.parse_args()
    models = args.models.split(",")
    print(machine_line())

    fmnist = fashion_mnist_or_random()
    if "lenet" in models:
        lenet = trained("lenet", args.lenet_checkpoint, fmnist, 2)
        subset = fmnist.subset(n_train=args.lenet_images)
        compare("lenet / fashion-mnist", lenet.eval(), Batches(subset.train, subset, 128))
    if "vit" in models:
        vit = trained("vit", args.vit_checkpoint, fmnist, 1)
        subset = fmnist.subset(n_train=args.vit_images)
        compare("vit / fashion-mnist", vit.eval(), Batches(subset.train, subset, 128),
                per_layer=True)
    if "resnet18" not in models:
        return
    if args.resnet_checkpoint:
        resnet = trained("resnet18", args.resnet_checkpoint, fmnist, 0)
        subset = fmnist.subset(n_train=args.resnet_images)
        compare("resnet18 / fashion-mnist", resnet.eval(), Batches(subset.train, subset, 64),
                per_layer=True)
        return
    cifar = synthetic("cifar10-sized", (3, 32, 32), 1024, 128, 10)
    resnet = swimkit.build_model("resnet18", seed=0)
    train(resnet, cifar, TrainConfig(epochs=1, batch_size=64))
    small = cifar.subset(n_train=args.resnet_images)
    compare("resnet18 / cifar-sized", resnet.eval(), Batches(small.train, small, 64))


if __name__ == "__main__":
    main()
