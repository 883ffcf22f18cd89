"""A small trained model and its batches, shared by the tests."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn


def toy_problem(seed: int = 0):
    """A small MLP that classifies a synthetic task well (a fresh copy), and its batches."""
    model, batches = _trained(seed)
    return copy.deepcopy(model), batches


@functools.cache
def _trained(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(600, 8, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), 0.02)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), [(x[i : i + 200], y[i : i + 200]) for i in range(0, 600, 200)]
