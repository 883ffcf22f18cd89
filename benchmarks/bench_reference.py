"""swimkit beside the original SWIM code: the pass, a chip and a whole study, side by side.

Given a checkout of the original code (github MariusAnje/SWIM, not part of swimkit) in
``--reference-dir``, per model (``lenet`` and ``qlenet`` on Fashion-MNIST) it times, in
one process, the reference and swimkit in turn (``--repeats`` alternations):

- ``pass``: the reference's second derivatives as its script takes them (``normalize``,
  ``GetSecond`` over the training images in its batches of 128, ``fine_S_grad``) against
  ``swimkit.sensitivity`` (engine swim) over the same batches;
- ``chip``: the reference's ``NEval`` (one chip: device errors drawn, the test images at
  its batch of 128) against one chip of ``swimkit.evaluate`` (at swimkit's evaluation
  batch), both at sigma 0.3 / 0.03 on eight 1-bit devices a weight;
- ``study``: the SWIM table (no verify, full verify, SWIM at each of ``--fractions``)
  both ways: the reference as its script makes it (one run per fraction: the pass, the
  threshold, the clean accuracy and ``--study-samples`` chips; as many chips for no and
  for full verify) against ``swimkit sweep --methods swim --engine swim`` with its
  adaptive chips, in a fresh output folder (nothing cached), started as a process of its
  own (its start and data loading are counted, the reference's are not).

Both sides get the same images as tensors in memory (swimkit's loader normalises them
once; the reference's torchvision loader is not used) and the same weights: a model
trained by ``swimkit train`` (cached in ``--scratch``, or ``--checkpoint-dir``) copied
into the reference's own model class (``SLeNet``, ``QSLeNet``). The reference quantizes
each layer's output with the batch's range, swimkit's ``qlenet`` with its calibrated
range (``--output-range batch`` gives swimkit the reference's). One thread each. Every
timing is printed by the wall clock and by the CPU time of the process (of the sweep's
process for swimkit's study), with the machine and load lines; the ratios are
reference / swimkit.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_reference.py \\
        --reference-dir /tmp/swim-ref [--models lenet,qlenet] [--sections pass,chip,study] \\
        [--repeats 2] [--chips 3] [--limit N] [--study-samples 100]

The reference runs unchanged: its modules are imported from ``--reference-dir`` (no
bytecode written there) and its script's globals (model, loaders, loss, optimizer,
device) are set from here, the runtime shim it needs to run on tensors in memory.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from bench_montecarlo import load_line
from common import fashion_mnist_or_random, machine_line

import swimkit
from swimkit import data as data_mod
from swimkit.checkpoints import load_checkpoint, plain_state_dict
from swimkit.chips import evaluation_batch_size

SIGMA, SIGMA_VERIFIED = 0.3, 0.03
#: The reference script's batch (``BS``) for its loaders, and its SWIM weighting (--alpha).
REFERENCE_BATCH = 128
REFERENCE_ALPHA = 1e6
#: The reference's model class of each swimkit model.
REFERENCE_MODELS = {"lenet": ("model_zoo.models", "SLeNet"),
                    "qlenet": ("model_zoo.qmodels", "QSLeNet")}
SECTIONS = ("pass", "chip", "study")


@dataclass(frozen=True)
class Seconds:
    """One timing by the wall clock and by the CPU time spent."""

    wall: float
    cpu: float

    def __truediv__(self, other: Seconds) -> tuple[float, float]:
        return self.wall / other.wall, self.cpu / max(other.cpu, 1e-9)

    def per(self, count: int) -> Seconds:
        return Seconds(self.wall / count, self.cpu / count)

    def __str__(self) -> str:
        return f"{self.wall:.3f} s (CPU {self.cpu:.3f} s)"


def clocked(fn: Callable[[], object]) -> Seconds:
    """Wall-clock and this process's CPU seconds of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Seconds(time.perf_counter() - wall, time.process_time() - cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- the reference, run unchanged ------------------------------------------------------------


class Reference:
    """The original code's script functions, driven on tensors in memory.

    ``script`` is its ``selective_write`` module: its functions read the globals ``model``,
    ``device``, ``criteria``, ``optimizer``, ``secondloader`` and ``testloader``, which
    this class sets (lists of batches stand in for its torchvision loaders).
    """

    def __init__(self, directory: Path, name: str, state: dict[str, torch.Tensor],
                 train: list, test: list) -> None:
        sys.dont_write_bytecode = True  # leave the reference's checkout as it is
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
        warnings.filterwarnings("ignore", module="modules")  # its indexing warns on torch 2
        self.script: ModuleType = importlib.import_module("selective_write")
        module, cls = REFERENCE_MODELS[name]
        model = getattr(importlib.import_module(module), cls)()
        model.load_state_dict(reference_state(model, state))
        model.push_S_device()
        model.clear_noise()
        model.clear_mask()
        self.model = model
        s = self.script
        s.model, s.device = model, torch.device("cpu")
        s.criteria = importlib.import_module("modules").SCrossEntropyLoss()
        s.optimizer = torch.optim.Adam(model.parameters(), lr=0.01)  # GetSecond zeroes it
        s.secondloader, s.testloader = train, test

    def second_derivatives(self) -> None:
        """The script's pass: weights normalised, ``GetSecond``, ``fine_S_grad``; the
        weights are restored after (its ``de_normalize``)."""
        self.model.normalize()
        self.script.GetSecond()
        self.model.fine_S_grad()
        self.model.de_normalize()

    def chip(self, dev_var: float = SIGMA, write_var: float = SIGMA_VERIFIED) -> float:
        """One Monte-Carlo chip (``NEval``): accuracy in [0, 1]."""
        return float(self.script.NEval(dev_var, write_var))

    def clean(self) -> float:
        return float(self.script.CEval())

    def study(self, fractions: list[float], samples: int) -> list[tuple[str, float, float]]:
        """The SWIM table as the script makes it: ``samples`` chips without and with full
        verify, then per fraction one run (the pass, the SWIM threshold, the clean
        accuracy, ``samples`` chips). Rows: (label, mean %, std %)."""
        m = self.model
        rows = []
        m.clear_mask()
        for label, dev, write in (("no verify", SIGMA, 0.0), ("full verify", SIGMA_VERIFIED, 0.0)):
            rows.append((label, *_mean_std([self.chip(dev, write) for _ in range(samples)])))
        for fraction in fractions:
            m.normalize()
            self.script.GetSecond()
            m.fine_S_grad()
            m.clear_mask()
            threshold = m.calc_sail_th(fraction, "SM", REFERENCE_ALPHA)
            m.set_mask_sail(threshold, "th", "SM", REFERENCE_ALPHA)
            m.de_normalize()
            self.clean()
            accuracies = [self.chip() for _ in range(samples)]
            rows.append((f"swim {fraction:g}", *_mean_std(accuracies)))
        m.clear_mask()
        return rows


def reference_state(model: torch.nn.Module, state: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """swimkit's plain weights under the reference's names (``conv1.weight`` ->
    ``conv1.op.weight``); the reference's own ``weightS`` placeholders are kept."""
    own = model.state_dict()
    return {key: state[key.replace(".op.", ".")] if ".op." in key else value
            for key, value in own.items()}


def _mean_std(accuracies: list[float]) -> tuple[float, float]:
    values = torch.tensor(accuracies, dtype=torch.float64) * 100
    return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0


# --- swimkit's side ----------------------------------------------------------------------------


def trained_checkpoint(name: str, args: argparse.Namespace) -> Path:
    """A checkpoint of ``name`` trained by ``swimkit train`` (made once, then reused)."""
    folder = Path(args.checkpoint_dir or Path(args.scratch) / "models") / name
    path = folder / "train" / "best.pt"  # where `swimkit train --out FOLDER` writes it
    if not path.is_file():
        print(f"training {name} for {args.epochs} epochs (once; kept in {folder})", flush=True)
        subprocess.run([sys.executable, "-m", "swimkit", "train", "--model", name,
                        "--epochs", str(args.epochs), "--out", str(folder), "--no-progress"],
                       check=True, env=_one_thread_env())
    return path


def _one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def swimkit_model(path: Path, output_range: str) -> torch.nn.Module:
    """The trained model; with ``output_range`` "batch", quantized the reference's way
    (each output with its batch's range) instead of with the calibrated range."""
    model, info = load_checkpoint(path)
    if output_range == "batch" and info.get("bits"):
        rebuilt = swimkit.build_model(info["model_name"], output_range="batch")
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    return model.eval()


def swimkit_study(path: Path, args: argparse.Namespace, fractions: list[float]
                  ) -> tuple[Seconds, str]:
    """``swimkit sweep`` of the SWIM table in a fresh folder: its seconds and its table."""
    with tempfile.TemporaryDirectory(dir=args.scratch) as out:
        command = [sys.executable, "-m", "swimkit", "sweep", "--checkpoint", str(path),
                   "--methods", "swim", "--engine", "swim",
                   "--fractions", ",".join(map(str, fractions)),
                   "--samples", str(args.study_samples), "--sigma", str(SIGMA),
                   "--sigma-verified", str(SIGMA_VERIFIED), "--threads", "1",
                   "--out", out, "--no-progress"]
        if args.limit:
            command += ["--sens-limit", str(args.limit), "--test-limit", str(args.test_limit)]
        cpu, wall = _children_cpu(), time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=_one_thread_env())
        seconds = Seconds(time.perf_counter() - wall, _children_cpu() - cpu)
        if done.returncode != 0:
            raise SystemExit(f"swimkit sweep failed:\n{done.stderr[-3000:]}")
        table = Path(out, "sweep.md")
        return seconds, table.read_text() if table.is_file() else done.stdout


# --- the phases --------------------------------------------------------------------------------


def alternate(label: str, reference: Callable[[], Seconds], ours: Callable[[], Seconds],
              repeats: int) -> None:
    """Time the reference and swimkit in turn ``repeats`` times; print each pair."""
    print(f"  {label}", flush=True)
    for turn in range(1, repeats + 1):
        theirs, mine = reference(), ours()
        wall, cpu = theirs / mine
        print(f"    alternation {turn}: reference {theirs}, swimkit {mine}: {wall:.1f}x "
              f"(CPU {cpu:.1f}x)", flush=True)


def bench_model(name: str, args: argparse.Namespace, dataset: data_mod.Dataset) -> None:
    path = trained_checkpoint(name, args)
    model = swimkit_model(path, args.output_range)
    state = plain_state_dict(model)
    device = torch.device("cpu")
    train_split, test_split = dataset.train.head(args.limit), dataset.test.head(args.test_limit)
    train = data_mod.preload(train_split, dataset, REFERENCE_BATCH, device)
    reference_test = data_mod.preload(test_split, dataset, REFERENCE_BATCH, device)
    size = evaluation_batch_size(model, dataset.image_shape, device)
    test = data_mod.preload(test_split, dataset, size, device)
    reference = Reference(Path(args.reference_dir), name, state, train, reference_test)
    images, tests = len(train_split.labels), len(test_split.labels)
    print(f"\n{name} (checkpoint {path}): clean accuracy reference "
          f"{100 * reference.clean():.2f} %, swimkit {swimkit.accuracy(model, test):.2f} % "
          f"on {tests:,} test images", flush=True)
    device_model = swimkit.DeviceModel(sigma=SIGMA, sigma_verified=SIGMA_VERIFIED)
    if "pass" in args.sections:
        swimkit.sensitivity(model, train[:2])  # warm-up: tracing, first allocations
        alternate(f"pass: second derivatives over {images:,} training images (reference "
                  f"batch {REFERENCE_BATCH}; swimkit given batches of {REFERENCE_BATCH}, "
                  "runs its own)",
                  lambda: clocked(reference.second_derivatives),
                  lambda: clocked(lambda: swimkit.sensitivity(model, train)), args.repeats)
    if "chip" in args.sections:
        chips = args.chips
        reference.chip()
        swimkit.evaluate(model, test, device_model, samples=1)
        alternate(f"chip: one Monte-Carlo chip over {tests:,} test images (reference batch "
                  f"{REFERENCE_BATCH}, swimkit batch {size}; mean of {chips} chips)",
                  lambda: clocked(lambda: [reference.chip() for _ in range(chips)]).per(chips),
                  lambda: clocked(lambda: swimkit.evaluate(
                      model, test, device_model, samples=chips)).per(chips), args.repeats)
    if "study" in args.sections:
        study(name, args, path, reference)


def study(name: str, args: argparse.Namespace, path: Path, reference: Reference) -> None:
    fractions = [float(f) for f in args.fractions.split(",")]
    samples = args.study_samples
    print(f"  study: the SWIM table (no verify, full verify, swim at fractions "
          f"{args.fractions}); reference {samples} chips a row, one pass per fraction; "
          f"swimkit sweep with adaptive chips (at most {samples} a row)", flush=True)
    rows: list = []
    theirs = clocked(lambda: rows.extend(reference.study(fractions, samples)))
    mine, table = swimkit_study(path, args, fractions)
    wall, cpu = theirs / mine
    print("    reference's table (mean %, std):")
    for label, mean, std in rows:
        print(f"      {label:12s} {mean:6.2f} {std:5.2f}")
    print("    swimkit's table:")
    for line in table.strip().splitlines():
        print(f"      {line}")
    print(f"    time to the table: reference {theirs}, swimkit {mine}: {wall:.1f}x "
          f"(CPU {cpu:.1f}x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", required=True,
                        help="a checkout of github.com/MariusAnje/SWIM")
    parser.add_argument("--models", default="lenet,qlenet", help="of: lenet, qlenet")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=2, help="alternations per phase")
    parser.add_argument("--chips", type=int, default=3, help="chips per chip timing")
    parser.add_argument("--limit", type=int, default=None,
                        help="training images (default all 60,000): a quick check")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="test images (default all 10,000)")
    parser.add_argument("--study-samples", type=int, default=100,
                        help="chips per row of the study (the reference's 100)")
    parser.add_argument("--fractions", default="0.01,0.03,0.1,0.3",
                        help="the study's fractions of weights verified")
    parser.add_argument("--output-range", choices=("running", "batch"), default="running",
                        help="swimkit's qlenet output range: its calibrated one (default) "
                             "or each batch's, as the reference has it")
    parser.add_argument("--epochs", type=int, default=3, help="training of the models used")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="folder of MODEL/train/best.pt checkpoints (default: "
                             "SCRATCH/models)")
    parser.add_argument("--scratch", default=tempfile.gettempdir() + "/swimkit-bench-reference")
    args = parser.parse_args()
    args.sections = set(filter(None, args.sections.split(",")))
    unknown = args.sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.limit and args.test_limit is None:
        args.test_limit = max(1, args.limit // 6)
    if not (Path(args.reference_dir) / "selective_write.py").is_file():
        parser.error(f"{args.reference_dir} holds no selective_write.py: give a checkout of "
                     "github.com/MariusAnje/SWIM")
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    print(machine_line())
    print(load_line())
    dataset = fashion_mnist_or_random()
    for name in filter(None, args.models.split(",")):
        if name not in REFERENCE_MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(REFERENCE_MODELS)}")
        bench_model(name, args, dataset)
    print(load_line())


if __name__ == "__main__":
    main()
