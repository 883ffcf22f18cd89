"""Device models: how far a programmed weight lands from its target, and when.

Every model follows the two protocols of :mod:`~swimkit.devices.protocol` (drawing
chips at times after programming; pricing verify options) and is registered in
:data:`DEVICE_MODELS`, one file per model:

- ``gaussian`` (:class:`DeviceModel`): Gaussian error per device step, frozen;
  with ``levels`` a spread per device level (:mod:`~swimkit.devices.multilevel`);
- ``band`` / ``table``: value-dependent spreads (U-SWIM's band, a measured curve);
- ``pcm``: phase-change memory with drift, read noise and drift compensation;
- ``stuck``: stuck cells on top of another model.

A new model is one file: a class with those methods (or a
:class:`~swimkit.devices.cells.CellModel` subclass, which answers device by device)
and one :func:`register_device_model` call.
"""

from . import band as _band  # noqa: F401
from . import gaussian as _gaussian  # noqa: F401 - registers gaussian first
from . import pcm as _pcm  # noqa: F401
from . import stuck as _stuck  # noqa: F401
from . import table as _table  # noqa: F401
from .cells import CellModel, Cells
from .gaussian import DeviceModel, GaussianDevice, draw, level_of
from .multilevel import MultiLevelGaussian
from .pcm import PCM
from .protocol import (
                       Device,
                       NoiseModel,
                       PricingModel,
                       Sampler,
                       check_times,
                       require_device,
                       require_noise_model,
)
from .registry import DEVICE_MODELS, build_device_model, parse_option, register_device_model
from .stuck import Stuck

__all__ = ["DEVICE_MODELS", "PCM", "CellModel", "Cells", "Device", "DeviceModel",
           "MultiLevelGaussian", "NoiseModel", "PricingModel", "Sampler", "Stuck",
           "GaussianDevice", "build_device_model", "check_times", "draw", "level_of",
           "parse_option", "register_device_model", "require_device", "require_noise_model"]
