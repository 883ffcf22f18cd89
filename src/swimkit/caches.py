"""What a rerun reuses, and by which key: evaluated points (one JSON file, every settings
key kept) and sensitivity files (the current settings' and earlier ones beside them).

A cached result is reused only when everything that decides it is equal: the model file's
hash and the settings' digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import distributed
from .errors import SwimkitError
from .results import Point
from .selection.learned import LearnOptions
from .sensitivity import Sensitivity
from .settings import Settings
from .storage import atomic_write_json

CACHE_VERSION = 2


def digest(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """A short hash of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# --- sensitivities ---------------------------------------------------------------------------


def find_sensitivity(out_dir: Path, stem: str, key: dict) -> tuple[Path, Sensitivity | None]:
    """Where the sensitivities of ``key`` live, and them if they are there already.

    ``stem.pt``, unless it holds sensitivities of other settings: then a file named by the
    settings' digest, so going back to earlier settings finds their pass again. Each file
    is read once.
    """
    plain = out_dir / f"{stem}.pt"
    found = _cached_sensitivity(plain, key)
    if found is not None or not plain.is_file():
        return plain, found
    other = out_dir / f"{stem}-{digest(key)[:8]}.pt"
    return other, _cached_sensitivity(other, key)


def _cached_sensitivity(path: Path, key: dict) -> Sensitivity | None:
    if not path.is_file():
        return None
    try:
        sens = Sensitivity.load(path)
    except SwimkitError:
        return None
    return sens if sens.meta.get("key") == key else None


# --- evaluated points ------------------------------------------------------------------------


class PointCache:
    """Evaluated points in one JSON file, by settings key, rewritten after each point (rank 0).

    Points evaluated under other settings stay in the file, so switching settings back
    and forth recomputes nothing.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.stored: dict[str, dict] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                data = {}
            stored = data.get("points_by_key") if isinstance(data, dict) else None
            if isinstance(stored, dict):
                self.stored = {k: v for k, v in stored.items() if isinstance(v, dict)}
        self.points: dict[str, dict] = self.stored.setdefault(key, {})

    def get(self, point_id: str) -> Point | None:
        """The cached point, or None where there is none or it does not read back (a
        damaged or hand-edited entry is computed again; entries that read back are trusted)."""
        found = self.points.get(point_id)
        if not isinstance(found, dict):
            return None
        try:
            return Point.from_dict(found)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, SwimkitError):
            return None

    def put(self, point_id: str, point: Point) -> None:
        self.points[point_id] = point.to_dict()
        if distributed.is_rank_zero():
            atomic_write_json({"version": CACHE_VERSION, "points_by_key": self.stored},
                              self.path)


def mapped_params(settings: Settings) -> dict[str, list[str]]:
    """The key entry of ``--map-params``: none without it, so keys made before it read
    the same."""
    params = settings.selection.map_params
    return {"map_params": list(params)} if params else {}


def evaluation_key(settings: Settings) -> str:
    """Everything besides the model that decides an evaluated point."""
    s = settings
    return digest({
        "version": CACHE_VERSION, "device_model": s.device_model.describe(),
        "samples": s.evaluation.samples, "seed": s.evaluation.seed,
        "exclude": s.selection.exclude, **mapped_params(s), "tolerances": s.selection.tolerances,
        "learn": asdict(LearnOptions.from_options(s.selection.learn)),
        "learn_batch_size": s.train.batch_size, "sensitivity": [s.sensitivity.engine,
                                                    s.sensitivity.loader_batch,
                                                    s.sensitivity.limit, s.sensitivity.options],
        "test_batch_size": s.data.test_batch_size, **s.data_key(),
        # adaptive chip counts change what is stored; off, the key stays the first release's
        **({"ci_target": s.evaluation.ci_target, "min_samples": s.evaluation.min_samples}
           if s.evaluation.ci_target else {}),
        # time settings change what is stored; unset, the key stays the earlier releases'
        **({"times": s.evaluation.times, "judge_time": s.evaluation.judge_time}
           if s.evaluation.times else {}),
        **({"plan_time": s.selection.plan_time} if s.selection.plan_time else {}),
    })


__all__ = ["CACHE_VERSION", "PointCache", "digest", "evaluation_key", "file_digest",
           "find_sensitivity"]
