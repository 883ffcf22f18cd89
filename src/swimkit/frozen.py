"""Values that cannot be changed once made: results are records, not workspaces.

:func:`frozen` turns dicts and lists (all the way down) into :class:`FrozenDict` and
:class:`FrozenList`, which read, compare, copy and write to JSON like ``dict`` and
``list`` but refuse every change; :func:`thawed` gives plain ones back (a file format
that must not name swimkit's classes). :class:`TensorView` is a mapping of tensors that
hands out copies, so a caller can do anything with what it reads and the result stays
as it was made.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

from torch import Tensor


def _refuse(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(f"a result's {type(self).__name__.removeprefix('Frozen').lower()} is "
                    "frozen: copy it (dict(...), list(...)) to change it")


class FrozenDict(dict):
    """A dict that refuses changes (a copy, ``dict(d)``, is an ordinary dict)."""

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple:
        return (FrozenDict, (dict(self),))


class FrozenList(list):
    """A list that refuses changes (a copy, ``list(x)``, is an ordinary list)."""

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = clear = extend = insert = pop = remove = reverse = sort = _refuse

    def __reduce__(self) -> tuple:
        return (FrozenList, (list(self),))


def frozen(value: Any) -> Any:
    """``value`` with every dict and list in it frozen (tuples become frozen lists)."""
    if isinstance(value, Mapping) and not isinstance(value, TensorView):
        return FrozenDict({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return FrozenList(frozen(v) for v in value)
    return value


def thawed(value: Any) -> Any:
    """``value`` with plain dicts and lists (for files that must hold only builtins)."""
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thawed(v) for v in value]
    return value


def safe_copy(tensor: Tensor) -> Tensor:
    """A copy of ``tensor``; a tensor broadcast along its last dimension (one value per
    weight over its devices) stays broadcast, so it is not copied K times."""
    if tensor.dim() and tensor.shape[-1] > 1 and tensor.stride(-1) == 0:
        return tensor[..., :1].clone().expand(tensor.shape)
    return tensor.clone()


class TensorView(Mapping):
    """Tensors by name, read as copies (see the module doc)."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self._tensors = dict(tensors)

    def __getitem__(self, name: str) -> Tensor:
        return safe_copy(self._tensors[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._tensors.items())
        return f"TensorView({shapes})"


__all__ = ["FrozenDict", "FrozenList", "TensorView", "frozen", "safe_copy", "thawed"]
