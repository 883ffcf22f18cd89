"""aihwkit and aihwkit-lightning models into swimkit: plain torch layers with the same weights.

swimkit works on plain ``nn.Linear`` / ``nn.Conv*d`` weights; aihwkit keeps a layer's weights
in its analog tiles (the layer's ``weight`` is None) and aihwkit-lightning runs its own
forward. :func:`to_torch` gives the model back with plain layers holding the weights the
tiles hold (aihwkit's and aihwkit-lightning's own ``convert_to_digital``: the tiles' weights
with their mapping scales, the digital biases), so every swimkit step takes it.
:func:`read_checkpoint` (a checkpoint reader, entry point ``swimkit.checkpoint_readers``)
does it for files: ``--checkpoint`` of a whole saved aihwkit(-lightning) model
(``torch.save(model)``), of an aihwkit state dict (tiles put back together; both read
with ``--trusted``: aihwkit pickles its tiles' settings), or of an aihwkit-lightning state dict
of a registered model (its input ranges and their statistics are left out: swimkit's chips
read inputs through its own converters).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import SwimkitError
from . import _lib

#: State entries of aihwkit-lightning layers that hold no weight (input range learning).
LIGHTNING_EXTRAS = ("input_range", "input_range_update_idx", "x_min", "x_max")


def _library(module: nn.Module) -> str | None:
    """``aihwkit`` or ``aihwkit_lightning`` for a layer of theirs, else None."""
    root = type(module).__module__.split(".")[0]
    return root if root in ("aihwkit", "aihwkit_lightning") else None


def analog_layers(model: nn.Module) -> dict[str, str]:
    """Name -> library of every aihwkit(-lightning) analog layer in ``model``."""
    found = {}
    for name, module in model.named_modules():
        library = _library(module)
        if library is not None and hasattr(module, "analog_module" if library == "aihwkit"
                                           else "rpu_config"):
            found[name] = library
    return found


def is_analog(model: nn.Module) -> bool:
    """True when ``model`` holds aihwkit or aihwkit-lightning analog layers."""
    return bool(analog_layers(model))


def to_torch(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every aihwkit(-lightning) analog layer replaced by the plain
    torch layer with its weights (``model`` itself when it has none), in eval mode as given."""
    layers = analog_layers(model)
    if not layers:
        return model
    training = model.training
    out = copy.deepcopy(model)
    if "aihwkit_lightning" in layers.values():
        out = _lib.lightning("aihwkit_lightning.nn.conversion").convert_to_digital(out)
    if "aihwkit" in analog_layers(out).values():
        out = _lib.module("aihwkit.nn.conversion").convert_to_digital(out)
    left = analog_layers(out)
    if left:
        raise SwimkitError(f"cannot convert aihwkit layer {next(iter(left))!r} to a plain torch "
                           "layer; convert it with aihwkit's convert_to_digital first")
    return out.train(training)


def _info(path: Path, fmt: str, name: str | None) -> dict[str, Any]:
    return {"format": fmt, "path": str(path), "model_name": name, "bits": None, "extra": {}}


def read_checkpoint(obj: Any, path: Path, model: nn.Module | None, model_name: str | None
                    ) -> tuple[nn.Module, dict[str, Any]] | None:
    """The plain model of an aihwkit(-lightning) file, or None when it is not one."""
    from ...models import build_model, canonical_model_name

    name = canonical_model_name(model_name) if model_name else None
    if isinstance(obj, nn.Module) and is_analog(obj):
        plain = to_torch(obj).eval()
        if model is not None:
            model.load_state_dict(plain.state_dict())
            plain = model
        return plain, _info(path, "aihwkit model", name)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) for k in obj):
        return None
    if any(".analog_module." in k for k in obj):
        if model is None:
            if name is None:
                raise SwimkitError(f"{str(path)!r} is an aihwkit state dict: give the model "
                                   "it belongs to (--model NAME, model_name=)")
            model = build_model(name)
        _load(model, analog_state(obj, dict(model.state_dict())), path, name)
        return model.eval(), _info(path, "aihwkit state dict", name)
    if not all(torch.is_tensor(v) for v in obj.values()):
        return None
    extras = [k for k in obj if k.rpartition(".")[2] in LIGHTNING_EXTRAS]
    if not extras:
        return None
    if model is None:
        if name is None:
            raise SwimkitError(f"{str(path)!r} is an aihwkit-lightning state dict: give the "
                               "model it belongs to (--model NAME, model_name=)")
        model = build_model(name)
    state = {k: v for k, v in obj.items() if k.rpartition(".")[2] not in LIGHTNING_EXTRAS}
    _load(model, state, path, name)
    return model.eval(), _info(path, "aihwkit-lightning state dict", name)


def _load(model: nn.Module, state: Mapping[str, Any], path: Path, name: str | None) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        problem = " ".join(str(err).split())
        raise SwimkitError(f"{str(path)!r} does not fit model {name!r}: {problem[:300]}") from None


def analog_state(state: Mapping[str, Any], plain: Mapping[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """The plain state dict of an aihwkit model's state dict: each layer's weight put back
    together from its tiles (``analog_module.tile.weight``, or ``analog_module.array.I.J``
    for input chunk I and output chunk J) times their mapping scales and learned output
    scales, its digital bias, and every other entry as it is."""
    out: dict[str, torch.Tensor] = {}
    tiles: dict[str, dict[tuple[int, int], torch.Tensor]] = {}
    for key, value in state.items():
        layer, found, rest = key.partition(".analog_module.")
        if not found:
            if torch.is_tensor(value):
                out[key] = value
            continue
        if rest == "bias":
            out[f"{layer}.bias"] = value
            continue
        parts = rest.split(".")
        if parts[-2:] != ["tile", "weight"]:
            continue
        tile = rest[: -len("tile.weight")]
        index = (int(parts[1]), int(parts[2])) if parts[0] == "array" else (0, 0)
        weight = value.detach().double()
        for scale_name in ("mapping_scales", "out_scaling_alpha"):
            scale = state.get(f"{layer}.analog_module.{tile}{scale_name}")
            if torch.is_tensor(scale) and scale.numel():
                weight = weight * scale.detach().double().reshape(-1, 1)
        tiles.setdefault(layer, {})[index] = weight
    for layer, blocks in tiles.items():
        inputs = 1 + max(i for i, _ in blocks)
        outputs = 1 + max(j for _, j in blocks)
        rows = [torch.cat([blocks[(i, j)] for i in range(inputs)], 1) for j in range(outputs)]
        matrix = torch.cat(rows, 0)
        key = f"{layer}.weight"
        if key not in plain:
            raise SwimkitError(f"the aihwkit state has layer {layer!r}, which the model has not")
        out[key] = matrix.reshape(plain[key].shape).to(plain[key].dtype)
    return out


def register() -> None:
    """Register the reader of aihwkit(-lightning) files (run once from the entry point)."""
    from ...checkpoints import CHECKPOINT_READERS, register_checkpoint_reader

    if "aihwkit" not in CHECKPOINT_READERS:
        register_checkpoint_reader(
            "aihwkit", read_checkpoint,
            help="whole aihwkit(-lightning) models (torch.save(model), --trusted) and "
                 "aihwkit-lightning state dicts, as plain torch layers")


__all__ = ["LIGHTNING_EXTRAS", "analog_layers", "analog_state", "is_analog", "read_checkpoint",
           "register", "to_torch"]
