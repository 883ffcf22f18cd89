"""The selection step's settings: one method at one budget, and how it plans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import check_fraction, check_speedup, is_integer, is_number, require
from ..groups import flag, integer, nonnegative
from ..options import typed_options
from ..plans import check_menu
from .registry import METHODS, Budget, BudgetKind

#: The budget of a selection without one given: this fraction.
DEFAULT_FRACTION = 0.1


@dataclass
class SelectionSettings:
    """One plan: ``method`` (None: the settings the points of a grid share) under one
    budget, a ``fraction`` (of the weights; of the devices for device-level methods), a
    ``speedup`` over verifying every device or a ``time_budget`` in seconds (none given:
    :data:`DEFAULT_FRACTION`).

    ``tolerances`` is the menu of device-level methods (None: the device model's default
    menu; weight-level methods take one), ``plan_time`` the seconds after programming
    whose device errors the method plans against (0: right after; for methods that read
    variances), ``options`` the method's own options (see its registry entry), ``seed``
    what a method that draws (``random``, ``learned``) draws from; ``progress`` shows a
    progress bar where a method learns.
    """

    method: str | None = "swim"
    fraction: float | None = None
    speedup: float | None = None
    time_budget: float | None = None
    tolerances: list[float] | None = field(default=None, metadata=flag(
        "--tolerances", kind=nonnegative, several=True,
        help="menu of tolerances (device steps) for allocate / learned (default: 1.5, 1, "
             "2/3, 1/2, 1/3 sigma and the default loop's)"))
    plan_time: float = field(default=0.0, metadata=flag(
        "--plan-time", kind=nonnegative, metavar="SECONDS",
        help="plan against the device error this long after programming (for devices that "
             "change with time, e.g. 86400; 0: right after)"))
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = field(default=0, metadata=flag(
        "--seed", kind=integer, help="seed of training, selection and chips"))
    progress: bool = field(default=False, metadata=flag(
        "--no-progress", kind=None, invert=True, results=False, command_default=True,
        help="no progress bars"))

    def __post_init__(self) -> None:
        given = [k for k in ("fraction", "speedup", "time_budget") if getattr(self, k) is not None]
        require(len(given) <= 1, f"give one budget, not {' and '.join(given)}: a fraction, "
                                 "a speedup or a time budget (seconds)")
        if self.fraction is not None:
            check_fraction(self.fraction)
        if self.speedup is not None:
            check_speedup(self.speedup)
        if self.time_budget is not None:
            require(is_number(self.time_budget, finite=True) and self.time_budget > 0,
                    f"time budget must be a number of seconds > 0 (got {self.time_budget!r})")
        self.tolerances = None if self.tolerances is None else list(check_menu(self.tolerances))
        require(is_number(self.plan_time, finite=True) and self.plan_time >= 0,
                f"plan_time must be seconds >= 0 after programming (got {self.plan_time!r})")
        require(is_integer(self.seed), f"seed must be an integer (got {self.seed!r})")
        if self.method is not None:  # None: the settings a grid's points share
            self._check_method()

    def _check_method(self) -> None:
        """What depends on the method: its options, its tolerances, its budget, its time."""
        self.method = METHODS.canonical(self.method)
        entry = METHODS.get(self.method)
        most = entry.tolerances
        require(self.tolerances is None or most is None or len(self.tolerances) <= most,
                f"method {entry.name!r} verifies whole weights at one tolerance; give one "
                "tolerance, or use method='allocate' for a menu" if most else
                f"tolerances would have no effect: method {entry.name!r} verifies with the "
                "device model's own loop only; drop them (--tolerances), or use 'allocate' "
                "for a menu")
        require(not self.plan_time or entry.plans_at_time,
                f"plan_time {self.plan_time:g} would have no effect: method {entry.name!r} "
                "does not read the device errors at a time after programming; drop plan_time "
                "(--plan-time), or use a method that plans by variances (allocate, learned, "
                "variance)")
        self.options = typed_options(f"method {entry.name!r}", entry.options, self.options)
        entry.checked(self.options)
        require(not (entry.needs_data and self.budget.kind is BudgetKind.FRACTION),
                f"method {entry.name!r} learns under a time budget: give a speedup or a time "
                "budget, not a fraction")

    @property
    def budget(self) -> Budget:
        """The budget given (a fraction of :data:`DEFAULT_FRACTION` without one)."""
        for kind in BudgetKind:
            value = getattr(self, kind.value)
            if value is not None:
                return Budget(kind, float(value))
        return Budget(BudgetKind.FRACTION, DEFAULT_FRACTION)

    @property
    def method_options(self) -> dict[str, Any]:
        """The method's options, its defaults completed: what it runs with."""
        return METHODS.get(self.method).checked(self.options)


__all__ = ["DEFAULT_FRACTION", "SelectionSettings"]
