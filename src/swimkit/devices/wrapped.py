"""A device model built on another one: what it does not change, it asks its base.

:class:`~swimkit.devices.mapped.MappedDevice` (weights as device pairs or with an offset)
and :class:`~swimkit.devices.stuck.Stuck` (stuck cells) change how a base model's devices
are drawn or priced, and keep its slicing, spread and write-verify loop; they inherit
those here instead of each forwarding them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..programming import WriteVerify
from ..slicing import BitSlicing


class WrappedDevice:
    """Mixin of a frozen dataclass with a ``base`` device model: the settings below are
    the base's, and :meth:`with_sigma` rebuilds the wrapper on the base's copy."""

    base: Any

    @property
    def slicing(self) -> BitSlicing:
        return self.base.slicing

    @property
    def sigma(self) -> float:
        return self.base.sigma

    @property
    def loop(self) -> WriteVerify:
        return self.base.loop

    @property
    def prices_by_value(self) -> bool:
        return bool(self.base.prices_by_value)

    def default_menu(self) -> tuple[float, ...]:
        return self.base.default_menu()

    @property
    def changes_with_time(self) -> bool:
        return bool(getattr(self.base, "changes_with_time", True))

    def with_sigma(self, sigma: float) -> Any:
        """The same wrapper on the base device with plain-write spread ``sigma``."""
        return replace(self, base=self.base.with_sigma(sigma))  # type: ignore[type-var]


__all__ = ["WrappedDevice"]
