"""Rules of structural ops: arithmetic, selections, reshapes, joins, dropout, quantizers.

- residual add and subtraction: S to each operand (cross terms dropped), summed back
  over broadcast dimensions; ``alpha`` squared on the second operand;
- a product a * b: S_a = S * b^2 (the cross and second-order terms are dropped), and a
  division by a constant: S_a = S / b^2;
- reshapes, selections, concatenation, padding, sums: 0/1 Jacobians, the plain VJP;
- a mean over k elements: 1/k entries, the VJP of S / k;
- dropout and torchvision's stochastic depth in eval mode, identity, negation and fake
  quantizers (straight through).
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
from .context import RuleContext, SValue, identity_rule, unsupported, vjp_rule
from .registry import register_rule


def _reduce_to(s: Tensor, value: Any) -> Tensor | None:
    if not isinstance(value, Tensor):
        return None
    return s.sum_to_size(value.shape) if s.shape != value.shape else s


def add_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    alpha = ctx.kwargs.get("alpha", 1)
    result: dict[fx.Node, SValue] = {}
    for i, (node, value) in enumerate(zip(ctx.node.args[:2], ctx.args[:2], strict=True)):
        if isinstance(node, fx.Node) and ctx.needs(node):
            s_in = _reduce_to(s, value)
            if s_in is None:
                continue
            if i == 1 and alpha != 1:
                s_in = s_in * alpha**2
            result[node] = result[node] + s_in if node in result else s_in  # x + x
    return result


def _product(ctx: RuleContext, s: Tensor, divide: bool) -> dict[fx.Node, SValue]:
    """Product a * b: S_a = S * b^2 (cross terms dropped); a / b: S_a = S / b^2."""
    a, b = ctx.args[:2]
    result: dict[fx.Node, SValue] = {}
    for node, other in ((ctx.node.args[0], b), (ctx.node.args[1], a)):
        if not (isinstance(node, fx.Node) and ctx.needs(node)):
            continue
        factor = other.detach() if isinstance(other, Tensor) else torch.tensor(float(other))
        factor = factor.to(s).square()
        s_in = s / factor if divide else s * factor
        result[node] = _reduce_to(s_in, ctx.value(node))
        if divide:
            break
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
    return {ctx.input_node: {int(ctx.args[1]): s}}


def dropout_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    training = ctx.module.training if ctx.module is not None else ctx.arg(2, "training", True)
    if training:
        raise unsupported(ctx.node, "dropout in training mode")
    return ctx.to_input(s)


def stochastic_depth_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """torchvision's stochastic depth: the identity in eval mode (or with p = 0)."""
    training = ctx.arg(3, "training", True)
    if training and float(ctx.arg(1, "p", 0.0)) > 0:
        raise unsupported(ctx.node, "stochastic depth in training mode")
    return ctx.to_input(s)


def mean_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    x = ctx.arg(0, "input")
    count = x.numel() // max(ctx.out.numel(), 1)
    return ctx.vjp(s, torch.tensor(1.0 / count, dtype=s.dtype, device=s.device))


for _target in (operator.add, torch.add, operator.sub, torch.sub, "add", "sub"):
    register_rule(_target, add_rule, writes_in_place=True)
for _target in (operator.mul, torch.mul, "mul"):
    register_rule(_target, mul_rule, writes_in_place=True)
for _target in (operator.truediv, torch.div, "div"):
    register_rule(_target, div_rule, writes_in_place=True)
for _target in (operator.neg, torch.neg, "neg", nn.Identity, FakeQuantize):
    register_rule(_target, identity_rule, writes_in_place=True)
register_rule(operator.getitem, getitem_rule, writes_in_place=True)
for _target in (torch.mean, "mean"):
    register_rule(_target, mean_rule, writes_in_place=True)
for _target in (nn.modules.dropout._DropoutNd, F.dropout, F.dropout1d, F.dropout2d,
                F.dropout3d):
    register_rule(_target, dropout_rule, writes_in_place=True)
register_rule(stochastic_depth, stochastic_depth_rule, writes_in_place=True)
for _target in (
    nn.Flatten, nn.Unflatten, F.pad, torch.flatten, torch.reshape, torch.cat, torch.concat,
    torch.stack, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose, torch.chunk,
    torch.split, torch.narrow, torch.sum, torch.flip,
    "view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose",
    "contiguous", "chunk", "split", "narrow", "expand", "expand_as", "view_as",
    "reshape_as", "repeat", "flip", "sum", "clone", "unbind",
):
    register_rule(_target, vjp_rule, writes_in_place=True)
