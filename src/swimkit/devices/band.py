"""Device model ``band``: U-SWIM's value-dependent variation as a model of its own.

Gaussian devices whose spread is ``r`` times larger for weights at normalised levels
``low < |w| / s_l < high`` (renormalised so the mean variance stays about sigma^2, the
setting of U-SWIM, arXiv 2401.05357). The same as ``gaussian --variation band:R``.
"""

from __future__ import annotations

from typing import Any

from ..variation import AUTHORS_BAND, BandVariation
from .gaussian import DeviceModel
from .registry import register_device_model


def band(r: float = 3.0, low: float = AUTHORS_BAND[0], high: float = AUTHORS_BAND[1],
         **settings: Any) -> DeviceModel:
    return DeviceModel(variation=BandVariation(r, low, high), **settings)


register_device_model(
    "band", band,
    settings=("sigma", "sigma_verified", "bits_per_weight", "bits_per_device",
              "verified_variation", "write_verify"),
    options={"r": 3.0, "low": AUTHORS_BAND[0], "high": AUTHORS_BAND[1]},
    help="gaussian, r times the spread for weights in the band low < |w|/max|w| < high "
         "(U-SWIM)")

__all__ = ["band"]
