"""Options of extensions: what a selection method, a sensitivity engine or a device model
takes besides the common settings, each with a default.

An entry declares its options as a dict name -> default (``{"probes": 100, "seed": 0}``).
The command line gives them in one syntax per kind (``--method-option K=V``,
``--engine-option K=V``, ``--device-option K=V``), typed like the default; the API as a
dict. :func:`checked_options` refuses an option the entry does not declare and a value of
the wrong kind, so nothing given is silently ignored, and the options an entry ran with
(its defaults completed) enter result files and cache keys through its description.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import SwimkitError, is_number

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


def option_value(owner: str, key: str, default: Any, text: str) -> Any:
    """Option ``key`` of ``owner`` (e.g. "method 'learned'") read from its command-line
    text, typed like its ``default``: a bool, an int, a float; None takes a bool, a
    number or text; text otherwise."""
    lowered = text.strip().lower()
    if isinstance(default, bool):
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise SwimkitError(f"option {key} of {owner} must be true or false (got {text!r})")
    if isinstance(default, (int, float)):
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise SwimkitError(f"option {key} of {owner} must be a finite number (got "
                               f"{text!r})")
        if isinstance(default, int) and number.is_integer() and "." not in text:
            return int(number)
        return number
    if default is None:
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        try:
            return float(text)
        except ValueError:
            return text
    return text


def parse_options(owner: str, declared: Mapping[str, Any],
                  pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs of the command line as typed options of ``owner``."""
    out: dict[str, Any] = {}
    for key, text in pairs:
        if key in out:
            raise SwimkitError(f"option {key} of {owner} is given twice; give it once")
        out[key] = option_value(owner, key, _declared(owner, declared, key), text)
    return out


def checked_options(owner: str, declared: Mapping[str, Any],
                    given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``given`` options of ``owner``, each declared and of its default's kind (a number
    for a number, true or false for a bool); the declared defaults are not added."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise SwimkitError(f"the options of {owner} must be a dict of name -> value (got "
                           f"{type(given).__name__})")
    out = {}
    for key, value in given.items():
        default = _declared(owner, declared, key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise SwimkitError(f"option {key} of {owner} must be true or false (got "
                               f"{value!r})")
        if (isinstance(default, (int, float)) and not isinstance(default, bool)
                and not is_number(value, finite=True)):
            raise SwimkitError(f"option {key} of {owner} must be a finite number (got "
                               f"{value!r})")
        out[key] = value
    return out


def typed_options(owner: str, declared: Mapping[str, Any],
                  given: Mapping[str, Any] | Iterable[tuple[str, Any]] | None
                  ) -> dict[str, Any]:
    """``given`` options (a dict, or the ``(key, value)`` pairs of the command line), text
    values read as their default's kind, then checked (:func:`checked_options`)."""
    if given is None:
        return {}
    pairs = list(given.items()) if isinstance(given, Mapping) else list(given)
    out: dict[str, Any] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise SwimkitError(f"the options of {owner} must be a dict of name -> value "
                               f"(got {given!r})")
        key, value = pair
        if key in out:
            raise SwimkitError(f"option {key} of {owner} is given twice; give it once")
        default = _declared(owner, declared, key)
        if isinstance(value, str) and not isinstance(default, str):
            value = option_value(owner, key, default, value)
        out[key] = value
    return checked_options(owner, declared, out)


def completed(declared: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The declared defaults with ``given`` on top: what the entry runs with."""
    return {**declared, **given}


def _declared(owner: str, declared: Mapping[str, Any], key: str) -> Any:
    if not isinstance(key, str) or key not in declared:
        raise SwimkitError(f"{owner} has no option {key!r}; its options: "
                           f"{', '.join(declared) or 'none'}")
    return declared[key]


__all__ = ["checked_options", "completed", "option_value", "parse_options", "typed_options"]
