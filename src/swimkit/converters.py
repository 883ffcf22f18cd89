"""A chip's converters: its layers' linear and convolution calls read through a crossbar.

While :class:`AnalogReads` is open, every ``torch.nn.functional`` linear or convolution
call on a marked device-weight tensor runs as the crossbar computes it (see
:mod:`swimkit.crossbar` for the model: DAC, partial sums per row tile with output noise,
ADC, digital sums with each column's range); any other call goes through unchanged.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .crossbar import Crossbar, Geometry, expand_ranges
from .errors import SwimkitError


@dataclass(frozen=True)
class _Marked:
    """A device weight tensor the converters know: its geometry and column ranges."""

    name: str
    geometry: Geometry
    ranges: Tensor
    tensor: weakref.ref


#: The functional calls the converters take over, by name in torch.nn.functional (with
#: the number of spatial dimensions of a convolution), and the functions themselves.
_CALLS = {"linear": 0, "conv1d": 1, "conv2d": 2, "conv3d": 3}
_PLAIN = {name: getattr(F, name) for name in _CALLS}


class AnalogReads:
    """While open, every linear or convolution call on a marked device weight runs as
    the crossbar computes it: inputs scaled and through the DAC, partial sums per row
    tile with output noise and through the ADC, added digitally with each column's range.

    Mark the tensors the layers compute with (:meth:`mark`); output noise comes from
    :attr:`generator` (set per chip for common random numbers). With gradients enabled,
    rounding passes gradients straight through (converter-aware training). The calls
    are taken over where layers make them (``torch.nn.functional.linear`` and
    ``conv1d/2d/3d``, also inside ``nn.MultiheadAttention``); any other tensor goes to the
    function as before, and everything is put back on exit.
    """

    def __init__(self, crossbar: Crossbar) -> None:
        self.crossbar = crossbar
        self.generator: torch.Generator | None = None
        self._marked: dict[int, _Marked] = {}
        self._saved: dict[str, Any] = {}
        self._fastpath = True
        self._normalised: dict[int, tuple[Any, Tensor]] = {}

    def __enter__(self) -> AnalogReads:
        # nn.MultiheadAttention's fused inference kernel would bypass the projections'
        # linear calls: its composite path lets their converters act
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        for name, dims in _CALLS.items():
            self._saved[name] = getattr(F, name)
            setattr(F, name, self._takeover(name, dims, self._saved[name]))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, function in self._saved.items():
            setattr(F, name, function)
        self._saved.clear()
        torch.backends.mha.set_fastpath_enabled(self._fastpath)

    def _takeover(self, name: str, dims: int, before: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Tensor:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            hit = self._lookup(weight)
            if hit is None:
                return before(*args, **kwargs)
            return self._analog(dims, hit[0], hit[1], args, kwargs)

        call.__name__ = name
        return call

    def mark(self, tensor: Tensor, name: str, ranges: Tensor) -> None:
        """Compute with ``tensor`` (device weight ``name``, column ranges ``(out, T)``)
        through the crossbar."""
        geometry = self.crossbar.geometry(name, tensor.shape)
        self._marked[id(tensor)] = _Marked(name, geometry, ranges, weakref.ref(tensor))

    def clear(self) -> None:
        self._marked.clear()
        self._normalised.clear()

    def _lookup(self, weight: Any) -> tuple[_Marked, Tensor] | None:
        """The marked weight ``weight`` is (or is a block of rows of), with its ranges."""
        if not isinstance(weight, Tensor):
            return None
        found = self._marked.get(id(weight))
        if found is not None and found.tensor() is weight:
            return found, found.ranges
        base = weight._base
        found = self._marked.get(id(base)) if base is not None else None
        if found is None or found.tensor() is not base or weight.dim() != base.dim():
            return None
        stride = base.stride(0)
        first = (weight.storage_offset() - base.storage_offset()) // max(stride, 1)
        if weight.shape[1:] != base.shape[1:] or weight.stride() != base.stride():
            return None
        rows = found.ranges[first:first + weight.shape[0]]
        geometry = self.crossbar.geometry(found.name, weight.shape, packed=False)
        return _Marked(found.name, geometry, rows, found.tensor), rows

    def _analog(self, dims: int, marked: _Marked, ranges: Tensor, args: tuple,
                kwargs: dict) -> Tensor:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        call = dict(zip(names, args, strict=False))
        call.update(kwargs)
        x, weight, bias = call.pop("input"), call.pop("weight"), call.pop("bias", None)
        if dims == 0:
            return analog_linear(x, weight, bias, marked.geometry, ranges, self)
        return analog_conv(x, weight, bias, marked.geometry, ranges, self, dims, call)

    # --- the converters ---------------------------------------------------------------

    def dac(self, x: Tensor) -> Tensor:
        """Inputs in [-1, 1] through the DAC (signed, ``dac_bits``); ``x`` is the
        caller's own tensor (written in place when no gradient is taken)."""
        bits = self.crossbar.dac_bits
        if bits is None:
            return x
        steps = 2 ** (bits - 1) - 1
        if not torch.is_grad_enabled():
            return x.clamp_(-1.0, 1.0).mul_(steps).round_().div_(steps)
        return _rounded(x.clamp(-1.0, 1.0) * steps) / steps

    def adc(self, y: Tensor) -> Tensor:
        """Partial sums with output noise, then through the ADC (``adc_bits`` over
        +-``adc_range``, clipping); ``y`` is the caller's own tensor."""
        xbar = self.crossbar
        inplace = not torch.is_grad_enabled()
        if xbar.output_noise > 0:
            noise = torch.randn(y.shape, generator=self.generator, device=y.device,
                                dtype=y.dtype).mul_(xbar.output_noise)
            y = y.add_(noise) if inplace else y + noise
        if xbar.adc_bits is None:
            return y
        step = 2 * xbar.adc_range / (2 ** xbar.adc_bits - 2)
        if inplace:
            return y.div_(step).round_().mul_(step).clamp_(-xbar.adc_range, xbar.adc_range)
        return (_rounded(y / step) * step).clamp(-xbar.adc_range, xbar.adc_range)

    def normalised(self, weight: Tensor, geo: Geometry, ranges: Tensor) -> Tensor:
        """``weight`` over its ranges (in [-1, 1]); kept while the tensor is unchanged,
        so a chip's weights are divided once, not once per batch."""
        if torch.is_grad_enabled() and weight.requires_grad:
            return weight / expand_ranges(ranges, geo).clamp_min(_TINY)
        key = (weakref.ref(weight), weight._version, id(ranges))
        kept = self._normalised.get(id(weight))
        if kept is None or kept[0] != key:
            kept = (key, weight / expand_ranges(ranges, geo).clamp_min(_TINY))
            self._normalised[id(weight)] = kept
        return kept[1]


def _rounded(x: Tensor) -> Tensor:
    """round(x); with gradients, passed straight through."""
    if not x.requires_grad:
        return torch.round(x)
    return x + (torch.round(x) - x).detach()


_TINY = 1e-30


def _digital(partial: Tensor, ranges: Tensor, gain: Tensor, bias: Tensor | None,
             dims: int) -> Tensor:
    """Converted partial sums ``(batch, T, out, *spatial)`` (``dims`` spatial dimensions;
    a linear layer's are ``(*batch, T, out)``) added over the row tiles with each
    column's range, times the input gain, plus the bias: the digital periphery."""
    tiles, out = ranges.shape[1], ranges.shape[0]
    inplace = not torch.is_grad_enabled()
    if dims == 0:
        scale, axis = ranges.transpose(0, 1), -2
    else:
        scale, axis = ranges.transpose(0, 1).reshape(1, tiles, out, *([1] * dims)), 1
    if tiles == 1:
        y = partial.squeeze(axis)
        scale = scale.squeeze(axis if dims else 0)
        y = y.mul_(scale) if inplace else y * scale
    else:
        y = (partial.mul_(scale) if inplace else partial * scale).sum(axis)
    y = y.mul_(gain) if inplace else y * gain
    if bias is None:
        return y
    bias = bias if dims == 0 else bias.reshape(1, -1, *([1] * dims))
    return y.add_(bias) if inplace else y + bias


def analog_linear(x: Tensor, weight: Tensor, bias: Tensor | None, geo: Geometry,
                  ranges: Tensor, reads: AnalogReads) -> Tensor:
    """``F.linear`` as the crossbar computes it (see :class:`AnalogReads`)."""
    gain = x.abs().amax(-1, keepdim=True).clamp_min(_TINY)
    xn = reads.dac(x / gain)
    wn = reads.normalised(weight, geo, ranges)
    tiles, width = geo.row_tiles, geo.per_tile
    if tiles == 1:
        partial = _PLAIN["linear"](xn, wn).unsqueeze(-2)
    else:
        pad = tiles * width - geo.units
        xs = F.pad(xn, (0, pad)).reshape(*xn.shape[:-1], tiles, width)
        ws = F.pad(wn, (0, pad)).reshape(geo.out, tiles, width)
        partial = torch.einsum("...tr,otr->...to", xs, ws)
    return _digital(reads.adc(partial), ranges, gain, bias, 0)


def analog_conv(x: Tensor, weight: Tensor, bias: Tensor | None, geo: Geometry,
                ranges: Tensor, reads: AnalogReads, dims: int, options: dict) -> Tensor:
    """A convolution as the crossbar computes it, row tiles as groups of input channels."""
    conv = _PLAIN[f"conv{dims}d"]
    unbatched = x.dim() == dims + 1
    if unbatched:
        x = x.unsqueeze(0)
    gain = x.abs().flatten(1).amax(1).clamp_min(_TINY).reshape(-1, *([1] * (dims + 1)))
    xn = reads.dac(x / gain)
    wn = reads.normalised(weight, geo, ranges)
    tiles, width = geo.row_tiles, geo.per_tile
    if tiles == 1:
        partial = conv(xn, wn, None, **options).unsqueeze(1)
    else:
        if int(options.get("groups", 1)) != 1:
            raise SwimkitError("row tiles of a grouped convolution are not modelled: use "
                               "tile_rows large enough for one group's inputs")
        pad = tiles * width - geo.units
        xs = F.pad(xn, (0,) * (2 * dims) + (0, pad))
        ws = F.pad(wn, (0,) * (2 * dims) + (0, pad))
        ws = ws.reshape(geo.out, tiles, width, *ws.shape[2:]).transpose(0, 1)
        ws = ws.reshape(tiles * geo.out, width, *ws.shape[3:])
        out = conv(xs, ws, None, **{**options, "groups": tiles})
        partial = out.reshape(out.shape[0], tiles, geo.out, *out.shape[2:])
    y = _digital(reads.adc(partial), ranges, gain, bias, dims)
    return y.squeeze(0) if unbatched else y


def mark_weights(reads: AnalogReads, tensors: Mapping[str, Tensor],
                 clean: Mapping[str, Tensor]) -> None:
    """Mark ``tensors`` (what the layers compute with) with the column ranges of their
    ``clean`` values (the ranges the chip was programmed with)."""
    with torch.no_grad():
        for name, tensor in tensors.items():
            ranges = reads.crossbar.column_ranges(name, clean[name].detach())
            reads.mark(tensor, name, ranges)


__all__ = ["AnalogReads", "analog_conv", "analog_linear", "mark_weights"]
