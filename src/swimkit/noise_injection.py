"""Noise-injection training: a fresh device-noise draw on the effective weights per batch.

The update is applied to the clean weights (the offset's gradient is the identity), so
the model learns weights that tolerate variation. Any device model of the
:class:`~swimkit.devices.NoiseModel` protocol can be used, under a write-verify plan
(plan-aware fine-tuning) or none, read at a time after programming (``noise_time``: a
model trained for the drifted device). Epoch e's noise comes from a generator seeded by
(seed, e) alone, so a resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .chip import ChipSpec, as_chip
from .converters import AnalogReads
from .crossbar import Crossbar
from .devices import NoiseModel
from .mapping import DeviceWeight, Perturbation, effective_weights, perturbed
from .plans import Plan
from .seeding import epoch_generator


class NoiseSettings(Protocol):
    """What noise injection reads of the training settings (a
    :class:`~swimkit.training.TrainConfig`)."""

    sigma_train: float
    scale_aware: bool
    noise_time: float
    seed: int


class NoiseInjector:
    """Fresh device noise on the effective weights for every mini-batch.

    The temporary offsets are attached once per epoch (:func:`perturbed`); each batch
    recomputes the clean effective weights and their ranges, then sets a new draw from
    the ``chip``'s device model (any :class:`~swimkit.devices.NoiseModel`) on its
    crossbar, under ``plan`` if given.
    """

    def __init__(self, model: nn.Module, chip: ChipSpec, seed: int,
                 plan: Plan | None = None, scale_aware: bool = False,
                 noise_time: float = 0.0) -> None:
        self.model = model
        self.chip = chip
        self.seed = seed
        self.plan = plan
        self.scale_aware = scale_aware
        self.noise_time = float(noise_time)
        self.weights: dict[str, DeviceWeight] = (
            plan.weights_in(model) if plan is not None else chip.weights(model))

    @classmethod
    def create(cls, model: nn.Module, config: NoiseSettings, chip: ChipSpec | None = None,
               plan: Plan | None = None) -> NoiseInjector | None:
        """The injector training with ``config`` for ``chip`` draws from, or None for
        clean training.

        ``sigma_train`` > 0 draws from the chip (default: the Gaussian one) at plain-write
        sigma ``sigma_train``; a ``plan`` (plan-aware fine-tuning) draws the chip's own
        errors under it. Without either, a chip whose crossbar has converters or output
        noise trains through them at sigma 0 (no weight errors); any other trains clean.
        The noise is read at ``config.noise_time``, on the chip's device weights (a plan
        names its own).
        """
        chip = as_chip(chip)
        if plan is not None:
            chip.check_plan(plan, "fine-tune under")
        if config.sigma_train > 0:
            noisy = chip.with_sigma(float(config.sigma_train))
        elif plan is not None:
            noisy = chip
        elif chip.crossbar.converts:
            noisy = chip.with_sigma(0.0)
        else:
            return None
        return cls(model, noisy, config.seed, plan, config.scale_aware, config.noise_time)

    @property
    def noise_model(self) -> NoiseModel:
        """The device model drawn from, as the crossbar holds weights."""
        return self.chip.device

    def describe(self) -> dict[str, Any]:
        """The noise, for the checkpoint (a resumed run must train under the same noise)."""
        plan = None
        if self.plan is not None:
            plan = {"method": self.plan.method, "requested": self.plan.requested,
                    "devices_verified": self.plan.devices_verified}
        out = {"model": self.chip.describe(), "plan": plan, "scale_aware": self.scale_aware}
        if self.noise_time:
            out["time_s"] = self.noise_time
        placement = self.chip.placement
        if placement.exclude or placement.params:
            out["weights"] = {"exclude": list(placement.exclude),
                              "params": list(placement.params)}
        return out

    @contextlib.contextmanager
    def epoch(self, epoch: int) -> Iterator[Callable[[], None]]:
        """Attach the offsets for one epoch; yield the function that redraws the noise.

        On a crossbar the noise follows its ranges (scale-aware: with their gradient),
        and with converters or output noise the layers compute through them."""
        where = next(iter(self.weights.values())).value.device
        generator = epoch_generator(self.seed, "noise", epoch, where)
        crossbar = self.chip.crossbar
        ranges = None if crossbar.ranges == "layer" else crossbar.weight_ranges
        device = self.chip.device
        with (perturbed(self.model, self.weights) as offsets,
              _converters(crossbar, offsets, epoch_generator(self.seed, "output", epoch,
                                                             where)) as columns):

            def redraw() -> None:
                offsets.set(None)
                columns.clear()
                values = effective_weights(self.weights)
                scales = self.chip.scales(values)
                with torch.no_grad():
                    deltas = device.sampler(values, scales, self.plan,
                                            (self.noise_time,))(generator)[0]
                    columns.update({k: crossbar.column_ranges(k, v) for k, v in values.items()}
                                   if crossbar.converts else {})
                offsets.set(deltas, scales if self.scale_aware else None, ranges)

            yield redraw


@contextlib.contextmanager
def _converters(crossbar: Crossbar, offsets: Perturbation, generator: torch.Generator
                ) -> Iterator[dict[str, Tensor]]:
    """While the block runs, the perturbed weights go through the crossbar's converters
    and output noise (if it has any); yields the column ranges to fill per batch."""
    columns: dict[str, Tensor] = {}
    if not crossbar.converts:
        yield columns
        return
    reads = AnalogReads(crossbar)
    reads.generator = generator

    def seen(name: str, tensor: Tensor) -> None:
        if name in columns:  # not while the clean weights are read for the next draw
            reads.mark(tensor, name, columns[name])

    offsets.watch(seen)
    try:
        with reads:
            yield columns
    finally:
        offsets.watch(None)


__all__ = ["NoiseInjector", "NoiseSettings"]
