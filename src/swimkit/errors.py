"""User-facing errors.

Every mistake a user can make (a bad setting, missing data, a checkpoint that does not
fit) raises :class:`SwimkitError` with one sentence that says what is wrong and how to
fix it. The command line prints that sentence and exits with status 2.
"""

from __future__ import annotations

import math


class SwimkitError(ValueError):
    """A problem with the user's input, explained in one line.

    ``command_line`` is the same sentence for the command line, where the fix is an
    option rather than a keyword argument (the CLI prints it instead)."""

    def __init__(self, message: str, *, command_line: str | None = None) -> None:
        super().__init__(message)
        self.command_line = command_line


def repeated(values: object) -> list[str]:
    """The values that occur more than once in ``values``, as sorted text (none: [])."""
    items = list(values)  # type: ignore[call-overload]
    return sorted({str(v) for v in items if items.count(v) > 1})


def check_once(what: str, values: object) -> None:
    """Refuse a list that repeats a value: each would be run twice."""
    twice = repeated(values)
    require(not twice, f"{what} repeat {', '.join(twice)}: each would be run twice; give "
                       "each once")


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of ``exc``'s message (its type's name when it has none), to quote
    a library's error inside a one-line SwimkitError."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]


def require(condition: bool, message: str) -> None:
    """Raise :class:`SwimkitError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SwimkitError(message)


def check_fraction(value: float, name: str = "fraction") -> float:
    """Return ``value`` as a float in [0, 1] or raise a clear error."""
    require(
        is_number(value) and 0.0 <= float(value) <= 1.0,
        f"{name} must be between 0 and 1 (got {value!r}); e.g. 0.1 verifies 10% of the weights",
    )
    return float(value)


def check_speedup(value: float) -> float:
    """Return ``value`` as a float >= 1 (1 = verify every device) or raise a clear error."""
    require(
        is_number(value, finite=True) and float(value) >= 1.0,
        f"speedup must be a number >= 1 (got {value!r}): 1 verifies every device, larger "
        "values verify less; e.g. 10",
    )
    return float(value)


def is_integer(value: object) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object, finite: bool = False) -> bool:
    """True for an int or float (not a bool); with ``finite``, also not inf or nan."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if finite else True


def choose(value: str, choices: dict[str, str] | list[str], what: str) -> str:
    """Resolve ``value`` among ``choices`` (a list, or a dict alias -> canonical name)."""
    if isinstance(choices, dict):
        if value in choices:
            return choices[value]
        lowered = {k.lower(): v for k, v in choices.items()}
        if value.lower() in lowered:
            return lowered[value.lower()]
        names = sorted(set(choices.values()))
    else:
        if value in choices:
            return value
        names = list(choices)
    raise SwimkitError(f"unknown {what} {value!r}; choose one of: {', '.join(names)}")
