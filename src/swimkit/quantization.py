"""Fake quantization attached to any model from outside.

``quantize(model, bits)`` quantizes, for every convolution and linear layer, the weight
and bias (torch parametrizations) and the layer output (a forward hook), with

    Q(x) = round(x / d) * d,   d = max|x| / 2**bits,

and a straight-through gradient. The model stays the same ``nn.Module``; its layers keep
their types. Weights use their own max|w|. Outputs use, by default, a running max
calibrated during training (batch-independent, like a real ADC range); ``output_range=
"batch"`` takes max|y| over the whole batch tensor instead, as the SWIM reference code
does (its results then depend on the batch size).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import SwimkitError, require

OutputRange = Literal["running", "batch"]


def fake_quantize(x: Tensor, bits: int, max_abs: Tensor | None = None) -> Tensor:
    """Q(x) with a straight-through gradient; ``max_abs`` fixes the range (else max|x|).

    With a fixed range, values beyond it saturate (the gradient still passes straight
    through). Without autograd (evaluation) the quantized tensor is computed in place,
    in three passes over the data.
    """
    fixed_range = max_abs is not None
    if max_abs is None:
        max_abs = x.detach().abs().amax()
    step = (max_abs / (2**bits)).clamp_min(torch.finfo(x.dtype).tiny)
    with torch.no_grad():
        # clamp_max then clamp_min: clamp(-m, m) exactly, three times faster with tensor bounds
        q = x.clamp_max(max_abs).clamp_min_(-max_abs).div_(step) if fixed_range else x.div(step)
        q.round_().mul_(step)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return q
    return x + (q - x).detach()


def fake_quantize_fixed(x: Tensor, bits: int, max_abs: float, *, relu: bool = False,
                        out: Tensor | None = None) -> Tensor:
    """:func:`fake_quantize` with a fixed range given as a number, without autograd: the
    same values, one pass fewer (clamp with number bounds), no device read per call.

    ``relu``: a ReLU after it as well, in the same passes (the clamp starts at 0:
    max(Q(x), 0) = Q(max(x, 0)), both exactly); ``out``: the tensor written (``x``
    itself quantizes in place).
    """
    step = max(max_abs / 2**bits, torch.finfo(x.dtype).tiny)
    low = 0.0 if relu else -max_abs
    return torch.clamp(x, low, max_abs, out=out).div_(step).round_().mul_(step)


def _check_bits(bits: object) -> int:
    require(
        isinstance(bits, int) and not isinstance(bits, bool) and bits >= 1,
        f"bits must be a whole number >= 1 (got {bits!r})",
    )
    return int(bits)


class FakeQuantize(nn.Module):
    """Quantize a tensor to ``bits`` with its own range (straight-through gradient)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = _check_bits(bits)

    def forward(self, x: Tensor) -> Tensor:
        return fake_quantize(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class OutputQuantizer(nn.Module):
    """Quantizer of a layer's output with a calibrated (running) or per-batch range.

    In training mode the range is the batch's max|y|, and ``running_max`` follows it as
    an exponential moving average. In eval mode the running max is used once it has
    been calibrated; before that, the batch's own max.
    """

    def __init__(self, bits: int, output_range: OutputRange = "running", momentum: float = 0.1):
        super().__init__()
        _check_bits(bits)
        require(
            output_range in ("running", "batch"),
            f"output_range must be 'running' or 'batch' (got {output_range!r})",
        )
        self.bits = int(bits)
        self.output_range = output_range
        self.momentum = float(momentum)
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    def forward(self, y: Tensor) -> Tensor:
        if self.output_range == "batch":
            return fake_quantize(y, self.bits)
        if self.training:
            self._track(y.detach().abs().amax())
            return fake_quantize(y, self.bits)
        if torch.compiler.is_compiling():  # no reads from the device: both in the graph
            return torch.where(self.calibrated,
                               fake_quantize(y, self.bits, self.running_max.to(y.dtype)),
                               fake_quantize(y, self.bits))
        if not self._host_value("calibrated", torch.bool):
            return fake_quantize(y, self.bits)
        if y.requires_grad and torch.is_grad_enabled():
            return fake_quantize(y, self.bits, self.running_max.to(y.dtype))
        return fake_quantize_fixed(y, self.bits, self._host_value("running_max", y.dtype))

    def fixed_range(self, dtype: torch.dtype) -> float | None:
        """The max|y| this quantizer applies as a number in evaluation (eval mode, a
        calibrated running range, not compiling), else None (then its range is the
        batch's, or autograd or compiling takes another path). In evaluation without
        autograd its output is ``fake_quantize_fixed(y, bits, fixed_range(y.dtype))``."""
        if (self.training or self.output_range != "running"
                or torch.compiler.is_compiling()
                or not self._host_value("calibrated", torch.bool)):
            return None
        return self._host_value("running_max", dtype)

    def _host_value(self, name: str, dtype: torch.dtype) -> Any:
        """Buffer ``name`` in ``dtype`` as a Python number, read from its device only when
        the buffer changed (an evaluation does not wait for the GPU on every batch)."""
        buffer = getattr(self, name)
        key = (id(buffer), buffer._version, dtype)
        seen = self.__dict__.setdefault("_host_values", {})
        if seen.get(name, (None,))[0] != key:
            seen[name] = (key, buffer.to(dtype).item())
        return seen[name][1]

    @torch.no_grad()
    def _track(self, batch_max: Tensor) -> None:
        if bool(self.calibrated):
            self.running_max.lerp_(batch_max.to(self.running_max.dtype), self.momentum)
        else:
            self.running_max.copy_(batch_max)
            self.calibrated.fill_(True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, output_range={self.output_range!r}"


class WeightQuantizer(nn.Module):
    """Parametrization quantizing a weight or bias to ``bits`` with its own max|w|."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def forward(self, w: Tensor) -> Tensor:
        return fake_quantize(w, self.bits)


def _quantize_output_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    return module.output_quantizer(output)


def _quantize_first_output_hook(module: nn.Module, args: tuple, output: tuple) -> tuple:
    return (module.output_quantizer(output[0]), *output[1:])


QUANTIZABLE = (nn.modules.conv._ConvNd, nn.Linear)
#: Layers that compute with raw parameters (not a sublayer's weight), and those tensors.
RAW_QUANTIZABLE: dict[type[nn.Module], tuple[str, ...]] = {
    nn.MultiheadAttention: ("in_proj_weight", "in_proj_bias"),
}


def _raw_tensors(module: nn.Module) -> tuple[str, ...]:
    for layer_type, names in RAW_QUANTIZABLE.items():
        if isinstance(module, layer_type):
            return names
    return ()


def quantize(
    model: nn.Module,
    bits: int,
    output_range: OutputRange = "running",
    outputs: bool = True,
) -> nn.Module:
    """Quantize weights, biases and outputs of every conv / linear layer of ``model``
    (and of every multi-head attention: its packed projection and its output).

    Works in place and returns ``model``. Device noise added by swimkit lands after the
    weight quantizer (quantize first, then perturb).
    """
    _check_bits(bits)
    layers = [m for m in model.modules() if isinstance(m, QUANTIZABLE) or _raw_tensors(m)]
    if not layers:
        raise SwimkitError(f"{type(model).__name__} has no conv or linear layer to quantize")
    for layer in layers:
        if is_quantized(layer, deep=False):
            raise SwimkitError("model is already quantized; build a fresh model to change bits")
        raw = _raw_tensors(layer)
        for tensor_name in raw or ("weight", "bias"):
            if getattr(layer, tensor_name, None) is not None:
                parametrize.register_parametrization(
                    layer, tensor_name, WeightQuantizer(bits), unsafe=True
                )
        if outputs:
            layer.output_quantizer = OutputQuantizer(bits, output_range)
            layer.register_forward_hook(_quantize_first_output_hook if raw
                                        else _quantize_output_hook)
        # the new parts follow the layer's mode: quantizing an eval-mode model must not
        # leave training-mode quantizers that keep updating their range
        for child in layer.children():
            child.train(layer.training)
    return model


def is_quantized(module: nn.Module, deep: bool = True) -> bool:
    """True if swimkit's weight quantizer is attached to ``module`` (or, ``deep``, to one
    of its layers)."""
    for m in module.modules() if deep else (module,):
        for name in ("weight", *_raw_tensors(m)):
            if parametrize.is_parametrized(m, name) and any(
                isinstance(p, WeightQuantizer) for p in m.parametrizations[name]
            ):
                return True
    return False


def quantization_bits(model: nn.Module) -> int | None:
    """The bit width of a model quantized by :func:`quantize`, or None."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            for p in m.parametrizations["weight"]:
                if isinstance(p, WeightQuantizer):
                    return p.bits
    return None
