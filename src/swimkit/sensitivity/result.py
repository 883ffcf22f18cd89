"""The result of a sensitivity pass, saved and loaded as one file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..storage import atomic_save, load_kind


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

    @property
    def names(self) -> list[str]:
        return list(self.second)

    @property
    def combined(self) -> dict[str, Tensor]:
        return {k: self.second[k] + 2 * self.first[k] for k in self.second}

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
        return cls(
            second=data["second"], first=data["first"], scale=data["scale"],
            engine=data["engine"], samples=data["samples"], meta=data.get("meta", {}),
        )
