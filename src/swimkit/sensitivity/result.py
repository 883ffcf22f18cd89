"""The result of a sensitivity pass, saved and loaded as one file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..errors import SwimkitError
from ..storage import atomic_save


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
        data = _load_kind(path, "swimkit.sensitivity", "sensitivity")
        return cls(
            second=data["second"], first=data["first"], scale=data["scale"],
            engine=data["engine"], samples=data["samples"], meta=data.get("meta", {}),
        )


def _load_kind(path: str | Path, kind: str, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SwimkitError(f"{what} file {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file gets the same message
        data = None
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise SwimkitError(
            f"{str(path)!r} is not a swimkit {what} file; give the file swimkit wrote"
        )
    return data
