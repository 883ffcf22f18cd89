"""Method learned: a plan learned under sampled device errors, within its budget, its
relaxation equal to the device model's variance and to plain autograd."""

from __future__ import annotations

import pytest
import torch
from plan_problems import recorded_devices
from toys import toy_problem

import swimkit
from swimkit.plans import Plan
from swimkit.selection import METHODS, SelectionSettings, allocation, inputs_for, learned
from swimkit.selection.registry import Budget


def learned_inputs(device: str):
    """What learned is given on the toy problem, for one of the recorded device models."""
    model, batches = toy_problem()
    dm = recorded_devices()[device][0]
    settings = SelectionSettings(method="learned", speedup=4.0)
    inputs = inputs_for(model, swimkit.sensitivity(model, batches), METHODS.get("learned"),
                        settings, swimkit.ChipSpec(dm), batches)
    return dm, inputs, allocation.Problem.build(inputs, dm.default_menu())


def test_learned_plan_meets_the_budget_and_records_its_cost():
    """Seeded and repeatable, within the speedup, its cost in meta, the model untouched;
    no data and an option it does not take are refused."""
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    dm = swimkit.GaussianDevice(sigma=0.5, sigma_verified=0.05)
    kwargs = {"speedup": 6.0, "chip": dm, "data": batches, "options": {"epochs": 2}, "seed": 3}
    plan = swimkit.select(model, sens, method="learned", **kwargs)
    again = swimkit.select(model, sens, method="learned", **kwargs)
    assert all(torch.equal(plan.levels[k], again.levels[k]) for k in plan.levels)
    prog = plan.programming
    assert prog.time_plan_s <= prog.time_full_verify_s / 6.0 * (1 + 1e-12)
    assert plan.meta["learn_epochs"] == 2 and plan.meta["learn_batches"] == 6
    assert plan.meta["learn_seconds"] > 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swimkit.select(model, sens, method="learned", **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(swimkit.SwimkitError, match="learns on data"):
        swimkit.select(model, sens, method="learned", speedup=6.0)
    with pytest.raises(swimkit.SwimkitError, match="has no option 'steps'"):
        swimkit.select(model, sens, method="learned", speedup=6.0, data=batches,
                       options={"steps": 3})


@pytest.mark.parametrize("device", ["band", "pcm", "multilevel"])
def test_learned_injects_the_variance_of_the_plan_it_stands_for(device):
    """At hull points the relaxed plan's variance per weight is the device model's
    variance of that plan: each device's variance weighted by 4^(-j m)."""
    dm, inputs, problem = learned_inputs(device)
    levels = problem.best_devices(1000)  # every device at its first or its last hull point
    relaxed = learned._Relaxed(problem, levels)
    with torch.no_grad():
        for name, position in relaxed.positions.items():
            position.copy_(torch.where(levels[name].reshape(position.shape) > 0, torch.inf,
                                       -torch.inf))
        variance, _ = relaxed.variance_and_time(relaxed.base_variance(problem.option_variance))
    plan = Plan(levels=levels, menu=dm.default_menu())
    expected = dm.variance(inputs.values, inputs.scales, plan)
    for name, value in inputs.values.items():
        torch.testing.assert_close(variance[name].reshape(value.shape), expected[name],
                                   rtol=1e-12, atol=0.0)


def _autograd_variance_and_time(relaxed, base_var):
    """The relaxed plan's variance and time written as plain autograd over whole tensors:
    the oracle for the piecewise :class:`_HullFill`."""
    w, points = relaxed.problem.weights, relaxed.point_var.shape[1]
    variance, total = {}, torch.zeros((), dtype=torch.float64)
    for layer in relaxed.problem.layers:
        t = relaxed.position(layer)
        low = t.detach().floor().clamp_(0, points - 2)
        index = low.long().add_(layer.kind.long() * points).view(-1)
        fraction = t - low
        added = (learned._between(relaxed.point_var, relaxed.step_var, index, fraction)
                 * w).sum(1)
        variance[layer.name] = base_var[layer.name] + added
        total = total + learned._between(relaxed.point_time, relaxed.step_time, index,
                                         fraction).sum()
    return variance, total


@pytest.mark.parametrize("device", ["uniform", "curve", "pcm", "multilevel"])
def test_learned_relaxation_in_pieces_matches_autograd(device, monkeypatch):
    """The relaxed variance, time and their gradient, computed in pieces of a few devices
    with a hand-written backward, equal plain autograd's to float64 rounding, at positions
    spread over the whole hull."""
    monkeypatch.setattr(learned, "PIECE_DEVICES", 7)  # many pieces, some partial
    _, inputs, problem = learned_inputs(device)
    seconds = allocation.seconds_above_base(problem, inputs, Budget("speedup", 4.0))
    relaxed = learned._Relaxed(problem, problem.spend(seconds))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for position in relaxed.positions.values():
            position.add_(3 * torch.randn(position.shape, generator=gen, dtype=torch.float64))
    base = relaxed.base_variance(problem.option_variance)
    upstream = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64)
                for k, v in base.items()}

    def objective(variance, total):
        return sum((v * upstream[k]).sum() for k, v in variance.items()) + 0.7 * total

    pieces, oracle = relaxed.variance_and_time(base), _autograd_variance_and_time(relaxed, base)
    for name in base:
        torch.testing.assert_close(pieces[0][name], oracle[0][name], rtol=1e-13, atol=0.0)
    torch.testing.assert_close(pieces[1], oracle[1], rtol=1e-13, atol=0.0)
    got = torch.autograd.grad(objective(*pieces), relaxed.parameters())
    want = torch.autograd.grad(objective(*oracle), relaxed.parameters())
    assert any(bool(g.abs().gt(0).any()) for g in want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15 * float(b.abs().max()))


def test_learned_epochs_may_end_in_a_share_of_an_epoch():
    """A share of an epoch is its first batches (rounded up): what bounds the cost of
    learning on a large training set."""
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    for epochs, seen in ((0.5, 2), (0.01, 1), (1.34, 5), (1, 3)):
        plan = swimkit.select(model, sens, method="learned", speedup=4.0, data=batches,
                              options={"epochs": epochs})
        assert plan.meta["learn_batches"] == seen and plan.meta["learn_epochs"] == epochs
        assert plan.programming.speedup >= 4.0 * (1 - 1e-12)
    with pytest.raises(swimkit.SwimkitError, match="can be counted"):
        swimkit.select(model, sens, method="learned", speedup=4.0, data=iter(batches),
                       options={"epochs": 0.5})
    with pytest.raises(swimkit.SwimkitError, match="epochs must be a number > 0"):
        swimkit.select(model, sens, method="learned", speedup=4.0, data=batches,
                       options={"epochs": 0})
