"""Choosing what to write-verify, under a fraction or a programming-time budget.

Weight-level *score methods* (``swim``, ``second``, ``magnitude``, ``random``, ``uswim``,
``variance``, or one you register) score every weight; the weights with the highest
scores over all layers together are verified, all K devices of a weight at one
tolerance. *Planners* decide device by device: ``allocate`` spends the budget on single
devices and on a menu of tolerances where the predicted loss falls fastest per second,
``learned`` learns the per-device choice under sampled device errors.

Budgets: a ``fraction`` (of the weights; of the devices for planners), a ``speedup``
over verifying every weight with the device's own loop, or a ``time_budget`` in seconds.

The package's modules: :mod:`.registry` (the methods' registry and what a method is
given), :mod:`.settings` (the step's settings), :mod:`.select` (:func:`select`, scores and
cuts), :mod:`.methods` (the score methods), :mod:`.allocation` and :mod:`.learned` (the
planners), :mod:`.budget` and :mod:`.prefix` (budgets and cuts at scale).
"""

# The methods register in this order, the order the command line lists them.
# isort: off
from . import methods as _methods  # noqa: F401 - the score methods first
from . import allocation as _allocation  # noqa: F401 - then allocate, allocate-one
from . import learned as _learned  # noqa: F401 - then learned
# isort: on
from .budget import top_k
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
)
from .select import Scores, cut, inputs_for, make_budget, score, select
from .settings import DEFAULT_FRACTION, SelectionSettings

__all__ = ["DEFAULT_FRACTION", "METHODS", "SWIM_ALPHA", "Budget", "BudgetKind", "Method",
           "ScoreInputs", "Scores", "SelectionSettings", "cut", "inputs_for", "make_budget",
           "needs_sensitivity", "register_method", "register_planner", "score", "select",
           "top_k"]
