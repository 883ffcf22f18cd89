"""Check a curvature rule against the squared-Jacobian oracle: ``check_rule``.

The oracle of an op y = f(x1, x2, ...) is S_x[i] = sum_j J[j, i]^2 S_y[j], J the full
Jacobian from autograd: exactly what a rule computes for an op whose Jacobian entries are
single terms (elementwise ops, reshapes, products of two tensors, softmax). An op built
from several (attention) chains its parts' rules; give it ``against=`` the same op written
out part by part, and the rules of the parts (each checked on its own) are the reference.
The gradient a rule carries (``gradient=True``) is checked against autograd's VJP of the
op, which is exact in every case.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ...errors import SwimkitError, require
from .graph import CurvaturePass
from .registry import function_rule, method_rule, module_rule
from .tracing import out_of_place_layers, trace


@dataclass(frozen=True)
class RuleCheck:
    """How a rule's S of each input differs from the reference's.

    ``error``: the largest |rule - reference| over every input, relative to the largest
    |reference|; ``input`` and ``index``: where it is (which example input, which element).
    ``gradient_error``: the same for the gradient the rule carries, against autograd's
    (None for a rule that carries S alone).
    """

    op: str
    error: float
    input: int
    index: tuple[int, ...]
    tolerance: float
    gradient_error: float | None = None

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance and (self.gradient_error is None
                                                 or self.gradient_error <= self.tolerance)

    def __str__(self) -> str:
        verdict = "agrees with" if self.ok else "differs from"
        gradient = ("" if self.gradient_error is None
                    else f"; its gradient's largest relative difference {self.gradient_error:.2e}")
        return (f"the rule of {self.op} {verdict} the reference: largest relative difference "
                f"{self.error:.2e} (tolerance {self.tolerance:.0e}) at input {self.input}, "
                f"element {self.index}{gradient}")


def _spans(shapes: Sequence[Sequence[int]]) -> list[tuple[int, int, tuple[int, ...]]]:
    """(start, stop, shape) of each example input within the one flat input."""
    spans, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        spans.append((start, start + size, tuple(shape)))
        start += size
    return spans


class _Probe(nn.Module):
    """y = op(*inputs) on one flat input, so S reaches every input through one node."""

    def __init__(self, op: Any, shapes: Sequence[torch.Size], kwargs: dict[str, Any],
                 output: int | None) -> None:
        super().__init__()
        if isinstance(op, nn.Module):
            self.layer = copy.deepcopy(op)  # made double here: the caller's stays as it is
        else:
            self.function = op
        self.spans = _spans(shapes)
        self.options = kwargs
        self.output = output

    def forward(self, z: Tensor) -> Tensor:
        parts = [z[start:stop].reshape(shape) for start, stop, shape in self.spans]
        op = self.layer if "layer" in self._modules else self.function
        if isinstance(op, str):
            out = getattr(parts[0], op)(*parts[1:], **self.options)
        else:
            out = op(*parts, **self.options)
        return out if self.output is None else out[self.output]


def _has_rule(op: Any) -> bool:
    if isinstance(op, str):
        return method_rule(op) is not None
    if isinstance(op, nn.Module):
        return module_rule(op) is not None
    return function_rule(op) is not None


def _one_node(op: Any, shapes: Sequence[torch.Size], kwargs: dict[str, Any],
              output: int | None) -> fx.GraphModule:
    """y = op(*inputs) as one graph node on one flat input: the rule of ``op`` itself, even
    for a function fx would trace into."""
    graph, root = fx.Graph(), nn.Module()
    z = graph.placeholder("z")
    parts = []
    for start, stop, shape in _spans(shapes):
        piece = graph.call_function(operator.getitem, (z, slice(start, stop)))
        parts.append(graph.call_method("reshape", (piece, shape)))
    for i, (key, value) in enumerate(list(kwargs.items())):
        if isinstance(value, Tensor):  # tensors enter a graph as attributes
            root.register_buffer(f"constant_{i}", value.detach().clone())
            kwargs = {**kwargs, key: graph.get_attr(f"constant_{i}")}
    if isinstance(op, str):
        node = graph.call_method(op, tuple(parts), kwargs)
    elif isinstance(op, nn.Module):
        root.layer = copy.deepcopy(op)  # made double here: the caller's stays as it is
        node = graph.call_module("layer", tuple(parts), kwargs)
    else:
        node = graph.call_function(op, tuple(parts), kwargs)
    if output is not None:
        node = graph.call_function(operator.getitem, (node, output))
    graph.output(node)
    return fx.GraphModule(root, graph)


def _probe(op: Any, shapes: Sequence[torch.Size], kwargs: dict[str, Any],
           output: int | None) -> nn.Module:
    """The op on one flat input: one node when it has a rule, else traced (a composite)."""
    if _has_rule(op):
        return _one_node(op, shapes, kwargs, output).double()
    return _Probe(op, shapes, kwargs, output).double()


def _label(op: Any) -> str:
    if isinstance(op, str):
        return f".{op}()"
    if isinstance(op, nn.Module):
        return type(op).__name__
    return getattr(op, "__name__", repr(op))


def _engine(probe: nn.Module, z: Tensor, s_out: Tensor,
            g_out: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """S at the input from the rules, and the gradient where they all carry it."""
    graph = probe.graph if isinstance(probe, fx.GraphModule) else trace(probe)
    run = CurvaturePass(probe, graph, {}, curvature_at_input=True)
    g_out = g_out if run.carries_gradient else None
    with out_of_place_layers(probe), torch.no_grad():
        run.forward(z.clone())
        left = run.backward(s_out, g_out)
    placeholder = next(n for n in run.nodes if n.op == "placeholder")
    require(placeholder in left, "no S reached the inputs: the op's output does not depend on "
                                 "them")
    return left[placeholder], None if g_out is None else run.grad_left[placeholder]


def _oracle_grad(probe: nn.Module, z: Tensor, g_out: Tensor) -> Tensor:
    with out_of_place_layers(probe), torch.enable_grad():
        leaf = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(probe(leaf), leaf, g_out)
    return grad


def _oracle_s(probe: nn.Module, z: Tensor, s_out: Tensor) -> Tensor:
    with out_of_place_layers(probe):
        jac = torch.autograd.functional.jacobian(probe, z)
    jac = jac.reshape(s_out.numel(), z.numel())
    return jac.square().T @ s_out.reshape(-1)


def check_rule(op: Any, *example_inputs: Tensor, against: Callable | None = None,
               s_out: Tensor | None = None, output: int | None = None,
               tolerance: float = 1e-4, seed: int = 0, **kwargs: Any) -> RuleCheck:
    """Compare the rule swimkit uses for ``op`` with the squared-Jacobian oracle.

    ``op``: a layer (module instance), a function (``torch.softmax``) or a tensor method
    name (``"softmax"``), called as ``op(*example_inputs, **kwargs)``; ``output``: which
    item of a tuple it returns carries S. ``against``: a reference written out op by op,
    called like ``op`` and returning that one tensor (its rules are then the reference, see
    the module docstring). ``s_out``: S at the
    output (default: uniform in [0, 1), seeded); the gradient at the output is normal,
    seeded. Returns a :class:`RuleCheck`; its ``ok`` says whether the largest relative
    differences of S and of the gradient are within ``tolerance``.
    """
    require(bool(example_inputs) and all(isinstance(x, Tensor) and x.is_floating_point()
                                         for x in example_inputs),
            "check_rule needs one or more floating-point example input tensors")
    shapes = [x.shape for x in example_inputs]
    z = torch.cat([x.detach().reshape(-1) for x in example_inputs]).to(torch.float64)
    probe = _probe(op, shapes, kwargs, output)
    with torch.no_grad():
        y = probe(z.clone())
    if not isinstance(y, Tensor):
        raise SwimkitError(f"{_label(op)} returned {type(y).__name__}: give output=N for the "
                           "item of its tuple that S flows through")
    if s_out is None:
        s_out = torch.rand(y.shape, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    s_out = s_out.to(torch.float64)
    g_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1),
                        dtype=torch.float64)
    got, got_grad = _engine(probe, z, s_out, g_out)
    if against is None:
        expected = _oracle_s(probe, z, s_out)
    else:
        reference = _Probe(against, shapes, kwargs, None).double()  # traced: its parts
        expected = _engine(reference, z, s_out)[0]
    error, flat = _largest_difference(got, expected)
    gradient_error = None if got_grad is None else _largest_difference(
        got_grad, _oracle_grad(probe, z, g_out))[0]
    return RuleCheck(_label(op), error, *_where(flat, shapes), tolerance, gradient_error)


def _largest_difference(got: Tensor, expected: Tensor) -> tuple[float, int]:
    """The largest |got - expected| relative to the largest |expected|, and where."""
    diff = (got.reshape(-1) - expected.reshape(-1)).abs()
    flat = int(diff.argmax())
    return float(diff[flat] / expected.abs().max().clamp_min(1e-300)), flat


def _where(flat: int, shapes: Sequence[torch.Size]) -> tuple[int, tuple[int, ...]]:
    """Which example input and which element of it a flat index is."""
    for i, (start, stop, shape) in enumerate(_spans(shapes)):
        if flat < stop:
            where = torch.unravel_index(torch.tensor(flat - start), shape)
            return i, tuple(int(v) for v in where)
    raise AssertionError("unreachable: the index lies within the inputs")


__all__ = ["RuleCheck", "check_rule"]
