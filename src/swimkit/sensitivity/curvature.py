"""SWIM's one-pass diagonal curvature backpropagation, for a model as written.

The model is traced with :mod:`torch.fx` (functional calls and tensor methods are seen,
standard layers stay whole). One forward pass records every node's value; then the
estimate S of d2L/da2 flows backwards through the graph beside the gradient, each node
applying "its backward pass with every Jacobian entry squared" (design §4):

- cross-entropy seeds S_z = p (1 - p) on the logits (not divided by the batch size);
- linear / conv layers give S_W from x^2 and S_x from W^2;
- batch norm (eval) scales by (gamma / sqrt(var + eps))^2, pooling by 1 / k^2;
- piecewise-linear activations, max-pooling and reshaping ops have 0/1 Jacobians, so
  their squared-Jacobian backward equals their ordinary vector-Jacobian product;
- residual adds and concatenations pass S to each operand (cross terms dropped).

An operation without a rule raises :class:`UnsupportedOperation` naming the operation
and the graph node, never a silent wrong number.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import SwimkitError
from ..mapping import DeviceWeight, perturbed
from ..progress import progress_bar
from ..quantization import FakeQuantize, OutputQuantizer

SValue = Tensor | dict[int, Tensor]


class UnsupportedOperation(SwimkitError):
    """The swim engine has no curvature rule for an operation of the model."""


def _unsupported(node: fx.Node, what: str) -> UnsupportedOperation:
    return UnsupportedOperation(
        f"the swim engine has no curvature rule for {what} (graph node '{node.name}'); "
        "use engine='ggn', exact for any differentiable model"
    )


# ---------------------------------------------------------------------------------------
# Tracing

_POOL_TYPES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)
_LEAF_TYPES = (
    nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm,
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, *_POOL_TYPES,
    nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten,
    FakeQuantize, OutputQuantizer,
)


class _Tracer(fx.Tracer):
    """fx tracer keeping the layers with curvature rules (and torch.nn layers) whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAF_TYPES) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    """Trace ``model`` into an fx graph, with a clear error when tracing fails."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure gets the same advice
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SwimkitError(
            f"cannot trace {type(model).__name__} with torch.fx ({first_line}); "
            "use engine='ggn', which needs no tracing"
        ) from None


# ---------------------------------------------------------------------------------------
# Rules. Each takes the node's context and the S of its output and returns the S of
# each input node (only for inputs that need one).


class _Ctx:
    """What a rule sees: the node, its resolved arguments, module, output and weights."""

    def __init__(self, run: _Pass, node: fx.Node) -> None:
        self.run = run
        self.node = node
        self.args = fx.node.map_arg(node.args, run.value)
        self.kwargs = fx.node.map_arg(node.kwargs, run.value)
        self.out = run.env[node]
        self.module = run.module(node) if node.op == "call_module" else None

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if len(self.args) > index:
            return self.args[index]
        return self.kwargs.get(name, default)

    def arg_node(self, index: int, name: str) -> Any:
        if len(self.node.args) > index:
            return self.node.args[index]
        return self.node.kwargs.get(name)

    @property
    def input_node(self) -> fx.Node:
        return self.arg_node(0, "input")


Rule = Callable[[_Ctx, SValue], dict[fx.Node, SValue]]


def _to_input(ctx: _Ctx, s_in: Tensor) -> dict[fx.Node, SValue]:
    return {ctx.input_node: s_in}


def _identity(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    return _to_input(ctx, s)


def _vjp(ctx: _Ctx, s: SValue, scale: Tensor | None = None) -> dict[fx.Node, SValue]:
    """Ordinary vector-Jacobian product: exact for ops whose Jacobian entries are 0 or 1.

    The op is re-executed on its recorded inputs under a local autograd graph, so the
    pass needs no graph of the whole model.
    """
    nodes = [n for n in dict.fromkeys(ctx.node.all_input_nodes)
             if ctx.run.needs(n) and isinstance(ctx.run.env[n], Tensor)]
    if not nodes:
        return {}
    with torch.enable_grad():
        leaves = {n: ctx.run.env[n].detach().requires_grad_(True) for n in nodes}
        out = ctx.run.call(ctx.node, leaves)
        if isinstance(s, dict):
            outputs, grads = [out[i] for i in s], list(s.values())
        else:
            outputs, grads = [out], [s if scale is None else s * scale]
        result = torch.autograd.grad(outputs, list(leaves.values()), grads, allow_unused=True)
    return {n: r for n, r in zip(leaves, result, strict=True) if r is not None}


def _mask_rule(derivative: Callable[[_Ctx, Tensor], Tensor]) -> Rule:
    """Element-wise op with derivative f'(x): S_x = S_y * f'(x)^2.

    The derivative is read off the op's OUTPUT, which stays intact when the layer works
    in place (torchvision's ``ReLU(inplace=True)``): y = f(x) is strictly monotone on
    each piece, so y tells which piece x was on.
    """

    def rule(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
        return _to_input(ctx, s * derivative(ctx, ctx.out).square())

    return rule


def _relu_derivative(ctx: _Ctx, y: Tensor) -> Tensor:
    return (y > 0).to(y.dtype)


def _clamp_derivative(low: float | None, high: float | None, y: Tensor) -> Tensor:
    inside = torch.ones_like(y, dtype=torch.bool)
    if low is not None:
        inside &= y > low
    if high is not None:
        inside &= y < high
    return inside.to(y.dtype)


def _hardtanh_derivative(ctx: _Ctx, y: Tensor) -> Tensor:
    if ctx.module is not None:
        return _clamp_derivative(ctx.module.min_val, ctx.module.max_val, y)
    if ctx.node.target is F.relu6:
        return _clamp_derivative(0.0, 6.0, y)
    return _clamp_derivative(ctx.arg(1, "min_val", -1.0), ctx.arg(2, "max_val", 1.0), y)


def _clamp_fn_derivative(ctx: _Ctx, y: Tensor) -> Tensor:
    low, high = ctx.arg(1, "min"), ctx.arg(2, "max")
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        raise _unsupported(ctx.node, "clamp with tensor bounds")
    return _clamp_derivative(low, high, y)


def _leaky_derivative(ctx: _Ctx, y: Tensor) -> Tensor:
    slope = ctx.module.negative_slope if ctx.module is not None else ctx.arg(
        1, "negative_slope", 0.01
    )
    if slope < 0:  # then y > 0 on both pieces and the output no longer tells them apart
        raise _unsupported(ctx.node, "LeakyReLU with a negative slope")
    return torch.where(y > 0, torch.ones_like(y), torch.full_like(y, slope))


def _linear(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    x = ctx.arg(0, "input")
    weight, weight_node = _weight_of(ctx, 1)
    s2 = s.reshape(-1, s.shape[-1])
    if weight_node is not None:
        ctx.run.accumulate(weight_node, s2.T @ x.reshape(-1, x.shape[-1]).square())
    if not ctx.run.needs(ctx.input_node):
        return {}
    return _to_input(ctx, s @ weight.square())


def _weight_of(ctx: _Ctx, index: int) -> tuple[Tensor, str | None]:
    """The weight of a conv / linear node and its device-weight name (or None)."""
    if ctx.module is not None:
        name = ctx.run.device_name_of_module(ctx.node.target)
        return ctx.module.weight, name
    weight = ctx.arg(index, "weight")
    weight_node = ctx.arg_node(index, "weight")
    name = None
    if isinstance(weight_node, fx.Node) and weight_node.op == "get_attr":
        name = weight_node.target if weight_node.target in ctx.run.weights else None
    return weight, name


def _conv_params(ctx: _Ctx) -> dict[str, Any]:
    if ctx.module is not None:
        m = ctx.module
        if getattr(m, "padding_mode", "zeros") != "zeros":
            raise _unsupported(ctx.node, f"convolution with padding_mode={m.padding_mode!r}")
        return {
            "stride": m.stride, "padding": m.padding, "dilation": m.dilation,
            "groups": m.groups, "transposed": m.transposed,
            "output_padding": m.output_padding,
        }
    dims = ctx.arg(0, "input").dim() - 2
    return {
        "stride": _ntuple(ctx.arg(3, "stride", 1), dims),
        "padding": ctx.arg(4, "padding", 0),
        "dilation": _ntuple(ctx.arg(5, "dilation", 1), dims),
        "groups": ctx.arg(6, "groups", 1),
        "transposed": False,
        "output_padding": (0,) * dims,
    }


def _ntuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * n


def _explicit_padding(ctx: _Ctx, padding: Any, weight: Tensor, dilation: tuple) -> tuple:
    dims = weight.dim() - 2
    if padding == "valid":
        return (0,) * dims
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
        if any(t % 2 for t in totals):
            raise _unsupported(ctx.node, "padding='same' with an asymmetric padding")
        return tuple(t // 2 for t in totals)
    return _ntuple(padding, dims)


def _conv(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    x = ctx.arg(0, "input")
    weight, weight_node = _weight_of(ctx, 1)
    p = _conv_params(ctx)
    padding = _explicit_padding(ctx, p["padding"], weight, p["dilation"])
    common = (
        None, p["stride"], padding, p["dilation"], p["transposed"], p["output_padding"],
        p["groups"],
    )
    s = s.contiguous()
    if weight_node is not None:
        s_w = torch.ops.aten.convolution_backward(
            s, x.square(), weight, *common, [False, True, False]
        )[1]
        ctx.run.accumulate(weight_node, s_w)
    if not ctx.run.needs(ctx.input_node):
        return {}
    s_x = torch.ops.aten.convolution_backward(
        s, x, weight.square(), *common, [True, False, False]
    )[0]
    return _to_input(ctx, s_x)


def _batch_norm_scale(ctx: _Ctx) -> Tensor:
    if ctx.module is not None:
        m = ctx.module
        if m.training or m.running_var is None:
            raise _unsupported(
                ctx.node, "batch norm using batch statistics (put the model in eval mode)"
            )
        var, weight, eps = m.running_var, m.weight, m.eps
    else:
        if ctx.arg(5, "training", False):
            raise _unsupported(ctx.node, "batch norm in training mode")
        var, weight, eps = ctx.arg(2, "running_var"), ctx.arg(3, "weight"), ctx.arg(7, "eps", 1e-5)
    scale = torch.rsqrt(var + eps)
    return scale if weight is None else weight * scale


def _batch_norm(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    scale = _batch_norm_scale(ctx).detach()
    shape = [1, -1] + [1] * (s.dim() - 2)
    return _to_input(ctx, s * scale.square().reshape(shape))


def _window_sizes(length: int, out: int) -> Tensor:
    j = torch.arange(out)
    start = torch.div(j * length, out, rounding_mode="floor")
    end = torch.div((j + 1) * length + out - 1, out, rounding_mode="floor")
    return (end - start).double()


def _adaptive_avg_pool(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    x = ctx.arg(0, "input")
    out_sizes = ctx.out.shape[2:] if ctx.out.dim() == x.dim() else ctx.out.shape[1:]
    in_sizes = x.shape[-len(out_sizes):]
    divisor = torch.ones(())
    for length, out in zip(in_sizes, out_sizes, strict=True):
        divisor = divisor.unsqueeze(-1) * _window_sizes(length, out)
    return _vjp(ctx, s, (1.0 / divisor).to(s))


def _avg_pool(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    """Average pooling: divide by each window's divisor D_j before the VJP (J = 1/D_j)."""
    x = ctx.arg(0, "input")
    dims = x.dim() - 2
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    if ctx.module is not None:
        m = ctx.module
        params = {
            "kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
            "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad,
        }
        override = getattr(m, "divisor_override", None)
    else:
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
        defaults = (None, None, 0, False, True)
        pairs = enumerate(zip(names, defaults, strict=True))
        params = {n: ctx.arg(i + 1, n, d) for i, (n, d) in pairs}
        override = ctx.arg(6, "divisor_override")
    if override:
        inverse = torch.full((), 1.0 / override)
    else:
        mean_of_ones = _pool_nd(dims, ones, params, None)
        valid_count = _pool_nd(dims, ones, params, 1)
        inverse = (mean_of_ones / valid_count.clamp_min(1))[0, 0]
    return _vjp(ctx, s, inverse.to(s))


def _pool_nd(dims: int, x: Tensor, params: dict, divisor: int | None) -> Tensor:
    """Average pooling of ``x`` with ``params``; ``divisor=1`` gives sum pooling."""
    params = {k: v for k, v in params.items() if v is not None}
    if dims == 1:  # avg_pool1d has no divisor_override: lift to 2-d
        kernel = _ntuple(params["kernel_size"], 1)[0]
        params["kernel_size"] = (1, kernel)
        params["stride"] = (1, _ntuple(params.get("stride", kernel), 1)[0])
        params["padding"] = (0, _ntuple(params.get("padding", 0), 1)[0])
        return F.avg_pool2d(x.unsqueeze(-2), **params, divisor_override=divisor).squeeze(-2)
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    return pool(x, **params, divisor_override=divisor)


def _mean(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    x = ctx.arg(0, "input")
    count = x.numel() // max(ctx.out.numel(), 1)
    return _vjp(ctx, s, torch.tensor(1.0 / count, dtype=s.dtype, device=s.device))


def _reduce_to(s: Tensor, value: Any) -> Tensor | None:
    if not isinstance(value, Tensor):
        return None
    return s.sum_to_size(value.shape) if s.shape != value.shape else s


def _add(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    alpha = ctx.kwargs.get("alpha", 1)
    result: dict[fx.Node, SValue] = {}
    for i, (node, value) in enumerate(zip(ctx.node.args[:2], ctx.args[:2], strict=True)):
        if isinstance(node, fx.Node) and ctx.run.needs(node):
            s_in = _reduce_to(s, value)
            if s_in is not None:
                result[node] = s_in * (alpha**2 if i == 1 else 1)
    return result


def _mul(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    return _product(ctx, s, divide=False)


def _div(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    if isinstance(ctx.node.args[1], fx.Node) and ctx.run.needs(ctx.node.args[1]):
        raise _unsupported(ctx.node, "division by a tensor that depends on device weights")
    return _product(ctx, s, divide=True)


def _product(ctx: _Ctx, s: Tensor, divide: bool) -> dict[fx.Node, SValue]:
    """Product a * b: S_a = S * b^2 (the cross and second-order terms are dropped)."""
    a, b = ctx.args[:2]
    result: dict[fx.Node, SValue] = {}
    for node, other in ((ctx.node.args[0], b), (ctx.node.args[1], a)):
        if not (isinstance(node, fx.Node) and ctx.run.needs(node)):
            continue
        factor = other.detach() if isinstance(other, Tensor) else torch.tensor(float(other))
        factor = factor.to(s).square()
        s_in = s / factor if divide else s * factor
        result[node] = _reduce_to(s_in, ctx.run.env[node])
        if divide:
            break
    return result


def _getitem(ctx: _Ctx, s: SValue) -> dict[fx.Node, SValue]:
    if isinstance(ctx.args[0], Tensor):
        return _vjp(ctx, s)
    return {ctx.input_node: {int(ctx.args[1]): s}}


def _dropout(ctx: _Ctx, s: Tensor) -> dict[fx.Node, SValue]:
    training = ctx.module.training if ctx.module is not None else ctx.arg(2, "training", True)
    if training:
        raise _unsupported(ctx.node, "dropout in training mode")
    return _to_input(ctx, s)


_MODULE_RULES: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], Rule], ...] = (
    (nn.modules.conv._ConvNd, _conv),
    (nn.Linear, _linear),
    (nn.modules.batchnorm._BatchNorm, _batch_norm),
    (nn.ReLU, _mask_rule(_relu_derivative)),
    ((nn.ReLU6, nn.Hardtanh), _mask_rule(_hardtanh_derivative)),
    (nn.LeakyReLU, _mask_rule(_leaky_derivative)),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), _vjp),
    ((nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), _vjp),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), _avg_pool),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), _adaptive_avg_pool),
    (nn.modules.dropout._DropoutNd, _dropout),
    ((nn.Identity, FakeQuantize, OutputQuantizer), _identity),
    ((nn.Flatten, nn.Unflatten), _vjp),
)

_FUNCTION_RULES: dict[Any, Rule] = {
    F.linear: _linear,
    F.conv1d: _conv, F.conv2d: _conv, F.conv3d: _conv,
    F.batch_norm: _batch_norm,
    F.relu: _mask_rule(_relu_derivative), torch.relu: _mask_rule(_relu_derivative),
    F.relu6: _mask_rule(_hardtanh_derivative), F.hardtanh: _mask_rule(_hardtanh_derivative),
    F.leaky_relu: _mask_rule(_leaky_derivative),
    torch.clamp: _mask_rule(_clamp_fn_derivative), torch.clip: _mask_rule(_clamp_fn_derivative),
    F.max_pool1d: _vjp, F.max_pool2d: _vjp, F.max_pool3d: _vjp,
    F.adaptive_max_pool1d: _vjp, F.adaptive_max_pool2d: _vjp, F.adaptive_max_pool3d: _vjp,
    F.avg_pool1d: _avg_pool, F.avg_pool2d: _avg_pool, F.avg_pool3d: _avg_pool,
    F.adaptive_avg_pool1d: _adaptive_avg_pool, F.adaptive_avg_pool2d: _adaptive_avg_pool,
    F.adaptive_avg_pool3d: _adaptive_avg_pool,
    F.dropout: _dropout, F.dropout1d: _dropout, F.dropout2d: _dropout, F.dropout3d: _dropout,
    F.pad: _vjp,
    operator.add: _add, torch.add: _add, operator.sub: _add, torch.sub: _add,
    operator.mul: _mul, torch.mul: _mul, operator.truediv: _div, torch.div: _div,
    operator.neg: _identity, torch.neg: _identity,
    operator.getitem: _getitem,
    torch.mean: _mean,
    torch.flatten: _vjp, torch.reshape: _vjp, torch.cat: _vjp, torch.concat: _vjp,
    torch.stack: _vjp, torch.squeeze: _vjp, torch.unsqueeze: _vjp, torch.permute: _vjp,
    torch.transpose: _vjp, torch.chunk: _vjp, torch.split: _vjp, torch.narrow: _vjp,
    torch.sum: _vjp, torch.flip: _vjp,
}

_METHOD_RULES: dict[str, Rule] = {
    "relu": _mask_rule(_relu_derivative),
    "clamp": _mask_rule(_clamp_fn_derivative), "clip": _mask_rule(_clamp_fn_derivative),
    "add": _add, "sub": _add, "mul": _mul, "div": _div, "neg": _identity,
    "mean": _mean,
    **{name: _vjp for name in (
        "view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose",
        "contiguous", "chunk", "split", "narrow", "expand", "expand_as", "view_as",
        "reshape_as", "repeat", "flip", "sum", "clone", "unbind",
    )},
}

# In-place forms are executed out of place, so every recorded value stays intact.
_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub,
                 operator.imul: operator.mul, operator.itruediv: operator.truediv}


def _module_rule(module: nn.Module) -> Rule | None:
    for types, rule in _MODULE_RULES:
        if isinstance(module, types):
            return rule
    return None


def _describe(node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return f"layer {type(module).__name__} ('{node.target}')"
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    return f"function {getattr(node.target, '__name__', node.target)}"


# ---------------------------------------------------------------------------------------
# The pass


class _Pass:
    """Forward values and backward S over one batch of a traced model."""

    def __init__(self, model: nn.Module, graph: fx.Graph, weights: Mapping[str, DeviceWeight]):
        self.model = model
        self.graph = graph
        self.weights = weights
        self.module_to_weight = {w.module_name: name for name, w in weights.items()}
        self.nodes = list(graph.nodes)
        self.rules = {n: self._rule(n) for n in self.nodes if n.op in _CALLS}
        self.upstream = self._device_dependent()
        self.env: dict[fx.Node, Any] = {}
        self.h: dict[str, Tensor] = {}

    def module(self, node: fx.Node) -> nn.Module:
        return self.model.get_submodule(node.target)

    def device_name_of_module(self, target: str) -> str | None:
        return self.module_to_weight.get(target)

    def value(self, node: fx.Node) -> Any:
        return self.env[node]

    def needs(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node in self.upstream

    def accumulate(self, name: str, s_w: Tensor) -> None:
        s_w = s_w.detach()
        self.h[name] = self.h[name] + s_w if name in self.h else s_w

    def _rule(self, node: fx.Node) -> Rule:
        if node.op == "call_module":
            module = self.module(node)
            rule = _module_rule(module)
        elif node.op == "call_function":
            module = None
            rule = _FUNCTION_RULES.get(_OUT_OF_PLACE.get(node.target, node.target))
        else:
            module = None
            rule = _METHOD_RULES.get(str(node.target).rstrip("_"))
        if rule is None:
            return _deferred_error(node, _describe(node, module))
        return rule

    def _device_dependent(self) -> set[fx.Node]:
        """Nodes at or after a device layer: only they need an S."""
        dependent: set[fx.Node] = set()
        for node in self.nodes:
            is_device_layer = node.op == "call_module" and node.target in self.module_to_weight
            is_device_weight = node.op == "get_attr" and node.target in self.weights
            feeds = dependent.intersection(node.all_input_nodes)
            if is_device_layer or is_device_weight or feeds:
                dependent.add(node)
        return dependent

    def forward(self, x: Tensor) -> Tensor:
        self.env = {}
        output = None
        for node in self.nodes:
            if node.op == "placeholder":
                self.env[node] = x if not self.env else _placeholder_default(node)
            elif node.op == "get_attr":
                self.env[node] = _fetch_attr(self.model, node.target)
            elif node.op == "output":
                output = fx.node.map_arg(node.args[0], self.value)
            else:
                self.env[node] = self.call(node)
        if not isinstance(output, Tensor):
            raise SwimkitError(
                "the swim engine needs a model that returns one tensor of logits "
                f"(got {type(output).__name__}); use engine='ggn' or wrap the model"
            )
        self.output_node = self.graph.output_node().args[0]
        return output

    def call(self, node: fx.Node, replace: Mapping[fx.Node, Tensor] | None = None) -> Any:
        """Execute ``node`` on the recorded values (or on ``replace`` for some inputs).

        Tensor methods and operators that work in place run out of place, so recorded
        values stay intact; a re-execution (``replace`` given) never works in place.
        """
        lookup = self.value if not replace else (lambda n: replace.get(n, self.env[n]))
        args = fx.node.map_arg(node.args, lookup)
        kwargs = dict(fx.node.map_arg(node.kwargs, lookup))
        if replace and kwargs.get("inplace"):
            kwargs["inplace"] = False
        if node.op == "call_module":
            return self.module(node)(*args, **kwargs)
        if node.op == "call_function":
            return _OUT_OF_PLACE.get(node.target, node.target)(*args, **kwargs)
        method = str(node.target)
        if method.endswith("_") and not method.endswith("__"):
            method = method.rstrip("_")
        return getattr(args[0], method)(*args[1:], **kwargs)

    def backward(self, s_logits: Tensor) -> dict[fx.Node, SValue]:
        """Propagate S from the logits, freeing each value once no rule needs it.

        Returns the S left at inputs and attributes.
        """
        pending: dict[fx.Node, SValue] = {self.output_node: s_logits}
        with torch.no_grad():
            self._backward(pending)
        return pending

    def _backward(self, pending: dict[fx.Node, SValue]) -> None:
        for node in reversed(self.nodes):
            if node.op in _CALLS and node in pending:
                s = pending.pop(node)
                for target, s_in in self.rules[node](_Ctx(self, node), s).items():
                    if self.needs(target):
                        pending[target] = _merge(pending.get(target), s_in)
            if node.op in _CALLS:
                self.env.pop(node, None)


_CALLS = ("call_module", "call_function", "call_method")


def _deferred_error(node: fx.Node, what: str) -> Rule:
    """A rule that raises only if S actually reaches the node."""

    def rule(ctx: _Ctx, s: SValue) -> dict[fx.Node, SValue]:
        raise _unsupported(node, what)

    return rule


def _merge(old: SValue | None, new: SValue) -> SValue:
    if old is None:
        return new
    if isinstance(old, dict):
        merged = dict(old)
        for k, v in new.items():
            merged[k] = merged[k] + v if k in merged else v
        return merged
    return old + new


def _placeholder_default(node: fx.Node) -> Any:
    if node.args:
        return node.args[0]
    raise SwimkitError(
        f"the swim engine feeds one input tensor, but the model also needs '{node.target}'"
    )


def _fetch_attr(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _batch(
    run: _Pass, x: Tensor, y: Tensor, deltas: dict[str, Tensor], first: dict[str, Tensor]
) -> None:
    """One batch: g by autograd (the graph is then released), h by the curvature pass."""
    logits = run.forward(x)
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, list(deltas.values()), allow_unused=True)
    for name, grad in zip(deltas, grads, strict=True):
        if grad is not None:
            first[name] = first[name] + grad if name in first else grad
    with torch.no_grad():
        p = torch.softmax(logits.detach(), dim=-1)
    run.backward(p * (1 - p))
    run.env = {}


def swim_curvature(
    model: nn.Module,
    weights: dict[str, DeviceWeight],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    progress: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
    """SWIM's h (summed over samples) and g (mean-loss gradient summed over batches).

    Raw units: derivatives with respect to the effective device weights.
    """
    graph = trace(model)
    run = _Pass(model, graph, weights)
    first: dict[str, Tensor] = {}
    samples = 0
    with perturbed(model, weights) as offsets:
        deltas = {
            name: torch.zeros_like(w.value, requires_grad=True) for name, w in weights.items()
        }
        offsets.set(deltas)
        for x, y in progress_bar(batches, progress, "sensitivity (swim)"):
            with parametrize.cached():  # effective weights computed once per batch
                _batch(run, x, y, deltas, first)
            samples += int(y.shape[0])
    if samples == 0:
        raise SwimkitError("the sensitivity pass got no batches: pass a non-empty loader")
    zeros = {name: torch.zeros_like(w.value.detach()) for name, w in weights.items()}
    second = {name: run.h.get(name, zeros[name]) for name in weights}
    first = {name: first.get(name, zeros[name]) for name in weights}
    return second, first, samples


__all__ = ["UnsupportedOperation", "swim_curvature", "trace"]
