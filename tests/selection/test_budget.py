"""Budgets: a fraction at any size, a speedup and a time budget spent exactly, and menus
that cannot spend them."""

from __future__ import annotations

import pytest
import torch
from plan_problems import lenet_problem
from torch import nn
from toys import toy_problem

import swimkit
from swimkit.programming import WriteVerify
from swimkit.selection import top_k


@pytest.fixture(scope="module")
def lenet_and_sens(reference):
    return lenet_problem(reference)


def test_top_k_beyond_float_quantile_limit():
    """torch.quantile fails beyond 2^24 elements; the global top-k must not."""
    n = 20_000_000
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0))
    k = round(0.1 * n)
    mask = top_k(scores, k)
    assert int(mask.sum()) == k
    assert float(scores[mask].min()) >= float(scores[~mask].max())


def test_large_model_selection():
    model = nn.Sequential(nn.Linear(4200, 4200, bias=False), nn.Linear(4200, 10, bias=False))
    assert sum(p.numel() for p in model.parameters()) > 2**24
    plan = swimkit.select(model, None, fraction=0.03, method="magnitude")
    assert plan.weights_verified == round(0.03 * plan.weights_total)


def test_speedup_budget(lenet_and_sens):
    """The speedup is reached, one more weight would miss it, it is the fraction's plan,
    and a speedup beyond writing every device once is refused."""
    model, sens = lenet_and_sens
    device = swimkit.GaussianDevice(write_verify=WriteVerify(0.05, max_attempts=100))
    for speedup in (1.0, 2.0, 5.0):
        plan = swimkit.select(model, sens, speedup=speedup, chip=device)
        assert plan.programming.speedup >= speedup * (1 - 1e-9)
        per_weight = plan.programming.time_full_verify_s - plan.programming.time_no_verify_s
        per_weight /= plan.weights_total
        slower = plan.programming.time_plan_s + per_weight
        assert plan.programming.time_full_verify_s / slower < speedup or plan.fraction_verified == 1
    top = swimkit.select(model, sens, speedup=5.0, chip=device)
    by_fraction = swimkit.select(model, sens, fraction=top.fraction_verified)
    assert all(torch.equal(top.masks[k], by_fraction.masks[k]) for k in top.masks)
    with pytest.raises(swimkit.SwimkitError, match="speedup"):
        swimkit.select(model, sens, speedup=1e6, chip=device)


def test_time_budget_in_seconds(lenet_and_sens):
    model, sens = lenet_and_sens
    device = swimkit.GaussianDevice(write_verify=WriteVerify(0.05, max_attempts=100))
    full = swimkit.select(model, sens, fraction=1.0, chip=device).programming
    budget = 0.5 * (full.time_no_verify_s + full.time_full_verify_s)
    plan = swimkit.select(model, sens, time_budget=budget, chip=device)
    assert plan.programming.time_plan_s <= budget
    assert plan.fraction_verified == pytest.approx(0.5, abs=1e-4)
    assert plan.requested == {"time_budget": budget}


@pytest.mark.parametrize("tolerance", [0.1, 0.2])
def test_speedup_of_a_weight_level_plan_at_another_tolerance(lenet_and_sens, tolerance):
    """The speedup is over full verify with the default loop, whatever the plan's tolerance."""
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, speedup=5.0, tolerances=[tolerance])
    prog = plan.programming
    assert plan.menu == (tolerance,)
    assert 5.0 * (1 - 1e-9) <= prog.speedup < 5.05
    default = swimkit.select(model, sens, fraction=1.0).programming
    assert prog.time_full_verify_s == pytest.approx(default.time_full_verify_s)


def test_a_menu_that_cannot_spend_the_budget_is_refused():
    """A tolerance too loose to lower anything, one too tight to reach, a weight-level
    tolerance that verifies everything faster than asked, and a repeated tolerance."""
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    for menu in ([5.0], [1e-300]):
        with pytest.raises(swimkit.SwimkitError, match="menu|lowers"):
            swimkit.select(model, sens, method="allocate", speedup=3.0, tolerances=menu)
    with pytest.raises(swimkit.SwimkitError, match="less than the"):
        swimkit.select(model, sens, method="swim", speedup=3.0, tolerances=[5.0])
    with pytest.raises(swimkit.SwimkitError, match="repeats"):
        swimkit.select(model, sens, method="allocate", speedup=3.0, tolerances=[0.2, 0.2])
