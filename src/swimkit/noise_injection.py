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
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .converters import AnalogReads
from .crossbar import Crossbar, crossbar_of
from .devices import DeviceModel, NoiseModel, require_noise_model
from .mapping import (
    DeviceWeight,
    Perturbation,
    device_weights,
    effective_weights,
    perturbed,
    weight_scales,
)
from .plans import Plan
from .seeding import epoch_generator

if TYPE_CHECKING:
    from .training import TrainConfig


class NoiseInjector:
    """Fresh device noise on the effective weights for every mini-batch.

    The temporary offsets are attached once per epoch (:func:`perturbed`); each batch
    recomputes the clean effective weights and their scales, then sets a new draw from
    the noise model (any :class:`~swimkit.devices.NoiseModel`), under ``plan`` if given.
    """

    def __init__(self, model: nn.Module, noise_model: NoiseModel, seed: int,
                 plan: Plan | None = None, scale_aware: bool = False,
                 noise_time: float = 0.0, exclude: Sequence[str] | None = None,
                 params: Sequence[str] | None = None) -> None:
        self.model = model
        self.noise_model = noise_model
        self.seed = seed
        self.plan = plan
        self.scale_aware = scale_aware
        self.noise_time = float(noise_time)
        self.weights: dict[str, DeviceWeight] = (
            plan.weights_in(model) if plan is not None
            else device_weights(model, exclude=exclude, params=params))
        self.mapped = {"exclude": list(exclude or []), "params": list(params or [])}

    @classmethod
    def create(
        cls, model: nn.Module, config: TrainConfig, noise_model: NoiseModel | None,
        plan: Plan | None = None, exclude: Sequence[str] | None = None,
        params: Sequence[str] | None = None,
    ) -> NoiseInjector | None:
        """The injector of ``config`` / ``noise_model``, or None for clean training.

        ``sigma_train`` > 0 trains with ``noise_model`` (default: the Gaussian model) at
        plain-write sigma ``sigma_train`` (its ``with_sigma``); a ``noise_model`` with
        ``sigma_train`` 0 is used as it is. The noise is read at ``config.noise_time``,
        on the device weights ``exclude`` / ``params`` choose (as
        :func:`~swimkit.device_weights` does; a plan names its own).
        """
        if noise_model is None and config.sigma_train <= 0:
            return None
        base = require_noise_model(noise_model if noise_model is not None else DeviceModel(),
                                   "noise_model")
        if config.sigma_train > 0:
            base = base.with_sigma(float(config.sigma_train))
        return cls(model, base, config.seed, plan, config.scale_aware, config.noise_time,
                   exclude, params)

    def describe(self) -> dict[str, Any]:
        """The noise, for the checkpoint (a resumed run must train under the same noise)."""
        plan = None
        if self.plan is not None:
            plan = {"method": self.plan.method, "requested": self.plan.requested,
                    "devices_verified": self.plan.devices_verified}
        out = {"model": self.noise_model.describe(), "plan": plan,
               "scale_aware": self.scale_aware}
        if self.noise_time:
            out["time_s"] = self.noise_time
        if any(self.mapped.values()):
            out["weights"] = self.mapped
        return out

    @contextlib.contextmanager
    def epoch(self, epoch: int) -> Iterator[Callable[[], None]]:
        """Attach the offsets for one epoch; yield the function that redraws the noise.

        On a crossbar the noise follows its ranges (scale-aware: with their gradient),
        and with converters or output noise the layers compute through them."""
        where = next(iter(self.weights.values())).value.device
        generator = epoch_generator(self.seed, "noise", epoch, where)
        crossbar = crossbar_of(self.noise_model)
        ranges = None if crossbar.ranges == "layer" else crossbar.weight_ranges
        with (perturbed(self.model, self.weights) as offsets,
              _converters(crossbar, offsets, epoch_generator(self.seed, "output", epoch,
                                                             where)) as columns):

            def redraw() -> None:
                offsets.set(None)
                columns.clear()
                values = effective_weights(self.weights)
                scales = weight_scales(values, self.noise_model)
                with torch.no_grad():
                    deltas = self.noise_model.sampler(values, scales, self.plan,
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


__all__ = ["NoiseInjector"]
