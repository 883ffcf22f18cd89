"""The registry of selection methods: every entry's contract, and what a registration
must give."""

from __future__ import annotations

import json

import pytest
import torch
from plan_problems import toy_with_sensitivity
from toys import toy_problem

import swimkit
from swimkit import ChipSpec, GaussianDevice
from swimkit.selection import METHODS, BudgetKind

#: Every registered method, read from the registry (a later entry is covered too).
EVERY_METHOD = METHODS.names()


@pytest.fixture(scope="module")
def toy():
    return toy_with_sensitivity()


@pytest.mark.parametrize("method", EVERY_METHOD)
def test_every_method_plans_within_its_budget_and_records_its_chip(toy, method):
    """On a toy problem each method's plan meets a speedup and a fraction, and records
    the method, the budget asked for and the chip it was made for."""
    model, batches, sens = toy
    entry = METHODS.get(method)
    chip = ChipSpec(GaussianDevice(sigma=0.4, sigma_verified=0.04))
    described = json.loads(json.dumps(chip.describe_all()))
    plan = swimkit.select(model, sens, method=method, speedup=3.0, chip=chip, data=batches)
    assert plan.method == method and plan.requested == {"speedup": 3.0}
    assert plan.chip == described
    prog = plan.programming
    assert prog.speedup >= 3.0 * (1 - 1e-9)
    assert prog.time_plan_s <= prog.time_full_verify_s / 3.0 * (1 + 1e-9)
    assert plan.devices_per_weight == chip.device.slicing.devices
    assert set(plan.names) == set(chip.weights(model))
    if entry.needs_data:  # a method that learns is given a time budget only
        with pytest.raises(swimkit.SwimkitError, match="time budget"):
            swimkit.select(model, sens, method=method, fraction=0.2, chip=chip, data=batches)
        return
    plan = swimkit.select(model, sens, method=method, fraction=0.2, chip=chip, data=batches)
    assert plan.requested == {BudgetKind.FRACTION.value: 0.2} and plan.chip == described
    if entry.level == "weight":
        assert plan.weights_verified == round(0.2 * plan.weights_total)
    else:
        assert plan.devices_verified <= round(0.2 * plan.devices_total)


@pytest.mark.parametrize("method", EVERY_METHOD)
def test_every_method_declares_how_it_is_run(method):
    """A score or a planner (not both), options with defaults that check as given, and
    a tolerance count a settings group can read."""
    entry = METHODS.get(method)
    assert (entry.score is None) != (entry.planner is None)
    assert isinstance(entry.options, dict)
    assert entry.checked(None) == entry.options
    assert entry.tolerances in (None, 0, 1)
    assert all(field in entry.options for field in entry.option_flags.values())
    assert METHODS.canonical(method.upper()) == method


def test_a_registered_method_is_offered_like_a_built_in_one():
    """A method registered from outside plans, takes its declared options and is
    forgotten when removed."""
    model, _ = toy_problem()
    seen = []

    def first_rows(inputs):
        seen.append(inputs.options)
        return {k: -torch.arange(v.numel(), dtype=torch.float32).reshape(v.shape)
                for k, v in inputs.values.items()}

    swimkit.register_method("first-rows", first_rows, needs_sensitivity=False,
                            options={"rows": 1}, aliases=("fr",))
    try:
        plan = swimkit.select(model, None, method="FR", fraction=0.1, options={"rows": 2})
        assert plan.method == "first-rows" and seen == [{"rows": 2}]
        assert plan.masks["0.weight"].reshape(-1)[:3].tolist() == [True, True, True]
        with pytest.raises(swimkit.SwimkitError, match="already registered"):
            swimkit.register_method("first-rows", first_rows)
    finally:
        METHODS.remove("first-rows")
    assert "first-rows" not in METHODS and "fr" not in METHODS


def test_registrations_are_checked():
    """A method, a model or a curvature rule registered wrongly is one clear error, and
    a model builder returning nothing is named when built."""
    with pytest.raises(swimkit.SwimkitError, match="must be callable"):
        swimkit.register_method("not-callable", 3)
    with pytest.raises(swimkit.SwimkitError, match="unknown field"):
        swimkit.register_method("typo", lambda inputs: {}, needs_sensitivty=False)
    with pytest.raises(swimkit.SwimkitError, match="num_classes"):
        swimkit.register_model("bad", torch.nn.Identity, dataset="mnist",
                               input_shape=(1, 28, 28), num_classes=-3)
    with pytest.raises(swimkit.SwimkitError, match="has a curvature rule already"):
        swimkit.register_rule(torch.nn.Linear, lambda ctx, s: None)
    swimkit.register_model("returns-none", lambda: None, dataset="mnist",
                           input_shape=(1, 28, 28))
    try:
        with pytest.raises(swimkit.SwimkitError, match="returned NoneType"):
            swimkit.build_model("returns-none")
    finally:
        swimkit.models.MODELS.remove("returns-none")
    assert "not-callable" not in METHODS and "typo" not in METHODS
