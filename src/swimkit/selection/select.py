"""Choosing what to write-verify: :func:`select` and the score methods' cut.

A score method scores every weight once (:func:`score`); :func:`cut` verifies the
best-scored weights within a budget, so a sweep over budgets scores once. A planner
returns the plan itself. Either way the plan is priced by the chip's device model and
records what was asked (:func:`finish`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..chip import ChipSpec, as_chip
from ..devices import PricingModel
from ..devices.protocol import missing, require_time_acts
from ..errors import SwimkitError, require
from ..groups import with_overrides
from ..mapping import DeviceWeight, effective_weights, named_weights, safe_scale
from ..plans import Plan
from ..programming import ProgrammingReport
from ..sensitivity import Sensitivity
from .budget import FlatScores, extra_seconds, time_budget_seconds
from .registry import METHODS, Budget, BudgetKind, Method, ScoreInputs, require_pricing
from .settings import SelectionSettings

Batches = Iterable[tuple[Tensor, Tensor]]


@dataclass
class Scores:
    """One score method's score for every device weight, ready to cut at any budget.

    Computing scores once and cutting them many times (a sweep over budgets, a search)
    avoids recomputing them per budget.
    """

    method: str
    inputs: ScoreInputs
    flat: FlatScores

    @property
    def scores(self) -> dict[str, Tensor]:
        return self.flat.scores

    @property
    def total(self) -> int:
        return self.flat.total


def select(
    model: nn.Module,
    sens: Sensitivity | None,
    settings: SelectionSettings | None = None,
    *,
    chip: ChipSpec | Any = None,
    data: Batches | None = None,
    **overrides: Any,
) -> Plan:
    """Choose how to program the devices of ``model`` on ``chip``.

    ``settings`` (a :class:`SelectionSettings`: one method at one budget) with the keyword
    ``overrides`` of its fields applied to a copy: ``method`` (default ``"swim"``), one
    budget, ``fraction`` (of the weights; of the devices for the device-level methods
    ``allocate`` and ``learned``), ``speedup`` over verifying every device or
    ``time_budget`` in seconds; ``tolerances``, ``plan_time``, the method's ``options``,
    ``seed``. ``chip`` (a :class:`~swimkit.ChipSpec`, or a device model alone; None: the
    default chip) prices the plan and says which weights are on devices; ``sens`` may be
    None for methods that need none; ``data`` (training batches) is for ``learned``.
    """
    sel = _one_method(with_overrides(SelectionSettings, settings, overrides, "select"))
    chip = as_chip(chip)
    entry = METHODS.get(sel.method)
    if entry.planner is None:
        return cut(score(model, sens, sel, chip), sel.budget)
    inputs = inputs_for(model, sens, entry, sel, chip, data)
    plan = entry.planner(private_copy(inputs), sel.budget)
    if not isinstance(plan, Plan):
        raise SwimkitError(f"planner {entry.name!r} returned {type(plan).__name__}, "
                           "not a swimkit.Plan")
    return finish(plan, inputs, sel.budget, entry.name)


def score(model: nn.Module, sens: Sensitivity | None,
          settings: SelectionSettings | None = None, chip: ChipSpec | Any = None,
          **overrides: Any) -> Scores:
    """Scores of a weight-level method (``settings.method``) for the device weights of
    ``model`` on ``chip`` (the budget of ``settings`` is not used)."""
    sel = _one_method(with_overrides(SelectionSettings, settings, overrides, "score"))
    entry = METHODS.get(sel.method)
    require(entry.score is not None,
            f"method {entry.name!r} plans device by device and has no per-weight score; "
            "use select()")
    inputs = inputs_for(model, sens, entry, sel, as_chip(chip))
    raw = entry.score(private_copy(inputs))
    return Scores(entry.name, inputs, FlatScores(checked_scores(entry.name, raw, inputs)))


def _one_method(sel: SelectionSettings) -> SelectionSettings:
    require(sel.method is not None, "give the method to plan with: method='swim', "
                                    "'allocate', ...")
    return sel


def inputs_for(model: nn.Module, sens: Sensitivity | None, method: Method,
               sel: SelectionSettings, chip: ChipSpec, data: Batches | None = None
               ) -> ScoreInputs:
    """What ``method`` is given about the device weights of ``model`` on ``chip``."""
    if method.needs_sensitivity and sens is None:
        raise SwimkitError(f"method {method.name!r} needs sensitivities: run the sensitivity pass")
    if method.needs_data and data is None:
        raise SwimkitError(f"method {method.name!r} learns on data: pass data= (training "
                           "batches of (x, y))")
    if sel.plan_time:
        require_time_acts(chip.device, "plan_time", f"{sel.plan_time:g} s")
    model = chip.held(model)  # BatchNorm folded where the chip folds it
    weights = _chosen_weights(model, sens, chip)
    values = effective_weights(weights)
    scales = chip.scales(values)
    if sens is not None and method.needs_sensitivity:
        _check_shapes(sens, values)
        sens = sens.rescaled(scales)
    return ScoreInputs(
        sensitivity=sens, values=values,
        normalised={k: v / safe_scale(scales[k]) for k, v in values.items()},
        scales=scales, device_model=chip.device, model=model, weights=weights,
        menu=None if sel.tolerances is None else tuple(sel.tolerances),
        options=method.checked(sel.options), plan_time=float(sel.plan_time),
        seed=sel.seed, data=data, chip=chip, progress=sel.progress,
    )


def private_copy(inputs: ScoreInputs) -> ScoreInputs:
    """``inputs`` with copies of the weights, so an outside method cannot write the model."""
    def copied(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in tensors.items()}

    return replace(inputs, values=copied(inputs.values), normalised=copied(inputs.normalised),
                   scales=copied(inputs.scales))


def checked_scores(method: str, raw: object, inputs: ScoreInputs) -> dict[str, Tensor]:
    """A score method's result, checked: a real, finite tensor per weight, shaped like it."""
    what = f"method {method!r}"
    if not isinstance(raw, Mapping):
        raise SwimkitError(f"{what} returned {type(raw).__name__}, not a dict of score "
                           "tensors by weight name")
    out = {}
    for name, value in inputs.values.items():
        score_ = raw.get(name)
        if score_ is None:
            raise SwimkitError(f"{what} gave no score for {name!r}")
        if not isinstance(score_, Tensor):
            raise SwimkitError(f"{what} gave a {type(score_).__name__} as the score of "
                               f"{name}, not a tensor")
        if score_.is_complex() or score_.dtype == torch.bool:
            raise SwimkitError(f"{what} gave a {score_.dtype} score for {name}: scores are "
                               "real numbers (higher = verify first)")
        if tuple(score_.shape) != tuple(value.shape):
            raise SwimkitError(f"{what} gave a score shaped {tuple(score_.shape)} for "
                               f"{name}, whose weight is {tuple(value.shape)}")
        if score_.is_floating_point() and not bool(torch.isfinite(score_).all()):
            raise SwimkitError(f"{what} gave NaN or infinite scores for {name}: they would "
                               "sort first; return finite numbers")
        out[name] = score_
    return out


def make_budget(fraction: float | None, speedup: float | None,
                time_budget: float | None) -> Budget:
    """The one budget given, or a clear error."""
    given = [(k, v) for k, v in (("fraction", fraction), ("speedup", speedup),
                                 ("time_budget", time_budget)) if v is not None]
    require(len(given) == 1,
            "give exactly one budget: a fraction, a speedup or a time budget (seconds)")
    return Budget(*given[0])


def cut(scores: Scores, budget: Budget | float | None = None, **budgets: float) -> Plan:
    """The plan verifying the best-scored weights within one budget.

    ``budget`` is a :class:`Budget` or a fraction; ``speedup=`` / ``time_budget=`` also work.
    """
    if not isinstance(budget, Budget):
        budget = make_budget(budget, budgets.get("speedup"), budgets.get("time_budget"))
    inputs = scores.inputs
    dm = inputs.device_model
    if budget.kind is BudgetKind.FRACTION:
        flat = scores.flat.top_fraction(budget.value)
    else:
        require_pricing(dm, "a time budget")
        full, base = dm.reference_times(inputs.values, inputs.scales)
        seconds = time_budget_seconds(budget, base, full)
        times = {k: dm.option_times(v, inputs.scales[k], inputs.menu)
                 for k, v in inputs.values.items()}
        extra = extra_seconds(times, {k: v.shape for k, v in inputs.values.items()},
                              dm.slicing.devices)
        flat = scores.flat.within_time(extra, seconds - base)
        most = float(extra.sum())
        tolerance = (inputs.menu or (dm.loop.tolerance,))[0]
        require(not bool(flat.all()) or most >= (seconds - base) * (1 - 1e-9),
                f"verifying every weight at the tolerance {tolerance:g} takes "
                f"{most + base:.4g} s, less than the {seconds:.4g} s asked for: ask for a "
                "larger speedup (a smaller time budget), or a tighter tolerance")
    plan = Plan(masks=scores.flat.masks(flat), method=scores.method, menu=inputs.menu,
                devices_per_weight=dm.slicing.devices)
    return finish(plan, inputs, budget, scores.method)


def finish(plan: Plan, inputs: ScoreInputs, budget: Budget, method: str) -> Plan:
    """A copy of ``plan`` recording the request, and the modelled programming time when
    it can be modelled."""
    meta = {**plan.meta, "plan_time_s": inputs.plan_time} if inputs.plan_time else plan.meta
    report = _programming(plan, inputs, budget)
    crossbar = inputs.chip.crossbar if inputs.chip is not None else None
    mapped = crossbar is not None and not crossbar.is_default
    if mapped:  # a programming flow needs each device's range and tile
        meta = {**meta, "crossbar": crossbar.describe()}
    chip = inputs.chip.describe_all() if inputs.chip is not None else None
    return plan.recorded(method=method, requested=budget.describe(), meta=meta,
                         programming=plan.programming if report is None else report,
                         ranges=inputs.scales if mapped else None, chip=chip)


def _programming(plan: Plan, inputs: ScoreInputs, budget: Budget) -> ProgrammingReport | None:
    """The modelled programming time of ``plan``; None for a device model that only draws
    chips, or one that cannot price a plan cut at a fraction."""
    if missing(inputs.device_model, PricingModel):
        return None
    try:
        return inputs.device_model.programming_report(  # type: ignore[attr-defined]
            inputs.values, inputs.scales, plan)
    except SwimkitError:
        if budget.kind is not BudgetKind.FRACTION:
            raise
        return None


def _chosen_weights(model: nn.Module, sens: Sensitivity | None, chip: ChipSpec
                    ) -> dict[str, DeviceWeight]:
    """The chip's device weights; with the default placement and sensitivities, the
    weights the sensitivities were computed for."""
    if sens is None or not chip.placement.is_default:
        weights = chip.weights(model)
        missing_ = [n for n in weights if sens is not None and n not in sens.second]
        if missing_:
            raise SwimkitError(
                f"the sensitivities have no {missing_[0]}: compute them for the same layers"
            )
        return weights
    return named_weights(model, sens.names, "the sensitivity file")


def _check_shapes(sens: Sensitivity, values: Mapping[str, Tensor]) -> None:
    for name, value in values.items():
        if tuple(sens.second[name].shape) != tuple(value.shape):
            raise SwimkitError(
                f"sensitivity of {name} has shape {tuple(sens.second[name].shape)} but the "
                f"weight has {tuple(value.shape)}: recompute the sensitivities for this model"
            )


__all__ = ["Scores", "checked_scores", "cut", "finish", "inputs_for", "make_budget",
           "private_copy", "score", "select"]
