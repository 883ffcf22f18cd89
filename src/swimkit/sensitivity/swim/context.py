"""What a curvature rule sees, and the helpers rules are written with.

A rule is ``rule(ctx, s) -> {input node: S of that input}``: given the estimate S of
d2L/dy2 for the node's output y, it returns S for each input that needs one, and adds
the S of a device weight it owns with :meth:`RuleContext.accumulate`. "The backward pass
with every Jacobian entry squared" is the recipe.

A rule registered with ``gradient=True`` also carries the gradient in the same sweep:
when ``ctx.grad`` (dL/dy) is not None it hands each input's gradient on with
:meth:`RuleContext.send_grad` and adds a device weight's with
:meth:`RuleContext.accumulate_grad`. S and the gradient need the same recorded values,
so one reverse walk gives both and the forward keeps no autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ...errors import SwimkitError

if TYPE_CHECKING:
    from .graph import CurvaturePass

#: S of a tensor, or of the tuple items a node returns (index -> S).
SValue = Tensor | dict[int, Tensor]
Rule = Callable[["RuleContext", SValue], dict[fx.Node, SValue]]


class UnsupportedOperation(SwimkitError):
    """The swim engine has no curvature rule for an operation of the model."""


def unsupported(node: fx.Node, what: str) -> UnsupportedOperation:
    return UnsupportedOperation(
        f"the swim engine has no curvature rule for {what} (graph node '{node.name}'); "
        "add one with swimkit.register_rule, or use engine='ggn' (exact, for models "
        "torch.func can map per sample)"
    )


class RuleContext:
    """One node of the traced graph during the backward sweep.

    ``args`` / ``kwargs`` are the node's arguments with recorded values in place of
    nodes, ``out`` its recorded output, ``module`` its layer (for ``call_module`` nodes),
    ``grad`` the gradient dL/dy of its output, or None when the sweep carries S alone.
    """

    def __init__(self, run: CurvaturePass, node: fx.Node, grad: SValue | None = None) -> None:
        self._run = run
        self.node = node
        self.grad = grad
        self.args = fx.node.map_arg(node.args, run.value)
        self.kwargs = fx.node.map_arg(node.kwargs, run.value)
        self.out = run.env[node]
        self.module: nn.Module | None = run.module(node) if node.op == "call_module" else None

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """Argument ``index`` (positional) or ``name`` (keyword), recorded value."""
        if len(self.args) > index:
            return self.args[index]
        return self.kwargs.get(name, default)

    def arg_node(self, index: int, name: str) -> Any:
        """Argument ``index`` / ``name`` as the graph node (or constant) it is."""
        if len(self.node.args) > index:
            return self.node.args[index]
        return self.node.kwargs.get(name)

    def value(self, node: Any) -> Any:
        """The recorded forward value of ``node`` (a graph node; constants as they are)."""
        return self._run.env[node] if isinstance(node, fx.Node) else node

    def scratch(self, like: Tensor) -> Tensor:
        """A reusable buffer shaped like ``like`` for a temporary the rule consumes at once
        (its content is overwritten by the next rule that asks for the same shape)."""
        return self._run.scratch(like)

    @property
    def input_node(self) -> fx.Node:
        return self.arg_node(0, "input")

    def needs(self, node: Any) -> bool:
        """True if S must reach ``node`` (it depends on a device weight)."""
        return self._run.needs(node)

    def to_input(self, s_in: Tensor) -> dict[fx.Node, SValue]:
        """S for the first input."""
        return {self.input_node: s_in}

    def writable(self, s: Tensor) -> bool:
        """True when the rule may write into its ``s`` (see CurvaturePass.writable)."""
        return self._run.writable(s)

    def scaled(self, s: Tensor, factor: Tensor) -> Tensor:
        """``s * factor``, written into ``s`` when nothing else holds its memory."""
        if self.writable(s) and torch.broadcast_shapes(s.shape, factor.shape) == s.shape \
                and torch.result_type(s, factor) == s.dtype:
            return s.mul_(factor)
        return s * factor

    def accumulate(self, weight_name: str, s_w: Tensor) -> None:
        """Add the S of device weight ``weight_name`` (summed over batches)."""
        self._run.accumulate(weight_name, s_w)

    def send_grad(self, grads: dict[fx.Node, SValue]) -> None:
        """Hand on the gradient of each input in ``grads`` (``{input node: dL/dx}``, the
        form a rule returns S in); inputs that need none are skipped."""
        self._run.merge_grads(grads)

    def accumulate_grad(self, weight_name: str, g_w: Tensor) -> None:
        """Add the gradient of device weight ``weight_name`` (summed over batches)."""
        self._run.accumulate_grad(weight_name, g_w)

    def accumulate_product(self, weight_name: str, a: Tensor, b: Tensor,
                           gradient: bool = False) -> None:
        """Add the matrix product ``a @ b`` to the S (or, ``gradient``, the gradient) of
        ``weight_name``, with no temporary the size of the weight."""
        self._run.accumulate_product(weight_name, a.detach(), b.detach(), gradient)

    def squared(self, weight: Tensor) -> Tensor:
        """``weight ** 2``, computed once per pass for a weight that does not change."""
        return self._run.squared(weight)

    def device_weight_name(self, node: Any) -> str | None:
        """The device-weight name of a ``get_attr`` node reading one, else None."""
        if isinstance(node, fx.Node) and node.op == "get_attr":
            return self._run.device_name_at(str(node.target))
        return None

    def device_weight_name_of(self, module: nn.Module, attribute: str) -> str | None:
        """The device-weight name of ``module``'s tensor ``attribute`` (None: digital)."""
        return self._run.device_name_of(module, attribute)

    def weight_of(self, index: int) -> tuple[Tensor, str | None]:
        """The weight of a conv / linear node and its device-weight name (or None)."""
        if self.module is not None:
            return self.module.weight, self._run.device_name_of_module(self.node.target)
        weight = self.arg(index, "weight")
        weight_node = self.arg_node(index, "weight")
        name = None
        if isinstance(weight_node, fx.Node) and weight_node.op == "get_attr":
            name = self._run.device_name_at(str(weight_node.target))
        return weight, name

    def vjp(self, s: SValue, scale: Tensor | None = None) -> dict[fx.Node, SValue]:
        """The ordinary vector-Jacobian product of ``s`` (times ``scale``).

        Exact as a squared-Jacobian backward for ops whose Jacobian entries are 0 or 1
        (reshapes, selections, max-pooling) or a constant c (give ``scale`` = c^2 / c = c
        of the VJP input). It runs through the op's own autograd graph: recorded in the
        forward for a rule registered with ``local_graph=True`` (or part of the whole
        forward's, when autograd recorded that), else made by running the op again on
        its recorded inputs; the pass needs no graph of the whole model. When the sweep
        carries the gradient, the gradient's VJP (without ``scale``) is sent on from the
        same graph.
        """
        s_scaled = s if scale is None or isinstance(s, dict) else s * scale
        leaves = self._run.leaves.get(self.node)
        if leaves is not None:  # the op's own graph, recorded in the forward
            return self._pull_both(self._run.env[self.node], leaves, s_scaled, retain=True)
        nodes = self._run.vjp_inputs(self.node)
        if not nodes:
            return {}
        recorded = self._recorded_vjp(nodes, s_scaled)
        if recorded is not None:
            if self.grad is not None:
                self.send_grad(self._recorded_vjp(nodes, self.grad) or {})
            return recorded
        with torch.enable_grad():
            leaves = {n: self._run.env[n].detach().requires_grad_(True) for n in nodes}
            out = self._run.call(self.node, leaves)
            return self._pull_both(out, leaves, s_scaled, retain=False)

    def _pull_both(self, out: Any, leaves: dict[fx.Node, Tensor], s: SValue,
                   retain: bool) -> dict[fx.Node, SValue]:
        """The VJP of ``s`` from ``out`` to ``leaves``; the gradient's sent on too."""
        result = _pull(out, leaves, s, retain=retain or self.grad is not None)
        if self.grad is not None:
            self.send_grad(_pull(out, leaves, self.grad, retain=retain))
        return result

    def _recorded_vjp(self, nodes: list[fx.Node], flow: SValue) -> dict[fx.Node, SValue] | None:
        """The VJP through the graph autograd recorded in the forward pass, when the
        op's output and inputs are in it (no second forward of the op); else None."""
        out = self._run.env.get(self.node)
        inputs = [self._run.env[n] for n in nodes]
        if (not isinstance(out, Tensor) or out.grad_fn is None or isinstance(flow, dict)
                or not all(t.requires_grad for t in inputs)):
            return None
        grads = torch.autograd.grad([out], inputs, [flow], retain_graph=True,
                                    allow_unused=True)
        return {n: g for n, g in zip(nodes, grads, strict=True) if g is not None}

    def elementwise_derivative(self) -> Tensor:
        """f'(x) of an elementwise op at its recorded input, by autograd on the op itself."""
        x = self._run.env[self.input_node]
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            y = self._run.call(self.node, {self.input_node: leaf})
            (grad,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
        return grad


def layout(t: Tensor) -> torch.memory_format:
    """The memory format ``t`` is dense in: channels-last, or the contiguous default."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _pull(out: Any, leaves: dict[fx.Node, Tensor], flow: SValue,
          retain: bool) -> dict[fx.Node, SValue]:
    """The VJP of ``flow`` (a tensor, or {tuple item: tensor}) from ``out`` to ``leaves``."""
    if isinstance(flow, dict):
        outputs, grads = [out[i] for i in flow], list(flow.values())
    else:
        outputs, grads = [out], [flow]
    result = torch.autograd.grad(outputs, list(leaves.values()), grads, retain_graph=retain,
                                 allow_unused=True)
    return {n: r for n, r in zip(leaves, result, strict=True) if r is not None}


def vjp_rule(ctx: RuleContext, s: SValue) -> dict[fx.Node, SValue]:
    """The rule of ops whose Jacobian entries are 0 or 1: S flows like the gradient."""
    return ctx.vjp(s)


def identity_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """S and the gradient pass to the first input unchanged (identity, straight-through)."""
    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(ctx.grad))
    return ctx.to_input(s)


def negation_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """y = -x: S passes unchanged (the entries' squares are 1), the gradient negated."""
    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(-ctx.grad))
    return ctx.to_input(s)


__all__ = ["Rule", "RuleContext", "SValue", "UnsupportedOperation", "identity_rule", "layout",
           "negation_rule", "unsupported", "vjp_rule"]
