"""Progress bars that can be switched off (tests, distributed workers)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_bar(
    items: Iterable[T], enabled: bool, desc: str, total: int | None = None
) -> Iterator[T]:
    """Iterate over ``items``, showing a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
