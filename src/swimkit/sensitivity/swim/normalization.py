"""Rules of normalisation layers in eval mode.

batch norm: y = (x - mean) * gamma / sqrt(var + eps) + beta, a per-channel scale, so
S_x = S_y * (gamma / sqrt(var + eps))^2 (and g_x = g_y * gamma / sqrt(var + eps)).

layer norm over the last n features: y_k = gamma_k (x_k - mu) / sigma + beta_k has the
dense Jacobian J_ki = gamma_k / sigma (delta_ki - 1/n - xh_k xh_i / n), xh = (x - mu) /
sigma. Its squared contraction S_x,i = sum_k J_ki^2 S_y,k is computed in O(n):
with u_k = gamma_k^2 S_y,k / sigma^2,

    S_x,i = u_i (1 - 2/n - 2 xh_i^2 / n)
            + (sum_k u_k + 2 xh_i sum_k u_k xh_k + xh_i^2 sum_k u_k xh_k^2) / n^2.

Its gradient, with d = gamma g_y: g_x = (d - mean(d) - xh mean(d xh)) / sigma.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .context import RuleContext, SValue, unsupported
from .registry import register_own


def _batch_norm_scale(ctx: RuleContext) -> Tensor:
    if ctx.module is not None:
        m = ctx.module
        if m.training or m.running_var is None:
            raise unsupported(
                ctx.node, "batch norm using batch statistics (put the model in eval mode)"
            )
        var, weight, eps = m.running_var, m.weight, m.eps
    else:
        if ctx.arg(5, "training", False):
            raise unsupported(ctx.node, "batch norm in training mode")
        var, weight, eps = ctx.arg(2, "running_var"), ctx.arg(3, "weight"), ctx.arg(7, "eps", 1e-5)
    scale = torch.rsqrt(var + eps)
    return scale if weight is None else weight * scale


def batch_norm_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    scale = _batch_norm_scale(ctx).detach().reshape([1, -1] + [1] * (s.dim() - 2))
    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(ctx.scaled(ctx.grad, scale)))
    return ctx.to_input(ctx.scaled(s, scale.square()))


def layer_norm_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    x = ctx.arg(0, "input")
    if ctx.module is not None:
        shape, weight, eps = ctx.module.normalized_shape, ctx.module.weight, ctx.module.eps
    else:
        shape, weight, eps = ctx.arg(1, "normalized_shape"), ctx.arg(2, "weight"), ctx.arg(
            4, "eps", 1e-5)
    shape = tuple(shape)
    xh, _, inv = torch.native_layer_norm(x, shape, None, None, eps)  # one fused kernel
    gamma = weight.detach() if weight is not None else None
    dims = tuple(range(-len(shape), 0))
    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(_layer_norm_gradient(xh, inv, gamma, ctx.grad, dims)))
    return ctx.to_input(_layer_norm_curvature(xh, inv, gamma, s, dims))


def _layer_norm_curvature(xh: Tensor, inv: Tensor, gamma: Tensor | None, s: Tensor,
                          dims: tuple[int, ...]) -> Tensor:
    """S_x of layer norm in O(n) (see the module docstring)."""
    n = math.prod(xh.shape[d] for d in dims)
    u = s * inv.square() if gamma is None else gamma.square() * s * inv.square()
    xh2 = xh.square()
    total = u.sum(dim=dims, keepdim=True)
    first = (u * xh).sum(dim=dims, keepdim=True)
    second = (u * xh2).sum(dim=dims, keepdim=True)
    return u * (1 - 2 / n - 2 * xh2 / n) + (total + 2 * xh * first + xh2 * second) / n**2


def _layer_norm_gradient(xh: Tensor, inv: Tensor, gamma: Tensor | None, g: Tensor,
                         dims: tuple[int, ...]) -> Tensor:
    """g_x of layer norm: (d - mean d - xh mean(d xh)) / sigma, d = gamma g."""
    d = g if gamma is None else g * gamma
    return (d - d.mean(dim=dims, keepdim=True)
            - xh * (d * xh).mean(dim=dims, keepdim=True)) * inv


register_own(batch_norm_rule, nn.modules.batchnorm._BatchNorm, F.batch_norm)
register_own(layer_norm_rule, nn.LayerNorm, F.layer_norm)
