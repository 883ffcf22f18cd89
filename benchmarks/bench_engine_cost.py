"""Cost of the `swim` engine relative to its floor, a plain forward + backward pass.

Per model prints the time of one `swim` sensitivity pass and of a plain training-style
forward + backward pass over the same images at the same batch, their ratio (target:
at most 1.3x), the ratio of their matrix-product and convolution FLOPs (the time
ratio's floor where arithmetic dominates: S and g each need the products of a
backward, so a pass does about 5/3 of the plain pass's arithmetic), and optionally
(--memory) the peak memory of each and its ratio.

    python benchmarks/bench_engine_cost.py [--models lenet,qlenet,convnet,resnet18,vit]
        [--device cuda] [--images N] [--batch B] [--memory] [--clock cpu]

The images are random (the time does not depend on the pixels) and reach the pass in
batches of 128, as the command line draws them; the pass runs at its batch (--batch),
and so does the plain pass. The two times are measured in one process, interleaved (best
of three each), by the wall clock or (--clock cpu) by the CPU time the process spent,
which a shared machine's other jobs disturb less (with one thread: OMP_NUM_THREADS=1).
Each memory reading runs in a fresh process of its own, so that peak-memory readings do
not mix. On the CPU the peak is the resident set's high-water mark above the level
before the pass, with glibc told to map every block over 64 KiB on its own
(MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set at once and the mark
follows the live tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import flops, machine_line, peak_memory, timed

import swimkit
from swimkit.quantization import quantization_bits
from swimkit.sensitivity.batching import pass_batch_size

#: Images per pass of each model unless --images is given.
DEFAULT_IMAGES = {"lenet": 10240, "qlenet": 10240, "convnet": 1024, "resnet18": 1024,
                  "vit": 2048}
#: Images per batch the pass is fed (the command line's loader batch).
LOADER_BATCH = 128


def random_images(model_name: str, images: int, batch: int, device: torch.device) -> list:
    """Random (x, y) batches shaped like the model's inputs."""
    gen = torch.Generator().manual_seed(0)
    shape = swimkit.models.model_info(model_name).input_shape
    sizes = [min(batch, images - start) for start in range(0, images, batch)]
    return [(torch.randn(n, *shape, generator=gen).to(device),
             torch.randint(0, 10, (n,), generator=gen).to(device)) for n in sizes]


def rebatched(data: list, batch: int) -> list:
    """The same images in batches of ``batch``."""
    x = torch.cat([x for x, _ in data])
    y = torch.cat([y for _, y in data])
    return list(zip(x.split(batch), y.split(batch), strict=True))


def built(model_name: str, device: torch.device, data: list) -> torch.nn.Module:
    """The model in eval mode; a quantized one with its output ranges calibrated."""
    torch.manual_seed(0)
    model = swimkit.build_model(model_name).to(device)
    if quantization_bits(model):
        with torch.no_grad():
            model.train()(data[0][0])
    return model.eval()


def plain_pass(model: torch.nn.Module, data: list) -> None:
    """The floor: a training-style forward + backward over ``data``."""
    for x, y in data:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()


def pass_batch(model: torch.nn.Module, model_name: str, given: int | None,
               device: torch.device) -> int:
    """The batch the sensitivity pass runs at: ``given``, else its own choice."""
    shape = swimkit.models.model_info(model_name).input_shape
    return given or pass_batch_size(model, shape, device)


def seconds(run: Callable[[], object], clock: str) -> float:
    """One call's seconds: by the wall clock, or the CPU time this process spent."""
    if clock == "wall":
        return timed(run)
    start = time.process_time()
    run()
    return time.process_time() - start


def measure(model_name: str, what: str, images: int, batch: int | None,
            device_name: str, clock: str) -> dict:
    """Seconds (best of three after a warm-up, interleaved) or peak extra bytes."""
    device = torch.device(device_name)
    data = random_images(model_name, images, LOADER_BATCH, device)
    model = built(model_name, device, data)
    size = pass_batch(model, model_name, batch, device)
    plain_data = rebatched(data, size)
    passes = {"plain": lambda: plain_pass(model, plain_data),
              "swim": lambda: swimkit.sensitivity(model, data, batch_size=size)}
    if what == "time":
        for run in passes.values():
            run()
        best = {kind: float("inf") for kind in passes}
        for _ in range(3):
            for kind, run in passes.items():
                best[kind] = min(best[kind], seconds(run, clock))
        return {"batch": size, **{f"{kind}_seconds": s for kind, s in best.items()},
                **flop_counts(model, plain_data[0], size)}
    kind = what.split("-")[0]
    passes[kind]()  # warm-up: one-time allocations (thread pools, kernels) are not the pass's
    return {f"{kind}_peak_bytes": peak_memory(passes[kind], device)[1]}


def flop_counts(model: torch.nn.Module, batch: tuple, size: int) -> dict:
    """Matrix-product and convolution FLOPs of both passes over one batch of the pass's
    size: their ratio is the floor of the time ratio where arithmetic dominates."""
    return {"plain_flops": flops(lambda: plain_pass(model, [batch])),
            "swim_flops": flops(lambda: swimkit.sensitivity(model, [batch], batch_size=size))}


def child(args: argparse.Namespace, model_name: str, what: str, images: int) -> dict:
    """Run one measurement in a fresh process (memory ones with mmap'd blocks)."""
    cmd = [sys.executable, __file__, "--child", model_name, what, "--images", str(images),
           "--device", args.device, "--clock", args.clock]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    env = dict(os.environ)
    if what.endswith("memory"):
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(model_name: str, images: int, got: dict) -> str:
    """One line: both times, their ratio, and the memory ratio where measured."""
    line = (f"{model_name}: {images} images, batch {got['batch']}: swim "
            f"{got['swim_seconds']:.2f} s / forward+backward {got['plain_seconds']:.2f} s = "
            f"{got['swim_seconds'] / got['plain_seconds']:.2f}x (target <= 1.3x); FLOPs "
            f"{got['swim_flops'] / got['plain_flops']:.2f}x")
    if "swim_peak_bytes" in got:
        mib = 2**20
        line += (f"; peak {got['swim_peak_bytes'] / mib:.0f} / "
                 f"{got['plain_peak_bytes'] / mib:.0f} MiB = "
                 f"{got['swim_peak_bytes'] / max(got['plain_peak_bytes'], 1):.2f}x")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=None,
                        help="images per pass (default: " + ", ".join(
                            f"{k} {v}" for k, v in DEFAULT_IMAGES.items()) + ")")
    parser.add_argument("--batch", type=int, default=None,
                        help="the pass's batch (default: the pass's own choice)")
    parser.add_argument("--models", default="lenet,qlenet,convnet,resnet18,vit",
                        help="comma-separated, of: " + ", ".join(DEFAULT_IMAGES))
    parser.add_argument("--memory", action="store_true", help="peak memory too")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time by the wall clock or by the process's CPU time")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.images, args.batch,
                                 args.device, args.clock)))
        return
    print(machine_line() + ("" if args.clock == "wall" else "; CPU time"))
    for model_name in args.models.split(","):
        images = args.images or DEFAULT_IMAGES[model_name]
        got = child(args, model_name, "time", images)
        if args.memory:
            for kind in ("plain", "swim"):
                got.update(child(args, model_name, f"{kind}-memory", images))
        print(report(model_name, images, got), flush=True)


if __name__ == "__main__":
    main()
