"""A trained model planned by swimkit with aihwkit's PCM model, and the same plans applied
inside aihwkit and evaluated there, beside swimkit's own chips.

    python examples/aihwkit_roundtrip.py --checkpoint runs/lenet-sa/train/best.pt \\
        --speedups 3,3.5 --samples 20 --times 1,3600,86400,31536000

Steps: aihwkit's ``TorchInferenceRPUConfig`` (PCM noise model, global drift compensation,
tiles of at most 512 inputs; an ideal periphery unless ``--converters``) -> swimkit's
device model and crossbar of it -> sensitivities (swim engine) -> plans (no verify, full
verify, ``allocate`` at each speedup) -> for each plan, swimkit's chips and aihwkit's
(the model converted with ``convert_to_analog``, the plan applied to its tiles, programmed
and drifted by aihwkit) at each time, with 95 % confidence intervals.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import swimkit
from swimkit.checkpoints import load_checkpoint
from swimkit.data import Batches, preload
from swimkit.interop.aihwkit import _lib, device_model_of
from swimkit.interop.aihwkit.crossbar import crossbar_of, rpu_config_of
from swimkit.interop.aihwkit.planned import aihwkit_chips, apply_plan


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
    args = parser.parse_args()
    times = [float(t) for t in args.times.split(",")]
    torch.set_num_threads(1)

    model, info = load_checkpoint(args.checkpoint, model_name=args.model, trusted=args.trusted)
    model.eval()
    dataset = swimkit.load_dataset("fashion-mnist")
    test = preload(dataset.test, dataset, batch_size=256)
    config = _lib.module("aihwkit.simulator.configs").TorchInferenceRPUConfig()
    if args.converters:
        enums = _lib.module("aihwkit.simulator.parameters.enums")
        config.forward.bound_management = enums.BoundManagementType.NONE
        config.mapping.weight_scaling_omega = 1.0
    else:
        config.forward.is_perfect = True
    device = device_model_of(config)
    crossbar = crossbar_of(config, model)
    on_chip = crossbar.wrap(device)
    print(f"model {args.checkpoint} ({info['format']}); clean "
          f"{swimkit.accuracy(model, test):.2f} %")
    print(f"device {device.kind}: plain sigma {device.sigma:.3f} steps at g_max, loop "
          f"tolerance {device.loop.tolerance:.3f}; {crossbar}")

    sens = swimkit.sensitivity(model, Batches(dataset.train, dataset, batch_size=128),
                               engine="swim")
    plans: dict[str, object] = {"no verify": "none", "full verify": "all"}
    for speedup in (float(s) for s in args.speedups.split(",")):
        plans[f"allocate {speedup:g}x"] = swimkit.select(
            model, sens, method="allocate", speedup=speedup, device_model=on_chip)
    values = {k: v for k, v in swimkit.mapping.effective_weights(
        swimkit.mapping.device_weights(model)).items()}
    head = " | ".join(f"{t:g} s" for t in times)
    print(f"\n| plan | speedup | by | {head} |\n|---|---:|---|{'---:|' * len(times)}")
    for label, plan in plans.items():
        if isinstance(plan, str):
            levels = swimkit.Plan.uniform(values, plan == "all", devices_per_weight=1)
            report = on_chip.programming_report(values, crossbar.scales(values), levels)
        else:
            levels, report = plan, plan.programming
        rows = []
        if not args.no_swimkit:
            start = time.time()
            ours = swimkit.evaluate(model, test, on_chip, plan, samples=args.samples, seed=0,
                                    times=times)
            rows.append(("swimkit", ours, time.time() - start))
        start = time.time()
        analog = _lib.module("aihwkit.nn.conversion").convert_to_analog(
            copy.deepcopy(model), rpu_config_of(crossbar, device))
        apply_plan(analog, levels, device)
        theirs = aihwkit_chips(analog, test, times=times, samples=args.samples, seed=0)
        rows.append(("aihwkit", theirs, time.time() - start))
        for by, results, seconds in rows:
            cells = " | ".join(f"{r.mean:.2f} +- {(r.ci95[1] - r.ci95[0]) / 2:.2f}"
                               for r in results)
            print(f"| {label} | {report.speedup:.2f}x | {by} ({args.samples} chips, "
                  f"{seconds:.0f} s) | {cells} |", flush=True)


if __name__ == "__main__":
    main()
