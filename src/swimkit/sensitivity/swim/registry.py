"""The public registry of curvature rules: by layer type, by function, by method name.

``register_rule(target, rule)`` adds a rule for a module type (every instance and
subclass; the tracer then keeps such layers whole), a function (``torch.tanh``,
``F.gelu``, an ``operator`` function) or a tensor method name (``"tanh"``).
``register_elementwise(target, derivative)`` adds an elementwise op y = f(x) in one
line: S_x = S_y * f'(x)^2, the Gauss-Newton form, f'(x) from ``derivative(x)`` or, when
none is given, from autograd on the op itself. ``remove_rule(target)`` takes one back.

Rules live in :data:`RULES`, a :class:`~swimkit.registry.Registry` like every other
extensible part of swimkit (entry-point group ``swimkit.rules``): a target that has a
rule keeps it unless ``replace=True``. ``writes_in_place=True`` says that the rule hands
on only fresh tensors or views of its S, which it does not keep: the pass may then write
into them later to save memory. Without it what the rule returns is checked and never
written afterwards, so a rule may keep it. ``gradient=True`` says that the rule carries
the gradient too (``ctx.grad``, ``ctx.send_grad``, ``ctx.accumulate_grad``; swimkit's own
rules and every ``register_elementwise`` rule do): when every rule of a model's graph
does, g comes from the same sweep as S; else from autograd, as a separate backward.
``local_graph=True`` says that the rule takes the op's VJP (``ctx.vjp``): the forward
then records the op's own autograd graph, so the VJP reuses what the op saved (a
max-pool's indices) instead of running the op again.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from ...errors import SwimkitError, require
from ...registry import Entry, Registry
from .context import Rule, RuleContext, SValue

#: In-place operator forms and their out-of-place twins.
OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub,
                operator.imul: operator.mul, operator.itruediv: operator.truediv}

Target = type[nn.Module] | Callable | str


@dataclass(frozen=True)
class RuleEntry(Entry):
    """A curvature rule and what it is for: a module type, a function or a method name."""

    target: Any = None
    rule: Rule | None = None
    writes_in_place: bool = False
    gradient: bool = False
    local_graph: bool = False

    @property
    def kind(self) -> str:
        if isinstance(self.target, type):
            return "layer"
        return "method" if isinstance(self.target, str) else "function"


RULES: Registry[RuleEntry] = Registry("curvature rule", entry_point_group="swimkit.rules")


def _label(target: Target) -> str:
    """A readable, unique-ish name of ``target``: ``torch.nn.Linear``, ``.softmax()``."""
    if isinstance(target, str):
        return f".{target}()"
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__name__", None) or repr(target)
    return f"{module}.{name}"


def _check_target(target: object) -> None:
    if isinstance(target, type):
        require(issubclass(target, nn.Module),
                f"a rule's module type must be an nn.Module subclass (got {target!r})")
    elif isinstance(target, str):
        require(bool(target) and not target.endswith("_"),
                f"register the out-of-place method name ({target.rstrip('_')!r}); "
                "in-place forms use it too")
    elif not callable(target):
        raise SwimkitError(
            f"cannot register a rule for {target!r}: give a module type, a function or a "
            "tensor method name"
        )


def register_rule(target: Target, rule: Rule, *, replace: bool = False,
                  writes_in_place: bool = False, gradient: bool = False,
                  local_graph: bool = False) -> RuleEntry:
    """Use ``rule(ctx, s)`` for ``target``: a module type, a function or a method name.

    A target that has a rule already keeps it unless ``replace`` (say it, and it is done).
    ``writes_in_place``, ``gradient`` and ``local_graph``: see the module docstring
    (swimkit's own rules set the first two).
    """
    require(callable(rule), f"a curvature rule must be callable (got {rule!r})")
    _check_target(target)
    known = entry_of(target)
    flags = {"writes_in_place": writes_in_place, "gradient": gradient,
             "local_graph": local_graph}
    if known is not None:
        if known.rule is rule and all(getattr(known, k) == v for k, v in flags.items()):
            return known
        require(replace, f"{_label(target)!r} has a curvature rule already; pass "
                         "replace=True to use yours instead")
        RULES.remove(known.name)
    base = _label(target)
    name, taken, suffix = base, RULES.aliases(), 2
    while name.lower() in taken:  # two targets with one printed name
        name, suffix = f"{base}#{suffix}", suffix + 1
    doc = (getattr(rule, "__doc__", None) or "").strip().splitlines()
    return RULES.add(RuleEntry(name=name, help=doc[0] if doc else "", target=target,
                               rule=rule, **flags))


def register_own(rule: Rule, *targets: Target, local_graph: bool = False) -> None:
    """Register one of swimkit's own rules for ``targets``: it writes S in place and
    carries the gradient."""
    for target in targets:
        register_rule(target, rule, writes_in_place=True, gradient=True,
                      local_graph=local_graph)


def remove_rule(target: Target) -> None:
    """Forget the rule of ``target`` (a module type, a function or a method name)."""
    known = entry_of(target)
    require(known is not None, f"{_label(target)!r} has no curvature rule to remove")
    RULES.remove(known.name)


def register_elementwise(
    target: Target,
    derivative: Callable[[Tensor], Tensor] | None = None,
    *,
    replace: bool = False,
    writes_in_place: bool = False,
) -> RuleEntry:
    """An elementwise op y = f(x): S_x = S_y * f'(x)^2 (and the gradient g_x = g_y f'(x)).

    ``derivative(x)`` gives f'(x) at the op's input; without it f'(x) comes from autograd
    on the op itself (exact for any elementwise op, its settings included).
    """
    require(derivative is None or callable(derivative),
            f"derivative must be a function x -> f'(x) (got {derivative!r})")
    return register_rule(target, elementwise_rule(derivative), replace=replace,
                         writes_in_place=writes_in_place, gradient=True)


def elementwise_rule(derivative: Callable[[Tensor], Tensor] | None = None) -> Rule:
    """The rule of an elementwise op with derivative f'."""

    def rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
        """Elementwise op: S_x = S_y * f'(x)^2, g_x = g_y * f'(x)."""
        if derivative is None:
            slope = ctx.elementwise_derivative()
        else:
            x = ctx.value(ctx.input_node)
            slope = derivative(x)
            name = getattr(derivative, "__qualname__", derivative)
            if not isinstance(slope, Tensor):
                raise SwimkitError(
                    f"the derivative {name} returned {type(slope).__name__}, not a tensor "
                    "f'(x) shaped like x")
            if isinstance(x, Tensor) and tuple(slope.shape) != tuple(x.shape):
                raise SwimkitError(
                    f"the derivative {name} returned a tensor shaped {tuple(slope.shape)} for "
                    f"an input shaped {tuple(x.shape)}: f'(x) is elementwise, shaped like x")
        if ctx.grad is not None:
            ctx.send_grad(ctx.to_input(ctx.scaled(ctx.grad, slope)))
        return ctx.to_input(ctx.scaled(s, slope.square()))

    return rule


def _by_target() -> dict[Any, RuleEntry]:
    return {entry.target: entry for entry in RULES}


def entry_of(target: Target) -> RuleEntry | None:
    """The registered entry of exactly ``target``, or None."""
    return _by_target().get(target)


def module_rule(module: nn.Module) -> RuleEntry | None:
    """The rule of ``module``'s type or its nearest registered base class."""
    table = _by_target()
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


def function_rule(function: Any) -> RuleEntry | None:
    try:
        return _by_target().get(OUT_OF_PLACE.get(function, function))
    except TypeError:  # an unhashable callable has no rule
        return None


def method_rule(name: str) -> RuleEntry | None:
    return _by_target().get(name.rstrip("_") if not name.endswith("__") else name)


def leaf_types() -> tuple[type[nn.Module], ...]:
    """Layer types with a rule: the tracer keeps them whole."""
    return tuple(e.target for e in RULES if e.kind == "layer")


__all__ = ["OUT_OF_PLACE", "RULES", "RuleEntry", "elementwise_rule", "entry_of",
           "function_rule", "leaf_types", "method_rule", "module_rule", "register_elementwise",
           "register_own", "register_rule", "remove_rule"]
