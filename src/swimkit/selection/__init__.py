"""Choosing what to write-verify, under a fraction or a programming-time budget.

Weight-level *score methods* (``swim``, ``second``, ``magnitude``, ``random``, ``uswim``,
``variance``, or one you register) score every weight; the weights with the highest
scores over all layers together are verified, all K devices of a weight at one
tolerance. *Planners* decide device by device: ``allocate`` spends the budget on single
devices and on a menu of tolerances where the predicted loss falls fastest per second,
``learned`` learns the per-device choice under sampled device errors.

Budgets: a ``fraction`` (of the weights; of the devices for planners), a ``speedup``
over verifying every weight with the device's own loop, or a ``time_budget`` in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..crossbar import crossbar_of
from ..devices import DeviceModel, NoiseModel, PricingModel, require_noise_model
from ..devices.protocol import missing
from ..errors import SwimkitError, is_number, require
from ..mapping import (
    DeviceWeight,
    device_weights,
    effective_weights,
    named_weights,
    safe_scale,
    weight_scales,
)
from ..plans import Plan, check_menu
from ..programming import ProgrammingReport
from ..sensitivity import Sensitivity
from . import builtin as _builtin  # noqa: F401 - registers the built-in methods
from .budget import FlatScores, extra_seconds, time_budget_seconds, top_k
from .registry import (
    METHODS,
    SWIM_ALPHA,
    Budget,
    BudgetKind,
    Method,
    ScoreInputs,
    needs_sensitivity,
    register_method,
    register_planner,
    require_pricing,
)
from .settings import SelectionSettings


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


def inputs_for(
    model: nn.Module,
    sens: Sensitivity | None,
    method: Method,
    *,
    device_model: NoiseModel | None = None,
    tolerances: Sequence[float] | None = None,
    options: Mapping[str, Any] | None = None,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
    plan_time: float = 0.0,
    **fields: Any,
) -> ScoreInputs:
    """What ``method`` is given about the device weights of ``model``."""
    require(is_number(plan_time, finite=True) and plan_time >= 0,
            f"plan_time must be seconds >= 0 after programming (got {plan_time!r})")
    if method.needs_sensitivity and sens is None:
        raise SwimkitError(f"method {method.name!r} needs sensitivities: run the sensitivity pass")
    if method.needs_data and fields.get("data") is None:
        raise SwimkitError(f"method {method.name!r} learns on data: pass data= (training "
                           "batches of (x, y))")
    weights = _chosen_weights(model, sens, layers, exclude, params)
    values = effective_weights(weights)
    scales = weight_scales(values, device_model)
    if sens is not None and method.needs_sensitivity:
        _check_shapes(sens, values)
        sens = sens.rescaled(scales)
    device_model = require_noise_model(
        device_model if device_model is not None else DeviceModel())
    return ScoreInputs(
        sensitivity=sens, values=values,
        normalised={k: v / safe_scale(scales[k]) for k, v in values.items()},
        scales=scales, device_model=device_model, model=model, weights=weights,
        menu=check_menu(tolerances), options=dict(options or {}),
        plan_time=float(plan_time), **fields,
    )


def score(
    model: nn.Module,
    sens: Sensitivity | None,
    method: str = "swim",
    **settings: Any,
) -> Scores:
    """Scores of a weight-level ``method`` for the device weights of ``model``.

    ``settings`` are those of :func:`select` but the budget.
    """
    entry = METHODS.get(method)
    require(entry.score is not None,
            f"method {entry.name!r} plans device by device and has no per-weight score; "
            "use select()")
    inputs = inputs_for(model, sens, entry, **settings)
    raw = entry.score(private_copy(inputs))
    return Scores(entry.name, inputs, FlatScores(checked_scores(entry.name, raw, inputs)))


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


def select(
    model: nn.Module,
    sens: Sensitivity | None,
    settings: SelectionSettings | None = None,
    budget: Budget | None = None,
    *,
    method: str | None = None,
    fraction: float | None = None,
    speedup: float | None = None,
    time_budget: float | None = None,
    tolerances: Sequence[float] | None = None,
    exclude: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    plan_time: float = 0.0,
    device_model: NoiseModel | None = None,
    data: Iterable[tuple[Tensor, Tensor]] | None = None,
    seed: int = 0,
    layers: Sequence[str] | None = None,
) -> Plan:
    """Choose how to program the devices of ``model``.

    Two forms, one path. With a :class:`SelectionSettings` group and a :class:`Budget`
    (or a group of one method and one budget): ``select(model, sens, settings.selection,
    budget, device_model=...)``. Or by keywords, which build that group:
    ``method`` (default ``"swim"``) and exactly one budget, ``fraction`` (of the weights;
    of the devices for the device-level methods ``allocate`` and ``learned``), a
    ``speedup`` over verifying every weight, or a ``time_budget`` in seconds;
    ``tolerances`` the menu a device may be verified to (weight-level methods take one),
    ``exclude`` layers kept digital, ``params`` parameters mapped to devices besides the
    conv, linear and attention weights, ``options`` those of ``learned``, ``plan_time`` the
    seconds after programming whose error is planned against.

    Either way: ``device_model`` (default :class:`~swimkit.DeviceModel`) prices the plan
    (its ``write_verify`` is the loop); ``sens`` may be None for methods that need none;
    ``data`` (training batches) is for ``learned``, drawn from ``seed``; ``layers``
    chooses the layers on devices (default: those of ``sens``).
    """
    if settings is None:
        settings = SelectionSettings(
            methods=[method or "swim"], exclude=list(exclude or []),
            map_params=list(params or []),
            tolerances=None if tolerances is None else list(tolerances),
            learn=dict(options or {}), plan_time=plan_time)
        budget = budget or make_budget(fraction, speedup, time_budget)
    else:
        require(isinstance(settings, SelectionSettings),
                f"the third argument of select() is a SelectionSettings (got "
                f"{type(settings).__name__}): give a budget by keyword, e.g. fraction=0.1")
        given = {"fraction": fraction, "speedup": speedup, "time_budget": time_budget,
                 "tolerances": tolerances, "exclude": exclude, "params": params,
                 "options": options,
                 "plan_time": plan_time or None}
        both = [k for k, v in given.items() if v is not None]
        require(not both, f"give {', '.join(both)} in the SelectionSettings, or as keywords "
                          "without settings, not both")
    return _select(model, sens, settings, _one_method(settings, method),
                   _one_budget(settings, budget), device_model=device_model, data=data,
                   seed=seed, layers=layers)


def _one_method(settings: SelectionSettings, method: str | None) -> str:
    if method is not None:
        return METHODS.canonical(method)
    require(len(settings.methods) == 1,
            f"the selection settings list {len(settings.methods)} methods: give method=")
    return settings.methods[0]


def _one_budget(settings: SelectionSettings, budget: Budget | None) -> Budget:
    if budget is not None:
        require(isinstance(budget, Budget),
                f"budget must be a swimkit.selection.Budget (got {type(budget).__name__}); "
                "or give fraction=, speedup= or time_budget=")
        return budget
    budgets = settings.budgets()
    require(len(budgets) == 1, f"the selection settings hold {len(budgets)} budgets: give "
                               "the one to plan for as budget=")
    return budgets[0]


def _select(model: nn.Module, sens: Sensitivity | None, sel: SelectionSettings, method: str,
            budget: Budget, **given: Any) -> Plan:
    """The plan of ``method`` under ``budget`` with the selection settings ``sel``."""
    entry = METHODS.get(method)
    settings = {"plan_time": sel.plan_time, "tolerances": sel.tolerances,
                "options": sel.learn, **sel.mapping(), **given}
    if entry.planner is not None:
        inputs = inputs_for(model, sens, entry, **settings)
        plan = entry.planner(private_copy(inputs), budget)
        if not isinstance(plan, Plan):
            raise SwimkitError(f"planner {entry.name!r} returned {type(plan).__name__}, "
                               "not a swimkit.Plan")
        return finish(plan, inputs, budget, entry.name)
    require(sel.tolerances is None or len(sel.tolerances) == 1,
            f"method {entry.name!r} verifies whole weights at one tolerance; give one "
            "tolerance, or use method='allocate' for a menu")
    return cut(score(model, sens, entry.name, **settings), budget)


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
    crossbar = crossbar_of(inputs.device_model)
    if not crossbar.is_default:  # a programming flow needs each device's range and tile
        meta = {**meta, "crossbar": crossbar.describe()}
    return plan.recorded(method=method, requested=budget.describe(), meta=meta,
                         programming=plan.programming if report is None else report,
                         ranges=None if crossbar.is_default else inputs.scales)


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


def _chosen_weights(
    model: nn.Module,
    sens: Sensitivity | None,
    layers: Sequence[str] | None,
    exclude: Sequence[str] | None,
    params: Sequence[str] | None,
) -> dict[str, DeviceWeight]:
    if sens is None or layers or exclude or params:
        weights = device_weights(model, layers=layers, exclude=exclude, params=params)
        missing = [n for n in weights if sens is not None and n not in sens.second]
        if missing:
            raise SwimkitError(
                f"the sensitivities have no {missing[0]}: compute them for the same layers"
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


__all__ = ["METHODS", "SWIM_ALPHA", "Budget", "BudgetKind", "Method", "ScoreInputs", "Scores",
           "cut", "inputs_for", "make_budget", "needs_sensitivity", "register_method",
           "register_planner", "score", "select", "SelectionSettings", "top_k"]
