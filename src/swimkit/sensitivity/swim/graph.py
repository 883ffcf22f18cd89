"""The swim engine's pass: record forward values, sweep S (and g) backwards.

The graph comes traced and checked (:mod:`.tracing`). Per batch: one forward pass records
every node's value; S flows backwards from the logits, each node applying its rule and
freeing values no rule needs any more. When every rule on the path carries the gradient
too (swimkit's own do), the same reverse walk carries g beside S and the forward runs
without autograd; else the forward is recorded by autograd and g comes from its backward
after the curvature sweep.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ...errors import SwimkitError
from ...mapping import DeviceWeight, perturbed
from ...models import require_logits
from ...progress import progress_bar
from ..batching import Chunk, depends_on_batch, pass_batch_size, regrouped, weighted
from ..engines import register_engine
from .context import RuleContext, SValue, layout
from .registry import OUT_OF_PLACE
from .tracing import (
    CALLS,
    check_rules,
    device_dependent,
    feeds_output,
    metadata_nodes,
    out_of_place_layers,
    rewire_in_place,
    trace,
)

# --- the pass ----------------------------------------------------------------------------------


class CurvaturePass:
    """Forward values and backward S over one batch of a traced, checked model.

    ``curvature_at_input``: S flows to the model's input too (and through every op
    between it and the first device layer), left there by :meth:`backward`; for checking
    rules and for studies of input noise.
    """

    def __init__(self, model: nn.Module, graph: fx.Graph, weights: Mapping[str, DeviceWeight],
                 *, curvature_at_input: bool = False):
        self.model = model
        self.graph = graph
        self.weights = weights
        uses = [(name, use) for name, w in weights.items() for use in w.uses]
        self.module_to_weight = {use.module_name: name for name, use in uses
                                 if use.attribute == "weight"}
        self._by_tensor = {(id(use.module), use.attribute): name for name, use in uses}
        self._by_attribute = {use.name: name for name, use in uses}
        rewire_in_place(graph, model)
        self.nodes = list(graph.nodes)
        calls = [n for n in self.nodes if n.op in CALLS]
        if curvature_at_input:
            self.upstream = set(self.nodes)
        else:
            self.upstream = device_dependent(
                graph, {use.module_name for _, use in uses}, self._by_attribute)
        on_path = [n for n in calls if n in self.upstream and n in feeds_output(graph)
                   and n not in metadata_nodes(graph)]
        self.rules = check_rules(on_path, model)
        #: every rule on the path carries the gradient: one sweep gives S and g
        self.carries_gradient = all(entry.gradient for entry in self.rules.values())
        self._local = {node for node, entry in self.rules.items() if entry.local_graph}
        self.env: dict[fx.Node, Any] = {}
        #: the leaves of the local autograd graphs recorded in the forward, by node
        self.leaves: dict[fx.Node, dict[fx.Node, Tensor]] = {}
        self.h: dict[str, Tensor] = {}
        self.g: dict[str, Tensor] = {}
        self._scratch: dict[tuple, Tensor] = {}
        self._squares: dict[int, tuple[Tensor, int, Tensor]] = {}
        self.pending: dict[fx.Node, SValue] = {}
        self.pending_grad: dict[fx.Node, SValue] = {}
        self.grad_left: dict[fx.Node, SValue] = {}
        # memory this pass must not write: the seeds', and S from rules registered outside
        self._kept: set[int] = set()
        self.output_node = graph.output_node().args[0]

    def module(self, node: fx.Node) -> nn.Module:
        return self.model.get_submodule(str(node.target))

    def scratch(self, like: Tensor) -> Tensor:
        """A reusable buffer shaped like ``like``, for a temporary a rule consumes at once
        (fresh memory costs page faults on every batch)."""
        key = (tuple(like.shape), like.dtype, like.device, layout(like))
        buffer = self._scratch.get(key)
        if buffer is None:
            buffer = torch.empty_like(like, memory_format=layout(like))
            self._scratch[key] = buffer
        return buffer

    def device_name_of_module(self, target: str) -> str | None:
        return self.module_to_weight.get(target)

    def device_name_of(self, module: nn.Module, attribute: str) -> str | None:
        return self._by_tensor.get((id(module), attribute))

    def device_name_at(self, target: str) -> str | None:
        """The device weight read as the attribute ``target`` (a shared weight's every
        use names it), or None."""
        return self._by_attribute.get(target)

    def value(self, node: fx.Node) -> Any:
        return self.env[node]

    def needs(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node in self.upstream

    def accumulate(self, name: str, s_w: Tensor) -> None:
        _add_to(self.h, name, s_w)

    def accumulate_grad(self, name: str, g_w: Tensor) -> None:
        _add_to(self.g, name, g_w)

    def accumulate_product(self, name: str, a: Tensor, b: Tensor, gradient: bool) -> None:
        """Add ``a @ b`` to the S (or, ``gradient``, the g) of ``name``, in place: no
        temporary the size of the weight."""
        sums = self.g if gradient else self.h
        if name in sums:
            sums[name].addmm_(a, b)
        else:
            sums[name] = a @ b

    def squared(self, weight: Tensor) -> Tensor:
        """``weight ** 2``: a parameter's once per pass (the model does not change during
        it), a computed weight's (quantized, say) once per batch."""
        found = self._squares.get(id(weight))
        if found is None or found[0] is not weight or found[1] != weight._version:
            found = (weight, weight._version, weight.detach().square())
            self._squares[id(weight)] = found
        return found[2]

    def forward(self, x: Tensor) -> Tensor:
        self.env, self.leaves = {}, {}
        self._squares = {k: v for k, v in self._squares.items()
                         if isinstance(v[0], nn.Parameter)}
        output = None
        for node in self.nodes:
            if node.op == "placeholder":
                self.env[node] = x if not self.env else _placeholder_default(node)
            elif node.op == "get_attr":
                self.env[node] = _fetch_attr(self.model, str(node.target))
            elif node.op == "output":
                output = fx.node.map_arg(node.args[0], self.value)
            elif node in self._local and not torch.is_grad_enabled():
                self.env[node] = self._recorded(node)
            else:
                self.env[node] = self.call(node)
        return require_logits(output)

    def vjp_inputs(self, node: fx.Node) -> list[fx.Node]:
        """The inputs of ``node`` a VJP reaches: floating tensors that need S."""
        return [n for n in dict.fromkeys(node.all_input_nodes)
                if self.needs(n) and isinstance(self.env[n], Tensor)
                and self.env[n].is_floating_point()]

    def _recorded(self, node: fx.Node) -> Any:
        """Run ``node`` under an autograd graph of its own, from leaves of the inputs its
        VJP reaches (kept in :attr:`leaves` until the backward is past it)."""
        inputs = self.vjp_inputs(node)
        if not inputs:
            return self.call(node)
        with torch.enable_grad():
            leaves = {n: self.env[n].detach().requires_grad_(True) for n in inputs}
            out = self.call(node, leaves)
        self.leaves[node] = leaves
        return out

    def call(self, node: fx.Node, replace: Mapping[fx.Node, Tensor] | None = None) -> Any:
        """Execute ``node`` on the recorded values (or on ``replace`` for some inputs),
        always out of place, so recorded values stay intact."""
        lookup = self.value if not replace else (lambda n: replace.get(n, self.env[n]))
        args = fx.node.map_arg(node.args, lookup)
        kwargs = dict(fx.node.map_arg(node.kwargs, lookup))
        if kwargs.get("inplace"):
            kwargs["inplace"] = False
        if node.op == "call_module":
            return self.module(node)(*args, **kwargs)
        if node.op == "call_function":
            return OUT_OF_PLACE.get(node.target, node.target)(*args, **kwargs)
        method = str(node.target)
        if method.endswith("_") and not method.endswith("__"):
            method = method[:-1]
        return getattr(args[0], method)(*args[1:], **kwargs)

    def backward(self, s_logits: Tensor, g_logits: Tensor | None = None
                 ) -> dict[fx.Node, SValue]:
        """Propagate S (and the gradient ``g_logits``, when given) from the logits,
        freeing each value once no rule needs it.

        Returns the S left at inputs and attributes (the gradient left there is in
        :attr:`grad_left`); the gradient reaching a device weight's attribute is added to
        its g. The seeds are the caller's: never written into; nor is what a rule
        registered from outside swimkit returns (it may keep it).
        """
        if g_logits is not None and not self.carries_gradient:
            raise SwimkitError("a rule of this graph does not carry the gradient: take g "
                               "from autograd")
        self.pending = {self.output_node: s_logits}
        self.pending_grad = {} if g_logits is None else {self.output_node: g_logits}
        self._kept = {_memory(t) for t in (s_logits, g_logits) if t is not None}
        try:
            with torch.no_grad():
                for node in reversed(self.nodes):
                    if node.op in CALLS:
                        if node in self.pending:
                            self._apply(node, self.pending.pop(node),
                                        self.pending_grad.pop(node, None))
                        self.env.pop(node, None)
                        self.leaves.pop(node, None)
                    elif node.op == "get_attr" and node in self.pending_grad:
                        self._weight_grad(node, self.pending_grad.pop(node))
            self.grad_left = self.pending_grad
            return self.pending
        finally:
            self.pending, self.pending_grad, self._kept = {}, {}, set()

    def _weight_grad(self, node: fx.Node, g: SValue) -> None:
        """The gradient reaching a device weight read as an attribute is its g."""
        name = self.device_name_at(str(node.target))
        if name is not None and isinstance(g, Tensor):
            self.accumulate_grad(name, g)

    def _apply(self, node: fx.Node, s: SValue, g: SValue | None) -> None:
        """Run ``node``'s rule on its S (and gradient) and pass the results on."""
        entry = self.rules.get(node)
        if entry is None:
            return
        results = entry.rule(RuleContext(self, node, g), s)
        if not entry.writes_in_place:
            _check_rule_result(entry.rule, node, results)
            # a rule from outside may keep what it returns: never written in place
            self._kept.update(_memory(t) for t in _tensors(results.values()))
        for target, s_in in results.items():
            if self.needs(target):
                self._merge_into(self.pending, target, s_in)

    def merge_grads(self, grads: Mapping[fx.Node, SValue]) -> None:
        """Add each input's gradient to the one waiting there."""
        for target, g_in in grads.items():
            if self.needs(target):
                self._merge_into(self.pending_grad, target, g_in)

    def writable(self, s: Tensor, *others: Tensor) -> bool:
        """True when a rule may write into ``s``: it is dense, no S waiting in the pass (nor
        any of ``others``) shares its memory, and it is neither the caller's seed nor what a
        rule from outside returned. Rules then update S in place instead of allocating:
        fresh memory costs page faults on every batch."""
        if not (s.is_contiguous() or s.is_contiguous(memory_format=torch.channels_last)):
            return False
        memory = _memory(s)
        held = [*_tensors(self.pending.values()), *_tensors(self.pending_grad.values()),
                *others]
        return memory not in self._kept and all(_memory(t) != memory for t in held)

    def _merge_into(self, store: dict[fx.Node, SValue], target: fx.Node, new: SValue) -> None:
        """Add ``new`` to the S (or gradient) waiting at ``target`` in ``store`` (in place
        when that tensor is the pass's alone; tuple outputs item by item)."""
        old = store.pop(target, None)
        if old is None:
            merged = new
        elif isinstance(old, dict):
            merged = dict(old)
            for k, v in new.items():
                merged[k] = merged[k] + v if k in merged else v
        elif (isinstance(new, Tensor) and old.shape == new.shape and old.dtype == new.dtype
              and self.writable(old, new)):
            merged = old.add_(new)
        else:
            merged = old + new
        store[target] = merged


def _add_to(sums: dict[str, Tensor], name: str, value: Tensor) -> None:
    """Add ``value`` to the sum of ``name``, in place after a first copy of its own (a
    sum over batches then costs no fresh memory per batch)."""
    if name in sums:
        sums[name].add_(value.detach())
    else:
        sums[name] = value.detach().clone(memory_format=torch.contiguous_format)


def _memory(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _tensors(values: Iterable[Any]) -> Iterator[Tensor]:
    for value in values:
        for item in value.values() if isinstance(value, dict) else (value,):
            if isinstance(item, Tensor):
                yield item


def _placeholder_default(node: fx.Node) -> Any:
    if node.args:
        return node.args[0]
    raise SwimkitError(
        f"the swim engine feeds one input tensor, but the model also needs '{node.target}'"
    )


def _check_rule_result(rule: Any, node: fx.Node, results: object) -> None:
    """A rule from outside returns {input node: S (a tensor, or a tuple of tensors)}."""
    name = getattr(rule, "__qualname__", repr(rule))
    if not isinstance(results, dict):
        raise SwimkitError(f"the curvature rule {name} returned {type(results).__name__} for "
                           f"graph node '{node.name}', not a dict {{input node: S}}")
    for target, s_in in results.items():
        parts = list(s_in.values()) if isinstance(s_in, dict) else [s_in]
        if not isinstance(target, fx.Node) or not all(isinstance(p, Tensor) for p in parts):
            raise SwimkitError(f"the curvature rule {name} gave {type(s_in).__name__} for "
                               f"graph node '{node.name}': S must be tensors, keyed by the "
                               "input nodes (use ctx.to_input)")


def _fetch_attr(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _loss_gradient(logits: Tensor, y: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """S and the gradient of the weighted cross-entropy sum_n w_n CE(z_n, y_n) at the
    logits: S = p (1 - p), unweighted (h sums over samples); g = w (p - target)."""
    p = torch.softmax(logits, dim=-1)
    if y.is_floating_point():  # class probabilities
        g = p * y.sum(-1, keepdim=True) - y
    else:
        g = p.clone()
        g[torch.arange(len(y), device=y.device), y] -= 1
    return p * (1 - p), g.mul_(weight.to(g.dtype)[:, None])


def _one_sweep(run: CurvaturePass, x: Tensor, y: Tensor, weight: Tensor) -> None:
    """One batch: a forward without autograd, then S and g in one reverse sweep."""
    with torch.no_grad():
        s, g = _loss_gradient(run.forward(x), y, weight)
    run.backward(s, g)


def _autograd_batch(run: CurvaturePass, deltas: dict[str, Tensor], x: Tensor, y: Tensor,
                    weight: Tensor) -> None:
    """One batch for a graph with a rule that carries S alone: the curvature sweep while
    autograd's graph of the forward is alive (ops whose S flows like the gradient use
    it), then g by autograd's backward, which frees the graph as it goes."""
    logits = run.forward(x)
    with torch.no_grad():
        s, _ = _loss_gradient(logits.detach(), y, weight)
    run.backward(s)
    run.env = {}
    loss = (F.cross_entropy(logits, y, reduction="none") * weight.to(logits.dtype)).sum()
    del logits
    grads = torch.autograd.grad(loss, list(deltas.values()), allow_unused=True)
    for name, grad in zip(deltas, grads, strict=True):
        if grad is not None:
            run.accumulate_grad(name, grad)


@contextmanager
def _batch_step(run: CurvaturePass, model: nn.Module, weights: Mapping[str, DeviceWeight]
                ) -> Iterator[Callable[[Tensor, Tensor, Tensor], None]]:
    """What one batch runs: one sweep where every rule carries the gradient, else the
    curvature sweep and autograd's gradient (the weights offset by zero deltas, so
    autograd reaches the effective device weights)."""
    if run.carries_gradient:
        yield partial(_one_sweep, run)
        return
    with perturbed(model, weights) as offsets:
        deltas = {name: torch.zeros_like(w.value, requires_grad=True)
                  for name, w in weights.items()}
        offsets.set(deltas)
        yield partial(_autograd_batch, run, deltas)


def _pass_chunks(model: nn.Module, chunks: Iterator[Chunk], batch_size: int | None
                 ) -> Iterator[Chunk]:
    """The samples in the pass's batches: ``batch_size``, else the model's own (see
    :mod:`swimkit.sensitivity.batching`); as given where the forward depends on them."""
    first = next(chunks, None)
    if first is None:
        return
    every = itertools.chain([first], chunks)
    if depends_on_batch(model):
        yield from every
        return
    x = first[0]
    yield from regrouped(every, batch_size or pass_batch_size(model, x.shape[1:], x.device))


def swim_curvature(
    model: nn.Module,
    weights: dict[str, DeviceWeight],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
    """SWIM's h (summed over samples) and g (the mean-loss gradient of each batch given,
    summed over batches); the pass runs at ``batch_size`` (None: chosen per model),
    which changes the results only by float rounding.

    Raw units: derivatives with respect to the effective device weights.
    """
    run = CurvaturePass(model, trace(model), weights)
    samples = 0
    given = weighted(progress_bar(batches, progress, "sensitivity (swim)"))
    with out_of_place_layers(model), _batch_step(run, model, weights) as step:
        for x, y, weight in _pass_chunks(model, given, batch_size):
            with parametrize.cached():  # effective weights computed once per batch
                step(x, y, weight)
            samples += int(y.shape[0])
    if samples == 0:
        raise SwimkitError("the sensitivity pass got no batches: pass a non-empty loader")
    zeros = {name: torch.zeros_like(w.value.detach()) for name, w in weights.items()}
    second = {name: run.h.get(name, zeros[name]) for name in weights}
    first = {name: run.g.get(name, zeros[name]) for name in weights}
    return second, first, samples


__all__ = ["CurvaturePass", "swim_curvature"]


register_engine("swim", swim_curvature, own_batch=True,
                help="SWIM's one-pass diagonal curvature backpropagation over the traced "
                     "graph (fast)")
