"""swimkit: selective write-verify (SWIM) for computing-in-memory neural accelerators."""

from .errors import SwimkitError
from .mapping import DeviceWeight, device_weights, perturbed
from .quantization import FakeQuantize, quantize
from .sensitivity import Sensitivity, sensitivity

__version__ = "0.1.0"

__all__ = [
    "DeviceWeight",
    "FakeQuantize",
    "Sensitivity",
    "SwimkitError",
    "device_weights",
    "perturbed",
    "quantize",
    "sensitivity",
]
