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
from ..groups import flag, key_value, nonnegative, positive_int, registered
from ..options import parse_options, typed_options
from ..programming import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_T_PROGRAM,
    DEFAULT_T_READ,
    WriteVerify,
)
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
    shared = sorted(set(options or {}) & set(COMMON))
    require(not shared, f"device model {name!r} declares an option named like the common "
                        f"setting {shared[:1]}; name it otherwise (the common settings: "
                        f"{', '.join(COMMON)})")
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
    return parse_options(f"device model {entry.name!r}", entry.options, [(key, text)])[key]


@dataclass(frozen=True)
class DeviceModelSettings:
    """A device model as settings (what the command line and configuration files give):
    its registered ``name``, the common settings (None: the model's default), the
    write-verify loop's, and the model's own ``options``. :meth:`build` makes it."""

    name: str = field(default="gaussian", metadata=flag(
        "--device-model", kind=registered(DEVICE_MODELS, "device model"),
        help="the device model"))
    options: dict[str, Any] = field(default_factory=dict, metadata=flag(
        "--device-option", kind=key_value, repeat=True, metavar="KEY=VALUE",
        help="an option of the device model (repeat for several), e.g. --device-option "
             "compensation=true"))
    sigma: float | None = field(default=None, metadata=flag(
        "--sigma", "--dev_var", kind=nonnegative,
        help="device variation of a plain write, in device steps (default 0.3)"))
    sigma_verified: float | None = field(default=None, metadata=flag(
        "--sigma-verified", "--write_var", kind=nonnegative,
        help="residual variation of a device verified by the default loop (default 0.03)"))
    bits_per_weight: int | None = field(default=None, metadata=flag(
        "--bits-per-weight", kind=positive_int, help="bits of a weight (default 8)"))
    bits_per_device: int | None = field(default=None, metadata=flag(
        "--bits-per-device", kind=positive_int, help="bits a device holds (default 1)"))
    variation: str | None = field(default=None, metadata=flag(
        "--variation", help="value-dependent variation: band:R (U-SWIM), a CSV of level,sigma"))
    verified_variation: str | None = field(default=None, metadata=flag(
        "--verified-variation", help="variation curve of verified devices (default uniform)"))
    tolerance: float | None = field(default=None, metadata=flag(
        "--tolerance", kind=nonnegative,
        help="tolerance of the default loop in device steps (default: solved from "
             "--sigma-verified)"))
    max_attempts: int | None = field(default=None, metadata=flag(
        "--max-attempts", kind=positive_int,
        help=f"attempts of the write-verify loop (default {DEFAULT_MAX_ATTEMPTS})"))
    t_program: float | None = field(default=None, metadata=flag(
        "--t-program", kind=nonnegative,
        help=f"seconds per program pulse (default {DEFAULT_T_PROGRAM:g})"))
    t_read: float | None = field(default=None, metadata=flag(
        "--t-read", kind=nonnegative,
        help=f"seconds per verify read (default {DEFAULT_T_READ:g})"))

    def __post_init__(self) -> None:
        entry = DEVICE_MODELS.get(self.name)
        object.__setattr__(self, "name", entry.name)
        object.__setattr__(self, "options", typed_options(
            f"device model {entry.name!r}", entry.options, self.options))

    def build(self) -> Device:
        """The device model of these settings (a setting it does not take is refused)."""
        loop = {k: getattr(self, k) for k in ("tolerance", "max_attempts", "t_program",
                                             "t_read") if getattr(self, k) is not None}
        common = {k: getattr(self, k) for k in COMMON if k != "write_verify"}
        return build_device_model(self.name, write_verify=WriteVerify(**loop), **common,
                                  **self.options)


__all__ = ["COMMON", "DEVICE_MODELS", "DeviceModelEntry", "DeviceModelSettings",
           "build_device_model", "parse_option", "register_device_model"]
