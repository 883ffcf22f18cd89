"""A ReLU folded into the layer before it, in the swim pass: fewer passes over memory.

A conv / linear layer (its only hook, if any, swimkit's output quantizer) whose only
user is a ReLU computes the ReLU itself (:func:`~.pairs.run_layer`): raised into its
quantizer's clamp where the range is fixed (max(Q(y), 0) = round(clamp(y, 0, m) / d) d,
exactly; see :mod:`swimkit.fused`), else in place on its fresh output. The ReLU node then
hands on the value it gets (:func:`relued`, with the ReLU's rule: S and g pass where the
value is > 0); a ReLU whose only user is a 2-d max-pool becomes, with the pool,
:func:`max_pool_of_relu`, whose rule masks S and g at the pool's output (where it is
> 0, as the ReLU's rule does at the element the pool sends them to) before the pool's
VJP. The ReLU's passes over the layer's whole output (one forward, one per flow
backward) are gone; the values, S and g are the same.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ...fused import fusable_layer, is_relu, max_pool_arguments
from .activations import relu_rule
from .context import RuleContext, SValue
from .registry import register_own

#: ``node.meta`` key of a layer node that applies the ReLU after it.
FOLDED = "swimkit_relu"


def relued(x: Tensor) -> Tensor:
    """The ReLU of a value a layer already ReLU'd: the value itself."""
    return x


def max_pool_of_relu(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
                     dilation: Any = 1, ceil_mode: bool = False) -> Tensor:
    """``F.max_pool2d`` of a value a layer already ReLU'd (the node of a ReLU and the
    max-pool after it)."""
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)


def fold_relus(graph: fx.Graph, root: nn.Module) -> int:
    """Fold each ReLU that is a layer's only user into that layer (see the module's
    doc); how many."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        relu = next(iter(node.users)) if len(node.users) == 1 else None
        if (relu is None or not is_relu(relu, root) or relu.args[0] is not node
                or not fusable_layer(root.get_submodule(str(node.target)))):
            continue
        node.meta[FOLDED] = True
        pool_node = next(iter(relu.users)) if len(relu.users) == 1 else None
        pool = None if pool_node is None else max_pool_arguments(pool_node, root)
        if pool is not None and pool_node.args[0] is relu:
            with graph.inserting_before(pool_node):
                new = graph.call_function(max_pool_of_relu, (node,), pool)
            replaced = [pool_node, relu]
        else:
            with graph.inserting_before(relu):
                new = graph.call_function(relued, (node,))
            replaced = [relu]
        replaced[0].replace_all_uses_with(new)
        for old in replaced:
            graph.erase_node(old)
        count += 1
    return count


def max_pool_of_relu_rule(ctx: RuleContext, s: SValue) -> dict[fx.Node, SValue]:
    """S and the gradient where the pool's output is > 0 (the ReLU's mask at the element
    the pool routes them to), then the pool's VJP."""
    out = ctx.out
    if ctx.grad is not None:
        ctx.grad = torch.ops.aten.threshold_backward(ctx.grad, out, 0.0)
    return ctx.vjp(torch.ops.aten.threshold_backward(s, out, 0.0))


register_own(relu_rule, relued)
register_own(max_pool_of_relu_rule, max_pool_of_relu, local_graph=True)

__all__ = ["FOLDED", "fold_relus", "max_pool_of_relu", "relued"]
