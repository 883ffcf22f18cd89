"""Device model ``table``: a measured spread-against-level curve as a model of its own.

Gaussian devices whose spread at normalised level |w| / s_l is ``sigma`` times the
piecewise-linear curve of a CSV file (columns level,sigma). The same as
``gaussian --variation FILE.csv``.
"""

from __future__ import annotations

from typing import Any

from ..errors import require
from ..variation import TableVariation
from .gaussian import DeviceModel
from .registry import register_device_model


def table(path: str = "", **settings: Any) -> DeviceModel:
    require(bool(path), "device model table needs its curve: --device-option "
                              "path=FILE.csv (columns level,sigma)")
    return DeviceModel(variation=TableVariation.from_csv(str(path)), **settings)


register_device_model(
    "table", table,
    settings=("sigma", "sigma_verified", "bits_per_weight", "bits_per_device",
              "verified_variation", "write_verify"),
    options={"path": ""},
    help="gaussian with a measured spread-against-level curve (path=FILE.csv)")

__all__ = ["table"]
