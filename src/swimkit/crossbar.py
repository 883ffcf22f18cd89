"""Crossbar mapping: how a weight matrix sits on a chip's arrays and is read through them.

A device weight is a matrix of ``out`` columns (one per output) and rows (one per input):
a linear layer's ``(out, in)``; a convolution's ``(out, in_channels / groups x kernel)``,
where a tile holds whole input channels; ``nn.MultiheadAttention``'s packed
``in_proj_weight`` is three matrices (q, k, v) stacked, each on arrays of its own.
A :class:`Crossbar` says:

- **tiles**: ``tile_rows`` x ``tile_columns`` cells (None: one array as large as the
  matrix). A matrix with more rows than a tile is split along its inputs; each row tile's
  columns give partial sums that are converted and added digitally.
- **ranges**: the weight that maps to a device's full range, per ``layer`` (s = max|W|
  over the tensor: the idealised one-range chip), per ``tile`` (max|W| over each tile;
  without tile shapes, per matrix: q, k and v each have their own) or per ``column``
  (each output column of each row tile, read through its own converter gain).
- **signed** weights: ``magnitude`` (the devices hold |w|, the sign is exact: the
  idealised chip), ``pair`` (a differential pair: one set of devices holds max(w, 0), the
  other max(-w, 0), both programmed, both with errors, both priced; a plan programs the
  two devices of a pair alike) or ``offset`` (w + s stored on one set of devices over
  [0, 2 s], the offset subtracted exactly: half the resolution, so every device error
  costs twice as much in weight units).
- **converters**: inputs scaled by their absolute maximum (per input vector; per image
  for a convolution) and quantized to ``dac_bits`` (signed); each column's partial sum,
  in units of the normalised weights and inputs, gets Gaussian ``output_noise`` (fresh at
  every read) and is quantized by an ADC of ``adc_bits`` over [-``adc_range``,
  ``adc_range``], clipping outside. These follow the forward model of IBM's aihwkit
  (noise management "abs max"; its defaults: 7-bit DAC, 9-bit ADC over +-12, output
  noise 0.06; ``aihwkit.simulator.parameters.io.IOParameters``), without its iterative
  bound management.

The default crossbar is the idealised chip swimkit always modelled (one range per layer,
magnitudes, exact converters): its numbers are bit for bit those of the earlier releases.
Products of two activations (attention's q k^T and p v) and everything else stay digital.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import is_integer, is_number, require
from .groups import flag, internal, nonnegative, positive, positive_int, tile_shape

if TYPE_CHECKING:
    pass

RANGES = ("layer", "tile", "column")
#: The ADC's full scale without one given (aihwkit's default, normalised units).
DEFAULT_ADC_RANGE = 12.0
#: The largest full scale or noise a float32 partial sum can carry (normalised units).
MAX_NORMALISED = 1e9
SIGNED = ("magnitude", "pair", "offset")

#: Parameters that hold several matrices stacked along their first dimension.
PACKED = {"in_proj_weight": 3}


@dataclass(frozen=True)
class Geometry:
    """One device weight as a matrix on arrays: ``out`` columns in ``parts`` matrices,
    ``units`` input units of ``unit`` rows each (input channels x kernel for a
    convolution, single inputs for a linear layer), ``per_tile`` units a row tile."""

    shape: tuple[int, ...]
    parts: int
    units: int
    unit: int
    per_tile: int
    columns: int | None

    @property
    def out(self) -> int:
        return self.shape[0]

    @property
    def row_tiles(self) -> int:
        """Row tiles (T): how many partial sums each output column is read as."""
        return -(-self.units // self.per_tile)


@dataclass(frozen=True)
class Crossbar:
    """How device weights are mapped onto arrays and read (see the module doc).

    ``tile_rows`` / ``tile_columns`` (None: unbounded), ``ranges`` (``layer``, ``tile``,
    ``column``), ``signed`` (``magnitude``, ``pair``, ``offset``), ``dac_bits`` /
    ``adc_bits`` (None: exact), ``adc_range`` (the ADC's full scale in normalised units),
    ``output_noise`` (standard deviation in normalised units, per column and read).
    """

    tile_rows: int | None = field(default=None, metadata=flag(
        "--tile", kind=tile_shape, metavar="ROWSxCOLUMNS", spread=("tile_rows", "tile_columns"),
        help="array tiles, e.g. 256x256 (default: one array per matrix)"))
    tile_columns: int | None = field(default=None, metadata=internal())
    ranges: str = field(default="layer", metadata=flag(
        "--ranges", choices=RANGES,
        help="what maps to a device's full range: max|W| per layer, per tile (per matrix "
             "without --tile) or per output column of each tile"))
    signed: str = field(default="magnitude", metadata=flag(
        "--signed", choices=SIGNED,
        help="signed weights: magnitude (sign exact), pair (a differential pair, both "
             "devices programmed) or offset (w + s on one device set over [0, 2s])"))
    dac_bits: int | None = field(default=None, metadata=flag(
        "--dac-bits", kind=positive_int,
        help="input DAC bits (inputs scaled by their absolute maximum; default exact)"))
    adc_bits: int | None = field(default=None, metadata=flag(
        "--adc-bits", kind=positive_int,
        help="ADC bits of each column's partial sum (default exact)"))
    adc_range: float = field(default=DEFAULT_ADC_RANGE, metadata=flag(
        "--adc-range", kind=positive,
        help="ADC full scale in normalised units (weights / range times inputs / their "
             "maximum)"))
    output_noise: float = field(default=0.0, metadata=flag(
        "--output-noise", kind=nonnegative,
        help="Gaussian noise of each column's partial sum at every read, in normalised units"))

    def __post_init__(self) -> None:
        for name in ("tile_rows", "tile_columns"):
            value = getattr(self, name)
            require(value is None or (is_integer(value) and value >= 1),
                    f"{name} must be an integer >= 1 or None (got {value!r}); e.g. 256")
        for name, low in (("dac_bits", 2), ("adc_bits", 2)):
            value = getattr(self, name)
            require(value is None or (is_integer(value) and low <= value <= 24),
                    f"{name} must be an integer from {low} to 24, or None for an exact "
                    f"converter (got {value!r}); e.g. 8")
        require(self.ranges in RANGES, f"ranges must be one of {', '.join(RANGES)} "
                f"(got {self.ranges!r})")
        require(self.signed in SIGNED, f"signed must be one of {', '.join(SIGNED)} "
                f"(got {self.signed!r})")
        require(is_number(self.adc_range, finite=True) and 0 < self.adc_range <= MAX_NORMALISED,
                f"adc_range must be a number > 0 and <= {MAX_NORMALISED:g} in normalised units "
                f"(got {self.adc_range!r}); e.g. 12")
        require(is_number(self.output_noise, finite=True)
                and 0 <= self.output_noise <= MAX_NORMALISED,
                f"output_noise must be a number >= 0 and <= {MAX_NORMALISED:g} (got "
                f"{self.output_noise!r})")
        self._refuse_idle()

    def _refuse_idle(self) -> None:
        """Settings that would change nothing: refused, so a result never records them."""
        require(self.adc_bits is not None or self.adc_range == DEFAULT_ADC_RANGE,
                "adc_range would have no effect: it is the full scale of the ADC; give "
                "adc_bits (--adc-bits) as well, or drop adc_range (--adc-range)")
        tiled = self.tile_rows is not None or self.tile_columns is not None
        require(not (tiled and self.ranges == "layer" and not self.converts),
                "tiles would change nothing here: with one range per layer and exact "
                "converters a tile's partial sums add up exactly; give ranges 'tile' or "
                "'column' (--ranges), converters (--dac-bits, --adc-bits) or output noise, "
                "or drop the tiles (--tile)")

    # --- what the crossbar changes ------------------------------------------------------

    @property
    def is_default(self) -> bool:
        """The idealised chip: one range per layer, magnitudes, exact converters."""
        return self == Crossbar()

    @property
    def converts(self) -> bool:
        """True when reading a chip goes through converters or output noise."""
        return (self.dac_bits is not None or self.adc_bits is not None
                or self.output_noise > 0)

    def describe(self) -> dict[str, Any]:
        """The settings, JSON-ready (for result files, plans and cache keys)."""
        return asdict(self)

    # --- geometry and ranges ------------------------------------------------------------

    def geometry(self, name: str, shape: Sequence[int], packed: bool = True) -> Geometry:
        """Where the weight ``name`` of ``shape`` sits (see :class:`Geometry`); with
        ``packed`` False a parameter of :data:`PACKED` counts as one matrix."""
        shape = tuple(int(n) for n in shape)
        require(len(shape) >= 2, f"{name}: a device weight has at least two dimensions")
        parts = PACKED.get(name.rpartition(".")[2], 1) if packed else 1
        if shape[0] % parts:
            parts = 1
        unit, units = math.prod(shape[2:]), shape[1]
        if self.tile_rows is None:
            per_tile = units
        else:
            per_tile = max(1, self.tile_rows // unit)
            require(self.tile_rows >= unit,
                    f"{name}: a tile of {self.tile_rows} rows cannot hold one input channel "
                    f"of a {tuple(shape[2:])} kernel ({unit} rows); use tile_rows >= {unit}")
        return Geometry(shape, parts, units, unit, per_tile, self.tile_columns)

    def column_ranges(self, name: str, value: Tensor) -> Tensor:
        """The range of every column of every row tile, ``(out, T)``, as this crossbar's
        ``ranges`` set it (differentiable in ``value``)."""
        geo = self.geometry(name, value.shape)
        if self.ranges == "layer":
            return value.abs().amax().expand(geo.out, geo.row_tiles)
        per_column = _column_maxima(value, geo)
        if self.ranges == "column":
            return per_column
        return _tile_maxima(per_column, geo)

    def weight_ranges(self, name: str, value: Tensor) -> Tensor:
        """The range of every weight, broadcastable to ``value`` (0-dim per layer)."""
        if self.ranges == "layer":
            return value.abs().amax()
        geo = self.geometry(name, value.shape)
        if self.ranges == "tile" and geo.parts == 1 and geo.row_tiles == 1 and (
                geo.columns is None or geo.columns >= geo.out):
            return value.abs().amax()
        return expand_ranges(self.column_ranges(name, value), geo)

    def tile_indices(self, name: str, shape: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The row tile of every input unit and the column tile of every output of the
        weight ``name`` (int32; column tiles numbered across the matrices of a packed
        weight)."""
        geo = self.geometry(name, shape)
        rows = torch.arange(geo.units, dtype=torch.int32) // geo.per_tile
        part = geo.out // geo.parts
        width = part if geo.columns is None else min(geo.columns, part)
        per_part = -(-part // width)
        outputs = torch.arange(geo.out, dtype=torch.int32)
        columns = (outputs // part) * per_part + (outputs % part) // width
        return rows, columns

    def scales(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Detached ranges of every weight (what device errors are measured against)."""
        with torch.no_grad():
            return {name: self.weight_ranges(name, v.detach()) for name, v in values.items()}



def _column_maxima(value: Tensor, geo: Geometry) -> Tensor:
    """max |w| over each column's rows of each row tile: ``(out, T)``."""
    rows = value.abs().reshape(geo.out, geo.units, geo.unit)
    padded = geo.row_tiles * geo.per_tile
    if padded != geo.units:
        rows = F.pad(rows, (0, 0, 0, padded - geo.units))
    return rows.reshape(geo.out, geo.row_tiles, geo.per_tile * geo.unit).amax(-1)


def _tile_maxima(per_column: Tensor, geo: Geometry) -> Tensor:
    """``per_column`` maxima reduced over the columns of each tile, shape kept."""
    part = geo.out // geo.parts
    width = part if geo.columns is None else min(geo.columns, part)
    groups = -(-part // width)
    blocks = per_column.reshape(geo.parts, part, geo.row_tiles)
    if groups * width != part:
        blocks = F.pad(blocks, (0, 0, 0, groups * width - part))
    blocks = blocks.reshape(geo.parts, groups, width, geo.row_tiles)
    tiled = blocks.amax(2, keepdim=True).expand_as(blocks)
    return tiled.reshape(geo.parts, groups * width, geo.row_tiles)[:, :part].reshape(
        geo.out, geo.row_tiles)


def expand_ranges(ranges: Tensor, geo: Geometry) -> Tensor:
    """``(out, T)`` ranges as one per weight, broadcastable to the weight's shape."""
    trailing = (1,) * (len(geo.shape) - 2)
    if geo.row_tiles == 1:
        return ranges.reshape(geo.out, 1, *trailing)
    rows = ranges.unsqueeze(-1).expand(geo.out, geo.row_tiles, geo.per_tile)
    rows = rows.reshape(geo.out, -1)[:, :geo.units]
    return rows.reshape(geo.out, geo.units, *trailing)


__all__ = ["PACKED", "RANGES", "SIGNED", "Crossbar", "Geometry", "expand_ranges"]
