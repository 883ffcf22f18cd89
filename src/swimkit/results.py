"""Typed results of runs and sweeps, and their JSON form.

Units are in the key names: accuracies in percent (``*_percent``), accuracy gaps in
points (``*_points``), times in seconds (``*_s``); shares are fractions in [0, 1]
(``fraction_*``, ``*_fraction``); ``speedup`` is a ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import SwimkitError, require
from .montecarlo import MCResult
from .plans import Plan
from .programming import ProgrammingReport
from .selection import BudgetKind


@dataclass(frozen=True)
class PlanCounts:
    """How much of the model a plan verifies."""

    weights_verified: int
    weights_total: int
    devices_verified: int
    devices_total: int

    @classmethod
    def of(cls, plan: Plan) -> PlanCounts:
        return cls(plan.weights_verified, plan.weights_total, plan.devices_verified,
                   plan.devices_total)

    @property
    def fraction_verified(self) -> float:
        return self.weights_verified / self.weights_total if self.weights_total else 0.0

    @property
    def devices_fraction_verified(self) -> float:
        return self.devices_verified / self.devices_total if self.devices_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"weights_verified": self.weights_verified, "weights_total": self.weights_total,
                "fraction_verified": self.fraction_verified,
                "devices_verified": self.devices_verified, "devices_total": self.devices_total,
                "devices_fraction_verified": self.devices_fraction_verified}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanCounts:
        return cls(data["weights_verified"], data["weights_total"], data["devices_verified"],
                   data["devices_total"])


@dataclass(frozen=True)
class Point:
    """One evaluated plan: its method, budget, counts, modelled time and accuracy."""

    method: str
    model: str
    budget_kind: BudgetKind | None  # None for the baselines (no verify, full verify)
    budget_value: float | None
    counts: PlanCounts
    programming: ProgrammingReport | None
    mc: MCResult
    plan_path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    gap: MCResult | None = None  # paired per-chip difference to the model's full verify
    over_time: list[MCResult] | None = None  # with times: one result per time (same chips)

    def __post_init__(self) -> None:
        kind = self.budget_kind
        if kind is None or isinstance(kind, BudgetKind):
            return
        try:
            object.__setattr__(self, "budget_kind", BudgetKind(kind))
        except ValueError:
            kinds = ", ".join(k.value for k in BudgetKind)
            raise SwimkitError(f"budget kind {kind!r} is not one of {kinds}") from None

    @property
    def speedup(self) -> float | None:
        return self.programming.speedup if self.programming else None

    def mean_estimate(self, full_verify: MCResult) -> float:
        """Mean accuracy estimated through the paired chips: full verify's mean over all
        its chips plus this point's mean gap to it (a control variate: with common random
        numbers far tighter than the point's own mean when it stopped early; the point's
        own mean when both have the same chips)."""
        if self.gap is None or self.gap.samples >= full_verify.samples:
            return self.mc.mean
        return full_verify.mean + self.gap.mean

    @property
    def label(self) -> str:
        if self.budget_kind is None:
            return self.method
        return f"{self.method} {self.budget_kind.replace('_', ' ')} {self.budget_value:g}"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "model": self.model,
            "budget": ({"kind": self.budget_kind, "value": self.budget_value}
                       if self.budget_kind else None),
            **self.counts.to_dict(),
            "programming": self.programming.to_dict() if self.programming else None,
            "accuracy": self.mc.to_dict(),
            "plan_path": self.plan_path,
            "meta": self.meta,
        }
        if self.gap is not None:
            low, high = self.gap.ci95
            out["gap_to_full_verify"] = {"mean_points": self.gap.mean,
                                         "ci95_points": [low, high], "chips": self.gap.samples}
        if self.over_time is not None:
            out["over_time"] = [{"time_s": mc.meta.get("time_s"), **mc.to_dict()}
                                for mc in self.over_time]
        return out

    def referenced(self, reference: float, within: float) -> Point:
        """This point with its chip yield measured against ``reference`` (percent)."""
        return replace(self, mc=replace(self.mc, reference=reference, within=within))

    def paired_with(self, full_verify: MCResult) -> Point:
        """This point with its paired per-chip gap to ``full_verify``."""
        return replace(self, gap=self.mc.paired_difference(full_verify))

    @classmethod
    def from_dict(cls, data: dict[str, Any], full_verify: MCResult | None = None) -> Point:
        """A point as written by :meth:`to_dict`; given ``full_verify``, the gap to it is
        computed again from the per-chip accuracies where the point had one."""
        _check_types(data, {"method": str, "model": str, "budget": (dict, type(None)),
                            "meta": dict, "programming": (dict, type(None)),
                            "plan_path": (str, type(None))})
        for key in ("weights_verified", "weights_total", "devices_verified", "devices_total"):
            value = data[key]
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"{key} must be an integer >= 0 (got {value!r})")
        budget = data.get("budget") or {}
        if budget:
            _check_types(budget, {"kind": str, "value": (int, float)})
        programming = data.get("programming")
        mc = MCResult.from_dict(data["accuracy"])
        paired = full_verify is not None and "gap_to_full_verify" in data
        return cls(
            method=data["method"], model=data["model"], budget_kind=budget.get("kind"),
            budget_value=budget.get("value"), counts=PlanCounts.from_dict(data),
            programming=ProgrammingReport.from_dict(programming) if programming else None,
            mc=mc, plan_path=data.get("plan_path"), meta=data.get("meta", {}),
            gap=mc.paired_difference(full_verify) if paired else None,
            over_time=_over_time(data.get("over_time")),
        )


def _over_time(rows: Any) -> list[MCResult] | None:
    """The per-time results of a point's JSON (None for a run without times)."""
    if rows is None:
        return None
    require(isinstance(rows, list) and all(isinstance(r, dict) for r in rows),
            "over_time must be a list of Monte-Carlo results")
    out = []
    for row in rows:
        row = dict(row)
        time = row.pop("time_s", None)
        require(isinstance(time, (int, float)) and not isinstance(time, bool),
                f"over_time entry without a time (got {time!r})")
        mc = MCResult.from_dict(row)
        out.append(replace(mc, meta={**mc.meta, "time_s": float(time)}))
    return out


@dataclass(frozen=True)
class Search:
    """The largest speedup at which a method meets the target, and the point there."""

    method: str
    model: str
    target: str
    point: Point | None  # None: not even full verify meets the target

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model, "target": self.target,
                "speedup": self.point.speedup if self.point else None,
                "point": self.point.to_dict() if self.point else None}

    def referenced(self, reference: float, within: float) -> Search:
        """This search with its point's yield measured against ``reference``."""
        if self.point is None:
            return self
        return replace(self, point=self.point.referenced(reference, within))

    @classmethod
    def from_dict(cls, data: dict[str, Any], full_verify: MCResult | None = None) -> Search:
        """A search as written by :meth:`to_dict` (``full_verify``: see Point.from_dict)."""
        _check_types(data, {"method": str, "model": str, "target": str})
        point = data.get("point")
        return cls(data["method"], data["model"], data["target"],
                   Point.from_dict(point, full_verify) if point else None)


@dataclass(frozen=True)
class ModelReport:
    """One model of a comparison: its baselines, evaluated plans and searches."""

    label: str
    sigma_train: float
    scale_aware: bool
    checkpoint: str
    clean_accuracy_percent: float
    no_verify: Point
    full_verify: Point
    points: list[Point] = field(default_factory=list)
    searches: list[Search] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "sigma_train": self.sigma_train,
                "scale_aware": self.scale_aware,
                "checkpoint": self.checkpoint,
                "clean_accuracy_percent": self.clean_accuracy_percent,
                "no_verify": self.no_verify.to_dict(), "full_verify": self.full_verify.to_dict(),
                "points": [p.to_dict() for p in self.points],
                "searches": [s.to_dict() for s in self.searches]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelReport:
        """A model as written by :meth:`to_dict`; the gaps to full verify are computed
        again from the per-chip accuracies, as the sweep did."""
        _check_types(data, {"label": str, "checkpoint": (str, type(None)),
                            "scale_aware": bool, "points": list, "searches": list})
        for key in ("sigma_train", "clean_accuracy_percent"):
            value = data[key]
            require(isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value >= 0,
                    f"{key} must be a number >= 0 (got {value!r})")
        require(data["clean_accuracy_percent"] <= 100, "clean_accuracy_percent must be <= 100")
        full = Point.from_dict(data["full_verify"])
        return cls(data["label"], data["sigma_train"], data["scale_aware"],
                   data["checkpoint"], data["clean_accuracy_percent"],
                   Point.from_dict(data["no_verify"]), full,
                   [Point.from_dict(p, full.mc) for p in data["points"]],
                   [Search.from_dict(s, full.mc) for s in data["searches"]])

    def referenced(self, reference: float, within: float) -> ModelReport:
        """This model with every chip yield measured against ``reference``."""
        return replace(self, no_verify=self.no_verify.referenced(reference, within),
                       full_verify=self.full_verify.referenced(reference, within),
                       points=[p.referenced(reference, within) for p in self.points],
                       searches=[s.referenced(reference, within) for s in self.searches])


@dataclass(frozen=True)
class SweepResult:
    """Every model compared, and the reference the yields and searches are measured by."""

    models: list[ModelReport]
    within_points: float
    settings: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] | None = None  # the command and flags it was made with

    @property
    def reference_percent(self) -> float:
        """The best full-verify mean accuracy of the models compared."""
        return max(m.full_verify.mc.mean for m in self.models)

    def all_points(self) -> list[Point]:
        return [p for m in self.models for p in (m.no_verify, m.full_verify, *m.points)]

    def with_reference(self) -> SweepResult:
        """This result with every chip yield measured against the best full verify."""
        reference = self.reference_percent
        return replace(self, models=[m.referenced(reference, self.within_points)
                                     for m in self.models])

    def with_files(self, **files: str) -> SweepResult:
        """This result listing ``files`` (name: path) among the files written."""
        return replace(self, files={**self.files, **files})

    def with_config(self, config: dict[str, Any]) -> SweepResult:
        """This result recording the configuration it was made with (``--config`` runs
        it again)."""
        return replace(self, config=dict(config))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reference_full_verify_percent": self.reference_percent,
            "within_points": self.within_points,
            "models": [m.to_dict() for m in self.with_reference().models],
        }
        if len(self.models) == 1:  # one model: its parts at the top as well
            only = out["models"][0]
            out.update({k: only[k] for k in ("clean_accuracy_percent", "no_verify",
                                             "full_verify", "points", "searches")})
            if len(only["points"]) == 1:
                out["selected"] = only["points"][0]
        out["settings"] = self.settings
        out["files"] = self.files
        if self.config is not None:
            out["config"] = self.config
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepResult:
        """A sweep as written to sweep.json (to re-plot it, or to merge sweeps)."""
        try:
            require(isinstance(data, dict), "a sweep result is a JSON object")
            require(isinstance(data["models"], list) and len(data["models"]) > 0,
                    "models must be a non-empty list")
            within = data["within_points"]
            require(isinstance(within, (int, float)) and not isinstance(within, bool)
                    and math.isfinite(within) and within >= 0,
                    f"within_points must be a number of points >= 0 (got {within!r})")
            settings = data.get("settings", {})
            require(isinstance(settings, dict), "settings must be a JSON object")
            config = data.get("config")
            require(config is None or isinstance(config, dict),
                    "config must be a JSON object")
            return cls([ModelReport.from_dict(m) for m in data["models"]],
                       float(within), settings, data.get("files", {}), config)
        except SwimkitError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
            what = (f"no {exc.args[0]!r}" if isinstance(exc, KeyError)
                    else "a field of the wrong type")
            raise SwimkitError(f"not a sweep result as swimkit writes it ({what}); give "
                               "the sweep.json (or --json file) of a sweep") from None

    @classmethod
    def merge(cls, results: list[SweepResult]) -> SweepResult:
        """Sweeps of the same models and device model (e.g. one per sensitivity engine) as
        one: each model's points and searches together, yields against the best full
        verify of all of them."""
        require(bool(results), "give at least one sweep result")
        first = results[0]
        models: dict[str, tuple[ModelReport, list[Point], list[Search]]] = {}
        for result in results:
            require(result.settings.get("device_model") == first.settings.get("device_model")
                    and result.within_points == first.within_points,
                    "these sweeps differ in their device model or --within; merge only sweeps "
                    "of one device model")
            for what, key in _SAME_CHIPS:
                mine, theirs = _setting(result, key), _setting(first, key)
                require(mine == theirs,
                        f"these sweeps differ in {what} ({theirs!r} and {mine!r}): their "
                        "points were not measured on the same chips and test set; merge only "
                        "sweeps that agree")
            for model in result.models:
                known, points, searches = models.setdefault(model.label, (model, [], []))
                require(known.checkpoint == model.checkpoint,
                        f"model {model.label!r} comes from different checkpoints "
                        f"({known.checkpoint}, {model.checkpoint})")
                points += _new(points, model.points, model.label,
                               lambda p: (p.method, p.budget_kind, p.budget_value))
                searches += _new(searches, model.searches, model.label,
                                 lambda s: (s.method, s.target))
        merged = [replace(model, points=points, searches=searches)
                  for model, points, searches in models.values()]
        return cls(merged, first.within_points, first.settings, {})


@dataclass(frozen=True)
class Evaluation:
    """One model's clean accuracy and its accuracy under variation: one result per time
    read (the same chips), or one without times. ``plan`` is the plan file, or ``"none"``
    / ``"all"``; ``device_model`` the device model's description."""

    clean_accuracy_percent: float
    results: tuple[MCResult, ...]
    times: list[float] | None
    plan: str
    device_model: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clean_accuracy_percent": self.clean_accuracy_percent,
                               "accuracy": self.results[0].to_dict(), "plan": self.plan,
                               "device_model": self.device_model}
        if self.times is not None:
            out["over_time"] = [{"time_s": t, **r.to_dict()}
                                for t, r in zip(self.times, self.results, strict=True)]
        return out


def _new(known: list[Any], items: list[Any], model: str,
         identity: Callable[[Any], tuple]) -> list[Any]:
    """``items`` not already ``known`` (the same sweep given twice, or two sweeps that share
    points, lists each point once); the same point with other numbers is refused."""
    seen = {identity(item): item for item in known}
    out = []
    for item in items:
        twin = seen.get(identity(item))
        if twin is None:
            seen[identity(item)] = item
            out.append(item)
        else:
            require(twin.to_dict() == item.to_dict(),
                    f"two results give model {model!r} different numbers for "
                    f"{' '.join(str(part) for part in identity(item) if part is not None)}: "
                    "merge results of one run of each point")
    return out


def _check_types(data: Any, types: dict[str, Any]) -> None:
    """Each field of ``data`` of its type, else one line naming it."""
    require(isinstance(data, dict), "an entry of the result is not a JSON object")
    for key, kind in types.items():
        value = data[key]
        require(isinstance(value, kind) and (kind is bool or not isinstance(value, bool)),
                f"{key} has the wrong type (got {value!r})")


#: What sweeps merged into one table must share: the test set and the chips.
_SAME_CHIPS = (("the dataset", ("data", "dataset")), ("the test set", ("data", "test_limit")),
               ("the chips' seed", ("evaluation", "seed")),
               ("the times read", ("evaluation", "times")))


def _setting(result: SweepResult, key: tuple[str, str]) -> Any:
    group = result.settings.get(key[0], {})
    return group.get(key[1]) if isinstance(group, dict) else None


__all__ = ["Evaluation", "ModelReport", "PlanCounts", "Point", "Search", "SweepResult"]
