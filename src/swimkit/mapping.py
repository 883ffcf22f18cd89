"""Which weights of a model live on CiM devices, and how to perturb them from outside.

A *device weight* is a weight matrix held on a crossbar, named like the state dict: the
weight of a convolution or linear layer (``"fc1.weight"``), the packed q, k, v projection of
an ``nn.MultiheadAttention`` (``"attn.in_proj_weight"``; its ``out_proj`` is a linear
layer), and any parameter the user names (``params=["blocks.*.qkv_weight"]``). Its
*effective* value is what the layer computes with: the raw
parameter, or the output of its parametrizations (for instance swimkit's weight
quantizer). Device errors are added to the effective value (quantize first, then
perturb), through a temporary parametrization that leaves the stored parameters
untouched, so the model is bit-identical afterwards, also when the forward raises.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import SwimkitError

DEVICE_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


#: Layers whose raw parameters (not a sublayer's weight) are crossbar weights.
PARAMETER_LAYERS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.MultiheadAttention: ("in_proj_weight",),
}


@dataclass(frozen=True)
class DeviceWeight:
    """One weight tensor mapped to devices: its name, its layer, the layer's name and the
    tensor's attribute on the layer (``"weight"`` for conv and linear layers). A parameter
    that several layers use (tied weights) is one device weight, programmed once: its
    first use names it, ``shared`` holds the others (another DeviceWeight each)."""

    name: str
    module_name: str
    module: nn.Module
    attribute: str = "weight"
    shared: tuple[DeviceWeight, ...] = ()

    @property
    def value(self) -> Tensor:
        """The effective weight the layer computes with (after any parametrization)."""
        return getattr(self.module, self.attribute)

    @property
    def uses(self) -> tuple[DeviceWeight, ...]:
        """Every layer tensor that reads this weight: itself, then the shared ones."""
        return (self, *self.shared)


def aliases(weights: Mapping[str, DeviceWeight]) -> dict[str, str]:
    """The name of every other use of a shared device weight -> the weight's name."""
    return {use.name: name for name, w in weights.items() for use in w.shared}


def device_weights(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
) -> dict[str, DeviceWeight]:
    """Return the device weights of ``model`` in definition order.

    By default every convolution and linear weight and every ``nn.MultiheadAttention``
    ``in_proj_weight`` is mapped to devices; ``params`` adds the parameters whose name
    matches one of its patterns (shell-style, e.g. ``"blocks.*.qkv_weight"``; at least two
    dimensions). ``layers`` keeps only the layers whose name matches one of the patterns
    (e.g. ``"layer*.conv*"``); ``exclude`` keeps the matching layers digital (exact), e.g.
    ``["conv1", "fc3"]`` for a digital first and last layer.
    """
    found = _layer_weights(model)
    if params:
        found.update(_named_params(model, params, found))
    if not found:
        raise SwimkitError(
            f"{type(model).__name__} has no convolution or linear layers to map to devices"
        )
    chosen = dict(found)
    if layers:
        _check_patterns(layers, found, "layers")
        chosen = {k: v for k, v in chosen.items() if _matches(v.module_name, layers)}
    if exclude:
        _check_patterns(exclude, found, "exclude")
        chosen = {k: v for k, v in chosen.items() if not _matches(v.module_name, exclude)}
    if not chosen:
        raise SwimkitError("no layer is left on devices: loosen the layers / exclude patterns")
    for weight in chosen.values():
        _check_weight(weight.name, weight.value)
    _warn_unmapped(model, found)
    return merged_shared(chosen, found)


def merged_shared(chosen: Mapping[str, DeviceWeight], found: Mapping[str, DeviceWeight]
                  ) -> dict[str, DeviceWeight]:
    """``chosen`` with the uses of one parameter as one device weight (named by its first
    use); a parameter on devices in one layer and kept digital in another is refused."""
    groups: dict[int, list[str]] = {}
    for name, weight in found.items():
        groups.setdefault(id(_stored(weight)), []).append(name)
    out: dict[str, DeviceWeight] = {}
    for name, weight in chosen.items():
        names = groups[id(_stored(weight))]
        if len(names) == 1:
            out[name] = weight
            continue
        left = [n for n in names if n not in chosen]
        if left:
            raise SwimkitError(f"{name} and {left[0]} are one parameter (tied weights): it "
                               "cannot be on devices in one layer and digital in the other; "
                               "exclude both layers or neither")
        if name == names[0]:
            out[name] = replace(weight, shared=tuple(chosen[n] for n in names[1:]))
    return out


def _layer_weights(model: nn.Module) -> dict[str, DeviceWeight]:
    """The weights of conv / linear layers and the raw weights of PARAMETER_LAYERS."""
    found: dict[str, DeviceWeight] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        if isinstance(module, DEVICE_LAYER_TYPES):
            found[f"{name}.weight"] = DeviceWeight(f"{name}.weight", name, module)
        for layer_type, attributes in PARAMETER_LAYERS.items():
            if isinstance(module, layer_type):
                for attribute in attributes:
                    if isinstance(getattr(module, attribute, None), Tensor):
                        key = f"{name}.{attribute}"
                        found[key] = DeviceWeight(key, name, module, attribute)
    return found


def _named_params(model: nn.Module, patterns: Sequence[str],
                  found: Mapping[str, DeviceWeight]) -> dict[str, DeviceWeight]:
    """The parameters named by ``patterns`` (matrices, not already device weights)."""
    modules = dict(model.named_modules())
    names = [n for n, _ in _plain_parameters(model)]
    added: dict[str, DeviceWeight] = {}
    for pattern in patterns:
        hits = [n for n in names if _matches(n, [pattern])]
        if not hits:
            raise SwimkitError(f"params pattern {pattern!r} matches no parameter of "
                               f"{type(model).__name__}; parameters are: "
                               f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")
        if all(name in found for name in hits):
            raise SwimkitError(f"params pattern {pattern!r} would have no effect: it names "
                               f"only weights already on devices ({', '.join(hits[:3])}); "
                               "conv, linear and attention weights are mapped without it")
        for name in hits:
            module_name, _, attribute = name.rpartition(".")
            module = modules[module_name]
            if name in found or name in added:
                continue
            if getattr(module, attribute).dim() < 2:
                raise SwimkitError(f"parameter {name!r} has {getattr(module, attribute).dim()} "
                                   "dimension(s); only weight matrices (2 or more) go on "
                                   "devices")
            added[name] = DeviceWeight(name, module_name, module, attribute)
    return added


def _plain_parameters(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Parameters by their user-facing name (a parametrized tensor by its own name)."""
    out = []
    for name, p in model.named_parameters():
        if ".parametrizations." in f".{name}":
            head, _, rest = name.partition("parametrizations.")
            attribute = rest.split(".")[0]
            if not rest.endswith("original"):
                continue
            name = f"{head}{attribute}"
        out.append((name, p))
    return out


_WARNED: set[tuple[int, tuple[str, ...]]] = set()


def _warn_unmapped(model: nn.Module, found: dict[str, DeviceWeight]) -> None:
    """Say once per model which matrix-shaped weights stay exact because no device layer
    holds them (attention projections, embeddings, recurrent weights): accuracy under
    variation leaves their errors out."""
    mapped = {id(_stored(w)) for w in found.values()}
    left = tuple(name for name, p in model.named_parameters()
                 if _is_matrix(p) and id(p) not in mapped and "parametrizations" not in name)
    if not left or (id(model), left) in _WARNED:
        return
    _WARNED.add((id(model), left))
    total = sum(p.numel() for p in model.parameters() if _is_matrix(p))
    share = sum(p.numel() for n, p in model.named_parameters() if n in left) / max(total, 1)
    warnings.warn(
        f"{len(left)} weight matrices are not in convolution, linear or attention layers and "
        "stay exact "
        f"({', '.join(left[:3])}{', ...' if len(left) > 3 else ''}; {100 * share:.0f} % of "
        "the matrix weights): accuracy under variation leaves their errors out; map them with "
        "params=[...] (--map-params)", stacklevel=3)


def _is_matrix(p: Tensor) -> bool:
    """Two or more dimensions, the first not 1 (a leading 1 marks a tensor added by
    broadcasting, like a class token or positional embeddings, not a matrix)."""
    return p.dim() >= 2 and p.shape[0] != 1


def _stored(weight: DeviceWeight) -> object:
    """The stored parameter of ``weight`` (the original of a parametrized one)."""
    module, attribute = weight.module, weight.attribute
    if parametrize.is_parametrized(module, attribute):
        return module.parametrizations[attribute].original
    return getattr(module, attribute)


def _check_weight(name: str, weight: object) -> None:
    """A device weight must hold values: not None, not lazy, not on the meta device."""
    layer = name.rpartition(".")[0]
    if weight is None:
        raise SwimkitError(f"layer {layer!r} has no weight (it is None); give it one or "
                           "keep it digital with exclude")
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise SwimkitError(f"layer {layer!r} is a lazy layer not initialised yet; run one "
                           "forward pass (or load its weights) first")
    if weight.is_meta:
        raise SwimkitError(f"layer {layer!r} has its weights on the meta device (shapes "
                           "without values); load real weights first")


def named_weights(model: nn.Module, names: Sequence[str], source: str) -> dict[str, DeviceWeight]:
    """The device weights ``names`` of ``model`` (which ``source`` names), or a clear error.

    A name that is no layer weight is looked up as a parameter (``params`` mapping)."""
    every = _layer_weights(model)
    parameters = {n for n, _ in _plain_parameters(model)}
    missing = [n for n in names if n not in every and n not in parameters]
    if missing:
        raise SwimkitError(
            f"{source} names weight {missing[0]!r}, which the model does not have; make "
            "it again for this model"
        )
    extra = [n for n in names if n not in every]
    if extra:
        every.update(_named_params(model, extra, every))
    groups: dict[int, list[str]] = {}
    for name, weight in every.items():
        groups.setdefault(id(_stored(weight)), []).append(name)
    out = {}
    for name in names:
        others = [n for n in groups[id(_stored(every[name]))] if n != name]
        twice = [n for n in others if n in names]
        if twice:
            raise SwimkitError(f"{source} names {name} and {twice[0]}, which are one "
                               "parameter (tied weights, one device weight): make it again "
                               "for this model")
        out[name] = replace(every[name], shared=tuple(every[n] for n in others))
    return out


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in patterns)


def _check_patterns(
    patterns: Sequence[str], found: Mapping[str, DeviceWeight], option: str
) -> None:
    names = [w.module_name for w in found.values()]
    for pattern in patterns:
        if not any(_matches(n, [pattern]) for n in names):
            raise SwimkitError(
                f"{option} pattern {pattern!r} matches no conv/linear layer; "
                f"layers are: {', '.join(names)}"
            )


def effective_weights(weights: Mapping[str, DeviceWeight]) -> dict[str, Tensor]:
    """Detached effective values of ``weights``."""
    with torch.no_grad():
        return {name: w.value.detach() for name, w in weights.items()}


def layer_ranges(values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The range s_l = max |W_l| of every weight (0-dim tensors), which maps it as w / s_l
    into [-1, 1]: the idealised chip's one range per layer (a crossbar may set ranges per
    tile or column: :meth:`swimkit.ChipSpec.scales`)."""
    return {name: v.detach().abs().amax() for name, v in values.items()}


def safe_scale(scale: Tensor) -> Tensor:
    """The scale, or 1 for an all-zero layer (so w / s stays defined)."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


class _Offset(nn.Module):
    """Parametrization that adds ``delta`` (if set) to the effective weight.

    With ``scale`` set, the offset follows the weight's range: ``delta * r(w) / scale``
    with ``r`` the range function (default max|w| over the layer), the same value at the
    weights it was drawn for, but with the gradient of the range (device errors are
    proportional to the range their weight is mapped with). ``seen``, if set, is told
    every weight the layer computes with (the crossbar's converters mark it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.delta: Tensor | None = None
        self.scale: Tensor | None = None
        self.range: Callable[[Tensor], Tensor] = _layer_range
        self.seen: Callable[[Tensor], None] | None = None

    def forward(self, weight: Tensor) -> Tensor:
        out = weight
        if self.delta is not None and self.scale is None:
            out = weight + self.delta
        elif self.delta is not None:
            out = weight + self.delta * (self.range(weight) / safe_scale(self.scale))
        if self.seen is not None:
            self.seen(out)
        return out


def _layer_range(weight: Tensor) -> Tensor:
    return weight.abs().amax()


class Perturbation:
    """Handle to the offsets of a :func:`perturbed` block; ``set`` swaps them in."""

    def __init__(self, offsets: dict[str, _Offset]) -> None:
        self._offsets = offsets

    @property
    def names(self) -> list[str]:
        return list(self._offsets)

    def set(self, deltas: Mapping[str, Tensor] | None,
            scales: Mapping[str, Tensor] | None = None,
            ranges: Callable[[str, Tensor], Tensor] | None = None) -> None:
        """Use ``deltas`` (name -> tensor shaped like the weight); None clears them all.

        With ``scales`` (the ranges the deltas were drawn at) each offset scales with its
        weight's range, gradient included (see :class:`_Offset`): ``ranges(name, w)``, by
        default max|w| over the layer.
        """
        deltas = deltas or {}
        unknown = set(deltas) - set(self._offsets)
        if unknown:
            raise SwimkitError(f"no device weight named {sorted(unknown)[0]!r} in this model")
        for name, offset in self._offsets.items():
            offset.delta = deltas.get(name)
            offset.scale = scales.get(name) if scales is not None else None
            offset.range = _layer_range if ranges is None else partial(ranges, name)

    def watch(self, seen: Callable[[str, Tensor], None] | None) -> None:
        """Tell ``seen(name, tensor)`` every effective weight the layers compute with."""
        for name, offset in self._offsets.items():
            offset.seen = None if seen is None else partial(seen, name)


@contextmanager
def perturbed(
    model: nn.Module,
    weights: Mapping[str, DeviceWeight],
    deltas: Mapping[str, Tensor] | None = None,
) -> Iterator[Perturbation]:
    """Add ``deltas`` to the effective device weights inside the block.

    Nothing stored in ``model`` is written: the offsets live in temporary
    parametrizations that are removed on exit, whatever happens inside.
    """
    offsets = {name: _Offset() for name in weights}
    with attached(weights, offsets):
        handle = Perturbation(offsets)
        handle.set(deltas)
        yield handle


@contextmanager
def attached(weights: Mapping[str, DeviceWeight],
             parametrizations: Mapping[str, nn.Module]) -> Iterator[None]:
    """Each module of ``parametrizations`` applied last to its device weight inside the
    block, removed on exit whatever happens (the parameters keep their order)."""
    done: list[tuple[DeviceWeight, bool, list[str]]] = []
    try:
        for name, module in parametrizations.items():
            for w in weights[name].uses:  # a shared weight: the same offset on every use
                fresh = not parametrize.is_parametrized(w.module, w.attribute)
                order = list(w.module._parameters)
                parametrize.register_parametrization(w.module, w.attribute, module,
                                                     unsafe=True)
                done.append((w, fresh, order))
        yield
    finally:
        for weight, fresh, order in reversed(done):
            _remove_offset(weight, fresh, order)


def _remove_offset(weight: DeviceWeight, was_plain: bool, order: list[str]) -> None:
    module = weight.module
    if was_plain:
        parametrize.remove_parametrizations(module, weight.attribute, leave_parametrized=False)
        # Put the weight back where it was, so model.parameters() keeps its order.
        params = module._parameters
        ordered = {k: params[k] for k in order if k in params}
        ordered.update(params)
        params.clear()
        params.update(ordered)
    else:
        chain = module.parametrizations[weight.attribute]
        del chain[len(chain) - 1]
