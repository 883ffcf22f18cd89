"""Per-weight sensitivities of the loss to device errors, from several engines.

Every engine returns, for each device weight, ``second`` (h: a diagonal second
derivative of the loss, summed over samples) and ``first`` (g: the gradient of each
batch's mean loss, summed over batches), in the normalised units of SWIM: with respect
to w_hat = w / s_l, s_l = max |W_l|, so h_hat = s_l^2 h and g_hat = s_l g.

Engines:

- ``swim``: the one-pass diagonal curvature backpropagation of the SWIM paper, over the
  traced graph of the model as written (:mod:`swimkit.sensitivity.curvature`).
- ``ggn``: the exact diagonal of the generalised Gauss-Newton matrix for cross-entropy.
- ``hutchinson``: an unbiased Hessian-diagonal estimate from Hessian-vector products.
- ``fisher``: the empirical Fisher diagonal (per-sample squared gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import Tensor, nn

from ..errors import SwimkitError, choose
from ..mapping import device_weights, effective_weights, weight_scales
from .result import Sensitivity

ENGINES = ("swim", "ggn", "hutchinson", "fisher")


def _engine(name: str) -> Callable[..., tuple[dict[str, Tensor], dict[str, Tensor], int]]:
    if name == "swim":
        from .curvature import swim_curvature

        return swim_curvature
    from . import exact

    return {"ggn": exact.ggn_diagonal, "hutchinson": exact.hutchinson_diagonal,
            "fisher": exact.fisher_diagonal}[name]


def sensitivity(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    engine: str = "swim",
    *,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: bool = False,
    **options,
) -> Sensitivity:
    """Sensitivity of every device weight of ``model`` over ``batches`` of (x, y).

    ``layers`` / ``exclude`` choose which conv / linear layers are mapped to devices
    (see :func:`swimkit.device_weights`). Engine options: ``probes`` and ``seed`` for
    ``hutchinson``. The model is evaluated in eval mode and left as it was.
    """
    engine = choose(engine, list(ENGINES), "sensitivity engine")
    if engine == "swim" and options:
        raise SwimkitError(
            f"the swim engine takes no options (got {', '.join(sorted(options))}); "
            "probes and seed are for engine='hutchinson'"
        )
    weights = device_weights(model, layers=layers, exclude=exclude)
    was_training = model.training
    model.eval()
    try:
        second, first, samples = _engine(engine)(
            model, weights, batches, progress=progress, **options
        )
    finally:
        model.train(was_training)
    scale = weight_scales(effective_weights(weights))
    return Sensitivity(
        second={k: v * scale[k] ** 2 for k, v in second.items()},
        first={k: v * scale[k] for k, v in first.items()},
        scale=scale,
        engine=engine,
        samples=samples,
    )


__all__ = ["ENGINES", "Sensitivity", "sensitivity"]
