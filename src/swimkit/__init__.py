"""swimkit: selective write-verify (SWIM) for computing-in-memory neural accelerators.

Which weights of a network must be write-verified on a CiM device, what accuracy is
kept, and how much programming time is saved. Models stay plain ``torch.nn.Module``s;
device noise, quantization, sensitivity and selection attach from outside.
"""

from . import data, models, programming, variation
from .data import load_dataset
from .devices import DeviceModel
from .errors import SwimkitError
from .mapping import DeviceWeight, device_weights, perturbed
from .models import build_model
from .montecarlo import MCResult, accuracy, evaluate
from .programming import WriteVerify
from .quantization import FakeQuantize, quantize
from .selection import Plan, select
from .sensitivity import Sensitivity, sensitivity
from .variation import BandVariation, TableVariation

__version__ = "0.1.0"

__all__ = [
    "BandVariation",
    "DeviceModel",
    "DeviceWeight",
    "FakeQuantize",
    "MCResult",
    "Plan",
    "Sensitivity",
    "SwimkitError",
    "TableVariation",
    "WriteVerify",
    "accuracy",
    "build_model",
    "data",
    "device_weights",
    "evaluate",
    "load_dataset",
    "models",
    "perturbed",
    "programming",
    "quantize",
    "select",
    "sensitivity",
    "variation",
]
