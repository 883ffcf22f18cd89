"""Planning problems the selection tests share: LeNet on the SWIM reference run, a tiny
layer with given curvatures, and a device model of every kind."""

from __future__ import annotations

import torch
from torch import nn
from toys import toy_problem

import swimkit
from swimkit.sensitivity import Sensitivity

#: The default loop's seconds per program pulse and per verify read.
T_P, T_R = 100e-9, 50e-9


def lenet_problem(reference: dict) -> tuple[nn.Module, Sensitivity]:
    """LeNet with the reference run's weights, and its SWIM sensitivities."""
    model = swimkit.models.LeNet()
    model.load_state_dict(reference["state_dict"])
    return model, swimkit.sensitivity(model, [(reference["x"], reference["y"])])


def tiny_problem(h: list[float]):
    """A 1 x len(h) linear layer, 2 devices per weight, with h given per weight."""
    model = nn.Sequential(nn.Linear(len(h), 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.linspace(0.5, 1.0, len(h))[None])
    second = {"0.weight": torch.tensor([h])}
    sens = Sensitivity(second=second, first={"0.weight": torch.zeros(1, len(h))},
                       scale={"0.weight": torch.tensor(1.0)}, engine="test", samples=1)
    dm = swimkit.GaussianDevice(bits_per_weight=2, bits_per_device=1)
    return model, sens, dm


def recorded_devices() -> dict[str, tuple[object, float]]:
    """Device models (alike, by weight, by device, in time) with the time planned for."""
    build = swimkit.build_device_model
    return {"uniform": (swimkit.GaussianDevice(), 0.0),
            "band": (build("band", r=3.0), 0.0),
            "curve": (swimkit.GaussianDevice(variation="pcm"), 0.0),  # a kind per weight
            "pcm": (build("pcm"), 0.0),
            "pcm-compensated-1d": (build("pcm", compensation=True), 86400.0),
            "stuck-pcm-1d": (build("stuck", base="pcm", compensation=True), 86400.0),
            "multilevel": (build("gaussian", levels="pcm", bits_per_device=2), 0.0)}


def toy_with_sensitivity():
    """The toy problem (a fresh model and its batches) and its SWIM sensitivities."""
    model, batches = toy_problem()
    return model, batches, swimkit.sensitivity(model, batches)
