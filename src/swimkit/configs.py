"""Studies as files: a command's flags read from a configuration file, and written back.

Every command takes ``--config FILE``: TOML (``.toml``), YAML (``.yaml`` / ``.yml``, with
PyYAML installed) or JSON. The keys are the command's flags without their dashes
(``sigma-verified = 0.03``; aliases and underscores work too: ``dev_var``); lists are
arrays (or comma-separated text), an extension's options a table
(``device-option = {compensation = true}``), a switch true or false. Flags given on the
command line win over the file. A result JSON records the configuration it was made
with (``config``), so ``--config result.json`` runs it again. ``--print-config`` prints
the resolved configuration (file and flags together, every default filled in) as TOML.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .arguments import Declared, Target, effective_default
from .errors import SwimkitError

#: Arguments that are not part of a configuration.
NOT_CONFIG = ("help", "config", "print_config", "version")


def read_config(path: str | Path, command: str) -> dict[str, Any]:
    """The flags of configuration file ``path`` (a result JSON: the ones it recorded)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SwimkitError(f"cannot read the configuration {path} ({err.strerror or err}); "
                           "check the path") from None
    except UnicodeDecodeError:
        raise SwimkitError(f"{path} is not a text file; give a TOML, YAML or JSON "
                           "configuration") from None
    data = _parse(path, text)
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        recorded = data["config"]
        if recorded.get("command") not in (None, command):
            raise SwimkitError(f"{path} records a 'swimkit {recorded.get('command')}' run; "
                               f"give it to that command, not to 'swimkit {command}'")
        data = recorded.get("flags", {})
    if not isinstance(data, dict):
        raise SwimkitError(f"{path} holds no table of settings; write one key per flag, "
                           "e.g. sigma = 0.3")
    return _flattened(data)


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return _toml().loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise SwimkitError("reading YAML needs PyYAML: pip install pyyaml, or write "
                                   "the configuration as TOML") from None
            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
    except SwimkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - each parser's own error, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SwimkitError(f"{path} is not valid {suffix.lstrip('.').upper()} ({first})") from None
    raise SwimkitError(f"{path}: a configuration is .toml, .yaml, .yml or .json (got "
                       f"{suffix or 'no suffix'})")


def _toml() -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def _flattened(data: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys; a table named like a section (``[device]``) holds more keys."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and not key.endswith("option"):
            out.update(_flattened(value))
        else:
            out[key] = value
    return out


def apply_config(ns: argparse.Namespace, parser: argparse.ArgumentParser,
                 config: Mapping[str, Any], source: str) -> None:
    """Set every argument the command line did not give from ``config`` (checked and read
    as the command line reads it)."""
    actions = _actions(parser)
    for key, value in config.items():
        if value is None or value == [] or value == {}:
            continue  # unset: the default applies
        action = actions.get(_normal(key))
        if action is None:
            known = sorted({a.option_strings[0].lstrip("-") if a.option_strings else a.dest
                            for a in actions.values()})
            raise SwimkitError(f"{source}: this command has no setting {key!r}; its keys "
                               f"are its flags' names: {', '.join(known)}")
        if getattr(ns, action.dest, None) not in (None, False, []):
            continue  # the command line wins (an empty list: a positional not given)
        setattr(ns, action.dest, _read(action, value, f"{source}: {key}"))


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    out = {}
    for action in parser._actions:  # noqa: SLF001 - the parser's own list of arguments
        if action.dest in NOT_CONFIG:
            continue
        names = [s.lstrip("-") for s in action.option_strings] or [action.dest]
        for name in names:
            out[_normal(name)] = action
    return out


def _normal(key: str) -> str:
    return key.replace("_", "-").lower()


def _read(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` of a file as the command line would read it for ``action``."""
    try:
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"expected true or false (got {value!r})")
            return value or None
        if isinstance(action, argparse._AppendAction):  # noqa: SLF001 - repeatable pairs
            pairs = value.items() if isinstance(value, Mapping) else (
                [p.split("=", 1) for p in value] if isinstance(value, list) else None)
            if pairs is None:
                raise argparse.ArgumentTypeError("expected a table of KEY = VALUE")
            return [_pair(action, k, v) for k, v in pairs]
        if action.nargs in ("+", "*"):
            items = value if isinstance(value, list) else [value]
            return [_one(action, _text(v)) for v in items]
        text = ",".join(map(_text, value)) if isinstance(value, list) else _text(value)
        return _one(action, text)
    except argparse.ArgumentTypeError as err:
        raise SwimkitError(f"{where}: {err}") from None


def _pair(action: argparse.Action, key: Any, value: Any) -> tuple[str, Any]:
    """An option of a file's table, checked as the command line checks ``KEY=VALUE``; a
    number or a switch keeps its type (``probes = 7`` is 7, as ``--probes 7`` is)."""
    name, text = action.type(f"{key}={_text(value)}")
    kept = isinstance(value, (bool, int, float)) and not (isinstance(value, float)
                                                          and not math.isfinite(value))
    return name, value if kept else text


def _one(action: argparse.Action, text: str) -> Any:
    if action.choices is not None and text not in action.choices:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(action.choices)} "
                                         f"(got {text!r})")
    return action.type(text) if action.type is not None else text


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def resolved(ns: argparse.Namespace, parser: argparse.ArgumentParser,
             declared: Mapping[str, Declared], values: Mapping[Target, Any],
             defaults: Mapping[Target, Any]) -> dict[str, Any]:
    """Every argument of the command by its configuration key: a settings flag as its
    field ends up (``values``: given, completed by the command), else its default (None:
    unset, e.g. a device model's own default); the command's own arguments as given."""
    by_dest = {item.dest: item for item in declared.values()}
    out: dict[str, Any] = {}
    for action in parser._actions:  # noqa: SLF001 - the parser's own list of arguments
        item = by_dest.get(action.dest)
        if action.dest in NOT_CONFIG or (item is not None and item.option is not None):
            continue  # option flags are written in their options' table
        key = action.option_strings[0].lstrip("-") if action.option_strings else action.dest
        if item is None:
            value = getattr(ns, action.dest, None)
            out[key] = bool(value) if action.nargs == 0 else _written(value)
        else:
            out[key] = _flag_value(item, values, defaults)
    return out


def _flag_value(item: Declared, values: Mapping[Target, Any],
                defaults: Mapping[Target, Any]) -> Any:
    """A settings flag's value as a file holds it."""
    target = item.targets[0]
    if item.flag.spread:
        parts = [values.get((target[0], name)) for name in item.flag.spread]
        return None if parts[0] is None else f"{parts[0]}x{parts[1]}"
    value = values[target] if target in values else effective_default(item, defaults)
    if item.flag.switch:
        return bool(value) != item.flag.invert
    return _written(value)


def _written(value: Any) -> Any:
    """A parsed value as a file holds it: tiles as ``RxC``, pairs as a table."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return {k: v for k, v in value}
    if isinstance(value, (list, tuple)):
        return [_written(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _written(v) for k, v in value.items()}
    return value


def toml_text(config: Mapping[str, Any], header: str = "") -> str:
    """``config`` as TOML; a key without a value is a comment."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for key, value in config.items():
        if value is None:
            lines.append(f"# {key} =")
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


__all__ = ["NOT_CONFIG", "apply_config", "read_config", "resolved", "toml_text"]
