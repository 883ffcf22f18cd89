"""The result of a sensitivity pass, saved and loaded as one file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..errors import SwimkitError
from ..storage import atomic_save, load_kind

FIELDS = ("second", "first", "scale", "engine", "samples")


@dataclass
class Sensitivity:
    """Per-weight h (``second``) and g (``first``) in normalised units, and the scales.

    ``combined`` is SWIM's S = h + 2 g.
    """

    second: dict[str, Tensor]
    first: dict[str, Tensor]
    scale: dict[str, Tensor]
    engine: str
    samples: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label in ("second", "first", "scale"):
            _check_tensors(label, getattr(self, label), self.second)

    @property
    def names(self) -> list[str]:
        return list(self.second)

    @property
    def combined(self) -> dict[str, Tensor]:
        return {k: self.second[k] + 2 * self.first[k] for k in self.second}

    def rescaled(self, scales: dict[str, Tensor]) -> Sensitivity:
        """The same sensitivities in units of other ranges ``scales`` (per tile or per
        column, broadcastable to each weight): h scales as s^2, g as s. Itself when the
        ranges are those it was computed with."""
        if all(_same_range(scales[k], self.scale[k]) for k in self.second):
            return self
        ratio = {k: scales[k].to(self.second[k].dtype) / _nonzero(self.scale[k])
                 for k in self.second}
        return Sensitivity(
            second={k: v * ratio[k].square() for k, v in self.second.items()},
            first={k: v * ratio[k] for k, v in self.first.items()},
            scale={k: scales[k].expand_as(v).clone() for k, v in self.second.items()},
            engine=self.engine, samples=self.samples, meta=dict(self.meta))

    @property
    def numel(self) -> int:
        return sum(v.numel() for v in self.second.values())

    def save(self, path: str | Path) -> None:
        atomic_save(
            {
                "kind": "swimkit.sensitivity",
                "second": self.second,
                "first": self.first,
                "scale": self.scale,
                "engine": self.engine,
                "samples": self.samples,
                "meta": self.meta,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> Sensitivity:
        data = load_kind(path, "swimkit.sensitivity", "sensitivity")
        missing = [name for name in FIELDS if name not in data]
        if missing:
            raise SwimkitError(f"{path} is not a complete sensitivity file (no "
                               f"{', '.join(missing)}); compute it again with "
                               "`swimkit sensitivity`")
        try:
            return cls(
            second=data["second"], first=data["first"], scale=data["scale"],
            engine=data["engine"], samples=data["samples"], meta=data.get("meta", {}),
            )
        except SwimkitError as exc:
            raise SwimkitError(f"{path}: {exc}") from None


def _same_range(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.to(b.dtype), b))


def _nonzero(scale: Tensor) -> Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _check_tensors(label: str, tensors: object, reference: dict) -> None:
    """Each field maps the same weight names to finite floating tensors of one shape."""
    if not isinstance(tensors, dict) or not all(isinstance(v, Tensor) for v in tensors.values()):
        raise SwimkitError(f"sensitivity field {label!r} must map weight names to tensors")
    if set(tensors) != set(reference):
        raise SwimkitError(f"sensitivity field {label!r} names other weights than 'second'")
    for name, value in tensors.items():
        if label != "scale" and value.shape != reference[name].shape:
            raise SwimkitError(f"sensitivity {label}[{name!r}] has shape "
                               f"{tuple(value.shape)}, not {tuple(reference[name].shape)}")
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise SwimkitError(
                f"sensitivity {label}[{name!r}] holds NaN or infinite values (a diverged "
                "model or a damaged file); check the model's loss is finite and compute "
                "the sensitivities again")
