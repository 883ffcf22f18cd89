"""The built-in score methods (weight level).

Each is one function of :class:`~swimkit.selection.registry.ScoreInputs`, registered with
its aliases (the SWIM scripts' names such as ``SM``) and a one-line help; the command
line and the README's table of methods are read from these registrations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..devices import DeviceModel
from ..plans import Plan
from .registry import ScoreInputs


def swim_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """alpha * |h + 2 g| + |w_hat| (SWIM; |w_hat| breaks ties)."""
    combined = inputs.sensitivity.combined
    return {k: inputs.alpha * combined[k].abs() + w.abs() for k, w in inputs.normalised.items()}


def second_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """|h|."""
    return {k: h.abs() for k, h in inputs.h.items()}


def magnitude_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """|w_hat|."""
    return {k: w.abs() for k, w in inputs.normalised.items()}


def random_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """Uniform random numbers from ``seed``: the top fraction is a random subset."""
    gen = torch.Generator().manual_seed(int(inputs.seed))
    return {k: torch.rand(w.shape, generator=gen).to(w.device)
            for k, w in inputs.normalised.items()}


def plain_variance(inputs: ScoreInputs) -> dict[str, Tensor]:
    """Var(dW / s) of every weight written once (the device model's protocol)."""
    return inputs.device_model.variance(inputs.values, inputs.scales, None)


def relative_spread(inputs: ScoreInputs) -> dict[str, Tensor]:
    """Each weight's spread relative to the device's nominal one.

    U-SWIM's sigma_i / sigma for the Gaussian device model (the variation curve's
    factor); for any other noise model sqrt(Var_i / mean Var) over all device weights.
    """
    dm = inputs.device_model
    if isinstance(dm, DeviceModel):
        nominal = max(dm.sigma, 1e-30)
        return {k: dm.weight_sigma(v, inputs.scales[k]) / nominal
                for k, v in inputs.values.items()}
    variance = plain_variance(inputs)
    total = sum(float(v.sum()) for v in variance.values())
    count = sum(v.numel() for v in variance.values())
    mean = max(total / max(count, 1), 1e-300)
    return {k: (v / mean).sqrt().to(inputs.values[k].dtype) for k, v in variance.items()}


def uswim_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """The SWIM score with |S| weighted by the weight's relative spread (after U-SWIM)."""
    spread = relative_spread(inputs)
    combined = inputs.sensitivity.combined
    return {k: inputs.alpha * combined[k].abs() * spread[k] + w.abs()
            for k, w in inputs.normalised.items()}


def variance_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """1/2 h (Var_plain - Var_verified): the expected loss reduction of verifying a weight,
    from E[dL] = 1/2 sum_i h_i Var_i."""
    plain = plain_variance(inputs)
    verified = inputs.device_model.variance(
        inputs.values, inputs.scales,
        Plan.uniform(inputs.values, True, getattr(inputs.device_model, "devices_per_weight", None)))
    return {k: (0.5 * h * (plain[k] - verified[k]).to(h.dtype)) for k, h in inputs.h.items()}


