"""The command line, declared once: every flag is a settings field's (:mod:`swimkit.groups`).

A command names the settings groups it takes (:data:`GROUPS`); :func:`declared_flags`
collects the flags their fields declare (a flag several fields declare, such as
``--seed``, sets them all) and the option flags of registry entries (``--probes`` sets the
hutchinson engine's ``probes``); :func:`add_flags` puts them on the command's parser, and
:func:`given` reads the parsed values back as ``(group, field) -> value``. Help texts,
defaults, choices and aliases all come from the declarations; :mod:`swimkit.command_settings`
makes the :class:`~swimkit.settings.Settings` and :mod:`swimkit.configs` reads and writes
configuration files with the same keys.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .chip import Placement
from .crossbar import Crossbar
from .devices.registry import DeviceModelSettings
from .errors import SwimkitError
from .groups import UNSET, Flag, field_default, flag_of, listed
from .montecarlo import EvaluationSettings
from .selection import METHODS, SelectionSettings
from .sensitivity import ENGINES, SensitivitySettings
from .settings import DataSettings, ModelSettings, Settings, SweepGrid
from .train_config import FinetuneSettings
from .training import TrainConfig

#: The settings groups a command can take, by their name in :class:`Settings` (``settings``:
#: its own fields, the torch device and the output folder).
GROUPS: dict[str, type] = {
    "model": ModelSettings, "data": DataSettings, "train": TrainConfig,
    "device_model": DeviceModelSettings, "crossbar": Crossbar, "placement": Placement,
    "sensitivity": SensitivitySettings, "selection": SelectionSettings,
    "evaluation": EvaluationSettings, "grid": SweepGrid, "finetune": FinetuneSettings,
    "settings": Settings,
}

#: Titles of the help's argument groups.
TITLES = {"model": "model", "data": "data", "train": "training",
          "device_model": "device model", "crossbar": "crossbar mapping",
          "placement": "weights on devices", "sensitivity": "sensitivity",
          "selection": "selection", "evaluation": "Monte-Carlo", "grid": "comparison",
          "finetune": "fine-tuning under the plan", "settings": "output"}

#: Registries whose entries declare option flags, and the field those options go to.
OPTION_FLAGS = {("sensitivity", "options"): ENGINES, ("grid", "method_options"): METHODS}

Target = tuple[str, str]


@dataclass(frozen=True)
class Declared:
    """One flag of a command and the fields it sets; ``option``: an entry's option flag
    (``--probes``), whose value is the option ``option`` of the dict field it targets."""

    flag: Flag
    targets: tuple[Target, ...]
    option: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.key.replace("-", "_")

    @property
    def group(self) -> str:
        return self.targets[0][0]


def declared_flags(groups: Mapping[str, Iterable[str] | None]) -> dict[str, Declared]:
    """The flags of the fields of ``groups`` (group -> its fields, None: all), by main name."""
    found: dict[str, Declared] = {}
    for group, names in groups.items():
        wanted = None if names is None else set(names)
        for f in dataclasses.fields(GROUPS[group]):
            declared = flag_of(f)
            if declared is None or not declared.names or (wanted is not None
                                                          and f.name not in wanted):
                continue
            known = found.get(declared.name)
            targets = (known.targets if known else ()) + ((group, f.name),)
            found[declared.name] = Declared(known.flag if known else declared, targets)
            if (group, f.name) in OPTION_FLAGS:
                found.update(_option_flags(OPTION_FLAGS[group, f.name], (group, f.name)))
    return found


def _option_flags(registry: Any, target: Target) -> dict[str, Declared]:
    """The option flags of a registry's entries (``--probes`` of hutchinson)."""
    out: dict[str, Declared] = {}
    for entry in registry:
        for name, option in entry.option_flags.items():
            default = entry.options[option]
            kind = type(default) if isinstance(default, (int, float)) else str
            described = Flag((name,), f"{entry.name}: its option {option} (default {default})",
                             kind)
            out[name] = Declared(described, (target,), option)
    return out


def add_flags(parser: argparse.ArgumentParser, declared: Mapping[str, Declared],
              defaults: Mapping[Target, Any] | None = None) -> None:
    """Add ``declared`` to ``parser`` in one argument group per settings group; every
    default is None (not given), the help says the effective one (``defaults``: a
    command's own)."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for item in declared.values():
        section = sections.get(item.group)
        if section is None:
            section = sections[item.group] = parser.add_argument_group(TITLES[item.group])
        section.add_argument(*item.flag.names, dest=item.dest, default=None,
                             help=_help(item, defaults or {}), **_argparse_kind(item.flag))


def _argparse_kind(declared: Flag) -> dict[str, Any]:
    """How argparse reads the flag."""
    if declared.switch:
        return {"action": "store_true"}
    out: dict[str, Any] = {}
    if declared.metavar:
        out["metavar"] = declared.metavar
    if declared.choices is not None:
        out["choices"] = declared.choices
        if declared.const is not None:
            out.update(nargs="?", const=declared.const)
        return out
    kind = declared.kind
    out["type"] = listed(kind) if declared.several else kind
    if declared.repeat:
        out["action"] = "append"
    return out


def _help(item: Declared, defaults: Mapping[Target, Any]) -> str:
    """The help text with the default it takes and, for a registry's names, the entries."""
    text = item.flag.help
    registry = getattr(item.flag.kind, "registry", None)
    if registry is not None:
        text += ". " + "; ".join(f"{e.name}: {e.help}" for e in registry)
    default = effective_default(item, defaults)
    if (default not in (None, [], {}, ()) and not item.flag.switch and item.option is None
            and "(default" not in text):
        shown = ",".join(map(_shown, default)) if isinstance(default, (list, tuple)) else (
            _shown(default))
        text += f" (default {shown})"
    return text.replace("%", "%%")


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def effective_default(item: Declared, defaults: Mapping[Target, Any]) -> Any:
    """The value a flag's first field takes when the flag is not given."""
    target = item.targets[0]
    if target in defaults:
        return defaults[target]
    if item.flag.command_default is not UNSET:
        return item.flag.command_default
    group, name = target
    for f in dataclasses.fields(GROUPS[group]):
        if f.name == name:
            return field_default(f)
    return None


def given(ns: argparse.Namespace, declared: Mapping[str, Declared],
          defaults: Mapping[Target, Any] | None = None) -> dict[Target, Any]:
    """``(group, field) -> value`` of every flag given, and of every flag with a
    command-line default of its own (``command_default``, or the command's ``defaults``)."""
    out: dict[Target, Any] = {}
    for item in declared.values():
        value = getattr(ns, item.dest, None)
        if value is None or value is False and item.flag.switch:
            value = _command_default(item, defaults or {})
            if value is UNSET:
                continue
        elif item.flag.switch:
            value = not item.flag.invert
        for target in item.targets:
            _put(out, target, item, value)
    return out


def _command_default(item: Declared, defaults: Mapping[Target, Any]) -> Any:
    if item.targets[0] in defaults:
        return defaults[item.targets[0]]
    return item.flag.command_default if item.option is None else UNSET


def _put(out: dict[Target, Any], target: Target, item: Declared, value: Any) -> None:
    """Set one field: spread tuples over their fields, pairs and option flags into dicts."""
    group, name = target
    if item.flag.spread:
        for field_name, part in zip(item.flag.spread, value, strict=True):
            out[group, field_name] = part
        return
    if item.option is not None or item.flag.repeat:
        pairs = [(item.option, value)] if item.option is not None else list(value)
        options = out.setdefault(target, {})
        for key, part in pairs:
            if key in options:
                raise SwimkitError(f"option {key} is given twice ({item.flag.name} and "
                                   "another flag); give it once")
            options[key] = part
        return
    out[target] = list(value) if isinstance(value, tuple) else value


__all__ = ["GROUPS", "OPTION_FLAGS", "TITLES", "Declared", "add_flags", "declared_flags",
           "effective_default", "given"]
