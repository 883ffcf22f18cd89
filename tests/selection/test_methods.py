"""The built-in score methods: what each ranks first."""

from __future__ import annotations

import pytest
import torch
from plan_problems import lenet_problem
from torch import nn

import swimkit
from swimkit.selection import top_k


@pytest.fixture(scope="module")
def lenet_and_sens(reference):
    return lenet_problem(reference)


def test_magnitude_picks_largest_normalised_weights():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.5], [0.1, -2.0]]))
        model[1].weight.copy_(torch.tensor([[0.01, -0.009]]))
    plan = swimkit.select(model, None, fraction=0.5, method="magnitude")
    # normalised: layer0 = [0.5, .25, .05, 1], layer1 = [1, 0.9]: top 3 of 6 are 1, 1, 0.9
    assert plan.masks["0.weight"].tolist() == [[False, False], [False, True]]
    assert plan.masks["1.weight"].tolist() == [[True, True]]


def test_random_is_seeded(lenet_and_sens):
    """The same seed draws the same subset, another seed another."""
    model, _ = lenet_and_sens
    a = swimkit.select(model, None, fraction=0.1, method="random", seed=1)
    b = swimkit.select(model, None, fraction=0.1, method="random", seed=1)
    c = swimkit.select(model, None, fraction=0.1, method="random", seed=2)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert any(not torch.equal(a.masks[k], c.masks[k]) for k in a.masks)


def test_variance_ranks_like_second_when_sigma_is_uniform(lenet_and_sens):
    model, sens = lenet_and_sens
    device = swimkit.GaussianDevice(sigma=0.3, sigma_verified=0.03)
    for fraction in (0.01, 0.1, 0.37):
        a = swimkit.select(model, sens, fraction=fraction, method="variance", chip=device)
        b = swimkit.select(model, sens, fraction=fraction, method="second", chip=device)
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_uswim_weights_by_variation_factor(lenet_and_sens):
    """Uniform spread: U-SWIM is SWIM; a band changes the set, as the first release's
    formula alpha |S| sigma_i / sigma + |w_hat| does."""
    model, sens = lenet_and_sens
    uniform = swimkit.select(model, sens, fraction=0.1, method="uswim")
    swim = swimkit.select(model, sens, fraction=0.1, method="swim")
    assert all(torch.equal(uniform.masks[k], swim.masks[k]) for k in swim.masks)
    band = swimkit.GaussianDevice(variation="band:3")
    banded = swimkit.select(model, sens, fraction=0.1, method="uswim", chip=band)
    assert any(not torch.equal(banded.masks[k], swim.masks[k]) for k in swim.masks)
    flat, legacy = [], []
    for k, value in model.state_dict().items():
        if k in sens.names:
            w_hat = value / sens.scale[k]
            factor = band.weight_sigma(value, sens.scale[k]) / band.sigma
            legacy.append((1e6 * sens.combined[k].abs() * factor + w_hat.abs()).reshape(-1))
            flat.append(banded.masks[k].reshape(-1))
    legacy_mask = top_k(torch.cat(legacy), int(torch.cat(flat).sum()))
    assert torch.equal(legacy_mask, torch.cat(flat))
