"""One layer of weights, the second moment of its errors over sampled chips (what the
device-model tests hold a model's variance to), and a model that only draws chips."""

from __future__ import annotations

import torch

from swimkit.slicing import BitSlicing


def layer(seed: int = 0, shape=(400, 20)) -> tuple[dict, dict]:
    """The values and the range of one random layer named ``w``."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return {"w": w}, {"w": w.abs().max()}


def empirical_second_moment(dm, values, scales, time, plan=None, chips=300) -> float:
    """Mean of (dW / s)^2 over ``chips`` chips read at ``time``."""
    draw = dm.sampler(values, scales, plan, (time,))
    total = 0.0
    for k in range(chips):
        dw = draw(torch.Generator().manual_seed(k))[0]["w"].double() / scales["w"]
        total += float(dw.square().mean())
    return total / chips


class DrawsOnly:
    """A device model that draws chips (all exact) and prices nothing."""

    slicing = BitSlicing()

    def sampler(self, values, scales, plan=None, times=(0.0,)):
        return lambda generator: [{k: torch.zeros_like(v) for k, v in values.items()}
                                  for _ in times]

    def variance(self, values, scales, plan=None, time=0.0):
        return {k: torch.zeros_like(v) for k, v in values.items()}

    def with_sigma(self, sigma):
        return self

    def describe(self):
        return {"kind": "draws-only"}
