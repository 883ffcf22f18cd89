"""The registry of selection methods, and what a method is given.

A *score method* turns :class:`ScoreInputs` into one score per weight; the weights with
the highest scores over all layers together are verified, every device of a weight at
one tolerance. A *planner* decides device by device (which devices of a weight, and to
which tolerance of a menu) and returns a :class:`~swimkit.plans.Plan` for a budget.

``register_method(name, score, ...)`` adds a score method from anywhere (a notebook, a
test, a plugin package registering through the entry-point group ``swimkit.methods``);
:func:`swimkit.select`, the workflows and the command line then offer it like a
built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..choices import Spelled
from ..devices import NoiseModel, require_device
from ..errors import require
from ..mapping import DeviceWeight
from ..options import completed, typed_options
from ..plans import Plan
from ..registry import Entry, Registry
from ..sensitivity import Sensitivity

SWIM_ALPHA = 1e6


@dataclass(frozen=True)
class ScoreInputs:
    """What a method sees about the device weights it chooses among.

    ``values`` are the effective weights, ``normalised`` w / s_l, ``scales`` s_l, all by
    weight name; ``sensitivity`` is None for methods that need none. Planners also get
    the ``model`` and its ``weights``, the tolerance ``menu`` (None: the device model's
    own loop), training ``data`` (an iterable of (x, y)) when they learn, and ``options``.
    ``plan_time`` is the time after programming (seconds) whose error variance methods
    plan against: 0, right after programming, unless the device changes with time.
    ``chip`` is the :class:`~swimkit.ChipSpec` (``device_model`` is its device model as
    the crossbar holds weights).
    """

    sensitivity: Sensitivity | None
    values: dict[str, Tensor]
    normalised: dict[str, Tensor]
    scales: dict[str, Tensor]
    device_model: NoiseModel
    seed: int = 0
    alpha: float = SWIM_ALPHA
    model: nn.Module | None = None
    weights: Mapping[str, DeviceWeight] | None = None
    menu: tuple[float, ...] | None = None
    data: Iterable[tuple[Tensor, Tensor]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    plan_time: float = 0.0
    chip: Any = None
    progress: bool = False

    @property
    def h(self) -> dict[str, Tensor]:
        """The second derivative h of every weight (normalised units)."""
        require(self.sensitivity is not None,
                "this method needs sensitivities: run the sensitivity pass first")
        return {k: self.sensitivity.second[k] for k in self.values}


class BudgetKind(Spelled):
    """What a budget limits; a str, spelled as in files and keyword arguments."""

    FRACTION = "fraction"
    SPEEDUP = "speedup"
    TIME_BUDGET = "time_budget"


@dataclass(frozen=True)
class Budget:
    """One budget: a ``fraction`` (of weights, or of devices for planners), a ``speedup``
    over verifying everything, or a ``time_budget`` in seconds."""

    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", BudgetKind(self.kind))  # "fraction" works too

    def describe(self) -> dict[str, float]:
        """The budget as the keyword argument of :func:`~swimkit.select` it stands for."""
        return {self.kind.value: self.value}


Score = Callable[[ScoreInputs], Mapping[str, Tensor]]
Planner = Callable[[ScoreInputs, Budget], Plan]


@dataclass(frozen=True)
class Method(Entry):
    """A selection method: a ``score`` function (weight level) or a ``planner``.

    ``options`` are the options it takes (name -> default; ``--method-option K=V``),
    ``option_flags`` command-line flags that set one option each
    (``{"--learn-epochs": "epochs"}``); ``check`` is called with every option completed
    by its default and raises a :class:`~swimkit.SwimkitError` for a value out of range;
    ``plans_at_time`` says the method reads the device errors at ``plan_time``
    (variances), so that setting acts; ``tolerances`` how many tolerances it verifies to
    (1: one, the weight-level methods; None: a menu of any size; 0: only the device
    model's own loop, so a menu is refused)."""

    score: Score | None = None
    planner: Planner | None = None
    needs_sensitivity: bool = True
    needs_data: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    option_flags: dict[str, str] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], object] | None = None
    plans_at_time: bool = False
    tolerances: int | None = 1

    @property
    def option_help(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options.items()) or "-"

    def checked(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """``options`` of this method, checked, with its defaults completed."""
        given = typed_options(f"method {self.name!r}", self.options, options)
        out = completed(self.options, given)
        if self.check is not None:
            self.check(out)
        return out

    @property
    def level(self) -> str:
        """``"weight"`` for score methods, ``"device"`` for planners."""
        return "weight" if self.planner is None else "device"


METHODS: Registry[Method] = Registry("selection method", entry_point_group="swimkit.methods")


def register_method(name: str, score: Score, *, replace: bool = False,
                    **described: Any) -> Method:
    """Add a score method: ``score(inputs)`` returns one score tensor per weight name.

    The weights of highest score over all layers are verified first. ``described`` are
    the :class:`Method`'s other fields: ``needs_sensitivity`` (the workflows run a
    sensitivity pass before calling it), ``options``, ``check``, ``plans_at_time``,
    ``aliases``, ``help``.
    """
    require(callable(score), f"the score of method {name!r} must be callable (got {score!r})")
    return METHODS.add(_method(name, score=score, **described), replace=replace)


def register_planner(name: str, planner: Planner, *, replace: bool = False,
                     **described: Any) -> Method:
    """Add a device-level method: ``planner(inputs, budget)`` returns a Plan (the other
    fields as :func:`register_method`'s, and ``needs_data``: it learns on training data)."""
    require(callable(planner), f"the planner of {name!r} must be callable (got {planner!r})")
    described.setdefault("tolerances", None)
    return METHODS.add(_method(name, planner=planner, **described), replace=replace)


def _method(name: str, **described: Any) -> Method:
    known = {f for f in Method.__dataclass_fields__ if f != "name"}
    unknown = sorted(set(described) - known)
    require(not unknown, f"method {name!r}: unknown field {unknown[:1]}; give "
                         f"{', '.join(sorted(known))}")
    described["aliases"] = tuple(described.get("aliases", ()))
    described["options"] = dict(described.get("options") or {})
    described["option_flags"] = dict(described.get("option_flags") or {})
    return Method(name=name, **described)


def require_pricing(device_model: NoiseModel, what: str) -> None:
    """A clear error unless ``device_model`` prices verify options (both protocols)."""
    require_device(device_model, f"the device model of {what}")


def needs_sensitivity(methods: Iterable[str]) -> bool:
    """True if any of ``methods`` needs a sensitivity pass."""
    return any(METHODS.get(m).needs_sensitivity for m in methods)


__all__ = ["METHODS", "SWIM_ALPHA", "Budget", "BudgetKind", "Method", "ScoreInputs",
           "needs_sensitivity", "register_method", "register_planner", "require_pricing"]
