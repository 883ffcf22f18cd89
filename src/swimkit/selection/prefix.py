"""The longest prefix of ranked entries that fits a budget, without sorting them all.

Planners take steps (a device's next hull point, say) in a ranked order while their
cost fits a budget. With a step per device and option there are hundreds of millions of
them on a large model, so they are never held at once: a caller streams them in pieces
(:class:`Entries`), recomputing each piece on every pass, and :func:`fit_prefix` finds
where the prefix ends with a few passes:

- a pass histograms the entries' keys (int64, larger first) into at most 2^16 bins and
  keeps the cost per bin; summing bins from the top finds the bin where the budget runs
  out, and the next pass looks only inside it;
- once that bin holds few entries (or a single key), they are collected and taken in
  order, ties by position, while they fit.

Keys are compared as int64: a float64 >= 0 keeps its order as its bit pattern, so a
ratio, a share in [0, 1] or such a number scaled by a power of two (exponent arithmetic
on the bits) is a key as it is, and a negative float (its sign bit set) is below them all:
an entry whose key lies below the bounds given is never taken. A ``secondary`` key breaks
ties of the primary one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

#: At most this many bins per pass.
BIN_BITS = 16
#: Entries collected at once in the bin where the budget runs out.
COLLECT = 2**20


def float_key(value: float) -> int:
    """The key of a float64 >= 0: its bit pattern as an int64 (the same order)."""
    return int(torch.tensor(value, dtype=torch.float64).view(torch.int64))


@dataclass(frozen=True)
class Entries:
    """One piece of entries in position order: ``primary`` (and ``secondary``) keys,
    int64, higher first; ``cost`` float64 (> 0 where the keys are within their bounds);
    the position of its first entry is ``start``."""

    primary: Tensor
    cost: Tensor
    start: int
    secondary: Tensor | None = None

    def positions(self, mask: Tensor) -> Tensor:
        return torch.nonzero(mask).squeeze(1) + self.start


Stream = Callable[[], Iterator[Entries]]


@dataclass(frozen=True)
class Cut:
    """Where a prefix ends: an entry is taken if its primary key is above ``primary``,
    or equal to it with a secondary key above ``secondary`` (when given), or if its
    position is in ``chosen`` (sorted). ``total`` is the cost of every entry that could
    be taken and ``count`` their number."""

    primary: int
    secondary: int | None
    chosen: Tensor
    total: float
    count: int

    def taken(self, piece: Entries) -> Tensor:
        """Bool per entry of ``piece``: is it in the prefix?"""
        out = piece.primary > self.primary
        if self.secondary is not None:
            out |= (piece.primary == self.primary) & (piece.secondary > self.secondary)
        size = piece.primary.numel()
        first, last = torch.searchsorted(
            self.chosen, torch.tensor([piece.start, piece.start + size])).tolist()
        out[self.chosen[first:last] - piece.start] = True
        return out


@dataclass
class _Range:
    """The keys still searched: primary keys in [low, high] or, with ``tie``, primary
    key ``tie`` and secondary keys in [low, high]; ``left`` is the budget left for them."""

    low: int
    high: int
    left: float
    tie: int | None = None

    def inside(self, piece: Entries) -> Tensor:
        key = self.key(piece)
        mask = (key >= self.low) & (key <= self.high)
        if self.tie is not None:
            mask &= piece.primary == self.tie
        return mask

    def key(self, piece: Entries) -> Tensor:
        return piece.primary if self.tie is None else piece.secondary

    @property
    def shift(self) -> int:
        """Bits dropped from key - low so that [low, high] falls into at most 2^BIN_BITS
        bins."""
        return max(0, (self.high - self.low).bit_length() - BIN_BITS)

    def narrowed(self, bin_: int, shift: int) -> None:
        """Keep only the keys of bin ``bin_`` (of bins 2^``shift`` keys wide from low)."""
        low = self.low + (bin_ << shift)
        self.low, self.high = low, min(self.high, low + (1 << shift) - 1)


def fit_prefix(stream: Stream, budget: float, primary: tuple[int, int],
               secondary: tuple[int, int] | None = None) -> Cut:
    """The longest prefix, by primary key then secondary key (both descending) then
    position, of the entries of ``stream`` whose cost fits ``budget``. ``primary`` and
    ``secondary`` bound the keys of the entries that can be taken (inclusive)."""
    span = _Range(primary[0], primary[1], budget)
    first = True
    while True:
        counts, costs = _histogram(stream, span)
        if first:
            total, count, first = float(costs.sum()), int(counts.sum()), False
        above = torch.flip(torch.cumsum(torch.flip(costs, [0]), 0), [0])
        if float(above[0]) <= span.left:  # every entry of the range fits
            return _cut_below(span, span.low - 1, torch.zeros(0, dtype=torch.long),
                              total, count)
        crossing = int(torch.nonzero(above > span.left).max())
        span.left -= float(above[crossing + 1]) if crossing + 1 < len(above) else 0.0
        span.narrowed(crossing, span.shift)
        if int(counts[crossing]) <= COLLECT or (span.low == span.high and (
                span.tie is not None or secondary is None)):
            return _cut_below(span, span.high, _collect(stream, span), total, count)
        if span.low == span.high:  # one primary key with many entries: rank by the secondary
            span = _Range(secondary[0], secondary[1], span.left, tie=span.low)


def _cut_below(span: _Range, bound: int, chosen: Tensor, total: float, count: int) -> Cut:
    """The cut taking every key above ``bound`` in ``span``'s key, and ``chosen``."""
    if span.tie is None:
        return Cut(bound, None, chosen, total, count)
    return Cut(span.tie, bound, chosen, total, count)


def _histogram(stream: Stream, span: _Range) -> tuple[Tensor, Tensor]:
    """Entries and their cost per bin of the keys in ``span``: bins 1 to ``bins`` of a
    count that puts the keys below the span into bin 0 and those above into the last."""
    shift = span.shift
    bins = ((span.high - span.low) >> shift) + 1
    counts = torch.zeros(bins + 2, dtype=torch.long)
    costs = torch.zeros(bins + 2, dtype=torch.float64)
    for piece in stream():
        below = span.key(piece) < span.low  # key - low may wrap around: bin those 0
        index = (span.key(piece) - span.low).bitwise_right_shift_(shift)
        index.clamp_(-1, bins).masked_fill_(below, -1).add_(1)
        if span.tie is not None:
            index.masked_fill_(piece.primary != span.tie, 0)
        counts += torch.bincount(index, minlength=bins + 2)
        costs += torch.bincount(index, weights=piece.cost, minlength=bins + 2)
    return counts[1:-1], costs[1:-1]


def _collect(stream: Stream, span: _Range) -> Tensor:
    """Positions of the entries in ``span`` taken in order while they fit (sorted)."""
    keys, seconds, costs, positions = [], [], [], []
    for piece in stream():
        mask = span.inside(piece)
        keys.append(piece.primary[mask])
        if piece.secondary is not None:
            seconds.append(piece.secondary[mask])
        costs.append(piece.cost[mask])
        positions.append(piece.positions(mask))
    position = torch.cat(positions)
    order = torch.arange(position.numel())  # position order, the last tie-break
    for key in ([torch.cat(seconds)] if seconds else []) + [torch.cat(keys)]:
        order = order[torch.sort(key[order], descending=True, stable=True).indices]
    fits = torch.cumsum(torch.cat(costs)[order], 0) <= span.left
    return torch.sort(position[order[fits]]).values


__all__ = ["COLLECT", "Cut", "Entries", "Stream", "fit_prefix", "float_key"]
