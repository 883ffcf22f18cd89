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
from .groups import results_of
from .results import Point
from .selection.learned import LearnOptions
from .sensitivity import Sensitivity
from .settings import Settings
from .storage import atomic_write_json
from .train_config import results_key

CACHE_VERSION = 3


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
    and forth recomputes nothing; a point stored under an ``earlier`` release's key of the
    same settings is reused too.
    """

    def __init__(self, path: Path, key: str, earlier: tuple[str, ...] = ()) -> None:
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
        self.earlier = [self.stored[k] for k in earlier if k in self.stored and k != key]

    def get(self, point_id: str) -> Point | None:
        """The cached point, or None where there is none or it does not read back (a
        damaged or hand-edited entry is computed again; entries that read back are trusted)."""
        found = self.points.get(point_id)
        for older in self.earlier:  # a point an earlier release stored
            if not isinstance(found, dict):
                found = older.get(point_id)
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


def evaluation_key(settings: Settings) -> str:
    """Everything besides the model that decides an evaluated point, read from the
    settings groups' fields that change results (:func:`~swimkit.groups.results_of`):
    the chip, the data, training (learned draws its batches), the sensitivity pass, the
    selection of a point but its method and budget (the point's own name), the methods'
    options and the chips."""
    s = settings
    point = {k: v for k, v in results_of(s.selection).items()
             if k not in ("method", "fraction", "speedup", "time_budget", "options")}
    return digest({
        "version": CACHE_VERSION, "chip": s.chip.describe_all(), "data": results_of(s.data),
        "train": results_key(s.train), "sensitivity": s.sensitivity.key(),
        "selection": point, "method_options": s.grid.method_options,
        "evaluation": results_of(s.evaluation),
    })


def sensitivity_key(settings: Settings, model_digest: str) -> dict[str, Any]:
    """What decides a sensitivity file: the model, the pass's settings, the weights on
    devices and the data (a crossbar's ranges rescale it later, so it is not here). The
    settings added after 0.2 enter only where set, so 0.2's files are found again."""
    s = settings
    placement = s.chip.placement
    return {"model": model_digest, "engine": s.sensitivity.engine,
            "batch_size": s.sensitivity.loader_batch, "limit": s.sensitivity.limit,
            "options": s.sensitivity.options, "exclude": list(placement.exclude),
            **s.data_key(),
            **({"map_params": list(placement.params)} if placement.params else {}),
            **({"layers": list(placement.layers)} if placement.layers else {}),
            **({"batchnorm": placement.batchnorm} if placement.batchnorm != "digital" else {}),
            **({"stop": [s.sensitivity.stop_tolerance, s.sensitivity.min_images]}
               if s.sensitivity.stop_tolerance is not None else {})}


#: learned's options in 0.2 (its key holds these; an option added later stays out of it).
_LEARN_OPTIONS_OF_0_2 = ("epochs", "lr", "price_step")


def key_of_0_2(settings: Settings) -> str:
    """The points key swimkit 0.2 wrote (``points_by_key``), from today's settings: a
    folder written by it is found and reused, never computed again. Read only; new
    points are stored under :func:`evaluation_key`."""
    s = settings
    ev = s.evaluation
    learned = s.grid.options_of("learned") if "learned" in s.grid.methods else {}
    placement = s.chip.placement
    return digest({
        "version": 2, "device_model": s.chip.describe(),
        "samples": ev.samples, "seed": ev.seed, "exclude": list(placement.exclude),
        **({"map_params": list(placement.params)} if placement.params else {}),
        "tolerances": s.selection.tolerances,
        "learn": {k: v for k, v in asdict(LearnOptions.from_options(learned)).items()
                  if k in _LEARN_OPTIONS_OF_0_2},
        "learn_batch_size": s.train.batch_size,
        "sensitivity": [s.sensitivity.engine, s.sensitivity.loader_batch, s.sensitivity.limit,
                        s.sensitivity.options],
        "test_batch_size": s.data.test_batch_size, **s.data_key(),
        **({"ci_target": ev.ci_target, "min_samples": ev.min_samples} if ev.ci_target else {}),
        **({"times": ev.times, "judge_time": s.grid.judge_time} if ev.times else {}),
        **({"plan_time": s.selection.plan_time} if s.selection.plan_time else {}),
    })


__all__ = ["CACHE_VERSION", "PointCache", "digest", "evaluation_key", "file_digest",
           "find_sensitivity", "key_of_0_2", "sensitivity_key"]
