"""The public registry of curvature rules: by layer type, by function, by method name.

``register_rule(target, rule)`` adds a rule for a module type (every instance and
subclass; the tracer then keeps such layers whole), a function (``torch.tanh``,
``F.gelu``, an ``operator`` function) or a tensor method name (``"tanh"``).
``register_elementwise(target, derivative)`` adds an elementwise op y = f(x) in one
line: S_x = S_y * f'(x)^2, the Gauss-Newton form, f'(x) from ``derivative(x)`` or, when
none is given, from autograd on the op itself.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from ...errors import SwimkitError, require
from .context import Rule, RuleContext, SValue

_MODULE_RULES: dict[type[nn.Module], Rule] = {}
_FUNCTION_RULES: dict[Any, Rule] = {}
_METHOD_RULES: dict[str, Rule] = {}

#: In-place operator forms and their out-of-place twins.
OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub,
                operator.imul: operator.mul, operator.itruediv: operator.truediv}


def register_rule(target: type[nn.Module] | Callable | str, rule: Rule, *,
                  replace: bool = False) -> None:
    """Use ``rule(ctx, s)`` for ``target``: a module type, a function or a method name.

    A target that has a rule already keeps it unless ``replace`` (say it, and it is done).
    """
    require(callable(rule), f"a curvature rule must be callable (got {rule!r})")
    if isinstance(target, type):
        require(issubclass(target, nn.Module),
                f"a rule's module type must be an nn.Module subclass (got {target!r})")
        table: dict = _MODULE_RULES
    elif isinstance(target, str):
        require(bool(target) and not target.endswith("_"),
                f"register the out-of-place method name ({target.rstrip('_')!r}); "
                "in-place forms use it too")
        table = _METHOD_RULES
    elif callable(target):
        table = _FUNCTION_RULES
    else:
        raise SwimkitError(
            f"cannot register a rule for {target!r}: give a module type, a function or a "
            "tensor method name"
        )
    known = table.get(target)
    require(known is None or known is rule or replace,
            f"{getattr(target, '__name__', target)!r} has a curvature rule already; pass "
            "replace=True to use yours instead")
    table[target] = rule


def register_elementwise(
    target: type[nn.Module] | Callable | str,
    derivative: Callable[[Tensor], Tensor] | None = None,
    *,
    replace: bool = False,
) -> None:
    """An elementwise op y = f(x): S_x = S_y * f'(x)^2.

    ``derivative(x)`` gives f'(x) at the op's input; without it f'(x) comes from autograd
    on the op itself (exact for any elementwise op, its settings included).
    """
    require(derivative is None or callable(derivative),
            f"derivative must be a function x -> f'(x) (got {derivative!r})")
    register_rule(target, elementwise_rule(derivative), replace=replace)


def elementwise_rule(derivative: Callable[[Tensor], Tensor] | None = None) -> Rule:
    """The rule of an elementwise op with derivative f'."""

    def rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
        if derivative is None:
            slope = ctx.elementwise_derivative()
        else:
            slope = derivative(ctx.run.env[ctx.input_node])
            if not isinstance(slope, Tensor):
                raise SwimkitError(
                    f"the derivative {getattr(derivative, '__qualname__', derivative)} "
                    f"returned {type(slope).__name__}, not a tensor f'(x) shaped like x")
        return ctx.to_input(ctx.scaled(s, slope.square()))

    return rule


def module_rule(module: nn.Module) -> Rule | None:
    """The rule of ``module``'s type or its nearest registered base class."""
    for cls in type(module).__mro__:
        if cls in _MODULE_RULES:
            return _MODULE_RULES[cls]
    return None


def function_rule(function: Any) -> Rule | None:
    return _FUNCTION_RULES.get(OUT_OF_PLACE.get(function, function))


def method_rule(name: str) -> Rule | None:
    return _METHOD_RULES.get(name.rstrip("_") if not name.endswith("__") else name)


def leaf_types() -> tuple[type[nn.Module], ...]:
    """Layer types with a rule: the tracer keeps them whole."""
    return tuple(_MODULE_RULES)


__all__ = ["OUT_OF_PLACE", "elementwise_rule", "function_rule", "leaf_types", "method_rule",
           "module_rule", "register_elementwise", "register_rule"]
