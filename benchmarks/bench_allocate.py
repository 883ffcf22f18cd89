"""Device-level planning: what `allocate` and `learned` cost, each against its floor.

Prints the machine line and the load, then per model (LeNet: 106k weights, 0.85 M
devices; ResNet-18 on 3x32x32: 11.2 M weights, 89 M devices), with synthetic
sensitivities (planning does not depend on their values) and random images:

- the floors, measured in this run on a few batches and scaled to the model's training
  set (60,000 Fashion-MNIST images for LeNet, 50,000 CIFAR-10 images for ResNet-18): one
  `swim` sensitivity pass, and a plain forward + backward pass;
- `allocate` at a 10x speedup with the default menu, per device model (uniform Gaussian,
  U-SWIM's band:3, pcm): seconds and peak memory (resident set above the start), and the
  seconds as a ratio to both floors;
- `learned` at 10x (one epoch) on two numbers of batches: its seconds per batch against
  a plain forward + backward of the same batches in the same process (the floor of a
  method that trains), its fixed cost (hulls, allocate's start, rounding) and peak memory,
  and an epoch over the training set against the sensitivity pass;
- for LeNet, seconds per Monte-Carlo chip with a device-level plan against a weight-level
  one (the spread per weight is computed once per evaluation, so both should cost the same).

Every measurement runs in a fresh process with glibc mapping every block over 64 KiB on
its own (so freed tensors leave the resident set at once) and an address-space limit
(``--memory-limit``), so that a planner that needs more memory fails alone.

    python benchmarks/bench_allocate.py [--models lenet,resnet18] [--devices uniform,pcm]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import fashion_mnist_or_random, machine_line, peak_memory, timed

import swimkit
from swimkit import data as data_mod
from swimkit.sensitivity import Sensitivity

SHAPES = {"lenet": (1, 28, 28), "resnet18": (3, 32, 32)}
#: Images in each model's training set: what a sensitivity pass or an epoch goes over.
TRAIN_IMAGES = {"lenet": 60_000, "resnet18": 50_000}
DEVICES: dict[str, Callable[[], object]] = {
    "uniform": lambda: swimkit.DeviceModel(),
    "band:3": lambda: swimkit.build_device_model("band", r=3.0),
    "pcm": lambda: swimkit.build_device_model("pcm"),
}
#: The speedup planned for: 10x, and 5x for pcm (writing every device once is 6.9x there).
SPEEDUPS = {"uniform": 10.0, "band:3": 10.0, "pcm": 5.0}
SPEEDUP = 10.0
MIB = 2**20


def synthetic_sensitivity(model: torch.nn.Module) -> Sensitivity:
    """Log-normal h (the shape real h has: a few very sensitive weights), zero g."""
    gen = torch.Generator().manual_seed(0)
    weights = swimkit.device_weights(model)
    second = {k: torch.exp(2 * torch.randn(w.value.shape, generator=gen)) for k, w in
              weights.items()}
    first = {k: torch.zeros_like(v) for k, v in second.items()}
    scale = {k: w.value.detach().abs().amax() for k, w in weights.items()}
    return Sensitivity(second, first, scale, engine="synthetic", samples=1)


def random_batches(model_name: str, count: int, batch: int) -> list:
    """``count`` batches of random images shaped like the model's dataset."""
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, *SHAPES[model_name], generator=gen),
             torch.randint(0, 10, (batch,), generator=gen)) for _ in range(count)]


def plain_pass(model: torch.nn.Module, batches: list) -> None:
    """A training-style forward and backward over ``batches`` (weight gradients)."""
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)


def model_of(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return swimkit.build_model(name, seed=0).eval()


# --- the measurements, each in a process of its own -----------------------------------------


def measure_floors(name: str, batches: int, batch: int) -> dict:
    """Seconds per image of a swim sensitivity pass and of a plain forward + backward,
    interleaved, best of two after a warm-up each."""
    model = model_of(name)
    data = random_batches(name, batches, batch)
    passes = {"swim": lambda: swimkit.sensitivity(model, data),
              "plain": lambda: plain_pass(model, data)}
    for run in passes.values():
        run()
    best = {kind: float("inf") for kind in passes}
    for _ in range(2):
        for kind, run in passes.items():
            best[kind] = min(best[kind], timed(run))
    images = batches * batch
    return {f"{kind}_per_image": seconds / images for kind, seconds in best.items()}


def measure_allocate(name: str, device: str, memory: bool) -> dict:
    """Seconds of allocate with the plan's figures; with ``memory``, its peak extra bytes."""
    model = model_of(name)
    sens = synthetic_sensitivity(model)
    dm = DEVICES[device]()
    plans = []
    seconds, peak = peak_memory(lambda: plans.append(swimkit.select(
        model, sens, method="allocate", speedup=SPEEDUPS[device], chip=dm)),
        torch.device("cpu"))
    if memory:
        return {"peak": peak}
    plan = plans[0]
    return {"seconds": seconds, "devices": plan.devices_total,
            "verified": plan.devices_verified, "speedup": plan.programming.speedup}


def measure_learned(name: str, device: str, counts: list[int], batch: int,
                    memory: bool) -> dict:
    """learned at 10x, one epoch, on each number of batches in ``counts`` and the plain
    forward + backward of the same batches (best of two); with ``memory``, the peak extra
    bytes of the largest count alone."""
    model = model_of(name)
    sens = synthetic_sensitivity(model)
    dm = DEVICES[device]()
    data = random_batches(name, max(counts), batch)

    def learn(count: int) -> None:
        swimkit.select(model, sens, method="learned", speedup=SPEEDUPS[device], chip=dm,
                       data=data[:count], options={"epochs": 1})

    if memory:
        return {"peak": peak_memory(lambda: learn(max(counts)), torch.device("cpu"))[1]}
    plain_pass(model, data[:1])
    plain = timed(lambda: plain_pass(model, data), repeat=2) / len(data)
    return {"plain_per_batch": plain,
            "seconds": {count: timed(lambda c=count: learn(c)) for count in sorted(counts)}}


def measure_chips(samples: int) -> dict:
    """LeNet seconds per Monte-Carlo chip with a weight-level and a device-level plan."""
    dataset = fashion_mnist_or_random()
    model = model_of("lenet")
    test = data_mod.preload(dataset.test, dataset, 256)
    sens = synthetic_sensitivity(model)
    dm = swimkit.DeviceModel()
    plans = {"weight": swimkit.select(model, sens, fraction=0.1),
             "device": swimkit.select(model, sens, method="allocate", speedup=SPEEDUP)}
    out = {"images": sum(len(y) for _, y in test)}
    for label, plan in plans.items():
        swimkit.evaluate(model, test, dm, plan, samples=1)
        out[label] = timed(lambda p=plan: swimkit.evaluate(model, test, dm, p,
                                                           samples=samples)) / samples
    return out


def run_child(args: argparse.Namespace) -> dict:
    what, *rest = args.child
    if what == "floors":
        return measure_floors(rest[0], args.floor_batches, args.batch)
    if what == "allocate":
        return measure_allocate(rest[0], rest[1], args.memory)
    if what == "learned":
        return measure_learned(rest[0], rest[1], args.learn_batches, args.batch, args.memory)
    return measure_chips(args.samples)


def child(args: argparse.Namespace, *what: str, memory: bool = False) -> dict:
    """One measurement in a fresh process; {"error": ...} if it failed (memory, say).
    ``memory``: the process maps every block over 64 KiB on its own (its peak then
    follows the live tensors; its times would pay for the page faults)."""
    cmd = [sys.executable, __file__, "--child", *what, "--batch", str(args.batch),
           "--floor-batches", str(args.floor_batches), "--samples", str(args.samples),
           "--learn-batches", ",".join(map(str, args.learn_batches)),
           "--memory-limit", str(args.memory_limit)] + (["--memory"] if memory else [])
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": "65536"} if memory else {})}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_and_peak(args: argparse.Namespace, *what: str) -> dict:
    """The times of one child and the peak memory of another."""
    timing = child(args, *what)
    if "error" in timing:
        return timing
    peak = child(args, *what, memory=True)
    return {**timing, **peak}


# --- printing ------------------------------------------------------------------------------


def print_floors(name: str, floors: dict, args: argparse.Namespace) -> None:
    images = TRAIN_IMAGES[name]
    measured = args.floor_batches * args.batch
    print(f"{name} floors, measured on {measured} random images (batch {args.batch}) and "
          f"scaled to {images:,}: swim sensitivity pass {floors['swim_per_image'] * images:.1f} s"
          f", plain forward+backward {floors['plain_per_image'] * images:.1f} s")


def print_allocate(name: str, device: str, got: dict, floors: dict) -> None:
    if "error" in got:
        print(f"{name} {device}: allocate at {SPEEDUPS[device]:g}x did not finish: "
              f"{got['error']}")
        return
    images = TRAIN_IMAGES[name]
    sens, plain = floors["swim_per_image"] * images, floors["plain_per_image"] * images
    print(f"{name} {device} ({got['devices']:,} devices): allocate at {SPEEDUPS[device]:g}x "
          f"{got['seconds']:.2f} s, peak +{got['peak'] / MIB:.0f} MiB; "
          f"/ sensitivity pass {got['seconds']:.2f} / {sens:.1f} s = {got['seconds'] / sens:.3f}; "
          f"/ forward+backward {got['seconds']:.2f} / {plain:.1f} s = "
          f"{got['seconds'] / plain:.3f} (speedup {got['speedup']:.3f}x, "
          f"{got['verified']:,} devices verified)")


def print_learned(name: str, device: str, got: dict, floors: dict,
                  args: argparse.Namespace) -> None:
    if "error" in got:
        print(f"{name} {device}: learned at {SPEEDUPS[device]:g}x did not finish: "
              f"{got['error']}")
        return
    seconds = {int(k): v for k, v in got["seconds"].items()}
    low, high = min(seconds), max(seconds)
    per_batch = (seconds[high] - seconds[low]) / (high - low)
    fixed = seconds[low] - low * per_batch
    plain = got["plain_per_batch"]
    images = TRAIN_IMAGES[name]
    epoch_batches = -(-images // args.batch)
    epoch = epoch_batches * per_batch
    sens = floors["swim_per_image"] * images
    fits = max(0.0, (sens - fixed) / per_batch)
    runs = ", ".join(f"{k} batches {v:.2f} s" for k, v in sorted(seconds.items()))
    print(f"{name} {device}: learned at {SPEEDUPS[device]:g}x, one epoch of {runs}, peak "
          f"+{got['peak'] / MIB:.0f} MiB; per batch of {args.batch} {per_batch:.3f} s / plain "
          f"forward+backward {plain:.3f} s = {per_batch / plain:.2f}; fixed {fixed:.2f} s; "
          f"an epoch of {epoch_batches} batches {epoch:.0f} s + {fixed:.0f} s / sensitivity "
          f"pass {sens:.0f} s = {(epoch + fixed) / sens:.2f}; below the pass up to "
          f"{fits:.0f} batches (epochs {fits / epoch_batches:.2f})")


def print_chips(got: dict) -> None:
    if "error" in got:
        print(f"lenet Monte-Carlo chips did not finish: {got['error']}")
        return
    print(f"lenet Monte-Carlo chip over {got['images']:,} test images: device-level plan "
          f"(allocate {SPEEDUP:g}x) {got['device']:.3f} s / weight-level plan (swim 10%) "
          f"{got['weight']:.3f} s = {got['device'] / got['weight']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet,resnet18")
    parser.add_argument("--devices", default=",".join(DEVICES),
                        help="allocate's device models, of: " + ", ".join(DEVICES))
    parser.add_argument("--learned-devices", default="uniform",
                        help="learned's device models ('' for none)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--floor-batches", type=int, default=2,
                        help="batches the floors are timed on")
    parser.add_argument("--learn-batches", default="2,4",
                        type=lambda s: [int(v) for v in s.split(",")],
                        help="two numbers of batches learned is timed on")
    parser.add_argument("--samples", type=int, default=20, help="LeNet chips (0: none)")
    parser.add_argument("--memory-limit", type=float, default=16.0,
                        help="GiB of address space each measurement may take")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        limit = int(args.memory_limit * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(run_child(args)))
        return
    print(machine_line())
    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    for name in args.models.split(","):
        floors = child(args, "floors", name)
        if "error" in floors:
            print(f"{name} floors did not finish: {floors['error']}")
            continue
        print_floors(name, floors, args)
        for device in filter(None, args.devices.split(",")):
            print_allocate(name, device, timed_and_peak(args, "allocate", name, device),
                           floors)
        for device in filter(None, args.learned_devices.split(",")):
            print_learned(name, device, timed_and_peak(args, "learned", name, device), floors,
                          args)
    if args.samples and "lenet" in args.models.split(","):
        print_chips(child(args, "chips"))


if __name__ == "__main__":
    main()
