"""The :class:`~swimkit.settings.Settings` of a parsed command line: each group made from
the fields its flags set (:func:`swimkit.arguments.given`), the chip from the device
model's settings, the crossbar and the placement."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .arguments import GROUPS, Declared, Target, given
from .chip import ChipSpec
from .crossbar import Crossbar
from .devices.registry import DeviceModelSettings
from .settings import Settings


def settings_of(ns: argparse.Namespace, declared: Mapping[str, Declared],
                defaults: Mapping[Target, Any] | None = None) -> Settings:
    """The :class:`Settings` of parsed flags: every group from the fields given (the
    rest at their defaults)."""
    return settings_from(given(ns, declared, defaults))


def settings_from(values: Mapping[Target, Any]) -> Settings:
    """The :class:`Settings` of ``(group, field) -> value``."""
    groups: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
    for (group, name), value in values.items():
        groups[group][name] = value
    groups["selection"].setdefault("method", None)  # the grid names each point's method
    chip = ChipSpec(DeviceModelSettings(**groups["device_model"]).build(),
                    Crossbar(**groups["crossbar"]), _placement(groups["placement"]))
    made = {name: GROUPS[name](**fields) for name, fields in groups.items()
            if name in _STEP_GROUPS}
    return Settings(**made, chip=chip, **groups["settings"])


#: Groups that are fields of :class:`Settings` as they are.
_STEP_GROUPS = ("model", "data", "train", "sensitivity", "selection", "evaluation", "grid",
                "finetune")


def _placement(fields: dict[str, Any]) -> Any:
    return GROUPS["placement"](**fields)


__all__ = ["settings_from", "settings_of"]
