"""swimkit and IBM's aihwkit: aihwkit's noise models as swimkit device models, swimkit's
plans applied to aihwkit analog models, and aihwkit(-lightning) models taken by swimkit.

Importing this package does not import aihwkit; each function does when called, and
says how to install it (``pip install "swimkit[aihwkit]"``) where it is missing.
"""

from ._lib import INSTALL, available
from .devices import AihwkitDevice
from .registration import device_model, device_model_of, register

__all__ = ["INSTALL", "AihwkitDevice", "available", "device_model", "device_model_of",
           "register"]
