"""Registries: one place per extensible concept, with the metadata the rest derives from.

A :class:`Registry` maps canonical names to entries that carry their own aliases and a
one-line help. Lookups are case-insensitive and accept every alias; the command line's
choices and help text, the workflow's decisions and the README's tables are all read
from the registries, so adding a selection method, a model, a dataset or a sensitivity
engine is one registration and nothing else.

Plugins installed as packages register through an entry-point group (for instance
``swimkit.methods``): each entry point names a callable that is called once, with no
arguments, the first time the registry is read, and registers what it brings. A plugin
that fails (at import, in its callable, even with ``SystemExit``) is named in one warning
and skipped, with whatever it registered before failing taken back; the built-ins and
every other plugin still load. A plugin that replaces a built-in entry is announced.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Generic, TypeVar

from .errors import SwimkitError, first_line, require


@dataclass(frozen=True)
class Entry:
    """What every registered thing has: a canonical name, aliases and a one-line help."""

    name: str
    aliases: tuple[str, ...] = ()
    help: str = ""


E = TypeVar("E", bound=Entry)

#: Every registry made, so a failed plugin's registrations are taken back from all of them.
_REGISTRIES: list[Registry] = []


@dataclass
class Registry(Generic[E]):
    """Entries of one kind (``what``: "selection method", "model", ...), by name and alias."""

    what: str
    entry_point_group: str | None = None
    _entries: dict[str, E] = field(default_factory=dict)
    _lookup: dict[str, str] = field(default_factory=dict)
    _plugins_loaded: bool = False

    def __post_init__(self) -> None:
        _REGISTRIES.append(self)

    def add(self, entry: E, *, replace: bool = False) -> E:
        """Register ``entry``; its name and aliases must be new unless ``replace``."""
        require(
            isinstance(entry.name, str) and entry.name.strip() == entry.name and entry.name,
            f"a {self.what} needs a non-empty name without surrounding spaces "
            f"(got {entry.name!r})",
        )
        if entry.name.lower() in self._lookup and self._lookup[entry.name.lower()] == entry.name:
            require(replace, f"a {self.what} named {entry.name!r} is already registered; "
                             "pick another name or pass replace=True")
            self.remove(entry.name)
        for key in (entry.name, *entry.aliases):
            taken = self._lookup.get(key.lower())
            require(taken is None, f"{self.what} name {key!r} is already taken by {taken!r}; "
                                   "pick another name")
        self._entries[entry.name] = entry
        for key in (entry.name, *entry.aliases):
            self._lookup[key.lower()] = entry.name
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` and its aliases (tests and plugins that clean up)."""
        entry = self._entries.pop(self.canonical(name))
        for key in (entry.name, *entry.aliases):
            self._lookup.pop(key.lower(), None)

    def canonical(self, name: str) -> str:
        """The canonical name of ``name`` or of one of its aliases (case-insensitive)."""
        self._load_plugins()
        require(isinstance(name, str), f"a {self.what} name must be a string (got {name!r})")
        found = self._lookup.get(name.lower())
        if found is None:
            raise SwimkitError(
                f"unknown {self.what} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return found

    def get(self, name: str) -> E:
        """The entry of ``name`` (any alias)."""
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """Canonical names in registration order."""
        self._load_plugins()
        return list(self._entries)

    def aliases(self) -> dict[str, str]:
        """Every accepted name (lower case) -> canonical name."""
        self._load_plugins()
        return dict(self._lookup)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return isinstance(name, str) and name.lower() in self._lookup

    def __iter__(self) -> Iterator[E]:
        self._load_plugins()
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)

    def _load_plugins(self) -> None:
        if self._plugins_loaded or self.entry_point_group is None:
            return
        self._plugins_loaded = True
        try:
            points = list(metadata.entry_points(group=self.entry_point_group))
        except Exception as exc:  # noqa: BLE001 - broken package metadata: no plugins
            warnings.warn(f"cannot list the {self.what} plugins ({first_line(exc)}); "
                          "using the built-ins only", stacklevel=2)
            return
        for point in points:
            self._load_plugin(point)

    def _load_plugin(self, point: metadata.EntryPoint) -> None:
        """Run one plugin; on failure take back what it added to any registry (a device
        model plugin may also register a method) and warn once."""
        snapshot = [(registry, dict(registry._entries), dict(registry._lookup))
                    for registry in _REGISTRIES]
        before = snapshot[_REGISTRIES.index(self)][1]
        try:
            point.load()()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plugin never ends swimkit
            for registry, entries, lookup in snapshot:
                registry._entries, registry._lookup = entries, lookup
            what = "exited" if isinstance(exc, SystemExit) else "failed"
            warnings.warn(
                f"plugin {point.name!r} ({self.entry_point_group}) {what} while registering "
                f"and is skipped: {type(exc).__name__}: {first_line(exc)}", stacklevel=3)
            return
        replaced = [name for name, entry in before.items()
                    if name in self._entries and self._entries[name] is not entry]
        for name in replaced:
            warnings.warn(f"plugin {point.name!r} replaces the {self.what} {name!r}",
                          stacklevel=3)


def markdown_table(registry: Registry, columns: dict[str, str]) -> str:
    """A Markdown table of ``registry``: one row per entry, ``columns`` header -> attribute.

    The attribute ``aliases`` is shown comma separated; a missing attribute as ``-``.
    """
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    rows = [head, rule]
    for entry in registry:
        cells = []
        for attribute in columns.values():
            value = getattr(entry, attribute, None)
            if isinstance(value, (tuple, list)):
                value = ", ".join(f"`{v}`" for v in value) or "-"
            elif attribute == "name":
                value = f"`{value}`"
            elif isinstance(value, bool):
                value = "yes" if value else "no"
            cells.append("-" if value in (None, "") else str(value).replace("|", "\\|"))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


__all__ = ["Entry", "Registry", "markdown_table"]
