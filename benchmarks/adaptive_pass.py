"""The sensitivity pass that stops when the plan is known, against the full pass.

For a trained checkpoint on the real Fashion-MNIST: the full pass over the training images
and the pass with ``stop_tolerance`` (its images, checks and time), the plans each gives at
one speedup (``allocate`` and ``swim`` by default), the share of devices both plans give
the same level, and both plans judged on the same chips (common random numbers): the
paired per-chip difference, adaptive minus full, with its 95 % CI.

    OMP_NUM_THREADS=1 python benchmarks/adaptive_pass.py runs/lenet/train/best.pt \\
        [--engine ggn] [--tolerance 0.02] [--speedup 10] [--chips 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import machine_line

import swimkit
from swimkit import data as data_mod
from swimkit.checkpoints import load_checkpoint
from swimkit.chips import evaluation_batch_size


def equal_levels(a: swimkit.Plan, b: swimkit.Plan) -> float:
    """The share of devices two plans of one model give the same level."""
    same = sum(int((a.levels[n] == b.levels[n]).sum()) for n in a.names)
    return same / sum(a.levels[n].numel() for n in a.names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--trusted", action="store_true", help="the checkpoint holds pickles")
    parser.add_argument("--engine", default="swim")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--train-limit", type=int, default=60_000)
    parser.add_argument("--test-limit", type=int, default=10_000)
    parser.add_argument("--methods", default="allocate,swim")
    parser.add_argument("--speedup", type=float, default=10.0)
    parser.add_argument("--chips", type=int, default=50)
    parser.add_argument("--batchnorm", default="digital", choices=("digital", "folded"))
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    print(machine_line())

    model = load_checkpoint(args.checkpoint, trusted=args.trusted)[0].eval()
    dataset = swimkit.load_dataset("fashion-mnist", download=False)
    cpu = torch.device("cpu")
    train = data_mod.preload(dataset.train.head(args.train_limit), dataset, 128, cpu)
    test = data_mod.preload(dataset.test.head(args.test_limit), dataset,
                            evaluation_batch_size(model, dataset.image_shape, cpu), cpu)
    chip = swimkit.ChipSpec(swimkit.GaussianDevice(sigma=0.3, sigma_verified=0.03),
                            placement=swimkit.Placement(batchnorm=args.batchnorm))
    out: dict = {"checkpoint": args.checkpoint, "engine": args.engine}
    sensitivities = {}
    for kind, extra in (("full", {}), ("adaptive", {"stop_tolerance": args.tolerance})):
        start = time.perf_counter()
        sensitivities[kind] = swimkit.sensitivity(model, train, args.engine, chip=chip, **extra)
        out[kind] = {"images": sensitivities[kind].samples,
                     "seconds": time.perf_counter() - start}
        print(f"{kind} pass: {out[kind]['images']:,} images, {out[kind]['seconds']:.1f} s",
              flush=True)
    out["checks"] = sensitivities["adaptive"].meta.get("checks")
    for method in args.methods.split(","):
        plans = {kind: swimkit.select(model, sens, method=method, speedup=args.speedup,
                                      chip=chip) for kind, sens in sensitivities.items()}
        judged = {kind: swimkit.evaluate(model, test, chip, plan, samples=args.chips,
                                         ci_target=0) for kind, plan in plans.items()}
        difference = judged["adaptive"].paired_difference(judged["full"])
        low, high = difference.ci95
        levels = equal_levels(plans["full"], plans["adaptive"])
        print(f"{method} {args.speedup:g}x: full-pass plan {judged['full'].mean:.2f} %, "
              f"adaptive plan {judged['adaptive'].mean:.2f} %, paired difference "
              f"{difference.mean:+.2f} (95 % CI {low:+.2f} to {high:+.2f}; {args.chips} chips), "
              f"device levels equal {100 * levels:.2f} %", flush=True)
        out[method] = {"full_percent": judged["full"].mean,
                       "adaptive_percent": judged["adaptive"].mean,
                       "difference_points": difference.mean, "ci95_points": [low, high],
                       "levels_equal": levels}
    if args.json:
        with open(args.json, "w") as file:
            json.dump(out, file, indent=1)


if __name__ == "__main__":
    main()
