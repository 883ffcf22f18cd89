"""Rules of activations: S_x = S_y * f'(x)^2 (and g_x = g_y * f'(x)) for an elementwise f.

Piecewise-linear activations (ReLU, ReLU6, Hardtanh, LeakyReLU, clamp) have derivatives
0, 1 or a slope, read off the op's output: y = f(x) is strictly monotone on each piece,
so y tells which piece x was on. Smooth activations (tanh, sigmoid, GELU, SiLU,
softplus, ELU, SELU, CELU, Hardswish, Hardsigmoid, Mish) take f'(x) by autograd on the
op itself at the recorded input, which covers each layer's settings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .context import Rule, RuleContext, SValue, unsupported
from .registry import register_elementwise, register_own


def mask_rule(derivative: Callable[[RuleContext, Tensor], Tensor]) -> Rule:
    """Piecewise-linear op with slope ``derivative(ctx, y)``: S_x = S_y * slope^2,
    g_x = g_y * slope."""

    def rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
        slope = derivative(ctx, ctx.out)
        if ctx.grad is not None:
            ctx.send_grad(ctx.to_input(ctx.scaled(ctx.grad, slope)))
        return ctx.to_input(ctx.scaled(s, slope.square()))

    return rule


def relu_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """ReLU: S_x = S_y and g_x = g_y where y > 0, else 0 (the slope's square is the
    slope), one kernel each, written into S_y / g_y when the pass holds it alone."""
    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(_where_positive(ctx, ctx.grad)))
    return ctx.to_input(_where_positive(ctx, s))


def _where_positive(ctx: RuleContext, t: Tensor) -> Tensor:
    """``t`` where the ReLU's output is positive, else 0 (in place when it may be)."""
    if ctx.writable(t) and t.shape == ctx.out.shape:
        return torch.ops.aten.threshold_backward.grad_input(t, ctx.out, 0.0, grad_input=t)
    return torch.ops.aten.threshold_backward(t, ctx.out, 0.0)


def _inside(low: float | None, high: float | None, y: Tensor) -> Tensor:
    inside = torch.ones_like(y, dtype=torch.bool)
    if low is not None:
        inside &= y > low
    if high is not None:
        inside &= y < high
    return inside.to(y.dtype)


def _hardtanh_slope(ctx: RuleContext, y: Tensor) -> Tensor:
    if ctx.module is not None:
        return _inside(ctx.module.min_val, ctx.module.max_val, y)
    if ctx.node.target is F.relu6:
        return _inside(0.0, 6.0, y)
    return _inside(ctx.arg(1, "min_val", -1.0), ctx.arg(2, "max_val", 1.0), y)


def _clamp_slope(ctx: RuleContext, y: Tensor) -> Tensor:
    low, high = ctx.arg(1, "min"), ctx.arg(2, "max")
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        raise unsupported(ctx.node, "clamp with tensor bounds")
    return _inside(low, high, y)


def _leaky_slope(ctx: RuleContext, y: Tensor) -> Tensor:
    slope = ctx.module.negative_slope if ctx.module is not None else ctx.arg(
        1, "negative_slope", 0.01
    )
    if slope < 0:  # then y > 0 on both pieces and the output no longer tells them apart
        raise unsupported(ctx.node, "LeakyReLU with a negative slope")
    return torch.where(y > 0, torch.ones_like(y), torch.full_like(y, slope))


hardtanh_rule = mask_rule(_hardtanh_slope)
clamp_rule = mask_rule(_clamp_slope)
leaky_rule = mask_rule(_leaky_slope)

register_own(relu_rule, nn.ReLU, F.relu, torch.relu, "relu")
register_own(hardtanh_rule, nn.Hardtanh, F.relu6, F.hardtanh)  # nn.ReLU6 is a Hardtanh
register_own(clamp_rule, torch.clamp, torch.clip, "clamp", "clip")
register_own(leaky_rule, nn.LeakyReLU, F.leaky_relu)

#: Smooth activations: layer types, functions and tensor methods, f' by autograd.
SMOOTH = (
    nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Softplus, nn.ELU, nn.SELU, nn.CELU,
    nn.Hardswish, nn.Hardsigmoid, nn.Mish,
    torch.tanh, torch.sigmoid, F.tanh, F.sigmoid, F.gelu, F.silu, F.softplus, F.elu,
    F.selu, F.celu, F.hardswish, F.hardsigmoid, F.mish,
    "tanh", "sigmoid",
)
for _target in SMOOTH:
    register_elementwise(_target, writes_in_place=True)
