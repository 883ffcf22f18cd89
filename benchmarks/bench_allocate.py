"""Device-level planning: how long `allocate` takes, and what a device-level plan costs
a Monte-Carlo chip.

Prints, for LeNet (106k weights, 0.85 M devices) and ResNet-18 (11.2 M weights,
89 M devices) with synthetic sensitivities (planning does not depend on their values):
- seconds and peak memory (RSS high-water mark above the start) of `allocate` at a 10x
  speedup with the
  default menu, for uniform devices and for U-SWIM's band model (two device kinds);
- for LeNet on Fashion-MNIST (real data if installed), seconds per Monte-Carlo chip with
  a device-level plan against a weight-level one (the spread per weight is computed
  once per evaluation, so both should cost the same).

    python benchmarks/bench_allocate.py [--skip-resnet] [--samples 20]
"""

from __future__ import annotations

import argparse

import torch
from common import fashion_mnist_or_random, machine_line, peak_memory, timed

import swimkit
from swimkit import data as data_mod
from swimkit.sensitivity import Sensitivity


def synthetic_sensitivity(model: torch.nn.Module) -> Sensitivity:
    """Log-normal h (the shape real h has: a few very sensitive weights), zero g."""
    gen = torch.Generator().manual_seed(0)
    weights = swimkit.device_weights(model)
    second = {k: torch.exp(2 * torch.randn(w.value.shape, generator=gen)) for k, w in
              weights.items()}
    first = {k: torch.zeros_like(v) for k, v in second.items()}
    scale = {k: w.value.detach().abs().amax() for k, w in weights.items()}
    return Sensitivity(second, first, scale, engine="synthetic", samples=1)


def plan_timing(name: str, variation: str | None) -> None:
    model = swimkit.build_model(name, seed=0).eval()
    sens = synthetic_sensitivity(model)
    dm = swimkit.DeviceModel(variation=variation)
    plans = []
    seconds, peak = peak_memory(lambda: plans.append(swimkit.select(
        model, sens, method="allocate", speedup=10.0, device_model=dm)), torch.device("cpu"))
    plan = plans[0]
    kind = "band:3" if variation else "uniform"
    print(f"{name} ({plan.weights_total:,} weights, {plan.devices_total:,} devices, {kind}): "
          f"allocate at 10x {seconds:.2f} s, peak memory +{peak / 2**20:.0f} MiB, speedup "
          f"{plan.programming.speedup:.3f}x, {plan.devices_verified:,} devices verified")


def chip_timing(samples: int) -> None:
    dataset = fashion_mnist_or_random()
    model = swimkit.build_model("lenet", seed=0).eval()
    test = data_mod.preload(dataset.test, dataset, 256)
    sens = synthetic_sensitivity(model)
    dm = swimkit.DeviceModel()
    plans = {"weight-level (swim 10%)": swimkit.select(model, sens, fraction=0.1),
             "device-level (allocate 10x)": swimkit.select(model, sens, method="allocate",
                                                           speedup=10.0)}
    for label, plan in plans.items():
        swimkit.evaluate(model, test, dm, plan, samples=1)
        per_chip = timed(lambda p=plan: swimkit.evaluate(model, test, dm, p,
                                                         samples=samples)) / samples
        print(f"lenet Monte-Carlo chip over {sum(len(y) for _, y in test):,} test images, "
              f"{label}: {per_chip:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    print(machine_line())
    for name in ("lenet",) + (() if args.skip_resnet else ("resnet18",)):
        for variation in (None, "band:3"):
            plan_timing(name, variation)
    chip_timing(args.samples)


if __name__ == "__main__":
    main()
