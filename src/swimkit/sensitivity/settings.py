"""The sensitivity step's settings: which engine, at which batch, over how many images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import SwimkitError, is_integer, is_number, require
from ..groups import flag, key_value, positive, positive_int, registered, results_of
from ..options import typed_options
from .engines import ENGINES, GRADIENT_BATCH


@dataclass
class SensitivitySettings:
    """The sensitivity pass: ``engine``, its ``options`` (see its registry entry: probes
    and seed for hutchinson), the pass's ``batch_size``, how many training images
    (``limit``; None: all).

    ``batch_size``: the batch the pass runs at. None: the swim engine chooses one per
    model (:func:`swimkit.sensitivity.batching.pass_batch_size`), the exact engines take
    128. The swim engine's results do not depend on it (beyond float rounding): its
    images are drawn in batches of :data:`GRADIENT_BATCH`, whose mean-loss gradients g
    sums, and regrouped; the exact engines run their batches as drawn, so for them it
    is g's batch too.
    """

    engine: str = field(default="swim", metadata=flag(
        "--engine", kind=registered(ENGINES, "engine"), help="the sensitivity engine"))
    batch_size: int | None = field(default=None, metadata=flag(
        "--sens-batch-size", "--div", kind=positive_int,
        help="batch size of the sensitivity pass (default: swim chooses one per model, "
             f"which changes none of its results; the exact engines take {GRADIENT_BATCH})"))
    limit: int | None = field(default=None, metadata=flag(
        "--sens-limit", kind=positive_int,
        help="use only the first N training images for the sensitivity pass"))
    options: dict[str, Any] = field(default_factory=dict, metadata=flag(
        "--engine-option", kind=key_value, repeat=True, metavar="KEY=VALUE",
        help="an option of the sensitivity engine (repeat for several), e.g. "
             "--engine-option probes=50 for hutchinson"))
    stop_tolerance: float | None = field(default=None, metadata=flag(
        "--sens-tolerance", kind=positive, metavar="T",
        help="stop the pass once the estimates of n and 2n images agree: the predicted loss "
             "of a chip written once changes by less than T (relative) and its top 10%% "
             "weights overlap in at least 1 - T (e.g. 0.02; default: every image)"))
    min_images: int = field(default=1024, metadata=flag(
        "--sens-min-images", kind=positive_int,
        help="with --sens-tolerance: images before the first check (then doubled)"))
    progress: bool = field(default=False, metadata=flag(
        "--no-progress", kind=None, invert=True, results=False, command_default=True,
        help="no progress bars"))

    def __post_init__(self) -> None:
        self.engine = ENGINES.canonical(self.engine)
        entry = ENGINES.get(self.engine)
        if self.batch_size is not None and not (is_integer(self.batch_size)
                                                and self.batch_size >= 1):
            raise SwimkitError(f"the sensitivity batch_size must be an integer >= 1, or None "
                               f"to choose it per model (got {self.batch_size!r})")
        if self.limit is not None and not (is_integer(self.limit) and self.limit >= 1):
            raise SwimkitError(f"the sensitivity limit must be an integer >= 1 images, or "
                               f"None for all (got {self.limit!r})")
        self.options = typed_options(f"sensitivity engine {entry.name!r}", entry.options,
                                     self.options)
        require(self.stop_tolerance is None or (is_number(self.stop_tolerance, finite=True)
                                                and 0 < self.stop_tolerance < 1),
                f"stop_tolerance must be a number between 0 and 1, or None for every image "
                f"(got {self.stop_tolerance!r})")
        require(is_integer(self.min_images) and self.min_images >= 1,
                f"min_images must be an integer >= 1 (got {self.min_images!r})")
        require(self.stop_tolerance is not None or self.min_images == 1024,
                "min_images would have no effect: it sets when stop_tolerance first checks; "
                "give stop_tolerance (--sens-tolerance), or drop min_images")

    @property
    def loader_batch(self) -> int:
        """Images per batch drawn for the pass, whose mean-loss gradients g sums: what
        decides the results (and enters cache keys)."""
        if ENGINES.get(self.engine).own_batch or self.batch_size is None:
            return GRADIENT_BATCH
        return self.batch_size

    def key(self) -> dict[str, Any]:
        """What changes the pass's results: the fields that do, with the batch the images
        are drawn at (the swim engine's own batch changes only float rounding)."""
        out = {k: v for k, v in results_of(self).items() if k != "batch_size"}
        return {**out, "loader_batch": self.loader_batch}

    @property
    def engine_options(self) -> dict[str, Any]:
        """The engine's options, its defaults completed: what it runs with."""
        return {**ENGINES.get(self.engine).options, **self.options}


__all__ = ["SensitivitySettings"]
