"""Model checkpoints: swimkit's own files, and the SWIM reference code's ``saved_B_*.pt``.

A swimkit checkpoint is a dict with ``kind="swimkit.checkpoint"``, the registry name of
the model, its quantization bits and output range, its state dict in *plain* names and
an ``extra`` dict (epoch, optimizer state, accuracy, ...). Plain names are the names of
the float model: swimkit's quantizer registers torch parametrizations, which rename
``conv1.weight`` to ``conv1.parametrizations.weight.original`` in ``state_dict()``;
:func:`plain_state_dict` undoes that, so float and quantized models share one format and
a float checkpoint loads into a quantized model (its output quantizers then stay
uncalibrated).

Reference checkpoints are bare state dicts (or dicts with a ``"state_dict"`` entry)
whose layers wrap a torch layer as ``op`` and carry extra per-layer tensors. They are
mapped to plain names by :func:`reference_state_dict`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import pickle
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import SwimkitError, first_line, require
from .frozen import thawed
from .models import MODELS, build_model, canonical_model_name, model_info
from .quantization import OutputQuantizer, quantization_bits
from .registry import Entry, Registry
from .storage import atomic_save

CHECKPOINT_KIND = "swimkit.checkpoint"
CHECKPOINT_VERSION = 1

REFERENCE_EXTRA_SUFFIXES: tuple[str, ...] = ("weightS", "noise", "mask")
"""Last key components of reference layers that are not model state and are dropped:
``weightS`` (the stored device-noise draw), ``noise`` and ``mask`` (noise / write-verify
masks). Any other key that does not fit the model is an error."""

OPTIONAL_KEYS: tuple[str, ...] = ("*.output_quantizer.*",)
"""Keys a checkpoint may lack (fnmatch patterns): output-quantizer calibration, absent from
float checkpoints; a quantized model loading one keeps its quantizers uncalibrated."""

REFERENCE_OPTIONAL_KEYS: tuple[str, ...] = (*OPTIONAL_KEYS, "*num_batches_tracked")
"""For reference checkpoints, also BatchNorm's step counter (older torch did not save it)."""


@dataclass(frozen=True)
class CheckpointReader(Entry):
    """A file format of another tool: ``read(obj, path, model, model_name)`` gets what
    ``torch.load`` read and returns ``(model, info)`` as :func:`load_checkpoint` does, or
    None when the file is not of its format."""

    read: Callable[..., tuple[nn.Module, dict[str, Any]] | None] | None = None


#: Readers of other tools' files, asked before a file is read as a reference checkpoint
#: (entry-point group ``swimkit.checkpoint_readers``).
CHECKPOINT_READERS: Registry[CheckpointReader] = Registry(
    "checkpoint reader", entry_point_group="swimkit.checkpoint_readers")


def register_checkpoint_reader(name: str, read: Callable[..., Any], *, help: str = "",
                               replace: bool = False) -> CheckpointReader:
    """Add a reader of another tool's checkpoints (see :class:`CheckpointReader`)."""
    require(callable(read), f"the checkpoint reader {name!r} must be callable")
    return CHECKPOINT_READERS.add(CheckpointReader(name=name, help=help, read=read),
                                  replace=replace)


_PARAMETRIZED = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")
_SHOWN_KEYS = 5


def plain_key(key: str) -> str:
    """``X.parametrizations.weight.original`` -> ``X.weight``; other keys unchanged."""
    return _PARAMETRIZED.sub(r"\1\2", key)


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with parametrized tensors under their plain (float) names."""
    return {plain_key(k): v for k, v in model.state_dict().items()}


def weights_digest(model: nn.Module) -> str:
    """A short hash of the model's plain state (names, dtypes, shapes and values): the
    same for the same weights, wherever they were loaded from."""
    h = hashlib.sha256()
    for name, tensor in sorted(plain_state_dict(model).items()):
        value = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_plain_state_dict(
    model: nn.Module, state: Mapping[str, Tensor], *, saved_for: str | None = None
) -> None:
    """Load ``state`` (plain or parametrized names) into ``model``, quantized or not.

    Every key must fit the model, except the optional :data:`OPTIONAL_KEYS`; otherwise a
    :class:`SwimkitError` lists the missing and unexpected keys (``saved_for``, the model
    name the state was saved for, goes into that message).
    """
    _load_into(model, state, OPTIONAL_KEYS, saved_for=saved_for)


def _load_into(
    model: nn.Module,
    state: Mapping[str, Any],
    optional: Iterable[str],
    *,
    saved_for: str | None = None,
    what: str = "the state dict",
) -> None:
    current = model.state_dict()
    raw_by_plain = {plain_key(k): k for k in current}
    given = {plain_key(k): v for k, v in state.items()}
    missing = [
        k
        for k in raw_by_plain
        if k not in given and not any(fnmatch.fnmatchcase(k, p) for p in optional)
    ]
    unexpected = [k for k in given if k not in raw_by_plain]
    hint = _saved_for_hint(saved_for)
    if missing or unexpected:
        raise SwimkitError(
            f"{what} does not fit the {type(model).__name__} model: "
            f"missing keys {_show(missing)}; unexpected keys {_show(unexpected)}{hint}"
        )
    wrong = [
        f"{k} is {_shape(v)} in the checkpoint but {_shape(current[raw_by_plain[k]])} in the model"
        for k, v in given.items()
        if not torch.is_tensor(v) or v.shape != current[raw_by_plain[k]].shape
    ]
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise SwimkitError(
            f"{what} does not fit the {type(model).__name__} model: {wrong[0]}{more}{hint}"
        )
    model.load_state_dict({raw_by_plain[k]: v for k, v in given.items()}, strict=False)


def _show(keys: list[str]) -> str:
    if not keys:
        return "(none)"
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if torch.is_tensor(value) else f"a {type(value).__name__}"


def _saved_for_hint(saved_for: str | None) -> str:
    if saved_for is None:
        return "; load it into the model it was saved for"
    return (
        f"; it was saved for model {saved_for!r}: build that model or pass model_name={saved_for!r}"
    )


def _output_range(model: nn.Module) -> str | None:
    for m in model.modules():
        if isinstance(m, OutputQuantizer):
            return m.output_range
    return None


def save_checkpoint(
    path: str | Path, model: nn.Module, *, model_name: str, extra: dict | None = None,
    input_shape: Sequence[int] | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically as a swimkit checkpoint.

    ``model_name`` is stored canonical when it is a registry name (so :func:`load_checkpoint`
    can rebuild the model, for ``input_shape`` when it was built for other images than its
    registered ones); ``extra`` holds anything else worth keeping (epoch, optimizer
    state, accuracy) and comes back as ``info["extra"]``; frozen containers in it (a
    plan's settings, say) are written as plain ones, so the file stays tensor-only and
    loads without ``trusted``.
    """
    require(isinstance(model, nn.Module), f"model must be a torch.nn.Module (got {model!r})")
    require(
        extra is None or isinstance(extra, dict),
        f"extra must be a dict (got {type(extra).__name__})",
    )
    with contextlib.suppress(SwimkitError):  # a model outside the registry keeps its name
        model_name = canonical_model_name(model_name)
    payload = {
        "kind": CHECKPOINT_KIND,
        "version": CHECKPOINT_VERSION,
        "model_name": model_name,
        "bits": quantization_bits(model),
        "output_range": _output_range(model),
        "input_shape": None if input_shape is None else [int(n) for n in input_shape],
        "state_dict": {k: v.detach().cpu() for k, v in plain_state_dict(model).items()},
        "extra": thawed(extra or {}),
    }
    return atomic_save(payload, path)


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    model_name: str | None = None,
    *,
    trusted: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a swimkit or SWIM reference checkpoint; return ``(model, info)``.

    Without ``model``, the model is built from ``model_name``, else from the name stored
    in a swimkit checkpoint (quantized as stored), else from a reference file name such as
    ``saved_B_QLeNet.pt``. ``info`` has ``format`` ("swimkit" or "reference"), ``path``,
    ``model_name``, ``bits``, ``extra`` and, for reference files, ``dropped_keys``.
    Files are read with ``weights_only=True``; ``trusted=True`` allows files that hold
    other pickled Python objects (only for files you trust: unpickling can run code).
    """
    path = Path(path)
    require(path.is_file(), f"checkpoint {str(path)!r} does not exist; check the path")
    obj = _read(path, trusted)
    if isinstance(obj, Mapping) and obj.get("kind") == CHECKPOINT_KIND:
        return _load_swimkit(obj, path, model, model_name)
    for reader in CHECKPOINT_READERS:
        assert reader.read is not None
        found = reader.read(obj, path, model, model_name)
        if found is not None:
            return found
    return _load_reference(obj, path, model, model_name)


def _read(path: Path, trusted: bool) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it may refuse
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trusted:
            problem = (f"{str(path)!r} is not a tensor-only PyTorch checkpoint (it holds other "
                       "pickled Python objects, or is damaged); if you trust the file, ")
            raise SwimkitError(problem + "load it with trusted=True",
                               command_line=problem + "add --trusted") from None
    except Exception as err:  # a truncated or foreign file
        raise _unreadable(path, err) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any failure to unpickle means a bad file
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: Exception) -> SwimkitError:
    with open(path, "rb") as f:
        start = f.read(4)
    if not (start.startswith(b"PK") or start[:1] == b"\x80"):  # zip archive or pickle
        return SwimkitError(f"{str(path)!r} is not a PyTorch checkpoint; give the file that "
                            "training wrote (best.pt or last.pt)")
    reason = first_line(err)
    return SwimkitError(
        f"{str(path)!r} is not a readable PyTorch checkpoint ({reason}); "
        "check that the file is complete"
    )


def _load_swimkit(
    obj: Mapping[str, Any], path: Path, model: nn.Module | None, model_name: str | None
) -> tuple[nn.Module, dict[str, Any]]:
    stored, bits = obj.get("model_name"), obj.get("bits")
    state = obj.get("state_dict")
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SwimkitError(f"checkpoint {str(path)!r} holds no state_dict of tensors (damaged "
                           "or not written by swimkit); train again or give another file")
    if model is None:
        model = _build(model_name, stored, bits, obj.get("output_range"), obj.get("input_shape"))
    _load_into(
        model,
        state,
        OPTIONAL_KEYS,
        saved_for=stored,
        what=f"checkpoint {str(path)!r}",
    )
    info = {
        "format": "swimkit",
        "path": str(path),
        "model_name": stored,
        "bits": bits,
        "extra": dict(obj.get("extra") or {}),
    }
    return model, info


def _build(
    requested: str | None, stored: str | None, bits: int | None, output_range: str | None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """The model a swimkit checkpoint asks for; a quantized state rebuilds a q-variant."""
    name = requested or stored
    if name is None:
        raise _unknown_model("the checkpoint does not say which model it holds")
    try:
        info = model_info(name)
    except SwimkitError:
        if requested is not None:
            raise
        raise _unknown_model(f"the checkpoint holds {name!r}, which is not registered") from None
    if requested is None and bits is not None and not info.quantized:
        info = model_info(f"q{info.name}")
    return build_model(
        info.name,
        bits=bits if info.quantized else None,
        output_range=output_range or "running",
        input_shape=input_shape,
    )


def _unknown_model(problem: str) -> SwimkitError:
    return SwimkitError(
        f"{problem}; pass model_name= (one of {', '.join(sorted(MODELS.names()))}) or model="
    )


def _load_reference(
    obj: Any, path: Path, model: nn.Module | None, model_name: str | None
) -> tuple[nn.Module, dict[str, Any]]:
    state, extra = _reference_parts(obj, path)
    name = canonical_model_name(model_name) if model_name else None
    if model is None:
        name = name or _name_from_filename(path)
        if name is None:
            raise _unknown_model(f"cannot tell which model {path.name!r} holds")
        model = build_model(name)
    mapped, dropped = reference_state_dict(state, plain_state_dict(model))
    _load_into(
        model,
        mapped,
        REFERENCE_OPTIONAL_KEYS,
        saved_for=name or _name_from_filename(path),
        what=f"reference checkpoint {str(path)!r}",
    )
    info = {
        "format": "reference",
        "path": str(path),
        "model_name": name,
        "bits": quantization_bits(model),
        "extra": extra,
        "dropped_keys": dropped,
    }
    return model, info


def _reference_parts(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a loaded reference file into its state dict and its other entries."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), {}
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                return dict(obj[key]), {k: v for k, v in obj.items() if k != key}
        if obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
            return dict(obj), {}
    raise SwimkitError(
        f"{str(path)!r} is neither a swimkit checkpoint nor a state dict (got "
        f"{type(obj).__name__}); save models with swimkit.checkpoints.save_checkpoint"
    )


def _name_from_filename(path: Path) -> str | None:
    """The one registered model a file name mentions (saved_B_QRes18_1.pt), else None."""
    aliases = MODELS.aliases()
    tokens = re.split(r"[_.\s]+", path.stem)
    found = {aliases[t.lower()] for t in tokens if t.lower() in aliases}
    return found.pop() if len(found) == 1 else None


def reference_state_dict(
    state: Mapping[str, Any], target: Mapping[str, Any] | Iterable[str]
) -> tuple[dict[str, Any], list[str]]:
    """Map a reference state dict to plain swimkit names; return it and the dropped keys.

    ``target`` holds the model's plain keys. Keys ending in a component of
    :data:`REFERENCE_EXTRA_SUFFIXES` are dropped. The rest are renamed: a leading
    ``module.`` (DataParallel) and every ``op`` component are removed
    (``conv1.op.weight`` -> ``conv1.weight``, ``bn1.op.running_mean`` ->
    ``bn1.running_mean``), ``shortcut`` becomes ``downsample`` and a top-level ``linear``
    becomes ``fc`` (ResNet naming), each only where the model has the resulting key.
    Keys that still do not fit come back renamed, for the loader to report.
    """
    targets = set(target)
    mapped: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in REFERENCE_EXTRA_SUFFIXES:
            dropped.append(key)
            continue
        mapped[_reference_key(key, targets)] = value
    return mapped, dropped


def _reference_key(key: str, targets: set[str]) -> str:
    if key in targets:
        return key
    parts = key.split(".")
    if parts[0] == "module" and len(parts) > 1:
        parts = parts[1:]
    parts = [p for p in parts if p != "op"]
    renamed = ["downsample" if p == "shortcut" else p for p in parts]
    if renamed[0] == "linear":
        renamed[0] = "fc"
    for candidate in (".".join(parts), ".".join(renamed)):
        if candidate in targets:
            return candidate
    return ".".join(renamed)
