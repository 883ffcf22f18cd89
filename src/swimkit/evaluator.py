"""One model of a comparison and its evaluated points: the baselines (no verify, full
verify), a plan per method and budget, a plan made elsewhere, and the search for the
largest speedup meeting a target. Every point is cached under the model's digest."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from . import distributed
from .caches import PointCache, file_digest
from .mapping import effective_weights
from .montecarlo import MCResult
from .plans import Plan, Verify
from .results import PlanCounts, Point, Search
from .selection import METHODS, Budget, BudgetKind, Scores, cut, score
from .sensitivity import Sensitivity
from .settings import Settings
from .steps import Context, monte_carlo, plan_with


@dataclass
class Candidate:
    """One model of the comparison and where it came from."""

    label: str
    sigma_train: float
    scale_aware: bool
    model: nn.Module
    path: Path
    digest: str
    sens: Sensitivity | None = None



@dataclass
class Evaluator:
    """Selects and evaluates plans of one model; scores are computed once per method."""

    ctx: Context
    candidate: Candidate
    cache: PointCache
    scores: dict[str, Scores] = field(default_factory=dict)
    full_verify: Point | None = None
    evaluated: list[Point] = field(default_factory=list)  # every plan point, in order

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    def _mc(self, plan: Plan | Verify) -> tuple[MCResult, list[MCResult] | None]:
        """Chips of ``plan``: all ``samples`` for full verify (every plan pairs with it),
        else until the CI target (the gap to full verify's, or the mean's) is met. With
        times: the result at the judged time, and the results at every time."""
        ev = self.settings.evaluation
        adaptive = plan is not Verify.ALL
        full = self.full_verify
        against = None
        if adaptive and ev.ci_target and full is not None:
            against = full.over_time if full.over_time is not None else full.mc
        results = monte_carlo(self.candidate.model, self.ctx.test_batches, plan,
                              self.settings, adaptive=adaptive, against=against)
        if ev.times is None:
            return results[0], None
        return results[self.settings.judged], results

    def baseline(self, verify: Verify) -> Point:
        """No device verified (``Verify.NONE``) or every device verified (``Verify.ALL``)."""
        point_id = f"{self.candidate.digest}-{verify}"
        found = self.cache.get(point_id)
        if found is None:
            chip = self.settings.chip
            values = effective_weights(chip.weights(chip.held(self.candidate.model)))
            plan = Plan.uniform(values, verify is Verify.ALL, chip.device.slicing.devices)
            report = chip.device.programming_report(values, chip.scales(values), plan)
            name = "full verify" if verify is Verify.ALL else "no verify"
            mc, over_time = self._mc(verify)
            found = Point(name, self.candidate.label, None, None, PlanCounts.of(plan), report,
                          mc, over_time=over_time)
            self.cache.put(point_id, found)
        if verify is Verify.ALL:
            self.full_verify = found
        self.ctx.log(f"[{self.candidate.label}] {found.method}: {found.mc}")
        return found

    def _select(self, method: str, budget: Budget) -> Plan:
        s = self.settings
        entry = METHODS.get(method)
        sens = self.candidate.sens if entry.needs_sensitivity else None
        point = s.point(method, budget)
        if entry.planner is not None:
            return plan_with(self.candidate.model, sens, point, s, self.ctx)
        if method not in self.scores:
            tolerances = point.tolerances
            one = replace(point, tolerances=tolerances[-1:] if tolerances else None)
            self.scores[method] = score(self.candidate.model, sens, one, s.chip)
        return cut(self.scores[method], budget)

    def point(self, method: str, budget: Budget) -> Point:
        """Select with ``method`` under ``budget`` and evaluate (or reuse) the plan."""
        kind, value = budget.kind.value, float(budget.value)
        stem = f"{method}-{kind}-{value:g}"
        point_id = f"{self.candidate.digest}-{stem}"
        found = self.cache.get(point_id)
        if found is None:
            name = f"{_safe(self.candidate.label)}-{stem}-{self.cache.key[:8]}.pt"
            path = self.settings.out_dir / "plans" / name

            def make_plan() -> None:
                self._select(method, Budget(kind, value)).save(path)

            distributed.rank_zero_first(make_plan)
            found = self._judge(method, budget, path, point_id)
        return self._record(found)

    def planned(self, method: str, budget: Budget, path: Path) -> Point:
        """The plan in ``path`` (made by ``method`` under ``budget``, for another model of
        the same shapes) judged on this model: programmed as the plan says."""
        kind, value = budget.kind.value, float(budget.value)
        point_id = (f"{self.candidate.digest}-{method}-{kind}-{value:g}-plan-"
                    f"{file_digest(path)[:8]}")
        found = self.cache.get(point_id)
        if found is None:
            found = self._judge(method, budget, path, point_id)
        return self._record(found)

    def _judge(self, method: str, budget: Budget, path: Path, point_id: str) -> Point:
        """Chips of the plan in ``path``, stored in the cache as ``point_id``."""
        plan = Plan.load(path)
        mc, over_time = self._mc(plan)
        found = Point(method, self.candidate.label, budget.kind.value, float(budget.value),
                      PlanCounts.of(plan), plan.programming, mc, str(path), plan.meta,
                      over_time=over_time)
        self.cache.put(point_id, found)
        return found

    def _record(self, found: Point) -> Point:
        """Pair a point with full verify, keep it and say it."""
        if self.full_verify is not None:
            found = found.paired_with(self.full_verify.mc)
        self.evaluated.append(found)
        speed = f", speedup {found.speedup:.2f}x" if found.speedup else ""
        self.ctx.log(f"[{self.candidate.label}] {found.label}: {found.mc} "
                     f"({found.counts.devices_verified:,} of {found.counts.devices_total:,} "
                     f"devices verified{speed})")
        return found

    def search(self, method: str, meets: Callable[[Point], bool], target: str) -> Search:
        """The largest speedup whose point meets the target (geometric bisection)."""
        full = self.full_verify
        assert full is not None
        if not meets(full):
            return Search(method, self.candidate.label, target, None)
        cap = full.programming.max_speedup
        top = self.point(method, _speedup(_floor3(cap)))
        if meets(top):
            return Search(method, self.candidate.label, target, top)
        low, high, best = self._bracket(method, meets, top.speedup or cap)
        for _ in range(self.settings.grid.steps):
            middle = _round3(math.sqrt(low * high))
            if not low < middle < high:
                break
            point = self.point(method, _speedup(middle))
            if meets(point):
                low, best = middle, point
            else:
                high = middle
        if best is None:
            best = self.point(method, _speedup(1.0))
        return Search(method, self.candidate.label, target, best)

    def _bracket(self, method: str, meets: Callable[[Point], bool], top: float
                 ) -> tuple[float, float, Point | None]:
        """Where the bisection starts: the largest speedup already evaluated for ``method``
        that meets the target (or 1x) and the smallest larger one that does not (or
        ``top``), so that the search never ends below a point known to pass."""
        known = [p for p in self.evaluated if p.method == method and p.speedup is not None]
        passing = [p for p in known if meets(p)]
        best = max(passing, key=lambda p: p.speedup, default=None)
        low = best.speedup if best is not None else 1.0
        above = [p.speedup for p in known if not meets(p) and p.speedup > low]
        return low, min([top, *above]), best


def _speedup(value: float) -> Budget:
    return Budget(BudgetKind.SPEEDUP, value)


def _round3(value: float) -> float:
    """Three significant digits (search points get stable names and cache entries)."""
    return float(f"{value:.3g}")


def _floor3(value: float) -> float:
    """``value`` rounded down to three significant digits."""
    step = 10.0 ** (math.floor(math.log10(value)) - 2)
    return float(f"{math.floor(value / step) * step:.3g}")


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


__all__ = ["Candidate", "Evaluator"]
