"""Pairs of images through a network's first convolutions in the swim pass.

oneDNN computes a convolution of one input channel (a batch of grey images, whose layout
is ambiguous) with a slow kernel, and the same convolution as a grouped one over pairs
of images, channels last, about twice as fast, forward and backward; the convolutions
after it, the max-pools (ATen's channels-last kernel) and the ReLUs are faster in that
layout too. So the pass runs a chain that starts at a one-channel 2-d convolution (conv,
ReLU, max-pool, conv, ..., each node the only user of the one before; the layers' only
hook, if any, swimkit's output quantizer) on pairs of images, channels last:
:func:`to_pairs` before it, :func:`from_pairs` after it, and the convolution rule takes
the grouped convolution's gradients (the two groups' weight gradients added). The
forward values are the same (the grouped kernel sums each output in the same order;
``tests/sensitivity/test_fused_pass.py`` holds it to that), S and g the same sums in another
order, float rounding apart. A batch of odd size runs as written.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ...fused import (
    conv_of_pairs,
    fusable_layer,
    images_of_pairs,
    is_paired,
    is_relu,
    max_pool_arguments,
    pairs_allowed,
    pairs_conv,
)
from ...quantization import fake_quantize_fixed
from .context import RuleContext, SValue
from .registry import register_own

#: ``node.meta`` key of a convolution node that runs on pairs when its input holds them.
PAIRS = "swimkit_pairs"


def to_pairs(x: Tensor) -> Tensor:
    """Images 2i and 2i + 1 as the two halves of row i's channels, channels last (a
    copy); a batch of odd size as it is, and any batch while ``F.conv2d`` is taken over
    (:func:`swimkit.fused.pairs_allowed`)."""
    if x.dim() != 4 or x.shape[0] % 2 or not pairs_allowed():
        return x
    return _paired(x)


def _paired(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0] // 2, 2 * x.shape[1], *x.shape[2:]).contiguous(
        memory_format=torch.channels_last)


def from_pairs(y: Tensor, channels: int) -> Tensor:
    """One image a row again (a copy) where ``y`` holds pairs (twice ``channels``)."""
    return images_of_pairs(y) if y.shape[1] == 2 * channels else y


def run_layer(layer: nn.Module, x: Tensor, pairs: bool, relu: bool) -> Tensor:
    """``layer(x)`` of a layer whose only hook, if any, is swimkit's output quantizer: on
    pairs of images (``pairs``: the grouped convolution) or as it is, then its quantizer,
    and a ReLU when ``relu`` (raised into the quantizer's clamp where its range is
    fixed, else in place; out of place under autograd)."""
    y = conv_of_pairs(layer, x) if pairs else layer.forward(x)
    taped = torch.is_grad_enabled() and y.requires_grad
    if layer._forward_hooks:
        quantizer = layer.output_quantizer
        max_abs = None if taped else quantizer.fixed_range(y.dtype)
        if max_abs is not None:
            return fake_quantize_fixed(y, quantizer.bits, max_abs, relu=relu, out=y)
        y = quantizer(y)
    if not relu:
        return y
    return F.relu(y) if taped else y.relu_()


def runs_on_pairs(node: fx.Node, layer: nn.Module | None, x: object) -> bool:
    """Whether the convolution ``node`` of ``layer`` runs on its input ``x`` as pairs."""
    return (layer is not None and node.meta.get(PAIRS, False) and isinstance(x, Tensor)
            and is_paired(layer, x))


def pair_chains(graph: fx.Graph, root: nn.Module) -> int:
    """Run each chain that starts at a one-channel convolution on pairs of images (see the
    module's doc): nodes of :func:`to_pairs` and :func:`from_pairs` around it, its
    convolutions marked. How many chains."""
    count = 0
    for node in list(graph.nodes):
        layer = _layer(node, root)
        if layer is None or layer.in_channels != 1 or node.meta.get(PAIRS):
            continue
        chain, channels = _chain(node, root)
        with graph.inserting_before(node):
            paired = graph.call_function(to_pairs, (node.args[0],))
        node.args = (paired,)
        for member in chain:
            if _layer(member, root) is not None:
                member.meta[PAIRS] = True
        last = chain[-1]
        with graph.inserting_after(last):
            single = graph.call_function(from_pairs, (last, channels))
        last.replace_all_uses_with(single, delete_user_cb=lambda user, new=single: user is not new)
        count += 1
    return count


def _layer(node: fx.Node, root: nn.Module) -> nn.Conv2d | None:
    """The convolution a node calls, where it may run on pairs, else None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    layer = root.get_submodule(str(node.target))
    return layer if pairs_conv(layer) and fusable_layer(layer) else None


def _chain(start: fx.Node, root: nn.Module) -> tuple[list[fx.Node], int]:
    """The nodes from ``start`` that take pairs as they come (each the only user of the
    one before), and the channels of the last one's output."""
    chain, channels = [start], _layer(start, root).out_channels
    while len(chain[-1].users) == 1:
        user = next(iter(chain[-1].users))
        layer = _layer(user, root)
        if layer is not None and user.args[0] is chain[-1]:
            channels = layer.out_channels
        elif not (is_relu(user, root) or max_pool_arguments(user, root) is not None):
            break
        chain.append(user)
    return chain, channels


def from_pairs_rule(ctx: RuleContext, s: SValue) -> dict[fx.Node, SValue]:
    """S and the gradient of one image a row go back as pairs where the forward had
    pairs (a copy each)."""
    y, channels = ctx.args[0], ctx.args[1]
    paired = isinstance(y, Tensor) and y.shape[1] == 2 * channels

    def back(flow: Tensor) -> Tensor:
        return _paired(flow) if paired else flow

    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(back(ctx.grad)))
    return ctx.to_input(back(s))


def to_pairs_rule(ctx: RuleContext, s: SValue) -> dict[fx.Node, SValue]:
    """S and the gradient of pairs go back to one image a row (S at the model's input)."""
    x = ctx.args[0]
    paired = isinstance(x, Tensor) and ctx.out.shape[1] == 2 * x.shape[1]

    def back(flow: Tensor) -> Tensor:
        return images_of_pairs(flow) if paired else flow

    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(back(ctx.grad)))
    return ctx.to_input(back(s))


register_own(from_pairs_rule, from_pairs)
register_own(to_pairs_rule, to_pairs)

__all__ = ["PAIRS", "from_pairs", "pair_chains", "run_layer", "runs_on_pairs", "to_pairs"]
