"""The numbers of a result JSON, for comparing two runs' results."""

from __future__ import annotations


def numbers(obj) -> list:
    """Every number in a JSON tree, in order (timings, keys naming seconds, left out)."""
    if isinstance(obj, dict):
        return [n for k, v in obj.items() if "seconds" not in k for n in numbers(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []
