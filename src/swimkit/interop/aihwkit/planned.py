"""swimkit's plans out to aihwkit: an analog model whose tiles verify the planned devices.

:func:`apply_plan` gives every tile of an aihwkit analog model (one converted from the model
the plan was made for, with ``aihwkit.nn.conversion.convert_to_analog``) a noise model of its
own that programs the devices of its block of the plan as the plan says: a plain write
with the model's own draw, or write-verify to the plan's tolerance (the model's own draws
repeated until within it, swimkit's loop). The blocks follow aihwkit's tiling (a layer split
into tiles of at most ``max_input_size`` inputs and ``max_output_size`` outputs, sizes
differing by at most one) and its layout of a convolution (the matrix ``[out, in * kh *
kw]``); the plan must have been made for the chip whose ``rpu_config`` converted the model
(:func:`~swimkit.interop.aihwkit.chip_of`, :func:`~swimkit.interop.aihwkit.rpu_config_of`).
The model is then programmed, drifted and read with aihwkit's own calls
(``program_analog_weights``, ``drift_analog_weights``): only the planned devices are
verified. :func:`aihwkit_chips` does that for a number of chips and gives swimkit's
Monte-Carlo results (mean, confidence interval, 5th percentile) at each time.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...chip import as_chip
from ...chipstats import MCResult
from ...devices.protocol import check_times
from ...errors import SwimkitError
from ...plans import Plan
from . import _lib
from .conductances import PAIR, split_sizes
from .devices import AihwkitDevice, program_options


def analog_tiles(model: nn.Module) -> list[tuple[str, Any, slice, slice]]:
    """Every tile of every analog layer of ``model``: (layer name, tile, rows, columns of
    the layer's weight matrix ``[out, in * kernel]`` it holds)."""
    base = _lib.module("aihwkit.nn.modules.base").AnalogLayerBase
    found = []
    for name, layer in model.named_modules():
        if not isinstance(layer, base) or not hasattr(layer, "analog_module"):
            continue
        module = layer.analog_module
        if hasattr(module, "in_sizes"):  # TileModuleArray: array[input chunk][output chunk]
            c0 = 0
            for i, width in enumerate(module.in_sizes):
                r0 = 0
                for j, rows in enumerate(module.out_sizes):
                    found.append((name, module.array[i][j], slice(r0, r0 + rows),
                                  slice(c0, c0 + width)))
                    r0 += rows
                c0 += width
        else:
            found.append((name, module, slice(None), slice(None)))
    return found


@functools.cache
def _planned_class() -> type:
    """A ``BaseNoiseModel`` that programs a tile's devices at their plan levels."""
    base_cls = _lib.module("aihwkit.inference.noise.base").BaseNoiseModel

    class PlannedNoiseModel(base_cls):  # type: ignore[misc, valid-type]
        """aihwkit noise model programming one tile as a swimkit plan says (its drift and
        reads are the base model's)."""

        def __init__(self, device: AihwkitDevice, levels: Tensor,
                     tolerances: Sequence[float | None]) -> None:
            super().__init__(device.noise.g_converter)
            self.device = device
            self.base = device.noise
            self.levels = levels.long()
            self.tolerances = list(tolerances)

        def __str__(self) -> str:
            counts = torch.bincount(self.levels.reshape(-1), minlength=len(self.tolerances))
            return f"PlannedNoiseModel({self.base}, devices per option {counts.tolist()})"

        def apply_programming_noise(self, weights: Tensor) -> tuple[Tensor, list[Tensor]]:
            if tuple(weights.shape) != tuple(self.levels.shape):
                raise SwimkitError(f"the plan's block is {tuple(self.levels.shape)} but the "
                                   f"tile holds {tuple(weights.shape)}: apply the plan to the "
                                   "model it was made for, converted with its tiling")
            targets, params = self.g_converter.convert_to_conductances(weights)
            pair = self.device.converter == PAIR
            slices = list(targets) if pair else [targets]
            chosen = self.levels.to(weights.device)
            programmed = [program_options(self.device, g.double(), chosen,
                                          self.tolerances).to(g.dtype) for g in slices]
            nus = [self.base.generate_drift_coefficients(g.clone()) for g in slices]
            out = self.g_converter.convert_back_to_weights(
                programmed if pair else programmed[0], params)
            return out, nus if pair else list(nus[0])

        def generate_drift_coefficients(self, g_target: Tensor) -> Any:
            return self.base.generate_drift_coefficients(g_target)

        def apply_programming_noise_to_conductance(self, g_target: Tensor) -> Tensor:
            return self.base.apply_programming_noise_to_conductance(g_target)

        def apply_drift_noise_to_conductance(self, g_prog: Tensor, drift_noise_param: Any,
                                             t_inference: float) -> Tensor:
            return self.base.apply_drift_noise_to_conductance(g_prog, drift_noise_param,
                                                              t_inference)

    return PlannedNoiseModel


def weight_levels(plan: Plan, name: str) -> Tensor:
    """The option of every weight of layer ``name`` as the matrix ``[out, in * kernel]``: a
    plan for aihwkit holds a weight on one device pair, so per-device plans need one
    device per weight; weight-level plans (every device of a weight alike) also apply."""
    key = f"{name}.weight"
    if key not in plan.levels:
        raise SwimkitError(f"the plan has no levels for {key}: make it for the model the "
                           "analog model was converted from")
    levels = plan.levels[key]
    if levels.shape[-1] != 1 and not bool((levels.amin(-1) == levels.amax(-1)).all()):
        raise SwimkitError(f"{key}: the plan verifies devices of one weight differently "
                           f"({levels.shape[-1]} devices a weight), but aihwkit holds a weight "
                           "on one device pair; plan with an aihwkit device model")
    first = levels[..., 0]
    return first.reshape(first.shape[0], -1)


def apply_plan(model: nn.Module, plan: Plan, chip: Any) -> nn.Module:
    """Give every tile of the aihwkit analog ``model`` a noise model that programs its
    block of ``plan``; returns ``model``. ``chip`` is the chip the plan was made for (a
    :class:`~swimkit.chip.ChipSpec` of an aihwkit device model, or the device model alone
    for a plan made on the idealised crossbar); a plan made for another chip is refused.
    Its drift, reads and drift compensation stay aihwkit's. Every analog layer must be in
    the plan, and every plan layer in the model."""
    chip = as_chip(chip)
    device = chip.device_model
    if not isinstance(device, AihwkitDevice):
        raise SwimkitError("apply_plan needs the chip of the aihwkit device model the plan was "
                           "made with (swimkit.interop.aihwkit.chip_of(rpu_config, model)), "
                           "whose tolerances are steps of its conductances")
    if chip.placement.batchnorm != "digital":
        raise SwimkitError("the chip folds BatchNorm into the convolutions, and the plan is for "
                           "the folded weights; aihwkit's analog model holds them unfolded "
                           "(BatchNorm digital): plan on a chip with batchnorm='digital'")
    chip.check_plan(plan, "apply")
    tolerances = [None, *device.menu(plan.menu)]
    planned = _planned_class()
    tiles = analog_tiles(model)
    if not tiles:
        raise SwimkitError("the model has no aihwkit analog layers: convert it with "
                           "aihwkit.nn.conversion.convert_to_analog first")
    layers = {name for name, *_ in tiles}
    missing = sorted({k.removesuffix(".weight") for k in plan.levels} - layers)
    if missing:
        raise SwimkitError(f"the plan has layer {missing[0]!r}, which is not analog in the "
                           "model; convert every layer the plan covers")
    matrices = {name: weight_levels(plan, name) for name in layers}
    for name, tile, rows, cols in tiles:
        block = matrices[name][rows, cols]
        config = copy.deepcopy(tile.rpu_config)
        config.noise_model = planned(device, block, tolerances)
        tile.rpu_config = config
    return model


def tile_splits(model: nn.Module) -> dict[str, tuple[list[int], list[int]]]:
    """Per analog layer, aihwkit's split of its outputs and inputs into tiles."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    for name, _, rows, cols in analog_tiles(model):
        r, c = out.setdefault(name, ([], []))
        if rows.start is None:
            continue
        if rows.start == 0:
            c.append(cols.stop - cols.start)
        if cols.start == 0:
            r.append(rows.stop - rows.start)
    return out


def aihwkit_chips(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *,
                  times: Sequence[float] = (0.0,), samples: int = 10, seed: int = 0
                  ) -> list[MCResult]:
    """``samples`` chips of the aihwkit analog ``model`` (plan applied or not), each
    programmed once by aihwkit (``program_analog_weights``, from torch's generator seeded
    by (seed, chip)) and read at every time (``drift_analog_weights``; time 0: right after
    programming): one :class:`~swimkit.chipstats.MCResult` per time."""
    times = check_times(times)
    if samples < 1:
        raise SwimkitError(f"samples must be >= 1 (got {samples})")
    data = list(batches)
    if not data:
        raise SwimkitError("no test batches: give a non-empty loader")
    was_training = model.training
    model.eval()
    accuracies = torch.zeros(len(times), samples, dtype=torch.float64)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for chip in range(samples):
                torch.manual_seed(seed * 1_000_003 + chip)
                model.program_analog_weights()
                for index, time in enumerate(times):
                    if time > 0:
                        model.drift_analog_weights(time)
                    accuracies[index, chip] = _accuracy(model, data)
    finally:
        model.train(was_training)
    return [MCResult(accuracies[i], seed=seed, meta={"time_s": t, "evaluated_by": "aihwkit"})
            for i, t in enumerate(times)]


def _accuracy(model: nn.Module, data: list[tuple[Tensor, Tensor]]) -> float:
    correct = seen = 0
    for x, y in data:
        correct += int((model(x).argmax(-1) == y).sum())
        seen += int(y.numel())
    return 100.0 * correct / seen


__all__ = ["aihwkit_chips", "analog_tiles", "apply_plan", "split_sizes", "tile_splits",
           "weight_levels"]
