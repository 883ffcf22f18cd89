"""The registry of curvature rules (swimkit.sensitivity.swim.registry): every entry well
formed, rules replaced and removed, and rules and derivatives from outside checked."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from toys import toy_problem

import swimkit
from swimkit.sensitivity.swim import RULES, RuleCheck, check_rule
from swimkit.sensitivity.swim.registry import (
    entry_of,
    function_rule,
    leaf_types,
    method_rule,
    remove_rule,
)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


# --- every registered rule --------------------------------------------------------------------


@pytest.mark.parametrize("name", RULES.names())
def test_every_registered_rule_is_well_formed(name: str):
    """Each entry has a target of its kind (a module type, a function or an out-of-place
    method name), a callable rule, boolean flags, and is found again by its target."""
    entry = RULES.get(name)
    assert entry.target is not None and callable(entry.rule)
    for flag in ("writes_in_place", "gradient", "local_graph"):
        assert isinstance(getattr(entry, flag), bool), flag
    assert isinstance(entry.help, str) and "\n" not in entry.help
    if entry.kind == "layer":
        assert issubclass(entry.target, nn.Module) and entry.target in leaf_types()
    elif entry.kind == "method":
        assert entry.target and not entry.target.endswith("_")
        assert method_rule(entry.target) is entry
    else:
        assert callable(entry.target) and function_rule(entry.target) is entry
    assert entry_of(entry.target) is entry


# --- replacing and removing ---------------------------------------------------------------------


def test_rules_live_in_one_registry_with_their_flag():
    """A target's entry says its kind and flags; a second rule needs replace=True."""
    entry = entry_of(torch.matmul)
    assert entry is not None and entry.writes_in_place and entry.name in RULES.names()
    assert entry_of(nn.MultiheadAttention).kind == "layer"
    assert entry_of("softmax").kind == "method"
    with pytest.raises(swimkit.SwimkitError, match="replace=True"):
        swimkit.register_rule(torch.matmul, lambda ctx, s: {})


def test_a_rule_can_be_replaced_and_removed():
    """A replaced rule is used (check_rule finds it wrong), a removed one is gone, and
    removing it twice is refused."""
    original = entry_of(torch.softmax)

    def wrong(ctx, s):
        return ctx.to_input(s)  # the identity: not softmax's rule

    swimkit.register_rule(torch.softmax, wrong, replace=True)
    try:
        result = check_rule(torch.softmax, randn(3, 5), dim=-1)
        assert isinstance(result, RuleCheck) and not result.ok
        swimkit.remove_rule(torch.softmax)
        assert entry_of(torch.softmax) is None
        with pytest.raises(swimkit.SwimkitError, match="no curvature rule to remove"):
            swimkit.remove_rule(torch.softmax)
    finally:
        if entry_of(torch.softmax) is not None:
            swimkit.remove_rule(torch.softmax)
        swimkit.register_rule(torch.softmax, original.rule, writes_in_place=True,
                              gradient=original.gradient)
    assert check_rule(torch.softmax, randn(3, 5), dim=-1).ok


# --- rules and derivatives from outside -----------------------------------------------------------


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


class SoftsignF(nn.Module):
    def forward(self, x):
        return nn.functional.softsign(x)


def test_rules_and_derivatives_from_outside_are_checked(clean_rules):
    """A rule that returns nothing and a derivative that returns no tensor are each
    named in one error."""
    _, batches = toy_problem()
    model = nn.Sequential(nn.Linear(8, 3), Doubler())
    swimkit.register_rule(Doubler, lambda ctx, s: None)
    with pytest.raises(swimkit.SwimkitError, match="returned NoneType for graph node"):
        swimkit.sensitivity(model, batches)
    remove_rule(Doubler)
    swimkit.register_elementwise(nn.functional.softsign, lambda x: "slope")
    with pytest.raises(swimkit.SwimkitError, match="returned str, not a tensor"):
        swimkit.sensitivity(nn.Sequential(nn.Linear(8, 3), SoftsignF()), batches)


def softsign_slope_per_feature(x: torch.Tensor) -> torch.Tensor:
    """A wrong derivative: one slope per feature (reduced over the batch), which would
    broadcast against x."""
    return (1 / (1 + x.abs()) ** 2).mean(0)


def test_a_derivative_of_the_wrong_shape_is_refused_not_broadcast(clean_rules):
    """register_elementwise's derivative must be shaped like x: one shaped like a row of
    x (which would broadcast) is one line naming the derivative and both shapes."""
    _, batches = toy_problem()
    model = nn.Sequential(nn.Linear(8, 3), SoftsignF())
    swimkit.register_elementwise(nn.functional.softsign, softsign_slope_per_feature)
    with pytest.raises(swimkit.SwimkitError) as err:
        swimkit.sensitivity(model, batches)
    message = str(err.value)
    assert "\n" not in message and "softsign_slope_per_feature" in message
    assert "shaped (3,) for an input shaped" in message and "shaped like x" in message
    swimkit.register_elementwise(nn.functional.softsign,
                                 lambda x: 1 / (1 + x.abs()) ** 2, replace=True)
    exact = swimkit.sensitivity(model, batches)
    remove_rule(nn.functional.softsign)
    swimkit.register_elementwise(nn.functional.softsign)  # f' from autograd
    by_autograd = swimkit.sensitivity(model, batches)
    torch.testing.assert_close(exact.second["0.weight"], by_autograd.second["0.weight"])


def test_a_derivative_must_be_a_function(clean_rules):
    """A derivative that is not callable is refused when it is registered."""
    with pytest.raises(swimkit.SwimkitError, match="derivative must be a function"):
        swimkit.register_elementwise(nn.functional.softsign, derivative=2.0)
    assert entry_of(nn.functional.softsign) is None
