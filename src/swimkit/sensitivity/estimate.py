"""One sensitivity pass: an engine over a model's training batches, in SWIM's units."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from ..chip import ChipSpec, as_chip
from ..errors import SwimkitError
from ..groups import with_overrides
from ..mapping import effective_weights, layer_ranges
from .engines import ENGINES
from .result import Sensitivity
from .settings import SensitivitySettings


def sensitivity(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    settings: SensitivitySettings | str | None = None,
    *,
    chip: ChipSpec | Any = None,
    **overrides: Any,
) -> Sensitivity:
    """Sensitivity of every device weight of ``model`` over ``batches`` of (x, y).

    ``settings`` (a :class:`SensitivitySettings`, or an engine's name) with the keyword
    ``overrides`` of its fields applied to a copy: ``engine`` (default ``"swim"``), its
    ``options`` (``{"probes": 50}`` for ``hutchinson``), the pass's ``batch_size``,
    ``progress``. The batches are already drawn, so ``limit`` is not used here. g sums
    the mean-loss gradient of each batch given; the swim engine runs them at its
    ``batch_size`` (None: chosen per model), the others as given. ``chip``'s placement
    says which weights are on devices (a sensitivity is in per-layer units; a crossbar's
    ranges rescale it at selection). The model is evaluated in eval mode and left as it
    was.
    """
    if isinstance(settings, str):
        overrides = {"engine": settings, **overrides}
        settings = None
    sens = with_overrides(SensitivitySettings, settings, overrides, "sensitivity")
    entry = ENGINES.get(sens.engine)
    options = sens.engine_options
    own = {"batch_size": sens.batch_size} if entry.own_batch else {}
    chip = as_chip(chip)
    model = chip.held(model)  # BatchNorm folded where the chip folds it
    weights = chip.weights(model)
    was_training = model.training
    model.eval()
    try:
        computed = entry.compute(model, weights, batches, progress=sens.progress, **options,
                                 **own)
    finally:
        model.train(was_training)
    second, first, samples = _checked(entry.name, computed, weights)
    scale = layer_ranges(effective_weights(weights))
    return Sensitivity(
        second={k: v * scale[k] ** 2 for k, v in second.items()},
        first={k: v * scale[k] for k, v in first.items()},
        scale=scale,
        engine=entry.name,
        samples=samples,
        meta={"options": options},
    )


def _checked(engine: str, computed: object, weights) -> tuple[dict, dict, int]:
    """An engine's (second, first, samples), or one line naming what it returned."""
    what = f"sensitivity engine {engine!r}"
    if not (isinstance(computed, tuple) and len(computed) == 3):
        raise SwimkitError(f"{what} returned {type(computed).__name__}, not (second, first, "
                           "samples): dicts of tensors by weight name and a sample count")
    second, first, samples = computed
    for label, part in (("second", second), ("first", first)):
        if not isinstance(part, dict):
            raise SwimkitError(f"{what} returned {type(part).__name__} as its {label} "
                               "derivatives, not a dict of tensors by weight name")
        for name, weight in weights.items():
            value = part.get(name)
            if not isinstance(value, Tensor) or tuple(value.shape) != tuple(weight.value.shape):
                got = (tuple(value.shape) if isinstance(value, Tensor)
                       else type(value).__name__)
                raise SwimkitError(f"{what} gave {got} as the {label} derivative of {name}, "
                                   f"not a tensor shaped {tuple(weight.value.shape)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise SwimkitError(f"{what} returned {samples!r} as its sample count, not an int >= 0")
    return second, first, samples


__all__ = ["sensitivity"]
