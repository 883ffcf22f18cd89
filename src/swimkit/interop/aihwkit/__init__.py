"""swimkit and IBM's aihwkit: aihwkit's noise models as swimkit device models, swimkit's
plans applied to aihwkit analog models, a chip as aihwkit's ``rpu_config`` and back
(:func:`chip_of`, :func:`rpu_config_of`), and aihwkit(-lightning) models taken by swimkit
as plain torch layers (docs/aihwkit.md).

Importing this package does not import aihwkit; each function does when called, and
says how to install it (``pip install "swimkit[aihwkit]"``) where it is missing.
"""

from ._lib import INSTALL, available
from .crossbar import chip_of, crossbar_of, rpu_config_of
from .devices import AihwkitDevice
from .models import to_torch
from .planned import aihwkit_chips, apply_plan
from .registration import device_model, device_model_of, register

__all__ = ["INSTALL", "AihwkitDevice", "aihwkit_chips", "apply_plan", "available", "chip_of",
           "crossbar_of", "device_model", "device_model_of", "register", "rpu_config_of",
           "to_torch"]
