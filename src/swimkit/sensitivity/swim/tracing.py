"""The swim engine's graph: traced with torch.fx and checked before any compute.

The model is traced with :mod:`torch.fx` (functional calls and tensor methods are seen;
layers with a registered rule stay whole). Then:

- every operation S must flow through (after a device layer and before the logits)
  needs a rule, else :class:`UnsupportedOperation` lists them all;
- in-place operations run out of place, so every recorded value stays intact; later
  uses of a value an in-place op changed are rewired to that op's result, so the graph
  computes what the model computes. An in-place op on a parameter or buffer, or on a
  view whose base is used afterwards, cannot be rewired and is refused.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.fx as fx
from torch import nn

from ...errors import SwimkitError, first_line
from .context import UnsupportedOperation
from .registry import (
    OUT_OF_PLACE,
    RuleEntry,
    function_rule,
    leaf_types,
    method_rule,
    module_rule,
)

CALLS = ("call_module", "call_function", "call_method")

#: Ops whose result may share memory with their first input.
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "flatten", "squeeze",
                 "unsqueeze", "permute", "transpose", "t", "narrow", "expand", "expand_as",
                 "chunk", "split", "unbind", "select", "as_strided", "diagonal", "unfold",
                 "contiguous", "detach"}
_VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
                   torch.permute, torch.transpose, torch.narrow, torch.chunk, torch.split,
                   torch.unbind, torch.select, operator.getitem, torch.t, torch.diagonal}


class _Tracer(fx.Tracer):
    """fx tracer keeping the layers with curvature rules (and torch.nn layers) whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, leaf_types()) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    """Trace ``model`` into an fx graph, with a clear error when tracing fails."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure gets the same advice
        raise SwimkitError(
            f"cannot trace {type(model).__name__} with torch.fx ({first_line(exc)}); "
            "use engine='ggn', which needs no tracing"
        ) from None


# --- in-place operations ---------------------------------------------------------------------


def is_in_place(node: fx.Node, model: nn.Module) -> bool:
    """True for an op that writes into its first input."""
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.endswith("__")
    if node.op == "call_function":
        return node.target in OUT_OF_PLACE or bool(node.kwargs.get("inplace"))
    if node.op == "call_module":
        return bool(getattr(model.get_submodule(str(node.target)), "inplace", False))
    return False


def _describe(node: fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        return f"layer {type(module).__name__} ('{node.target}')"
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    return f"function {getattr(node.target, '__name__', node.target)}"


def _view_bases(node: fx.Node) -> Iterator[fx.Node]:
    """The nodes ``node`` may be a view of (through chains of view ops)."""
    while isinstance(node, fx.Node) and node.args and isinstance(node.args[0], fx.Node):
        is_view = (node.op == "call_method" and node.target in _VIEW_METHODS) or (
            node.op == "call_function" and node.target in _VIEW_FUNCTIONS)
        if not is_view:
            return
        node = node.args[0]
        yield node


def rewire_in_place(graph: fx.Graph, model: nn.Module) -> None:
    """Make every in-place op safe to run out of place, or refuse it (see module doc)."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op not in CALLS or not is_in_place(node, model):
            continue
        target = node.args[0] if node.args else None
        if not isinstance(target, fx.Node):
            continue
        what = _describe(node, model)
        if target.op == "get_attr":
            raise UnsupportedOperation(
                f"{what} (graph node '{node.name}') writes into the model's parameter or "
                f"buffer '{target.target}' in place; the swim engine cannot follow it: "
                "write it out of place, or use engine='ggn'"
            )
        for base in _view_bases(target):
            if any(order[user] > order[node] for user in base.users):
                raise UnsupportedOperation(
                    f"{what} (graph node '{node.name}') changes a view of '{base.name}' in "
                    "place and the model uses that tensor afterwards; the swim engine "
                    "cannot follow it: write it out of place, or use engine='ggn'"
                )
        for user in list(target.users):
            if order[user] > order[node]:
                user.replace_input_with(target, node)


# --- coverage ----------------------------------------------------------------------------------

#: Ops that read a tensor's metadata (sizes, dtype, ...): their results carry no S.
_META_METHODS = {"size", "dim", "numel", "nelement", "element_size", "stride", "is_contiguous",
                 "is_floating_point", "get_device", "__len__"}
_TENSOR_ATTRIBUTES = {"T", "mT", "H", "mH", "real", "imag", "data"}


def metadata_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that compute sizes and other metadata (and arithmetic on them), not tensors."""
    meta: set[fx.Node] = set()
    for node in graph.nodes:
        if _reads_metadata(node) or (_is_operator(node) and node.all_input_nodes
                                     and all(n in meta for n in node.all_input_nodes)):
            meta.add(node)
    return meta


def _reads_metadata(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _META_METHODS
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return node.args[1] not in _TENSOR_ATTRIBUTES
    return node.target is len


def _is_operator(node: fx.Node) -> bool:
    return node.op == "call_function" and getattr(node.target, "__module__", None) in (
        "_operator", "operator")


def rule_of(node: fx.Node, model: nn.Module) -> RuleEntry | None:
    if node.op == "call_module":
        return module_rule(model.get_submodule(str(node.target)))
    if node.op == "call_function":
        return function_rule(node.target)
    return method_rule(str(node.target))


def device_dependent(graph: fx.Graph, device_modules: Iterable[str],
                     weight_names: Iterable[str]) -> set[fx.Node]:
    """Nodes at or after a device layer (a layer holding a device weight, itself or in a
    sublayer it runs whole) or a device weight."""
    names, modules = set(weight_names), tuple(device_modules)
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        is_device_layer = node.op == "call_module" and any(
            m == node.target or m.startswith(f"{node.target}.") for m in modules)
        is_device_weight = node.op == "get_attr" and node.target in names
        if is_device_layer or is_device_weight or dependent.intersection(node.all_input_nodes):
            dependent.add(node)
    return dependent


def feeds_output(graph: fx.Graph) -> set[fx.Node]:
    """Nodes the output depends on."""
    seen: set[fx.Node] = set()
    stack = [graph.output_node()]
    while stack:
        node = stack.pop()
        for parent in node.all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def check_rules(nodes: Iterable[fx.Node], model: nn.Module) -> dict[fx.Node, RuleEntry]:
    """The rule of every node S flows through; all missing ones in one error."""
    rules, missing = {}, []
    for node in nodes:
        rule = rule_of(node, model)
        if rule is None:
            missing.append(f"{_describe(node, model)} (graph node '{node.name}')")
        else:
            rules[node] = rule
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise UnsupportedOperation(
            f"the swim engine has no curvature rule for {shown}; add one with "
            "swimkit.register_rule (or register_elementwise), or use engine='ggn' (exact, "
            "for models torch.func can map per sample)"
        )
    return rules


@contextmanager
def out_of_place_layers(model: nn.Module) -> Iterator[None]:
    """Layers with ``inplace=True`` (torchvision's ReLU) run out of place inside the block."""
    switched = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in switched:
        m.inplace = False
    try:
        yield
    finally:
        for m in switched:
            m.inplace = True


__all__ = ["CALLS", "check_rules", "device_dependent", "feeds_output", "is_in_place",
           "metadata_nodes", "out_of_place_layers", "rewire_in_place", "rule_of", "trace"]
