"""Rules of pooling layers.

Max-pooling routes S like the gradient (a 0/1 Jacobian). Average pooling over a window
of D inputs has Jacobian entries 1/D, squared 1/D^2: S_x is the VJP of S_y / D_j, with
each window's own divisor (ceil mode, padding counted or not, uneven adaptive windows).
The gradient is the plain VJP, from the same local graph (``RuleContext.vjp``).
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .context import RuleContext, SValue, vjp_rule
from .linear import _ntuple
from .registry import register_own


def _window_sizes(length: int, out: int) -> Tensor:
    j = torch.arange(out)
    start = torch.div(j * length, out, rounding_mode="floor")
    end = torch.div((j + 1) * length + out - 1, out, rounding_mode="floor")
    return (end - start).double()


_ADAPTIVE_DIMS = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
                  F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3}


def adaptive_avg_pool_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    x = ctx.arg(0, "input")
    if ctx.module is not None:
        dims = next(_ADAPTIVE_DIMS[c] for c in type(ctx.module).__mro__ if c in _ADAPTIVE_DIMS)
    else:
        dims = _ADAPTIVE_DIMS[ctx.node.target]
    out_sizes = ctx.out.shape[-dims:]
    in_sizes = x.shape[-dims:]
    divisor = torch.ones(())
    for length, out in zip(in_sizes, out_sizes, strict=True):
        divisor = divisor.unsqueeze(-1) * _window_sizes(length, out)
    return ctx.vjp(s, (1.0 / divisor).to(s))


def avg_pool_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """Divide by each window's divisor D_j before the VJP (J = 1/D_j)."""
    x = ctx.arg(0, "input")
    dims = x.dim() - 2
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    if ctx.module is not None:
        m = ctx.module
        params = {
            "kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
            "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad,
        }
        override = getattr(m, "divisor_override", None)
    else:
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
        defaults = (None, None, 0, False, True)
        pairs = enumerate(zip(names, defaults, strict=True))
        params = {n: ctx.arg(i + 1, n, d) for i, (n, d) in pairs}
        override = ctx.arg(6, "divisor_override")
    if override:
        inverse = torch.full((), 1.0 / override)
    else:
        mean_of_ones = _pool_nd(dims, ones, params, None)
        valid_count = _pool_nd(dims, ones, params, 1)
        inverse = (mean_of_ones / valid_count.clamp_min(1))[0, 0]
    return ctx.vjp(s, inverse.to(s))


def _pool_nd(dims: int, x: Tensor, params: dict, divisor: int | None) -> Tensor:
    """Average pooling of ``x`` with ``params``; ``divisor=1`` gives sum pooling."""
    params = {k: v for k, v in params.items() if v is not None}
    if dims == 1:  # avg_pool1d has no divisor_override: lift to 2-d
        kernel = _ntuple(params["kernel_size"], 1)[0]
        params["kernel_size"] = (1, kernel)
        params["stride"] = (1, _ntuple(params.get("stride", kernel), 1)[0])
        params["padding"] = (0, _ntuple(params.get("padding", 0), 1)[0])
        return F.avg_pool2d(x.unsqueeze(-2), **params, divisor_override=divisor).squeeze(-2)
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    return pool(x, **params, divisor_override=divisor)


register_own(vjp_rule, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, F.max_pool1d, F.max_pool2d,
             F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
             local_graph=True)
register_own(avg_pool_rule, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, F.avg_pool1d,
             F.avg_pool2d, F.avg_pool3d, local_graph=True)
register_own(adaptive_avg_pool_rule, *_ADAPTIVE_DIMS, local_graph=True)
