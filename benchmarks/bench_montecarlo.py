"""Monte-Carlo speed: a chip against its floor, a plain eager forward of the same model.

Prints the machine line and the load, then per model (section ``floor``, the default):
a chip's seconds (``swimkit.evaluate`` of a few chips, divided: drawing the weight errors
included) at the evaluation batch the command line chooses
(``swimkit.chips.evaluation_batch_size``) and at the floor's batch, the floor's seconds
(``model.eval()``, then ``model(x)`` under ``torch.no_grad()`` over the same images at
batch 256), and their ratios (target: at most 0.6). The floor and the chips are timed in
turn in the same process, best of ``--repeat`` each. Below each ratio: the FLOPs of an
image, the chip's and the floor's FLOP rates against this machine's measured peak (the
least ratio a chip can reach where arithmetic dominates), and at the default batch the
ops that take a chip's time (profiled).

Further sections (``--sections``):
- ``per-pass``: chips per second with C = 1, 2, 4, 8 chips per pass (stacked weights,
  vmap), checked against C = 1;
- ``compile``: chips per second with ``compile=True`` (or the message that says why it
  fell back to eager);
- ``batches``: chips per second at evaluation batch sizes 16 ... 512, marking the one the
  command line chooses by default;
- ``ranks``: LeNet chips per second on 1 and 2 processes under torchrun (each process
  with its share of the cores), with a check that both give the same per-chip accuracies.

LeNet, QLeNet, the ViT and QViT run on the real Fashion-MNIST test set (10,000 images)
when it is installed. ConvNet, ResNet-18 and their quantized forms run on random
CIFAR-sized images, a part of a test set on a CPU (--cifar-images), and say so: seconds
scale with the images.

    python benchmarks/bench_montecarlo.py [--device cuda] [--models lenet,qlenet,...]
        [--sections floor,per-pass,compile,batches,ranks]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from common import fashion_mnist_or_random, flops, machine_line, peak_gflops, synthetic, timed
from torch.profiler import ProfilerActivity, profile

import swimkit
from swimkit import data as data_mod
from swimkit import distributed
from swimkit.chips import evaluation_batch_size

DEVICE_MODEL = swimkit.DeviceModel(sigma=0.3, sigma_verified=0.03)
HERE = Path(__file__).resolve().parent
ZOO = "lenet,qlenet,vit,qvit,convnet,qconvnet,resnet18,qresnet18"
FLOOR_BATCH = 256
SECTIONS = ("floor", "per-pass", "compile", "batches", "ranks")


def load_line() -> str:
    """The machine's load averages (1, 5, 15 minutes): timings on a shared machine move
    with them."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def test_batches(name: str, args: argparse.Namespace, device: torch.device):
    """(model, test set, a note on the data) for ``name``."""
    info = swimkit.models.model_info(name)
    if info.dataset == "fashion-mnist":
        dataset = fashion_mnist_or_random()
        note = f"{len(dataset.test.labels):,} {dataset.name} test images"
    else:
        images = args.cifar_images
        dataset = synthetic("cifar10-sized", info.input_shape, 512, images, info.num_classes)
        note = (f"SCALED: {images:,} random {'x'.join(map(str, info.input_shape))} images "
                f"(x{10_000 / images:.1f} the time for a 10,000-image test set)")
    model = swimkit.build_model(name, seed=0).to(device)
    if swimkit.quantization.quantization_bits(model):  # calibrate the output ranges
        model.train()
        with torch.no_grad():
            model(data_mod.preload(dataset.train.head(256), dataset, 256, device)[0][0])
    model.eval()
    return model, dataset, note


def plain_forward(model: torch.nn.Module, batches) -> None:
    """The floor: a plain eager forward (eval mode, no autograd) over ``batches``."""
    model.eval()
    with torch.no_grad():
        for x, _ in batches:
            model(x)


@dataclass(frozen=True)
class Versus:
    """Seconds of a chip and of its floor over the same images."""

    chip_s: float
    plain_s: float

    @property
    def ratio(self) -> float:
        return self.chip_s / self.plain_s


def clocked(fn: Callable[[], object], clock: str) -> float:
    """Seconds of one call of ``fn``: wall-clock, or (``"cpu"``) this process's CPU time,
    which other processes on a busy machine do not lengthen (with one thread)."""
    if clock == "wall":
        return timed(fn)
    start = time.process_time()
    fn()
    return time.process_time() - start


def chip_against_floor(model: torch.nn.Module, chip_batches, floor_batches, chips: int,
                       repeat: int = 3, plan=None, clock: str = "wall") -> Versus:
    """Seconds a chip costs (``swimkit.evaluate`` of ``chips`` chips over
    ``chip_batches``, divided) and a plain eager forward over ``floor_batches``: timed in
    turn ``repeat`` times after a warm-up of each, best of each."""
    def evaluate(samples: int) -> None:
        swimkit.evaluate(model, chip_batches, DEVICE_MODEL, plan, samples=samples)

    evaluate(1)
    plain_forward(model, floor_batches)
    chip_s = plain_s = float("inf")
    for _ in range(repeat):
        plain_s = min(plain_s, clocked(lambda: plain_forward(model, floor_batches), clock))
        chip_s = min(chip_s, clocked(lambda: evaluate(chips), clock) / chips)
    return Versus(chip_s, plain_s)


def chip_seconds(model, batches, chips: int, **options) -> tuple[float, list[float]]:
    """Seconds a chip (best of two runs of ``chips`` chips) and the chips' accuracies."""
    first = timed(lambda: swimkit.evaluate(model, batches, DEVICE_MODEL, samples=1,
                                           **options))  # warm-up (with compile: compiling)
    if options.get("compile"):
        print(f"  first compiled call (compiling, one chip): {first:.1f} s")
    runs = []
    seconds = timed(lambda: runs.append(swimkit.evaluate(model, batches, DEVICE_MODEL,
                                                         samples=chips, **options)), repeat=2)
    return seconds / chips, runs[-1].accuracies.tolist()


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> None:
    model, dataset, note = test_batches(name, args, device)
    batches = data_mod.preload(dataset.test, dataset, FLOOR_BATCH, device)
    chips = args.chips if "lenet" in name else max(2, args.chips // 4)
    print(f"\n{name} ({note}), {chips} chips per figure")
    if "floor" in args.sections:
        against_floor(model, dataset, batches, chips, args, device)
    if "per-pass" in args.sections:
        per_pass(model, batches, chips)
    if "compile" in args.sections:
        compiled(model, batches, chips)
    if "batches" in args.sections:
        batch_sizes(model, dataset, chips, args, device)


def against_floor(model, dataset, floor_batches, chips: int, args: argparse.Namespace,
                  device: torch.device) -> None:
    """A chip at the default evaluation batch and at the floor's, against the floor."""
    chosen = evaluation_batch_size(model, dataset.image_shape, device)
    for size in dict.fromkeys((chosen, FLOOR_BATCH)):
        batches = (floor_batches if size == FLOOR_BATCH else
                   data_mod.preload(dataset.test, dataset, size, device))
        versus = chip_against_floor(model, batches, floor_batches, chips, args.repeat,
                                    clock=args.clock)
        which = "default" if size == chosen else "floor's"
        print(f"  chip at batch {size:3d} ({which}) {versus.chip_s:.3f} s, plain eager forward "
              f"(batch {FLOOR_BATCH}) {versus.plain_s:.3f} s: {versus.ratio:.2f} "
              f"(target <= 0.6)", flush=True)
        print(arithmetic(model, floor_batches, versus, args.peak))
        if size == chosen:
            print(time_shares(model, batches))


def arithmetic(model, batches, versus: Versus, peak: float) -> str:
    """A chip's and the floor's FLOP rates against the machine's peak, and the ratio a
    chip would have at that peak: the least any chip can reach where arithmetic
    dominates (a chip does the floor's arithmetic, with other weights)."""
    per_image = flops(lambda: plain_forward(model, batches[:1])) / len(batches[0][0])
    total = per_image * sum(len(x) for x, _ in batches)
    at_peak = total / (peak * 1e9) / versus.plain_s
    return (f"    arithmetic: {per_image / 1e6:.2f} MFLOP an image; chip "
            f"{total / versus.chip_s / 1e9:.1f}, floor {total / versus.plain_s / 1e9:.1f} GFLOP/s "
            f"(peak {peak:.0f}): at the peak a chip would take {at_peak:.2f} of the floor")


def time_shares(model, batches, shown: int = 4) -> str:
    """Where a chip's time goes: the ops with the largest shares of its CPU time (one chip
    under the profiler, weight errors drawn included)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # no profiler log lines in the output
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        swimkit.evaluate(model, batches, DEVICE_MODEL, samples=1)
    ops = sorted(profiled.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1
    parts = [f"{e.key.removeprefix('aten::')} {100 * e.self_cpu_time_total / total:.0f}%"
             for e in ops[:shown]]
    rest = sum(e.self_cpu_time_total for e in ops[shown:])
    return f"    a chip's time (profiled): {', '.join(parts)}, other {100 * rest / total:.0f}%"


def per_pass(model, batches, chips: int) -> None:
    """Chips per second at C = 1, 2, 4, 8 chips per pass, checked against C = 1."""
    one_at_a_time = None
    for count in (1, 2, 4, 8):
        seconds, accuracies = chip_seconds(model, batches, chips, chips_per_pass=count)
        one_at_a_time = one_at_a_time or accuracies
        same = "same accuracies as C=1" if accuracies == one_at_a_time else "ACCURACIES DIFFER"
        print(f"  chips per pass {count}: {1 / seconds:6.2f} chips/s ({seconds:.3f} s a chip; "
              f"{same})")


def compiled(model, batches, chips: int) -> None:
    """Chips per second with ``compile=True``, or why it fell back to eager."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seconds, _ = chip_seconds(model, batches, chips, compile=True)
    fell_back = [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    label = "compiled" if not fell_back else f"compile fell back to eager ({fell_back[0]})"
    print(f"  {label}: {1 / seconds:6.2f} chips/s ({seconds:.3f} s a chip)")


def batch_sizes(model, dataset, chips: int, args: argparse.Namespace,
                device: torch.device) -> None:
    """Chips per second at each evaluation batch size, and the one chosen by default."""
    chosen = evaluation_batch_size(model, dataset.image_shape, device)
    reference = None
    for size in sorted({*map(int, args.batch_sizes.split(",")), chosen}):
        batches = data_mod.preload(dataset.test, dataset, size, device)
        seconds, accuracies = chip_seconds(model, batches, chips)
        reference = reference or accuracies
        same = "same accuracies" if accuracies == reference else "accuracies differ"
        mark = "  <- chosen by default" if size == chosen else ""
        print(f"  evaluation batch {size:4d}: {1 / seconds:6.2f} chips/s ({same}){mark}")


def ranks(args: argparse.Namespace) -> None:
    """LeNet chips per second on 1 and 2 processes (torchrun), same accuracies."""
    results = {}
    for processes in (1, 2):
        out = Path(args.scratch) / f"ranks-{processes}.json"
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={processes}"] if processes > 1 else [sys.executable])
        # torch.compile leaves process-private values in the environment: not for children
        env = {k: v for k, v in os.environ.items() if not k.startswith("_TORCHINDUCTOR")}
        env["OMP_NUM_THREADS"] = str(max(1, os.cpu_count() // processes))
        done = subprocess.run([*launcher, str(Path(__file__)), "--worker", str(out),
                               "--chips", str(args.rank_chips)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {processes}-process run failed:\n{done.stderr[-3000:]}")
        results[processes] = json.loads(out.read_text())
    one, two = results[1], results[2]
    same = one["accuracies"] == two["accuracies"]
    print(f"\nlenet on 1 vs 2 processes (torchrun), {args.rank_chips} chips: "
          f"{one['chips_per_s']:.2f} vs {two['chips_per_s']:.2f} chips/s; per-chip accuracies "
          f"{'identical' if same else 'DIFFER'}")


def worker(path: str, chips: int) -> None:
    """One rank of :func:`ranks`: evaluate ``chips`` LeNet chips, write the figures."""
    distributed.init_from_environment()
    model, dataset, _ = test_batches("lenet", argparse.Namespace(cifar_images=0),
                                     torch.device("cpu"))
    batches = data_mod.preload(dataset.test, dataset, 256, torch.device("cpu"))
    swimkit.evaluate(model, batches, DEVICE_MODEL, samples=distributed.world_size())
    start = time.perf_counter()
    result = swimkit.evaluate(model, batches, DEVICE_MODEL, samples=chips)
    seconds = time.perf_counter() - start
    if distributed.is_rank_zero():
        Path(path).write_text(json.dumps({"chips_per_s": chips / seconds,
                                          "accuracies": result.accuracies.tolist()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=ZOO)
    parser.add_argument("--sections", default="floor",
                        help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--chips", type=int, default=8,
                        help="chips per LeNet figure (a quarter, at least 2, for the others)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="chip and floor timings taken in turn (best of each)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="floor section: wall-clock, or this process's CPU time (for a "
                             "busy machine, with OMP_NUM_THREADS=1)")
    parser.add_argument("--cifar-images", type=int, default=512,
                        help="random CIFAR-sized test images for ConvNet / ResNet-18")
    parser.add_argument("--rank-chips", type=int, default=40)
    parser.add_argument("--batch-sizes", default="16,32,64,128,256,512",
                        help="evaluation batch sizes to time")
    parser.add_argument("--scratch", default="/tmp")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.chips)
        return
    args.sections = set(filter(None, args.sections.split(",")))
    unknown = args.sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    device = torch.device(args.device)
    print(machine_line())
    print(load_line())
    print(f"floor: plain eager forward, batch {FLOOR_BATCH}, torch.no_grad(); {args.clock} "
          f"seconds, best of {args.repeat}")
    args.peak = peak_gflops(device)
    print(f"this machine's measured peak: {args.peak:.0f} GFLOP/s (the fastest of 3x3 "
          "convolutions of 128-512 channels and a 2048-square matrix product)")
    for name in filter(None, args.models.split(",")):
        bench_model(name, args, device)
    if "ranks" in args.sections and device.type == "cpu":
        ranks(args)
    print(load_line())


if __name__ == "__main__":
    main()
