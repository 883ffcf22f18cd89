"""Rules of structural ops: arithmetic, selections, reshapes, joins, dropout, quantizers.

- residual add and subtraction: S to each operand (cross terms dropped), summed back
  over broadcast dimensions; ``alpha`` squared on the second operand;
- a product a * b: S_a = S * b^2 (the cross and second-order terms are dropped), and a
  division by a constant: S_a = S / b^2;
- reshapes, selections, concatenation, padding, sums: 0/1 Jacobians, the plain VJP;
- a mean over k elements: 1/k entries, the VJP of S / k;
- dropout and torchvision's stochastic depth in eval mode, identity, negation and fake
  quantizers (straight through).

The gradient beside S is each op's ordinary backward (signs and ``alpha`` unsquared).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import stochastic_depth

from ...quantization import FakeQuantize
from .context import RuleContext, SValue, identity_rule, negation_rule, unsupported, vjp_rule
from .registry import register_own


def _reduce_to(s: Tensor, value: Any) -> Tensor | None:
    if not isinstance(value, Tensor):
        return None
    return s.sum_to_size(value.shape) if s.shape != value.shape else s


_SUBTRACTIONS = (operator.sub, torch.sub, "sub")


def add_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """a + alpha b (or a - alpha b): S_a = S, S_b = alpha^2 S; g_a = g, g_b = +-alpha g."""
    alpha = ctx.kwargs.get("alpha", 1)
    sign = -1 if ctx.node.target in _SUBTRACTIONS else 1
    if ctx.grad is not None:
        ctx.send_grad(_to_operands(ctx, ctx.grad, sign * alpha))
    return _to_operands(ctx, s, alpha**2)


def _to_operands(ctx: RuleContext, flow: Tensor, factor: float) -> dict[fx.Node, SValue]:
    """``flow`` to both operands of a sum that need it, times ``factor`` on the second,
    summed back over broadcast dimensions (and over x + x)."""
    result: dict[fx.Node, SValue] = {}
    for i, (node, value) in enumerate(zip(ctx.node.args[:2], ctx.args[:2], strict=True)):
        if isinstance(node, fx.Node) and ctx.needs(node):
            part = _reduce_to(flow, value)
            if part is None:
                continue
            if i == 1 and factor != 1:
                part = part * factor
            result[node] = result[node] + part if node in result else part  # x + x
    return result


def _product(ctx: RuleContext, s: Tensor, divide: bool) -> dict[fx.Node, SValue]:
    """Product a * b: S_a = S * b^2 (cross terms dropped), g_a = g * b; a / b:
    S_a = S / b^2, g_a = g / b."""
    a, b = ctx.args[:2]
    result: dict[fx.Node, SValue] = {}
    grads: dict[fx.Node, SValue] = {}
    for node, other in ((ctx.node.args[0], b), (ctx.node.args[1], a)):
        if not (isinstance(node, fx.Node) and ctx.needs(node)):
            continue
        factor = other.detach() if isinstance(other, Tensor) else torch.tensor(float(other))
        factor = factor.to(s)
        if ctx.grad is not None:
            g_in = ctx.grad / factor if divide else ctx.grad * factor
            grads[node] = _reduce_to(g_in, ctx.value(node))
        factor = factor.square()
        s_in = s / factor if divide else s * factor
        result[node] = _reduce_to(s_in, ctx.value(node))
        if divide:
            break
    ctx.send_grad(grads)
    return result


def mul_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    return _product(ctx, s, divide=False)


def div_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    if isinstance(ctx.node.args[1], fx.Node) and ctx.needs(ctx.node.args[1]):
        raise unsupported(ctx.node, "division by a tensor that depends on device weights")
    return _product(ctx, s, divide=True)


def getitem_rule(ctx: RuleContext, s: SValue) -> dict[fx.Node, SValue]:
    if isinstance(ctx.args[0], Tensor):
        return ctx.vjp(s)
    index = int(ctx.args[1])
    if ctx.grad is not None:
        ctx.send_grad({ctx.input_node: {index: ctx.grad}})
    return {ctx.input_node: {index: s}}


def dropout_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    training = ctx.module.training if ctx.module is not None else ctx.arg(2, "training", True)
    if training:
        raise unsupported(ctx.node, "dropout in training mode")
    return identity_rule(ctx, s)


def stochastic_depth_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """torchvision's stochastic depth: the identity in eval mode (or with p = 0)."""
    training = ctx.arg(3, "training", True)
    if training and float(ctx.arg(1, "p", 0.0)) > 0:
        raise unsupported(ctx.node, "stochastic depth in training mode")
    return identity_rule(ctx, s)


def mean_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    x = ctx.arg(0, "input")
    count = x.numel() // max(ctx.out.numel(), 1)
    return ctx.vjp(s, torch.tensor(1.0 / count, dtype=s.dtype, device=s.device))


register_own(add_rule, operator.add, torch.add, operator.sub, torch.sub, "add", "sub")
register_own(mul_rule, operator.mul, torch.mul, "mul")
register_own(div_rule, operator.truediv, torch.div, "div")
register_own(negation_rule, operator.neg, torch.neg, "neg")
register_own(identity_rule, nn.Identity, FakeQuantize)
register_own(getitem_rule, operator.getitem, local_graph=True)
register_own(mean_rule, torch.mean, "mean", local_graph=True)
register_own(dropout_rule, nn.modules.dropout._DropoutNd, F.dropout, F.dropout1d, F.dropout2d,
             F.dropout3d)
register_own(stochastic_depth_rule, stochastic_depth)
register_own(
    vjp_rule,
    nn.Flatten, nn.Unflatten, F.pad, torch.flatten, torch.reshape, torch.cat, torch.concat,
    torch.stack, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose, torch.chunk,
    torch.split, torch.narrow, torch.sum, torch.flip,
    "view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose",
    "contiguous", "chunk", "split", "narrow", "expand", "expand_as", "view_as",
    "reshape_as", "repeat", "flip", "sum", "clone", "unbind",
    local_graph=True,
)
