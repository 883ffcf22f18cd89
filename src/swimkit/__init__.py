"""swimkit: selective write-verify for computing-in-memory neural accelerators.

Which devices of a network must be write-verified on a CiM chip, to which tolerance,
what accuracy is kept, and how much programming time is saved. Models stay plain
``torch.nn.Module``s; device noise, quantization, sensitivity and selection attach from
outside. A chip (:class:`ChipSpec`: a device model, a :class:`Crossbar` and the
:class:`Placement` of weights on devices) is what every step takes: :func:`sensitivity`,
:func:`select`, :func:`evaluate` and :func:`train`, each with its settings group and
keyword overrides of its fields. Each extensible concept has one registry: selection methods
(:func:`register_method`), sensitivity engines, models, datasets and curvature rules
(:func:`register_rule`, :func:`register_elementwise`, checked with :func:`check_rule`)
and device models (:func:`register_device_model`), which follow the protocols of
:mod:`swimkit.devices`.
"""

from . import data, devices, models, programming, variation
from .chip import ChipSpec, Placement
from .crossbar import Crossbar
from .data import load_dataset, register_dataset
from .devices import (
    DeviceModel,
    GaussianDevice,
    NoiseModel,
    build_device_model,
    register_device_model,
)
from .errors import SwimkitError
from .mapping import DeviceWeight, device_weights, perturbed
from .models import build_model, register_model
from .montecarlo import EvaluationSettings, MCResult, accuracy, evaluate
from .plans import Plan
from .programming import WriteVerify
from .quantization import FakeQuantize, quantize
from .selection import SelectionSettings, register_method, register_planner, select
from .sensitivity import Sensitivity, SensitivitySettings, register_engine, sensitivity
from .sensitivity.swim import check_rule, register_elementwise, register_rule, remove_rule
from .slicing import BitSlicing
from .training import TrainConfig, train
from .variation import BandVariation, TableVariation

__version__ = "0.2.0"

__all__ = [
    "BandVariation",
    "BitSlicing",
    "ChipSpec",
    "Crossbar",
    "DeviceModel",
    "DeviceWeight",
    "EvaluationSettings",
    "FakeQuantize",
    "GaussianDevice",
    "MCResult",
    "NoiseModel",
    "Placement",
    "Plan",
    "SelectionSettings",
    "Sensitivity",
    "SensitivitySettings",
    "SwimkitError",
    "TableVariation",
    "TrainConfig",
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
    "register_planner",
    "register_rule",
    "remove_rule",
    "select",
    "sensitivity",
    "train",
    "variation",
]
