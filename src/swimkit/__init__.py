"""swimkit: selective write-verify for computing-in-memory neural accelerators.

Which devices of a network must be write-verified on a CiM chip, to which tolerance,
what accuracy is kept, and how much programming time is saved. Models stay plain
``torch.nn.Module``s; device noise, quantization, sensitivity and selection attach from
outside. Each extensible concept has one registry: selection methods
(:func:`register_method`), sensitivity engines, models, datasets and curvature rules
(:func:`register_rule`, :func:`register_elementwise`, checked with :func:`check_rule`)
and device models (:func:`register_device_model`), which follow the protocols of
:mod:`swimkit.devices`.
"""

from . import data, devices, models, programming, variation
from .crossbar import Crossbar
from .data import load_dataset, register_dataset
from .devices import DeviceModel, NoiseModel, build_device_model, register_device_model
from .errors import SwimkitError
from .mapping import DeviceWeight, device_weights, perturbed
from .models import build_model, register_model
from .montecarlo import MCResult, accuracy, evaluate
from .plans import Plan
from .programming import WriteVerify
from .quantization import FakeQuantize, quantize
from .selection import register_method, select
from .sensitivity import Sensitivity, register_engine, sensitivity
from .sensitivity.swim import check_rule, register_elementwise, register_rule, remove_rule
from .slicing import BitSlicing
from .variation import BandVariation, TableVariation

__version__ = "0.2.0"

__all__ = [
    "BandVariation",
    "BitSlicing",
    "Crossbar",
    "DeviceModel",
    "DeviceWeight",
    "FakeQuantize",
    "MCResult",
    "NoiseModel",
    "Plan",
    "Sensitivity",
    "SwimkitError",
    "TableVariation",
    "WriteVerify",
    "accuracy",
    "build_device_model",
    "build_model",
    "check_rule",
    "data",
    "devices",
    "device_weights",
    "evaluate",
    "load_dataset",
    "models",
    "perturbed",
    "programming",
    "quantize",
    "register_dataset",
    "register_device_model",
    "register_elementwise",
    "register_engine",
    "register_method",
    "register_model",
    "register_rule",
    "remove_rule",
    "select",
    "sensitivity",
    "variation",
]
