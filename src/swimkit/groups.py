"""Settings groups: dataclasses whose fields declare their command-line flag.

Every step takes one settings group (:class:`~swimkit.montecarlo.EvaluationSettings`,
:class:`~swimkit.selection.SelectionSettings`, ...). A field says, in its metadata
(:func:`flag`), how the command line and configuration files give it: its flag names
(aliases such as the SWIM scripts' ``--dev_var`` included), its help, how one value is
read, and whether it changes results (a field that only changes speed or what is shown
does not enter cache keys). The command line's parser, the mapping from flags to
settings, configuration files and cache keys are all read from these declarations
(:mod:`swimkit.arguments`), so a new setting is one field.

A step also takes keyword overrides of its group's fields (:func:`with_overrides`):
``evaluate(..., settings, samples=7)`` evaluates 7 chips with the rest of ``settings``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import SwimkitError, check_fraction, repeated

G = TypeVar("G")

#: The metadata key of a field's :class:`Flag`.
FLAG = "swimkit.flag"


class _Unset:
    """No command-line default of its own (the field's default applies)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


@dataclass(frozen=True)
class Flag:
    """How the command line gives one settings field.

    ``names``: the flag and its aliases (``"--sigma", "--dev_var"``); ``help``; ``kind``
    reads one value from its text (None: a switch); ``several``: a comma-separated list
    of such values; ``results``: the field changes results (False: only speed or what
    is shown); ``command_default``: the command line's default where it differs from the
    field's; ``invert``: a switch that sets the field to False (``--no-progress``);
    ``choices`` / ``const`` / ``metavar`` as argparse's; ``spread``: the value is a tuple
    whose items go to these fields of the group (``--tile 64x32``: rows and columns).
    """

    names: tuple[str, ...]
    help: str = ""
    kind: Callable[[str], Any] | None = str
    several: bool = False
    repeat: bool = False
    results: bool = True
    command_default: Any = UNSET
    invert: bool = False
    choices: tuple[str, ...] | None = None
    const: Any = None
    metavar: str | None = None
    spread: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The main flag (``--sigma``)."""
        return self.names[0]

    @property
    def key(self) -> str:
        """Its configuration-file key (``sigma``, ``sigma-verified``)."""
        return self.name.lstrip("-")

    @property
    def switch(self) -> bool:
        """A flag without a value (``--compile``, ``--no-progress``)."""
        return self.kind is None


def flag(*names: str, help: str = "", kind: Callable[[str], Any] | None = str,
         **settings: Any) -> dict[str, Flag]:
    """Field metadata declaring the flag ``names`` (see :class:`Flag`)."""
    return {FLAG: Flag(tuple(names), help, kind, **settings)}


def internal(results: bool = True) -> dict[str, Flag]:
    """Field metadata of a setting the command line does not give (``results``: it
    still enters cache keys and result files)."""
    return {FLAG: Flag((), "", None, results=results)}


def flag_of(field: dataclasses.Field) -> Flag | None:
    """The flag a field declares (None: none)."""
    return field.metadata.get(FLAG)


def field_default(field: dataclasses.Field) -> Any:
    """The default of a dataclass field (None where it has none)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of settings group ``cls`` (for help texts)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return field_default(f)
    raise KeyError(name)


#: Keywords of earlier releases that are now part of another value, and where they went.
MOVED = {
    "device_model": "the device model is part of the chip: give chip=ChipSpec(device_model) "
                    "or chip=device_model",
    "noise_model": "the device model is part of the chip: give chip=ChipSpec(device_model) "
                   "or chip=device_model",
    "exclude": "which weights are on devices is part of the chip: give "
               "chip=ChipSpec(..., placement=Placement(exclude=[...]))",
    "params": "which weights are on devices is part of the chip: give "
              "chip=ChipSpec(..., placement=Placement(params=[...]))",
    "layers": "which weights are on devices is part of the chip: give "
              "chip=ChipSpec(..., placement=Placement(layers=[...]))",
    "device": "the model computes where it is: move it first (model.to('cuda'))",
    "budget": "give the budget as fraction=, speedup= or time_budget=",
}


def with_overrides(cls: type[G], settings: G | None, overrides: Mapping[str, Any],
                   step: str) -> G:
    """The settings group a step runs with: ``settings`` (None: the defaults) with
    ``overrides`` applied to a copy. An override that is no field of the group is
    refused by name, so nothing given is dropped."""
    if settings is not None and not isinstance(settings, cls):
        raise SwimkitError(f"{step}() takes a {cls.__name__} as its settings (got "
                           f"{type(settings).__name__}); give the settings by keyword instead")
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        hint = MOVED.get(unknown[0])
        raise SwimkitError(f"{step}() has no setting {unknown[0]!r}" + (
            f": {hint}" if hint else f"; its settings ({cls.__name__}) are "
                                     f"{', '.join(sorted(names))}"))
    if settings is None:
        return cls(**overrides)
    return dataclasses.replace(settings, **overrides) if overrides else settings  # type: ignore[type-var]


def results_of(group: object) -> dict[str, Any]:
    """The fields of ``group`` that change results (every field but those whose flag
    says otherwise), JSON-ready: what a cache key holds of a group."""
    out = {}
    for f in dataclasses.fields(group):  # type: ignore[arg-type]
        declared = flag_of(f)
        if f.name.startswith("_") or (declared is not None and not declared.results):
            continue
        out[f.name] = plain(getattr(group, f.name))
    return out


def plain(value: Any) -> Any:
    """``value`` JSON-ready: dataclasses as dicts of their fields, tuples as lists,
    objects with ``describe()`` by their description."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.name.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "describe") and callable(value.describe):
        return value.describe()
    return value


# --- value types: each reads one value from its text, or says what it expected ----------


def bounded(kind: type, minimum: float, expected: str) -> Callable[[str], Any]:
    """``kind(text)``, finite and >= ``minimum``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or value < minimum or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})")
        return value

    return parse


nonnegative = bounded(float, 0.0, "a number >= 0")
positive = bounded(float, 1e-300, "a number > 0")
positive_int = bounded(int, 1, "a whole number >= 1")
at_least_two = bounded(int, 2, "a whole number >= 2")
speedup = bounded(float, 1.0, "a speedup >= 1 (1 verifies every device; e.g. 10)")
epochs = bounded(int, 1, "a whole number of epochs >= 1 (to use a trained model, give "
                         "--checkpoint instead)")


def integer(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a whole number (got {text!r})") from None


def fraction(text: str) -> float:
    try:
        return check_fraction(float(text))
    except (TypeError, ValueError, SwimkitError):
        raise argparse.ArgumentTypeError(
            f"fraction must be a number between 0 and 1 (got {text!r})") from None


def pattern(text: str) -> str:
    """A layer or parameter name pattern (e.g. ``conv1``, ``layer*.conv*``)."""
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("expected a name pattern (got an empty one)")
    return text


def tile_shape(text: str) -> tuple[int, int]:
    """``ROWSxCOLUMNS`` cells (``256`` alone: square)."""
    rows, _, columns = text.lower().partition("x")
    try:
        shape = (int(rows), int(columns or rows))
    except ValueError:
        shape = (0, 0)
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLUMNS cells, e.g. 256x256 (got "
                                         f"{text!r})")
    return shape


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (an extension's option)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (got {text!r}); e.g. "
                                         "compensation=true")
    return key.strip(), value.strip()


def registered(registry: Any, what: str) -> Callable[[str], str]:
    """A registry's canonical name of ``text`` (any alias, any case); the parser's
    ``registry`` attribute lets help texts list the entries."""

    def parse(text: str) -> str:
        try:
            return registry.canonical(text)
        except SwimkitError:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {text!r}; choose one of: {', '.join(registry.names())}"
            ) from None

    parse.registry = registry  # type: ignore[attr-defined]
    return parse


def listed(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """A comma-separated list of ``kind``, each value once (a repeat would run twice)."""

    def parse(text: str) -> list:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list (got {text!r})")
        twice = repeated(values)
        if twice:
            raise argparse.ArgumentTypeError(
                f"{', '.join(twice)} is given twice in {text!r}; give each value once")
        return values

    return parse


__all__ = ["FLAG", "Flag", "at_least_two", "bounded", "default", "epochs", "field_default",
           "flag", "flag_of", "fraction", "integer", "internal", "key_value", "listed",
           "nonnegative", "pattern", "plain", "positive", "positive_int", "registered",
           "results_of", "speedup", "tile_shape", "with_overrides"]
