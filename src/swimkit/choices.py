"""Choices spelled as in files: str enums that print, format and go to JSON as their value.

Budget kinds (``fraction``, ``speedup``, ``time_budget``) and "verify nothing / every
device" (``none``, ``all``) are such choices: result files, plan files and cache keys
read the same as plain strings, and a plain string is accepted wherever one is.
"""

from __future__ import annotations

from enum import Enum


class Spelled(str, Enum):
    """A choice that is a str spelled as in files: it prints, formats and is written to
    JSON as its value, and equals that string."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


__all__ = ["Spelled"]
