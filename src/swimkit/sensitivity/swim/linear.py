"""Rules of the layers that hold device weights: linear and convolution (any dims).

linear y = x W^T + b:  S_W = S_y^T x^2 (summed over the batch),  S_x = S_y W^2.
conv: S_W is the conv's weight gradient with x^2 for x and S_y for the output gradient;
S_x its input gradient with W^2 for W: one ``convolution_backward`` gives both.
The gradient beside S is the layer's ordinary backward (g_W = g_y^T x, g_x = g_y W).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .context import RuleContext, SValue, layout, unsupported
from .pairs import runs_on_pairs
from .registry import register_own


def linear_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    x = ctx.arg(0, "input")
    weight, weight_name = ctx.weight_of(1)
    g = ctx.grad
    if weight_name is not None:
        rows = _rows(x)
        ctx.accumulate_product(weight_name, _rows(s).T, rows.square())
        if g is not None:
            ctx.accumulate_product(weight_name, _rows(g).T, rows, gradient=True)
    if not ctx.needs(ctx.input_node):
        return {}
    if g is not None:
        ctx.send_grad(ctx.to_input(g @ weight))
    return ctx.to_input(s @ ctx.squared(weight))


def _rows(t: Tensor) -> Tensor:
    """``t`` as a matrix of its last dimension's rows."""
    return t.reshape(-1, t.shape[-1])


def _ntuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * n


def _conv_params(ctx: RuleContext) -> dict[str, Any]:
    if ctx.module is not None:
        m = ctx.module
        if getattr(m, "padding_mode", "zeros") != "zeros":
            raise unsupported(ctx.node, f"convolution with padding_mode={m.padding_mode!r}")
        return {
            "stride": m.stride, "padding": m.padding, "dilation": m.dilation,
            "groups": m.groups, "transposed": m.transposed,
            "output_padding": m.output_padding,
        }
    dims = ctx.arg(0, "input").dim() - 2
    return {
        "stride": _ntuple(ctx.arg(3, "stride", 1), dims),
        "padding": ctx.arg(4, "padding", 0),
        "dilation": _ntuple(ctx.arg(5, "dilation", 1), dims),
        "groups": ctx.arg(6, "groups", 1),
        "transposed": False,
        "output_padding": (0,) * dims,
    }


def _explicit_padding(ctx: RuleContext, padding: Any, weight: Tensor, dilation: tuple) -> tuple:
    dims = weight.dim() - 2
    if padding == "valid":
        return (0,) * dims
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
        if any(t % 2 for t in totals):
            raise unsupported(ctx.node, "padding='same' with an asymmetric padding")
        return tuple(t // 2 for t in totals)
    return _ntuple(padding, dims)


def conv_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """S_W: the weight gradient with x^2 and S_y; S_x: the input gradient with W^2. On
    pairs of images (:mod:`.pairs`) the grouped convolution's, its two groups' weight
    gradients added."""
    x = ctx.arg(0, "input")
    weight, weight_name = ctx.weight_of(1)
    p = _conv_params(ctx)
    padding = _explicit_padding(ctx, p["padding"], weight, p["dilation"])
    pairs = runs_on_pairs(ctx.node, ctx.module, x)
    common = (
        None, p["stride"], padding, p["dilation"], p["transposed"], p["output_padding"],
        2 if pairs else p["groups"],
    )
    mask = [ctx.needs(ctx.input_node), weight_name is not None, False]
    if not any(mask):
        return {}
    if ctx.grad is not None:
        g_x, g_w, _ = torch.ops.aten.convolution_backward(
            ctx.grad.contiguous(memory_format=layout(x)), x, _paired(weight.detach(), pairs),
            *common, mask)
        if weight_name is not None:
            ctx.accumulate_grad(weight_name, _summed(g_w, pairs))
        if g_x is not None:
            ctx.send_grad(ctx.to_input(g_x))
    x2 = torch.square(x, out=ctx.scratch(x)) if weight_name is not None else x
    s_x, s_w, _ = torch.ops.aten.convolution_backward(
        s.contiguous(memory_format=layout(x)), x2, _paired(ctx.squared(weight), pairs),
        *common, mask)
    if weight_name is not None:
        ctx.accumulate(weight_name, _summed(s_w, pairs))
    return ctx.to_input(s_x) if s_x is not None else {}


def _paired(weight: Tensor, pairs: bool) -> Tensor:
    """The weight of the grouped convolution of pairs of images (twice over, channels
    last), or ``weight`` itself."""
    if not pairs:
        return weight
    return weight.repeat(2, 1, 1, 1).contiguous(memory_format=torch.channels_last)


def _summed(gradient: Tensor, pairs: bool) -> Tensor:
    """A weight's gradient: on pairs of images the sum of the two groups'."""
    if not pairs:
        return gradient
    half = gradient.shape[0] // 2
    return gradient[:half] + gradient[half:]


register_own(linear_rule, nn.Linear, F.linear)
register_own(conv_rule, nn.modules.conv._ConvNd, F.conv1d, F.conv2d, F.conv3d)
