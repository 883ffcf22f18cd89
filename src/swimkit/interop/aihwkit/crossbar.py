"""swimkit's chip (:class:`~swimkit.chip.ChipSpec`: device model, crossbar, placement) and
aihwkit's ``rpu_config``, both ways, where the two mean the same; a one-line error naming
the setting where they do not. aihwkit keeps its noise model, its mapping and its
converters side by side in one ``rpu_config`` as a chip keeps its device model and its
crossbar: :func:`chip_of` reads a chip from an ``rpu_config`` (the noise model as an
aihwkit device model, the mapping and converters as the crossbar) and
:func:`rpu_config_of` writes one from a chip; :func:`crossbar_of` translates the crossbar
alone.

What corresponds (aihwkit's ``IOParameters`` and ``MappingParameter``; its analog forward
in ``aihwkit.simulator.tiles.analog_mvm``):

- tiles: ``mapping.max_input_size`` / ``max_output_size``. aihwkit splits a layer into as
  few tiles as fit, of sizes differing by at most one, and a convolution's matrix
  ``[out, in * kh * kw]`` by rows; swimkit fills tiles of whole input channels. The two
  agree for a given model when one tile height gives both splits (:func:`crossbar_of`
  finds it, or names the layer where none does).
- ranges: aihwkit's conductance converter maps each tile's largest |w| to g_max (``tile``);
  with ``weight_scaling_omega`` > 0 and ``weight_scaling_columnwise`` each column of a tile
  has its own (``column``). One range per layer has no aihwkit equivalent.
- signs: aihwkit's device models hold signs themselves (a device pair, or one device over
  [g_min, g_max]); swimkit's crossbar then holds magnitudes (``signed="magnitude"``).
- converters: noise management ``ABS_MAX`` with ``inp_bound`` 1 is swimkit's input scaling;
  ``inp_res`` r is a step of 2 r, so r = 1 / (2 (2^(B-1) - 1)) is a B-bit DAC; ``out_res``
  1 / (2^B - 2) over ``out_bound`` R is a B-bit ADC over [-R, R]; ``out_noise`` is the
  output noise. aihwkit reads its tiles in the units of the weights it holds: in swimkit's
  normalised units (weights over their range) only with ``weight_scaling_omega`` set
  (omega: the range maps to omega), so converters need it. Bound management (aihwkit's
  ``ITERATIVE`` repeats a clipped read with smaller inputs) and the other non-idealities
  (input noise, weight noise, IR drop, non-linearity, asymmetry) are not modelled by swimkit.
- placement: aihwkit's ``convert_to_analog`` puts every convolution and linear layer on
  tiles (unless told to exclude some) and keeps BatchNorm digital; the ``rpu_config`` has
  no say in it. :func:`~swimkit.interop.aihwkit.apply_plan` refuses a plan whose layers
  and the model's analog layers differ, and a chip that folds BatchNorm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from ...chip import ChipSpec, Placement
from ...crossbar import Crossbar
from ...errors import SwimkitError
from . import _lib
from .conductances import split_sizes
from .devices import AihwkitDevice
from .registration import device_model_of

#: IOParameters fields swimkit does not model, with the value that leaves them out.
UNMODELLED = {"inp_noise": 0.0, "inp_asymmetry": 0.0, "out_noise_std": 0.0,
              "out_asymmetry": 0.0, "w_noise": 0.0, "ir_drop": 0.0, "out_nonlinearity": 0.0,
              "out_nonlinearity_std": 0.0, "slope_calibration": 0.0, "v_offset_std": 0.0,
              "r_series": 0.0, "w_read_asymmetry_dtod": 0.0}


def _bits(steps: float, offset: float, what: str, fix: str) -> int:
    """B with 2^B - ``offset`` ~ ``steps``, or an error."""
    bits = math.log2(steps + offset)
    if abs(bits - round(bits)) > 1e-6 or round(bits) < 2:
        raise SwimkitError(f"aihwkit's {what} is no whole number of bits of swimkit's "
                           f"converter; {fix}")
    return int(round(bits))


def _enum(value: Any) -> str:
    return str(getattr(value, "name", value)).upper()


def converters_of(forward: Any, omega: float) -> dict[str, Any]:
    """The converter settings of swimkit's Crossbar for aihwkit's ``IOParameters``."""
    if getattr(forward, "is_perfect", False):
        return {}
    for name, neutral in UNMODELLED.items():
        value = getattr(forward, name, neutral)
        if value not in (neutral, None):
            raise SwimkitError(f"aihwkit's forward.{name} = {value!r} is not modelled by "
                               f"swimkit's crossbar; set it to {neutral}")
    if _enum(getattr(forward, "mv_type", "ONE_PASS")) != "ONE_PASS":
        raise SwimkitError("aihwkit's forward.mv_type must be ONE_PASS for swimkit's crossbar")
    if _enum(forward.bound_management) != "NONE":
        raise SwimkitError(f"aihwkit's forward.bound_management = {_enum(forward.bound_management)}"
                           " repeats clipped reads with smaller inputs, which swimkit does not "
                           "model; set it to BoundManagementType.NONE (swimkit clips at the ADC)")
    reads = forward.inp_res > 0 or forward.out_res > 0 or forward.out_noise > 0
    if not reads:
        return {}
    if _enum(forward.noise_management) != "ABS_MAX" or forward.inp_bound != 1.0:
        raise SwimkitError("swimkit's converters scale inputs by their absolute maximum into "
                           "[-1, 1]: set forward.noise_management = ABS_MAX and inp_bound = 1")
    if omega <= 0:
        raise SwimkitError("aihwkit reads its tiles in the units of the weights "
                           "(mapping.weight_scaling_omega = 0), so its ADC and output noise "
                           "depend on the weights' scale; set weight_scaling_omega = 1.0 to "
                           "read in swimkit's normalised units")
    out: dict[str, Any] = {}
    if forward.inp_res > 0:
        res = 1 / forward.inp_res if forward.inp_res > 1 else forward.inp_res
        out["dac_bits"] = _bits(1 / (2 * res), 1, f"inp_res {forward.inp_res!r}",
                                "use inp_res = 1 / (2 (2^(B-1) - 1)), e.g. 1/126 for 7 bits") + 1
    if forward.out_res > 0:
        res = 1 / forward.out_res if forward.out_res > 1 else forward.out_res
        out["adc_bits"] = _bits(1 / res, 2, f"out_res {forward.out_res!r}",
                                "use out_res = 1 / (2^B - 2), e.g. 1/510 for 9 bits")
    if forward.out_bound > 0:
        out["adc_range"] = float(forward.out_bound) / omega
    elif "adc_bits" in out:
        raise SwimkitError("aihwkit's ADC has no bound (forward.out_bound <= 0): give one")
    out["output_noise"] = float(forward.out_noise) / omega
    return out


def _swimkit_sizes(height: int, shape: Sequence[int]) -> list[int] | None:
    """Rows of each of swimkit's row tiles of a weight of ``shape`` at tile height ``height``."""
    unit, units = math.prod(shape[2:]), int(shape[1])
    if height < unit:
        return None
    per = height // unit
    tiles = -(-units // per)
    return [per * unit] * (tiles - 1) + [(units - per * (tiles - 1)) * unit]


def _split_height(model: nn.Module, most: int, placement: Placement) -> int:
    """The tile height (rows) at which swimkit splits every device weight of ``model`` (as
    ``placement`` places them) as aihwkit does with ``most`` inputs a tile, or an error
    naming a layer where none does."""
    weights = placement.weights(placement.held(model))
    if not weights:
        raise SwimkitError("the model has no weights on devices to tile (no convolution, "
                           "linear or attention weight the placement keeps)")
    shapes = {n: tuple(w.value.shape) for n, w in weights.items()}
    wanted = {n: split_sizes(math.prod(s[1:]), most) for n, s in shapes.items()}
    for height in sorted({sizes[0] for sizes in wanted.values()} | {most}):
        if all(_swimkit_sizes(height, s) == wanted[n] for n, s in shapes.items()):
            return height
    name = next((n for n, s in shapes.items() if _swimkit_sizes(wanted[n][0], s) != wanted[n]),
                next(iter(shapes)))
    raise SwimkitError(f"{name}: aihwkit splits its {math.prod(shapes[name][1:])} rows into "
                       f"tiles of {wanted[name]}, which swimkit's tiles (whole input channels, "
                       "one height for every layer) cannot follow; change max_input_size")


def crossbar_of(rpu_config: Any, model: nn.Module | None = None,
                placement: Placement | None = None) -> Crossbar:
    """swimkit's Crossbar for aihwkit's ``rpu_config`` (its tiles, ranges and forward); with
    ``model``, tiles that split every device weight (those ``placement`` puts on devices,
    by default every conv and linear weight) as aihwkit does (else an error)."""
    mapping, forward = rpu_config.mapping, rpu_config.forward
    if not getattr(mapping, "digital_bias", True):
        raise SwimkitError("aihwkit's mapping.digital_bias = False puts the bias on the "
                           "tile; swimkit keeps biases digital: set it to True")
    omega = float(getattr(mapping, "weight_scaling_omega", 0.0) or 0.0)
    columnwise = bool(getattr(mapping, "weight_scaling_columnwise", False)) and omega > 0
    most_in, most_out = int(mapping.max_input_size), int(mapping.max_output_size)
    rows = most_in if most_in > 0 else None
    if model is not None and most_in > 0:
        rows = _split_height(model, most_in, placement or Placement())
    columns = most_out if most_out > 0 else None
    return Crossbar(tile_rows=rows, tile_columns=columns,
                    ranges="column" if columnwise else "tile", signed="magnitude",
                    **converters_of(forward, omega if omega > 0 else 0.0))


def chip_of(rpu_config: Any, model: nn.Module | None = None, *,
            placement: Placement | None = None, **settings: Any) -> ChipSpec:
    """swimkit's chip for aihwkit's ``rpu_config``: its noise model as an aihwkit device
    model (:func:`~swimkit.interop.aihwkit.device_model_of`, with ``settings``), its
    mapping and converters as the crossbar (:func:`crossbar_of`, tiles split as aihwkit
    splits ``model``), and ``placement`` (default: every conv and linear weight, as
    ``convert_to_analog`` converts them). The device model's tiles (those its reads are
    converted again in) are the crossbar's, which split every layer as ``rpu_config``
    does, so ``chip_of(rpu_config_of(chip), model) == chip``."""
    placement = placement or Placement()
    crossbar = crossbar_of(rpu_config, model, placement)
    if crossbar.tile_rows is not None:
        settings.setdefault("tile_inputs", crossbar.tile_rows)
    if crossbar.tile_columns is not None:
        settings.setdefault("tile_outputs", crossbar.tile_columns)
    return ChipSpec(device_model_of(rpu_config, **settings), crossbar, placement)


def rpu_config_of(chip: ChipSpec | Crossbar, config: Any = None) -> Any:
    """aihwkit's ``TorchInferenceRPUConfig`` (or ``config``, changed) for swimkit's ``chip``:
    its crossbar's tiles, ranges and converters, and its aihwkit device model's noise model
    and drift compensation. A :class:`~swimkit.crossbar.Crossbar` alone sets the mapping and
    converters and leaves the noise model as it is."""
    device: AihwkitDevice | None = None
    if isinstance(chip, ChipSpec):
        if not isinstance(chip.device_model, AihwkitDevice):
            kind = chip.device_model.describe().get("kind", type(chip.device_model).__name__)
            raise SwimkitError(f"the chip's device model {kind!r} is not an aihwkit noise model, "
                               "so aihwkit cannot program it: give a chip of an aihwkit device "
                               "model (--device-model aihwkit-pcm, chip_of(rpu_config)), or "
                               "rpu_config_of(chip.crossbar) for the mapping and converters "
                               "alone")
        device, crossbar = chip.device_model, chip.crossbar
    elif isinstance(chip, Crossbar):
        crossbar = chip
    else:
        raise SwimkitError(f"rpu_config_of takes a swimkit.ChipSpec or a swimkit.Crossbar "
                           f"(got {type(chip).__name__})")
    if crossbar.signed != "magnitude":
        raise SwimkitError(f"signed={crossbar.signed!r}: aihwkit's device models hold signs "
                           "themselves (a device pair, or one device over its range); use "
                           "signed='magnitude' with an aihwkit device model")
    if crossbar.ranges == "layer" and (crossbar.tile_rows or crossbar.tile_columns):
        raise SwimkitError("aihwkit maps each tile's largest weight to g_max: one range per "
                           "layer over several tiles has no aihwkit setting; use "
                           "ranges='tile' or 'column'")
    configs = _lib.module("aihwkit.simulator.configs")
    enums = _lib.module("aihwkit.simulator.parameters.enums")
    if config is None:
        config = configs.TorchInferenceRPUConfig()
    mapping, forward = config.mapping, config.forward
    mapping.max_input_size = crossbar.tile_rows or 0
    mapping.max_output_size = crossbar.tile_columns or 0
    mapping.digital_bias = True
    mapping.weight_scaling_omega = 1.0 if (crossbar.converts or crossbar.ranges == "column") \
        else 0.0
    mapping.weight_scaling_columnwise = crossbar.ranges == "column"
    forward.is_perfect = not crossbar.converts
    forward.bound_management = enums.BoundManagementType.NONE
    forward.noise_management = enums.NoiseManagementType.ABS_MAX
    forward.inp_bound = 1.0
    forward.inp_res = (1 / (2 * (2 ** (crossbar.dac_bits - 1) - 1)) if crossbar.dac_bits
                       else -1.0)
    forward.out_res = 1 / (2**crossbar.adc_bits - 2) if crossbar.adc_bits else -1.0
    forward.out_bound = crossbar.adc_range if crossbar.adc_bits else -1.0
    forward.out_noise = crossbar.output_noise
    for name, neutral in UNMODELLED.items():
        if hasattr(forward, name):
            setattr(forward, name, neutral)
    if device is not None:
        config.noise_model = device.noise
        compensation = _lib.module("aihwkit.inference.compensation.drift")
        config.drift_compensation = (compensation.GlobalDriftCompensation()
                                     if device.compensation else None)
    return config


__all__ = ["UNMODELLED", "chip_of", "converters_of", "crossbar_of", "rpu_config_of"]
