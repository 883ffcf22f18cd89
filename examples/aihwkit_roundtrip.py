"""A trained model planned by swimkit with aihwkit's PCM model, and the same plans applied
inside aihwkit and evaluated there, beside swimkit's own chips.

    python examples/aihwkit_roundtrip.py --checkpoint runs/lenet-sa/train/best.pt \\
        --speedups 3,3.5 --samples 20 --times 1,3600,86400,31536000
    python examples/aihwkit_roundtrip.py --checkpoint ... --quick   # a minute: 2 chips,
                                                                   # 5,000 images each way

Steps: aihwkit's ``TorchInferenceRPUConfig`` (PCM noise model, global drift compensation,
tiles of at most 512 inputs; an ideal periphery unless ``--converters``) -> swimkit's chip
of it (``chip_of``: the device model and the crossbar) -> sensitivities (swim engine) ->
plans (no verify, full verify, ``allocate`` at each speedup) -> for each plan, swimkit's
chips and aihwkit's (the model converted with ``convert_to_analog`` and the chip's
``rpu_config``, the plan applied to its tiles, programmed and drifted by aihwkit) at each
time, with 95 % confidence intervals.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import swimkit
from swimkit.checkpoints import load_checkpoint
from swimkit.data import Batches, preload
from swimkit.interop.aihwkit import _lib, chip_of, rpu_config_of
from swimkit.interop.aihwkit.planned import aihwkit_chips, apply_plan
from swimkit.mapping import effective_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model", default=None, help="the model a foreign file holds")
    parser.add_argument("--trusted", action="store_true")
    parser.add_argument("--speedups", default="3")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--times", default="1,3600,86400,31536000")
    parser.add_argument("--converters", action="store_true",
                        help="aihwkit's default converters (bound management off, omega 1)")
    parser.add_argument("--no-swimkit", action="store_true", help="aihwkit's chips only")
    parser.add_argument("--quick", action="store_true",
                        help="a check that it runs: 5,000 training and test images, 2 chips")
    args = parser.parse_args()
    times = [float(t) for t in args.times.split(",")]
    samples = 2 if args.quick else args.samples
    torch.set_num_threads(1)

    model, info = load_checkpoint(args.checkpoint, model_name=args.model, trusted=args.trusted)
    model.eval()
    dataset = swimkit.load_dataset("fashion-mnist")
    if args.quick:
        dataset = dataset.subset(n_train=5000, n_test=5000)
    test = preload(dataset.test, dataset, batch_size=256)
    config = _lib.module("aihwkit.simulator.configs").TorchInferenceRPUConfig()
    if args.converters:
        enums = _lib.module("aihwkit.simulator.parameters.enums")
        config.forward.bound_management = enums.BoundManagementType.NONE
        config.mapping.weight_scaling_omega = 1.0
    else:
        config.forward.is_perfect = True
    chip = chip_of(config, model)  # aihwkit's noise model, tiling, ranges and converters
    device = chip.device_model
    print(f"model {args.checkpoint} ({info['format']}); clean "
          f"{swimkit.accuracy(model, test):.2f} %")
    print(f"device {device.kind}: plain sigma {device.sigma:.3f} steps at g_max, loop "
          f"tolerance {device.loop.tolerance:.3f}; {chip.crossbar}")

    sens = swimkit.sensitivity(model, Batches(dataset.train, dataset, batch_size=128),
                               engine="swim", chip=chip)
    plans: dict[str, swimkit.Plan] = {}
    values = effective_weights(chip.weights(chip.held(model)))
    for label, verify in (("no verify", False), ("full verify", True)):  # priced on the chip
        plans[label] = chip.priced(swimkit.Plan.uniform(values, verify, devices_per_weight=1),
                                   model)
    for speedup in (float(s) for s in args.speedups.split(",")):
        plans[f"allocate {speedup:g}x"] = swimkit.select(
            model, sens, chip=chip, method="allocate", speedup=speedup)
    head = " | ".join(f"{t:g} s" for t in times)
    print(f"\n| plan | speedup | by | {head} |\n|---|---:|---|{'---:|' * len(times)}")
    for label, plan in plans.items():
        rows = []
        if not args.no_swimkit:
            start = time.time()
            ours = swimkit.evaluate(model, test, chip, plan, samples=samples, seed=0,
                                    times=times)
            rows.append(("swimkit", ours, time.time() - start))
        start = time.time()
        analog = _lib.module("aihwkit.nn.conversion").convert_to_analog(
            copy.deepcopy(model), rpu_config_of(chip))
        apply_plan(analog, plan, chip)
        theirs = aihwkit_chips(analog, test, times=times, samples=samples, seed=0)
        rows.append(("aihwkit", theirs, time.time() - start))
        for by, results, seconds in rows:
            cells = " | ".join(f"{r.mean:.2f} +- {(r.ci95[1] - r.ci95[0]) / 2:.2f}"
                               for r in results)
            print(f"| {label} | {plan.programming.speedup:.2f}x | {by} ({samples} chips, "
                  f"{seconds:.0f} s) | {cells} |", flush=True)


if __name__ == "__main__":
    main()
