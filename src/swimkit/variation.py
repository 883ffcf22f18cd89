"""Value-dependent device variation: sigma as a function of the programmed level.

Real devices do not land every conductance with the same spread. A *variation curve*
maps the normalised level ``|w| / s_l`` (a tensor in [0, 1]) to a multiplicative factor
on the device sigma (a tensor of the same shape), so the per-weight spread is
``sigma * factor(level)``. Curves:

- :class:`UniformVariation`: factor 1 everywhere (the plain SWIM setting).
- :class:`BandVariation`: U-SWIM's setting, factor ``r`` inside a band of levels.
- :class:`FunctionVariation`: any callable ``level -> factor``.
- :class:`TableVariation`: a measured curve, piecewise linear between (level, factor)
  points, e.g. read from a CSV file.

:func:`as_variation` turns a user setting (None, a name, a CSV path, a callable) into one.
"""

from __future__ import annotations

import csv
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import SwimkitError, is_number, require

#: The share of weights U-SWIM's authors assume inside their band (0.25, 0.75).
AUTHORS_BAND = (0.25, 0.75)
AUTHORS_SHARE = 0.4


class Variation(ABC):
    """A variation curve: ``curve(level)`` gives the factor on sigma for each level."""

    @abstractmethod
    def __call__(self, level: Tensor) -> Tensor:
        """Factor on sigma for each normalised level in [0, 1] (same shape, dtype, device)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description, for reports."""

    @property
    def uniform(self) -> bool:
        """True if the factor is 1 at every level (lets callers take a fast path)."""
        return False

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({fields})"


class UniformVariation(Variation):
    """The same sigma for every level (factor 1)."""

    def __call__(self, level: Tensor) -> Tensor:
        return torch.ones_like(level)

    @property
    def uniform(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"kind": "uniform"}


class BandVariation(Variation):
    """Factor ``r`` for ``low < level < high`` and 1 elsewhere, optionally renormalised.

    With ``renormalize`` every factor is divided by ``norm = sqrt(share r^2 + 1 - share)``
    so that the mean variance stays about sigma^2 when a fraction ``share`` of the weights
    lies in the band. ``share`` defaults to 0.4 for the band (0.25, 0.75): that is the
    constant of U-SWIM's authors (sigma / sqrt(0.4 r^2 + 0.6)), kept for parity. For any
    other band it defaults to the band width ``high - low`` (levels spread evenly).
    """

    def __init__(
        self,
        r: float,
        low: float = AUTHORS_BAND[0],
        high: float = AUTHORS_BAND[1],
        renormalize: bool = True,
        share: float | None = None,
    ) -> None:
        require(
            is_number(r) and math.isfinite(r) and r > 0,
            f"band variation factor r must be a finite number > 0 (got {r!r}); e.g. r=3",
        )
        require(
            is_number(low) and is_number(high) and 0.0 <= low < high <= 1.0,
            f"band variation needs 0 <= low < high <= 1 (got low={low!r}, high={high!r}); "
            "e.g. low=0.25, high=0.75",
        )
        if share is None:
            share = AUTHORS_SHARE if (low, high) == AUTHORS_BAND else high - low
        require(
            is_number(share) and 0.0 <= share <= 1.0,
            f"band variation share must be between 0 and 1 (got {share!r})",
        )
        self.r = float(r)
        self.low = float(low)
        self.high = float(high)
        self.renormalize = bool(renormalize)
        self.share = float(share)

    @property
    def norm(self) -> float:
        """The divisor applied to every factor (1 without renormalisation)."""
        if not self.renormalize:
            return 1.0
        return math.sqrt(self.share * self.r**2 + 1.0 - self.share)

    def __call__(self, level: Tensor) -> Tensor:
        inside = (level > self.low) & (level < self.high)
        norm = self.norm
        return torch.full_like(level, 1.0 / norm).masked_fill_(inside, self.r / norm)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "band",
            "r": self.r,
            "low": self.low,
            "high": self.high,
            "renormalize": self.renormalize,
            "share": self.share,
            "norm": self.norm,
        }


class FunctionVariation(Variation):
    """Any callable ``level -> factor`` (a tensor of the same shape, non-negative).

    The callable is checked once on a probe of levels in [0, 1], so a wrong curve fails
    here with a clear message rather than deep inside a Monte-Carlo run.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        require(callable(fn), f"a variation function must be callable (got {fn!r})")
        self.fn = fn
        probe = torch.linspace(0.0, 1.0, 101)
        try:
            factor = fn(probe)
        except Exception as exc:  # the user's code: report what broke, in one line
            raise SwimkitError(
                f"variation function {self.name} failed on levels in [0, 1]: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._check_shape(probe, factor)
        require(
            bool(torch.isfinite(factor).all()) and bool((factor >= 0).all()),
            f"variation function {self.name} must return finite factors >= 0 "
            "for every level in [0, 1]",
        )

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)

    def _check_shape(self, level: Tensor, factor: object) -> None:
        require(
            isinstance(factor, Tensor) and factor.shape == level.shape,
            f"variation function {self.name} must return a tensor shaped like its input "
            f"(input {tuple(level.shape)}, got "
            f"{tuple(factor.shape) if isinstance(factor, Tensor) else type(factor).__name__}); "
            "e.g. lambda level: 1 + level, or torch.full_like(level, 2.0) for a constant",
        )

    def __call__(self, level: Tensor) -> Tensor:
        factor = self.fn(level)
        self._check_shape(level, factor)
        return factor.to(level.dtype)

    def describe(self) -> dict[str, Any]:
        return {"kind": "function", "name": self.name}


class TableVariation(Variation):
    """A measured curve: piecewise-linear interpolation of (level, factor) points.

    Levels must be strictly increasing within [0, 1]; factors must be >= 0. Outside the
    table the end values hold (clamped). With ``DeviceModel(sigma=1.0)`` the factors are
    absolute sigmas in device steps, so a measured sigma-vs-level table can be used as is.
    """

    def __init__(
        self,
        levels: Sequence[float] | Tensor,
        factors: Sequence[float] | Tensor,
        source: str | None = None,
    ) -> None:
        where = f" in {source}" if source else ""
        lv = _as_1d(levels, "levels" + where)
        fc = _as_1d(factors, "factors" + where)
        require(
            lv.numel() == fc.numel(),
            f"variation table{where} needs as many factors as levels "
            f"(got {lv.numel()} levels, {fc.numel()} factors)",
        )
        require(
            lv.numel() >= 2,
            f"variation table{where} needs at least 2 (level, sigma) rows (got {lv.numel()})",
        )
        require(
            bool(torch.isfinite(lv).all()) and bool(torch.isfinite(fc).all()),
            f"variation table{where} has a value that is not a finite number",
        )
        require(
            bool((lv >= 0).all()) and bool((lv <= 1).all()),
            f"variation table{where} has a level outside [0, 1]; levels are |w| / max|w|, "
            "normalise them",
        )
        require(
            bool((fc >= 0).all()), f"variation table{where} has a negative sigma; all must be >= 0"
        )
        require(
            bool((lv[1:] > lv[:-1]).all()),
            f"variation table{where} must list levels in increasing order without duplicates",
        )
        self.levels = lv
        self.factors = fc
        self.source = source

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> TableVariation:
        """Read a CSV of two numeric columns, with an optional header ``level,sigma``."""
        levels, factors = _read_table(Path(path))
        return cls(levels, factors, source=str(path))

    def __call__(self, level: Tensor) -> Tensor:
        lv = self.levels.to(level.device, level.dtype)
        fc = self.factors.to(level.device, level.dtype)
        x = level.clamp(lv[0], lv[-1])
        idx = (torch.searchsorted(lv, x.contiguous(), right=True) - 1).clamp(0, lv.numel() - 2)
        x0, x1 = lv[idx], lv[idx + 1]
        f0, f1 = fc[idx], fc[idx + 1]
        return f0 + (x - x0) / (x1 - x0) * (f1 - f0)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "table",
            "levels": self.levels.tolist(),
            "factors": self.factors.tolist(),
            "source": self.source,
        }


#: Programming-error spread of phase-change memory against the target conductance
#: g = G / G_max, in microsiemens at G_max = 25 uS: 0.26348 + 1.9650 g - 1.1731 g^2. The
#: fit over about a million PCM devices of Nandakumar et al., ICECS 2019 (also in Joshi
#: et al., Nature Communications 11, 2473, 2020, and in IBM aihwkit's PCM-like model).
PCM_PROGRAMMING = (0.26348, 1.9650, -1.1731)


class PolynomialVariation(Variation):
    """Factor sum_i c_i x^i / sum_i c_i: a polynomial shape, 1 at the top level x = 1
    (clamped at 0). ``"pcm"`` is the measured PCM programming-error shape."""

    def __init__(self, coefficients: Sequence[float], name: str | None = None) -> None:
        require(len(coefficients) >= 1 and all(is_number(c, finite=True) for c in coefficients),
                f"a polynomial variation needs finite coefficients (got {coefficients!r})")
        total = float(sum(coefficients))
        require(total > 0, f"a polynomial variation must be > 0 at level 1 (got {total:g})")
        self.coefficients = tuple(float(c) for c in coefficients)
        self.name = name

    def __call__(self, level: Tensor) -> Tensor:
        out = torch.zeros_like(level)
        for c in reversed(self.coefficients):
            out = out * level + c
        return (out / sum(self.coefficients)).clamp_(min=0.0)

    def describe(self) -> dict[str, Any]:
        return {"kind": "polynomial", "coefficients": list(self.coefficients),
                "name": self.name}


def as_variation(spec: object) -> Variation:
    """Turn a user setting into a :class:`Variation`.

    Accepts None or ``"uniform"`` (uniform), a :class:`Variation`, a callable
    ``level -> factor``, ``"band:R"`` or ``"band:R:LOW:HIGH"`` (:class:`BandVariation`),
    ``"pcm"`` (:data:`PCM_PROGRAMMING`'s shape) or the path of a ``.csv`` table
    (:meth:`TableVariation.from_csv`).
    """
    if spec is None:
        return UniformVariation()
    if isinstance(spec, Variation):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return _from_string(os.fspath(spec))
    if callable(spec):
        return FunctionVariation(spec)
    raise SwimkitError(
        f"cannot use {spec!r} as a variation; give 'uniform', 'band:R', a .csv path "
        "or a callable level -> factor"
    )


def _from_string(text: str) -> Variation:
    spec = text.strip()
    if spec.lower() == "uniform":
        return UniformVariation()
    if spec.lower() == "pcm":
        return PolynomialVariation(PCM_PROGRAMMING, name="pcm")
    if spec.lower().startswith("band:"):
        parts = spec.split(":")[1:]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        require(
            len(numbers) in (1, 3),
            f"cannot read variation {text!r}; write band:R or band:R:LOW:HIGH, e.g. band:3",
        )
        return BandVariation(*numbers)
    if spec.lower().endswith(".csv"):
        return TableVariation.from_csv(spec)
    raise SwimkitError(
        f"unknown variation {text!r}; use 'uniform', 'band:R' (e.g. band:3), 'pcm' "
        "or the path of a .csv file with columns level,sigma"
    )


def _read_table(path: Path) -> tuple[list[float], list[float]]:
    require(
        path.is_file(),
        f"variation table {path} not found; give a CSV file with columns level,sigma",
    )
    levels: list[float] = []
    factors: list[float] = []
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except (UnicodeDecodeError, csv.Error):
        raise SwimkitError(f"variation table {path} is not a text CSV file; give a CSV file "
                           "with columns level,sigma") from None
    for lineno, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        require(
            len(cells) == 2,
            f"{path}, line {lineno}: expected 2 columns level,sigma (got {len(cells)})",
        )
        values = _numbers(cells)
        if values is None:
            is_header = not levels and _is_header(cells)
            require(
                is_header,
                f"{path}, line {lineno}: {','.join(cells)!r} is not two numbers "
                "(only the first line may be a header level,sigma)",
            )
            continue
        levels.append(values[0])
        factors.append(values[1])
    return levels, factors


def _is_header(cells: list[str]) -> bool:
    return cells[0].lower() == "level" and cells[1].lower() in ("sigma", "factor")


def _numbers(cells: list[str]) -> list[float] | None:
    try:
        return [float(c) for c in cells]
    except ValueError:
        return None


def _as_1d(values: Sequence[float] | Tensor, what: str) -> Tensor:
    try:
        out = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SwimkitError(f"variation table {what} must be numbers ({exc})") from exc
    require(out.dim() == 1, f"variation table {what} must be a flat list of numbers")
    return out


