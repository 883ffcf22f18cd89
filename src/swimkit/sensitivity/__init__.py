"""Per-weight sensitivities of the loss to device errors, from several engines.

Every engine returns, for each device weight, ``second`` (h: a diagonal second
derivative of the loss, summed over samples) and ``first`` (g: the gradient of each
batch's mean loss, summed over batches), in the normalised units of SWIM: with respect
to w_hat = w / s_l, s_l = max |W_l|, so h_hat = s_l^2 h and g_hat = s_l g.

Engines are registered in :data:`ENGINES` with their options and a one-line help:

- ``swim``: the one-pass diagonal curvature backpropagation of the SWIM paper, over the
  traced graph of the model as written (:mod:`swimkit.sensitivity.swim`), at a batch of
  its own (:mod:`swimkit.sensitivity.batching`);
- ``ggn``: the exact diagonal of the generalised Gauss-Newton matrix for cross-entropy;
- ``hutchinson``: an unbiased Hessian-diagonal estimate from Hessian-vector products;
- ``fisher``: the empirical Fisher diagonal (per-sample squared gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..errors import SwimkitError, first_line
from ..mapping import DeviceWeight, device_weights, effective_weights, weight_scales
from ..registry import Entry, Registry
from .result import Sensitivity

Compute = Callable[..., tuple[dict[str, Tensor], dict[str, Tensor], int]]


#: Images per batch of g's mean loss where the images are drawn for the pass (SWIM's).
GRADIENT_BATCH = 128


@dataclass(frozen=True)
class Engine(Entry):
    """A sensitivity engine: ``compute(model, weights, batches, progress=, **options)``
    returns raw (second, first, samples); ``options`` are the options it takes, with
    their defaults. ``own_batch``: it also takes ``batch_size=`` and runs the batches
    it is given at that batch (None: its own choice), which changes its results only by
    float rounding."""

    compute: Compute | None = None
    options: dict[str, Any] = field(default_factory=dict)
    own_batch: bool = False

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(self.options)


ENGINES: Registry[Engine] = Registry("sensitivity engine", entry_point_group="swimkit.engines")


def register_engine(name: str, compute: Compute, *, options: dict[str, Any] | None = None,
                    aliases: Sequence[str] = (), help: str = "",
                    own_batch: bool = False) -> Engine:
    """Add a sensitivity engine (see :class:`Engine`)."""
    return ENGINES.add(Engine(name=name, aliases=tuple(aliases), help=help, compute=compute,
                              options=dict(options or {}), own_batch=own_batch))


def _swim(model: nn.Module, weights: dict[str, DeviceWeight], batches, **kwargs):
    from .swim import swim_curvature

    return swim_curvature(model, weights, batches, **kwargs)


def _exact(name: str) -> Compute:
    def compute(model: nn.Module, weights: dict[str, DeviceWeight], batches, **kwargs):
        from . import exact

        try:
            return getattr(exact, f"{name}_diagonal")(model, weights, batches, **kwargs)
        except SwimkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch.func's errors, in one line
            raise SwimkitError(
                f"engine {name!r} cannot run this model: torch.func could not transform its "
                f"forward per sample ({first_line(exc, with_type=True)}); models with "
                "data-dependent control flow or ops torch.func cannot map (recurrent "
                "layers, for one) need engine='swim' with a curvature rule per op "
                "(swimkit.register_rule)") from None

    return compute


register_engine("swim", _swim, own_batch=True,
                help="SWIM's one-pass diagonal curvature backpropagation over the traced "
                     "graph (fast)")
register_engine("ggn", _exact("ggn"), options={"class_chunk": None, "sample_chunk": None},
                help="exact generalised Gauss-Newton diagonal (= Hessian diagonal for "
                     "piecewise-linear nets)")
register_engine("hutchinson", _exact("hutchinson"),
                options={"probes": 100, "seed": 0, "probe_chunk": 8},
                help="unbiased Hessian-diagonal estimate with Rademacher probes")
register_engine("fisher", _exact("fisher"), options={"sample_chunk": None},
                help="empirical Fisher diagonal (squared per-sample gradients)")


@dataclass
class SensitivitySettings:
    """The sensitivity pass: ``engine``, its batch size, how many training images, and
    the engine's ``options`` (``probes`` and ``seed`` for hutchinson).

    ``batch_size``: the batch the pass runs at. None: the swim engine chooses one per
    model (:func:`swimkit.sensitivity.batching.pass_batch_size`), the exact engines take
    128. The swim engine's results do not depend on it (beyond float rounding): its
    images are drawn in batches of :data:`GRADIENT_BATCH`, whose mean-loss gradients g
    sums, and regrouped; the exact engines run their batches as drawn, so for them it
    is g's batch too.
    """

    engine: str = "swim"
    batch_size: int | None = None
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.engine = ENGINES.canonical(self.engine)
        entry = ENGINES.get(self.engine)
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not
                                            isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise SwimkitError(f"the sensitivity batch_size must be an integer >= 1, or None "
                               f"to choose it per model (got {self.batch_size!r})")
        unknown = sorted(set(self.options) - set(entry.options))
        if unknown:
            raise SwimkitError(
                f"unknown option {unknown[0]!r} for sensitivity engine {entry.name!r}; "
                f"valid options: {', '.join(entry.options) or 'none'}"
            )

    @property
    def loader_batch(self) -> int:
        """Images per batch drawn for the pass, whose mean-loss gradients g sums: what
        decides the results (and enters cache keys)."""
        if ENGINES.get(self.engine).own_batch or self.batch_size is None:
            return GRADIENT_BATCH
        return self.batch_size


def sensitivity(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    engine: str | SensitivitySettings = "swim",
    *,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
    progress: bool = False,
    batch_size: int | None = None,
    **options,
) -> Sensitivity:
    """Sensitivity of every device weight of ``model`` over ``batches`` of (x, y).

    ``engine`` names the engine, its ``options`` given as keywords (``probes`` and
    ``seed`` for ``hutchinson``, chunk sizes for ``ggn`` / ``fisher``) and the pass's
    ``batch_size``, or is a :class:`SensitivitySettings` holding them (the batches are
    already drawn, so its limit is not used here). g sums the mean-loss gradient of each
    batch given; the swim engine runs them at its ``batch_size`` (None: chosen per
    model), the others as given. ``layers`` / ``exclude`` / ``params`` choose which
    weights are mapped to devices (see :func:`swimkit.device_weights`). The model is
    evaluated in eval mode and left as it was.
    """
    if isinstance(engine, SensitivitySettings):
        if options or batch_size is not None:
            raise SwimkitError("give the engine's options and batch size in its "
                               "SensitivitySettings or as keywords with an engine name, not "
                               "both")
        settings = engine
    else:
        settings = SensitivitySettings(engine=engine, batch_size=batch_size, options=options)
    entry = ENGINES.get(settings.engine)
    options = dict(settings.options)
    own = {"batch_size": settings.batch_size} if entry.own_batch else {}
    weights = device_weights(model, layers=layers, exclude=exclude, params=params)
    was_training = model.training
    model.eval()
    try:
        computed = entry.compute(model, weights, batches, progress=progress, **options, **own)
    finally:
        model.train(was_training)
    second, first, samples = _checked(entry.name, computed, weights)
    scale = weight_scales(effective_weights(weights))
    return Sensitivity(
        second={k: v * scale[k] ** 2 for k, v in second.items()},
        first={k: v * scale[k] for k, v in first.items()},
        scale=scale,
        engine=entry.name,
        samples=samples,
        meta={"options": {**entry.options, **options}},
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


__all__ = ["ENGINES", "GRADIENT_BATCH", "Engine", "Sensitivity", "SensitivitySettings",
           "register_engine", "sensitivity"]
