"""The selection group of a run's settings: which methods, at which budgets, how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import check_fraction, check_once, check_speedup, is_number, require
from ..plans import check_menu
from .learned import LearnOptions
from .registry import METHODS, Budget, BudgetKind


@dataclass
class SelectionSettings:
    """Methods and budgets: every method is run at every budget.

    ``fractions`` (of weights; of devices for device-level methods), ``speedups`` over
    full verify, ``time_budgets`` in seconds; ``tolerances`` the menu of device-level
    methods (None: the default menu); ``exclude`` layers kept digital; ``map_params``
    patterns of parameters mapped to devices besides the conv, linear and attention
    weights (see :func:`swimkit.device_weights`); ``learn`` the
    options of method ``learned`` (epochs, lr, price_step); ``plan_time`` the seconds
    after programming whose error the methods plan against (0: right after).
    """

    methods: list[str] = field(default_factory=lambda: ["swim"])
    fractions: list[float] = field(default_factory=list)
    speedups: list[float] = field(default_factory=list)
    time_budgets: list[float] = field(default_factory=list)
    tolerances: list[float] | None = None
    exclude: list[str] = field(default_factory=list)
    map_params: list[str] = field(default_factory=list)
    learn: dict[str, Any] = field(default_factory=dict)
    plan_time: float = 0.0

    def __post_init__(self) -> None:
        require(bool(self.methods), "give at least one selection method")
        self.methods = [METHODS.canonical(m) for m in self.methods]
        for what, values in (("methods", self.methods), ("fractions", self.fractions),
                             ("speedups", self.speedups), ("time budgets", self.time_budgets)):
            check_once(what, values)
        check_once("map_params", self.map_params)
        for fraction in self.fractions:
            check_fraction(fraction)
        for speedup in self.speedups:
            check_speedup(speedup)
        for seconds in self.time_budgets:
            require(is_number(seconds, finite=True) and seconds > 0,
                    f"time budget must be a number of seconds > 0 (got {seconds!r})")
        check_menu(self.tolerances)
        LearnOptions.from_options(self.learn)
        planners = [m for m in self.methods if METHODS.get(m).needs_data]
        require(not (planners and self.fractions),
                f"method {planners[:1]} learns under a time budget: give speedups or time "
                "budgets, not fractions")
        require(is_number(self.plan_time, finite=True) and self.plan_time >= 0,
                f"plan_time must be seconds >= 0 after programming (got {self.plan_time!r})")

    def mapping(self) -> dict[str, list[str] | None]:
        """Which weights are on devices, as the keywords of the steps (``exclude``,
        ``params``)."""
        return {"exclude": self.exclude or None, "params": self.map_params or None}

    def budgets(self) -> list[Budget]:
        """Every budget, fractions first, then speedups, then time budgets."""
        return ([Budget(BudgetKind.FRACTION, f) for f in self.fractions]
                + [Budget(BudgetKind.SPEEDUP, x) for x in self.speedups]
                + [Budget(BudgetKind.TIME_BUDGET, t) for t in self.time_budgets])
