"""Per-weight sensitivities of the loss to device errors, from several engines.

Every engine returns, for each device weight, ``second`` (h: a diagonal second
derivative of the loss, summed over samples) and ``first`` (g: the gradient of each
batch's mean loss, summed over batches), in the normalised units of SWIM: with respect
to w_hat = w / s_l, s_l = max |W_l|, so h_hat = s_l^2 h and g_hat = s_l g.

Engines are registered in :data:`ENGINES` (:mod:`.engines`) with their options and a
one-line help, each beside its definition:

- ``swim``: the one-pass diagonal curvature backpropagation of the SWIM paper, over the
  traced graph of the model as written (:mod:`swimkit.sensitivity.swim`), at a batch of
  its own (:mod:`swimkit.sensitivity.batching`);
- ``ggn``: the exact diagonal of the generalised Gauss-Newton matrix for cross-entropy;
- ``hutchinson``: an unbiased Hessian-diagonal estimate from Hessian-vector products;
- ``fisher``: the empirical Fisher diagonal (per-sample squared gradients)
  (the last three in :mod:`.exact`).

:func:`sensitivity` (:mod:`.estimate`) runs one with its :class:`SensitivitySettings`
(:mod:`.settings`); :class:`Sensitivity` (:mod:`.result`) holds and stores the result.
"""

# The engines register in this order, the order the command line lists them.
# isort: off
from . import swim as _swim  # noqa: F401 - the swim engine first
from . import exact as _exact  # noqa: F401 - then ggn, hutchinson, fisher
# isort: on
from .engines import ENGINES, GRADIENT_BATCH, Engine, register_engine
from .estimate import sensitivity
from .result import Sensitivity
from .settings import SensitivitySettings

__all__ = ["ENGINES", "GRADIENT_BATCH", "Engine", "Sensitivity", "SensitivitySettings",
           "register_engine", "sensitivity"]
