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


class ReluPoolNet(nn.Module):
    """Convolutions, ReLUs and max-pools written every way a model may write them, for
    the fused paths' tests: layers (a ReLU in place), a ReLU method, a pool whose windows
    crop the input (15 -> 7) and one whose windows do not tile it (ceil mode, 7 -> 4), a
    layer whose output has two users, a ReLU after a linear layer. Inputs are
    ``in_channels`` x 15 x 15."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 10)
        with torch.no_grad():  # logits that follow the input (not the biases), so that
            for layer in (self.conv2, self.conv3, self.fc1, self.fc2):  # chips differ
                layer.weight.mul_(3)
            self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = nn.functional.max_pool2d(self.conv2(x).relu(), 2, ceil_mode=True)
        z = self.conv3(x)
        x = nn.functional.relu(z) + 0.1 * z
        return self.fc2(nn.functional.relu(self.fc1(torch.flatten(x, 1))))
