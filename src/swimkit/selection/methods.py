"""The built-in score methods (weight level).

Each is one function of :class:`~swimkit.selection.registry.ScoreInputs`, registered
beside it with its aliases (the SWIM scripts' names such as ``SM``) and a one-line help;
the command line and the README's table of methods are read from these registrations,
in this order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..plans import Plan
from .registry import ScoreInputs, register_method


def swim_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """alpha * |h + 2 g| + |w_hat| (SWIM; |w_hat| breaks ties)."""
    combined = inputs.sensitivity.combined
    return {k: inputs.alpha * combined[k].abs() + w.abs() for k, w in inputs.normalised.items()}


register_method("swim", swim_score, aliases=("sm",),
                help="SWIM: 1e6 * |h + 2g| + |w_hat| (the reference's --method SM)")


def second_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """|h|."""
    return {k: h.abs() for k, h in inputs.h.items()}


register_method("second", second_score, help="|h|, the second derivative alone")


def magnitude_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """|w_hat|."""
    return {k: w.abs() for k, w in inputs.normalised.items()}


register_method("magnitude", magnitude_score, needs_sensitivity=False, aliases=("mag",),
                help="|w_hat|, the largest normalised weights")


def random_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """Uniform random numbers from ``seed``: the top fraction is a random subset."""
    gen = torch.Generator().manual_seed(int(inputs.seed))
    return {k: torch.rand(w.shape, generator=gen).to(w.device)
            for k, w in inputs.normalised.items()}


register_method("random", random_score, needs_sensitivity=False, aliases=("rand",),
                help="a seeded uniformly random subset")


def plain_variance(inputs: ScoreInputs) -> dict[str, Tensor]:
    """E[(dW / s)^2] of every weight written once, at the plan time (the protocol's)."""
    return inputs.device_model.variance(inputs.values, inputs.scales, None, inputs.plan_time)


def relative_spread(inputs: ScoreInputs) -> dict[str, Tensor]:
    """Each weight's spread relative to the device's nominal one: sqrt(Var_i / (c sigma^2)),
    c = sum_j 4^(-j m); U-SWIM's sigma_i / sigma for Gaussian devices (the variation
    curve's factor). Without a nominal sigma (0), relative to the mean variance."""
    variance = plain_variance(inputs)
    nominal = inputs.device_model.slicing.slice_factor * nominal_sigma(inputs) ** 2
    if nominal <= 0:
        total = sum(float(v.sum()) for v in variance.values())
        nominal = total / max(sum(v.numel() for v in variance.values()), 1)
    nominal = max(nominal, 1e-300)
    return {k: (v.double() / nominal).sqrt().to(inputs.values[k].dtype)
            for k, v in variance.items()}


def nominal_sigma(inputs: ScoreInputs) -> float:
    """The nominal plain-write sigma of a pricing device model (0 for one that only draws)."""
    from ..devices import PricingModel
    from ..devices.protocol import missing

    if missing(inputs.device_model, PricingModel):
        return 0.0
    return float(inputs.device_model.sigma)  # type: ignore[attr-defined]


def uswim_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """The SWIM score with |S| weighted by the weight's relative spread (after U-SWIM)."""
    spread = relative_spread(inputs)
    combined = inputs.sensitivity.combined
    return {k: inputs.alpha * combined[k].abs() * spread[k] + w.abs()
            for k, w in inputs.normalised.items()}


register_method("uswim", uswim_score, aliases=("u-swim",), plans_at_time=True,
                help="the SWIM score weighted by each weight's relative spread (U-SWIM)")


def variance_score(inputs: ScoreInputs) -> dict[str, Tensor]:
    """1/2 h (Var_plain - Var_verified): the expected loss reduction of verifying a weight,
    from E[dL] = 1/2 sum_i h_i Var_i."""
    plain = plain_variance(inputs)
    dm = inputs.device_model
    verified = dm.variance(inputs.values, inputs.scales,
                           Plan.uniform(inputs.values, True, dm.slicing.devices), inputs.plan_time)
    return {k: (0.5 * h * (plain[k] - verified[k]).to(h.dtype)) for k, h in inputs.h.items()}


register_method("variance", variance_score, plans_at_time=True,
                help="1/2 h (Var_plain - Var_verified), the expected loss reduction")
