"""The chip a network is programmed on: a device model, a crossbar and the weights on devices.

Three siblings in one value, as aihwkit keeps its noise model, its mapping and its
converters side by side in one ``rpu_config``:

- the **device model** (:mod:`swimkit.devices`): how far a programmed device lands from
  its target, and when, and what verifying it costs;
- the **crossbar** (:class:`~swimkit.crossbar.Crossbar`): tiles, the ranges weights are
  mapped with, signed weights as pairs or offsets, the converters;
- the **placement** (:class:`Placement`): which weights of the network are on devices
  (by default every convolution, linear and attention weight) and how BatchNorm is held
  (digital, or folded into the convolution before it: :mod:`swimkit.folding`).

``sensitivity``, ``select``, ``evaluate``, ``train`` and the sweep take a
:class:`ChipSpec` as it is. Where a step draws or prices devices it asks
:attr:`ChipSpec.device`: the device model as the crossbar holds it (pairs of devices,
offsets), made here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from torch import Tensor, nn

from .crossbar import Crossbar
from .devices.checked import checked
from .devices.gaussian import GaussianDevice
from .devices.mapped import MappedDevice
from .devices.protocol import NoiseModel, require_noise_model
from .errors import SwimkitError, check_once, require
from .folding import BATCHNORM, fold_batchnorm
from .groups import flag, pattern
from .mapping import DeviceWeight, device_weights, effective_weights, layer_ranges
from .plans import Plan


def _patterns(name: str, value: object) -> tuple[str, ...]:
    """``value`` (None, a string or a list of strings) as a tuple of patterns."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    try:
        patterns = tuple(value)  # type: ignore[call-overload]
    except TypeError:
        raise SwimkitError(f"{name} must be a list of layer-name patterns (got "
                           f"{value!r}); e.g. ['conv1', 'fc3']") from None
    for given in patterns:
        require(isinstance(given, str) and given.strip() == given and given,
                f"{name} must hold non-empty layer-name patterns (got {given!r})")
    check_once(name, list(patterns))
    return patterns


@dataclass(frozen=True)
class Placement:
    """Which weights are on devices (see :func:`swimkit.device_weights`): every
    convolution, linear and attention weight, but for the layers ``exclude`` keeps
    digital (shell patterns of layer names, e.g. ``["conv1", "fc3"]``), with the
    parameters ``params`` names added (patterns of parameter names, e.g.
    ``["blocks.*.qkv"]``); ``layers`` keeps only the matching layers."""

    exclude: tuple[str, ...] = field(default=(), metadata=flag(
        "--exclude", kind=pattern, several=True,
        help="layers kept digital, comma separated (e.g. conv1,fc3)"))
    params: tuple[str, ...] = field(default=(), metadata=flag(
        "--map-params", kind=pattern, several=True, metavar="PATTERNS",
        help="also map these parameters to devices, comma separated shell patterns of "
             "parameter names (e.g. 'blocks.*.qkv'); conv, linear and attention weights "
             "are mapped without it"))
    layers: tuple[str, ...] = field(default=(), metadata=flag(
        "--layers", kind=pattern, several=True, metavar="PATTERNS",
        help="only these layers on devices, comma separated shell patterns of layer names "
             "(e.g. 'layer*.conv*'; default all)"))
    batchnorm: str = field(default="digital", metadata=flag(
        "--batchnorm", choices=BATCHNORM,
        help="how the chip holds BatchNorm: digital (exact, after the array) or folded into "
             "the convolution before it (the folded weights on devices)"))

    def __post_init__(self) -> None:
        for name in ("exclude", "params", "layers"):
            object.__setattr__(self, name, _patterns(name, getattr(self, name)))
        require(self.batchnorm in BATCHNORM, f"batchnorm must be one of "
                f"{', '.join(BATCHNORM)} (got {self.batchnorm!r})")

    @property
    def is_default(self) -> bool:
        """Every conv, linear and attention weight, nothing else."""
        return not (self.exclude or self.params or self.layers) and self.batchnorm == "digital"

    def held(self, model: nn.Module) -> nn.Module:
        """``model`` as the chip holds it: itself, or with BatchNorm folded (a copy)."""
        return fold_batchnorm(model) if self.batchnorm == "folded" else model

    def weights(self, model: nn.Module) -> dict[str, DeviceWeight]:
        """The device weights of ``model`` (as given: fold it first with :meth:`held`),
        in definition order."""
        return device_weights(model, layers=self.layers or None, exclude=self.exclude or None,
                              params=self.params or None)

    def describe(self) -> dict[str, Any]:
        """What differs from the default (none: an empty dict), JSON-ready."""
        out: dict[str, Any] = {name: list(getattr(self, name))
                               for name in ("exclude", "params", "layers") if getattr(self, name)}
        if self.batchnorm != "digital":
            out["batchnorm"] = self.batchnorm
        return out


@dataclass(frozen=True)
class ChipSpec:
    """A chip: ``device_model`` (any :class:`~swimkit.devices.NoiseModel`; one that also
    prices programming for time budgets and device-level plans), ``crossbar`` and
    ``placement``. Frozen; :meth:`replace` gives a changed copy."""

    device_model: Any = field(default_factory=GaussianDevice)
    crossbar: Crossbar = field(default_factory=Crossbar)
    placement: Placement = field(default_factory=Placement)

    def __post_init__(self) -> None:
        if isinstance(self.device_model, MappedDevice):
            raise SwimkitError("give the device model and the crossbar as siblings: "
                               "ChipSpec(device_model, crossbar=Crossbar(...))")
        require_noise_model(self.device_model)
        require(isinstance(self.crossbar, Crossbar),
                f"crossbar must be a swimkit.Crossbar (got {type(self.crossbar).__name__})")
        if not isinstance(self.placement, Placement):
            raise SwimkitError(f"placement must be a swimkit.Placement (got "
                               f"{type(self.placement).__name__}); e.g. "
                               "Placement(exclude=['conv1'])")

    @cached_property
    def device(self) -> Any:
        """The device model as the crossbar holds weights: itself on the idealised
        crossbar, else the device sets of each weight (:class:`MappedDevice`); a model
        from outside swimkit with its every answer checked (:class:`CheckedDevice`)."""
        device = checked(self.device_model)
        if self.crossbar.is_default:
            return device
        return MappedDevice(device, self.crossbar)

    def held(self, model: nn.Module) -> nn.Module:
        """``model`` as this chip holds it (BatchNorm folded where the placement says so):
        what every step computes on."""
        return self.placement.held(model)

    def weights(self, model: nn.Module) -> dict[str, DeviceWeight]:
        """The device weights of ``model`` (:attr:`placement`; give the held model)."""
        return self.placement.weights(model)

    def fit(self, model: nn.Module) -> dict[str, DeviceWeight]:
        """The device weights of ``model``, each checked to fit the crossbar (a tile holds
        whole kernels): what a step checks before any work."""
        weights = self.weights(self.held(model))
        if self.crossbar.tile_rows is not None:
            for name, weight in weights.items():
                self.crossbar.geometry(name, weight.value.shape)
        return weights

    def scales(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The range of every weight, which maps it as w / s into [-1, 1]: max |W| per
        layer (0-dim), or per tile or column as the crossbar sets it (broadcastable)."""
        if self.crossbar.ranges == "layer":
            return layer_ranges(values)
        return self.crossbar.scales(values)

    def trained(self) -> ChipSpec:
        """The chip a model is trained for: BatchNorm digital (a model trains with it; a
        chip that folds it folds the trained model)."""
        if self.placement.batchnorm == "digital":
            return self
        return replace(self, placement=replace(self.placement, batchnorm="digital"))

    def with_sigma(self, sigma: float) -> ChipSpec:
        """The same chip with plain-write variation ``sigma`` (noise-injection training)."""
        return replace(self, device_model=self.device_model.with_sigma(sigma))

    def replace(self, **changes: Any) -> ChipSpec:
        """A copy with ``changes`` (device_model, crossbar, placement)."""
        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The device model's settings, the crossbar's where it is not the idealised one
        (so earlier result files and cache keys read the same)."""
        return self.device.describe()

    def describe_all(self) -> dict[str, Any]:
        """Everything the chip is: device model, crossbar and placement, JSON-ready."""
        return {"device_model": self.device_model.describe(),
                "crossbar": self.crossbar.describe(), "placement": self.placement.describe()}

    def check_plan(self, plan: Plan, what: str = "evaluate") -> None:
        """Refuse ``plan`` if it was planned for another chip, naming the first setting
        that differs (a plan from before chips were recorded is taken as it is)."""
        if plan.chip is None:
            return
        here = json.loads(json.dumps(self.describe_all(), sort_keys=True))
        difference = _first_difference(plan.chip, here)
        if difference is not None:
            where, planned, now = difference
            raise SwimkitError(
                f"the plan was made for another chip ({where}: {planned!r} when planned, "
                f"{now!r} here); {what} it on the chip it was planned for, or re-price it "
                "for this one (ChipSpec.priced(plan, model); --reprice)")

    def priced(self, plan: Plan, model: nn.Module) -> Plan:
        """``plan`` on this chip: the same levels, priced by this chip's device model and
        recorded as planned for it (the explicit way to move a plan to another chip)."""
        require(plan.devices_per_weight == self.device.slicing.devices,
                f"the plan has {plan.devices_per_weight} devices per weight and this chip "
                f"{self.device.slicing.devices}: select again for this chip")
        values = effective_weights(plan.weights_in(self.held(model)))
        scales = self.scales(values)
        report = self.device.programming_report(values, scales, plan)
        mapped = not self.crossbar.is_default
        meta = {k: v for k, v in plan.meta.items() if k != "crossbar"}
        if mapped:
            meta["crossbar"] = self.crossbar.describe()
        return plan.recorded(programming=report, chip=self.describe_all(), meta=meta,
                             ranges=scales if mapped else None)


def _first_difference(planned: Any, here: Any, where: str = "chip"
                      ) -> tuple[str, Any, Any] | None:
    """The first setting where two chip descriptions differ: (path, planned, here); a
    device model's ``kind`` is compared before its settings."""
    if isinstance(planned, dict) and isinstance(here, dict):
        for key in sorted(set(planned) | set(here), key=lambda k: (k != "kind", k)):
            found = _first_difference(planned.get(key), here.get(key), f"{where}.{key}")
            if found is not None:
                return found
        return None
    return None if planned == here else (where, planned, here)


def as_chip(chip: object = None, what: str = "chip") -> ChipSpec:
    """``chip`` as a :class:`ChipSpec`: itself, the default chip for None, or a device
    model alone on the idealised crossbar."""
    if chip is None:
        return ChipSpec()
    if isinstance(chip, ChipSpec):
        return chip
    if isinstance(chip, (Crossbar, Placement)):
        raise SwimkitError(f"{what} must be a swimkit.ChipSpec or a device model (got a "
                           f"{type(chip).__name__}): ChipSpec(device_model, crossbar, "
                           "placement)")
    return ChipSpec(device_model=require_noise_model(chip, what))


def placement_of(exclude: Sequence[str] | None = None, params: Sequence[str] | None = None,
                 layers: Sequence[str] | None = None) -> Placement:
    """A :class:`Placement` from keyword patterns (None: none)."""
    return Placement(exclude=tuple(exclude or ()), params=tuple(params or ()),
                     layers=tuple(layers or ()))


__all__ = ["ChipSpec", "NoiseModel", "Placement", "as_chip", "placement_of"]
