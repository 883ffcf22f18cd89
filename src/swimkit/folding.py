"""BatchNorm as a chip holds it: folded into the convolution before it, or kept digital.

A chip that keeps BatchNorm digital programs the convolution's weights W and applies
y = gamma (x - mu) / sqrt(var + eps) + beta after the array, exactly. A chip that folds it
programs W' = W gamma / sqrt(var + eps) (per output channel) and adds the bias
b' = (b - mu) gamma / sqrt(var + eps) + beta digitally: the folded weights are what sits on
the devices, with their own ranges, so sensitivities, plans, chips and programming time are
all of them. In eval mode the folded model computes what the model does (float rounding
aside); its device weights keep their names (``layer1.0.conv1.weight``).
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from .errors import SwimkitError, first_line

#: How a chip holds BatchNorm.
BATCHNORM = ("digital", "folded")

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every BatchNorm that directly follows a
    convolution or linear layer read by nothing else folded into it (its place taken by
    ``nn.Identity``); the model itself is left as it is. A model without such pairs is
    returned as a copy unchanged."""
    if getattr(model, "quantized_bits", None) is not None or _quantized(model):
        raise SwimkitError("BatchNorm of a quantized model cannot be folded after the fact: "
                           "its quantizers were calibrated on the unfolded outputs; fold "
                           "the float model, or keep BatchNorm digital")
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for conv_name, norm_name in _pairs(folded):
        _fold(modules[conv_name], modules[norm_name])
        _replace(folded, norm_name, nn.Identity())
    return folded


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, norm) module names where the norm reads the conv's output alone."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - torch.fx's error, in one line
        raise SwimkitError(f"BatchNorm cannot be folded: torch.fx cannot trace "
                           f"{type(model).__name__} ({first_line(exc, with_type=True)}); keep "
                           "BatchNorm digital") from None
    modules = dict(model.named_modules())
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _NORMS):
            continue
        source = node.args[0] if node.args else None
        if (isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules.get(source.target), _CONVS) and len(source.users) == 1):
            out.append((str(source.target), str(node.target)))
    return out


@torch.no_grad()
def _fold(layer: nn.Module, norm: nn.Module) -> None:
    """W' = W gamma / sqrt(var + eps), b' = (b - mu) gamma / sqrt(var + eps) + beta."""
    if norm.running_var is None:
        raise SwimkitError(f"BatchNorm {norm} keeps no running statistics: it cannot be "
                           "folded; keep BatchNorm digital")
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(scale.reshape(shape).to(layer.weight.dtype))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(norm.running_mean)
    folded_bias = (bias - norm.running_mean) * scale
    if norm.bias is not None:
        folded_bias = folded_bias + norm.bias
    layer.bias = nn.Parameter(folded_bias.to(layer.weight.dtype))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, module)


def _quantized(model: nn.Module) -> bool:
    from .quantization import FakeQuantize

    return any(isinstance(m, FakeQuantize) for m in model.modules())


__all__ = ["BATCHNORM", "fold_batchnorm"]
