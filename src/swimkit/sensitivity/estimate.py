"""One sensitivity pass: an engine over a model's training batches, in SWIM's units."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
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
    scale = layer_ranges(effective_weights(weights))

    def run(part: Iterable[tuple[Tensor, Tensor]]) -> tuple[dict, dict, int]:
        computed = entry.compute(model, weights, part, progress=sens.progress, **options,
                                 **own)
        return _checked(entry.name, computed, weights)

    was_training = model.training
    model.eval()
    try:
        if sens.stop_tolerance is None:
            second, first, samples = run(batches)
            stopping: dict[str, Any] = {}
        else:
            second, first, samples, stopping = _until_known(run, batches, sens, chip, weights,
                                                            scale)
    finally:
        model.train(was_training)
    return Sensitivity(
        second={k: v * scale[k] ** 2 for k, v in second.items()},
        first={k: v * scale[k] for k, v in first.items()},
        scale=scale,
        engine=entry.name,
        samples=samples,
        meta={"options": options, **stopping},
    )


def _until_known(run: Any, batches: Iterable[tuple[Tensor, Tensor]],
                 sens: SensitivitySettings, chip: ChipSpec, weights: Any,
                 scale: dict[str, Tensor]) -> tuple[dict, dict, int, dict[str, Any]]:
    """The pass in doubling stretches (``min_images``, then as many again, ...), stopped
    once two running estimates n and 2n images apart agree: their predicted loss
    increases of a chip written once, 1/2 sum h Var per image, differ by less than
    ``stop_tolerance`` (relative), and the weights that contribute most to it (the top
    :data:`TOP_SHARE`) overlap in at least 1 - ``stop_tolerance`` of them."""
    values = effective_weights(weights)
    variance = chip.device.variance(values, chip.scales(values))
    second: dict[str, Tensor] = {}
    first: dict[str, Tensor] = {}
    samples, goal, checks = 0, sens.min_images, []
    previous: tuple[float, Tensor] | None = None
    stream = iter(batches)
    while True:
        part = _take(stream, goal - samples)
        if not part:
            break
        more_h, more_g, more = run(part)
        second = _added(second, more_h)
        first = _added(first, more_g)
        samples += more
        now = _contributions(second, variance, scale, samples)
        if previous is not None:
            change, overlap = _agreement(previous, now)
            checks.append({"images": samples, "loss_change": change, "top_overlap": overlap})
            if change < sens.stop_tolerance and overlap >= 1 - sens.stop_tolerance:
                return second, first, samples, _record(sens, samples, True, checks)
        previous, goal = now, 2 * samples
    if samples == 0:
        raise SwimkitError("the sensitivity pass got no batches: pass a non-empty loader")
    return second, first, samples, _record(sens, samples, False, checks)


#: The share of the weights whose agreement the stopping rule asks for (by contribution).
TOP_SHARE = 0.1


def _take(stream: Any, images: int) -> list[tuple[Tensor, Tensor]]:
    """Batches of ``stream`` until at least ``images`` images."""
    taken, count = [], 0
    for x, y in stream:
        taken.append((x, y))
        count += int(y.shape[0])
        if count >= images:
            break
    return taken


def _added(total: dict[str, Tensor], more: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: total[k] + v if k in total else v for k, v in more.items()}


def _contributions(second: dict[str, Tensor], variance: dict[str, Tensor],
                   scale: dict[str, Tensor], samples: int) -> tuple[float, Tensor]:
    """The predicted loss increase per image of a chip written once, 1/2 sum h Var, and
    every weight's share of it (flat)."""
    parts = [(0.5 * second[k].double() * scale[k].double() ** 2 * variance[k].double()
              / samples).reshape(-1) for k in second]
    flat = torch.cat(parts)
    return float(flat.sum()), flat


def _agreement(before: tuple[float, Tensor], after: tuple[float, Tensor]
               ) -> tuple[float, float]:
    """The relative change of the predicted loss, and the overlap of the top weights."""
    (loss_a, flat_a), (loss_b, flat_b) = before, after
    change = abs(loss_b - loss_a) / max(abs(loss_b), 1e-300)
    k = max(1, int(TOP_SHARE * flat_b.numel()))
    top_a = torch.zeros(flat_a.numel(), dtype=torch.bool)
    top_a[flat_a.topk(k).indices] = True
    overlap = float(top_a[flat_b.topk(k).indices].double().mean())
    return change, overlap


def _record(sens: SensitivitySettings, images: int, stopped: bool,
            checks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a stopping pass tells its result: the rule, the images it used, its checks."""
    return {"stop_tolerance": sens.stop_tolerance, "min_images": sens.min_images,
            "images": images, "stopped_early": stopped, "checks": checks}


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
