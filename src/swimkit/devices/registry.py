"""The registry of device models: one entry per model, built from settings and options.

Every model takes the common settings it understands (:data:`COMMON`: the plain-write
and verified spreads, the bit slicing, the write-verify loop, a value-dependent curve)
and options of its own, with defaults; the command line's ``--device-model NAME`` and
``--device-option KEY=VALUE``, the JSON result files and the cache keys all come from
here. A plug-in adds a model with :func:`register_device_model`, from a notebook or from
a package through the entry-point group ``swimkit.device_models``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import SwimkitError, require
from ..registry import Entry, Registry
from .protocol import Device, require_device

#: The settings every model may take (each model lists those it does).
COMMON = ("sigma", "sigma_verified", "bits_per_weight", "bits_per_device", "variation",
          "verified_variation", "write_verify")


@dataclass(frozen=True)
class DeviceModelEntry(Entry):
    """A device model: ``build(**settings, **options)`` returns a :class:`Device`."""

    build: Callable[..., Device] | None = None
    settings: tuple[str, ...] = COMMON
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def option_help(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options.items()) or "-"


DEVICE_MODELS: Registry[DeviceModelEntry] = Registry(
    "device model", entry_point_group="swimkit.device_models")


def register_device_model(
    name: str,
    build: Callable[..., Device],
    *,
    settings: tuple[str, ...] = COMMON,
    options: dict[str, Any] | None = None,
    aliases: tuple[str, ...] | list[str] = (),
    help: str = "",
    replace: bool = False,
) -> DeviceModelEntry:
    """Add a device model: ``build`` takes the common ``settings`` it lists (those given)
    and its ``options`` (name -> default), and returns an object following both
    protocols of :mod:`swimkit.devices.protocol`."""
    require(callable(build), f"the build of device model {name!r} must be callable")
    unknown = sorted(set(settings) - set(COMMON))
    require(not unknown, f"device model {name!r} lists unknown settings {unknown}; "
                         f"the common ones are {', '.join(COMMON)}")
    return DEVICE_MODELS.add(
        DeviceModelEntry(name=name, aliases=tuple(aliases), help=help, build=build,
                         settings=tuple(settings), options=dict(options or {})),
        replace=replace)


def build_device_model(name: str = "gaussian", **given: Any) -> Device:
    """The device model ``name`` with the settings and options ``given`` (None: default).

    A setting or option the model does not take is refused, so nothing is silently
    ignored.
    """
    entry = DEVICE_MODELS.get(name)
    given = {k: v for k, v in given.items() if v is not None}
    takes = set(entry.settings) | set(entry.options)
    refused = sorted(set(given) - takes)
    if refused:
        raise SwimkitError(
            f"device model {entry.name!r} takes no {refused[0]!r}; it takes "
            f"{', '.join(sorted(takes)) or 'nothing'}")
    assert entry.build is not None
    model = entry.build(**given)
    return require_device(model, f"device model {entry.name!r}")


def parse_option(name: str, key: str, text: str) -> Any:
    """The value of option ``key`` of model ``name`` from its command-line text, typed
    like the option's default (a bool, an int, a float; text otherwise)."""
    entry = DEVICE_MODELS.get(name)
    if key not in entry.options:
        raise SwimkitError(f"device model {entry.name!r} has no option {key!r}; its options: "
                           f"{', '.join(entry.options) or 'none'}")
    default = entry.options[key]
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "on", "yes"):
            return True
        if lowered in ("0", "false", "off", "no"):
            return False
        raise SwimkitError(f"device option {key} must be true or false (got {text!r})")
    if isinstance(default, (int, float)):
        try:
            return type(default)(text) if isinstance(default, float) or text.strip().lstrip(
                "-").isdigit() else float(text)
        except ValueError:
            raise SwimkitError(f"device option {key} must be a number (got {text!r})") from None
    if default is None:
        lowered = text.strip().lower()
        if lowered in ("true", "on", "yes", "false", "off", "no"):
            return lowered in ("true", "on", "yes")
        try:
            return float(text)
        except ValueError:
            return text
    return text


__all__ = ["COMMON", "DEVICE_MODELS", "DeviceModelEntry", "build_device_model", "parse_option",
           "register_device_model"]
