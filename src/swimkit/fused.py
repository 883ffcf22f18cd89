"""Fused inference: a layer, its output quantizer, a ReLU and a tiling max-pool in fewer
passes over memory, with the same numbers.

On a CPU a chip of a small network spends as much time in the elementwise passes between
its products (the quantizer's clamp, divide, round and multiply, the ReLU, the pool's
maxima, each reading and writing a whole activation) as in the products. These ops
commute, exactly:

- a ReLU after a quantizer with a fixed range, Q(y) = round(clamp(y, -m, m) / d) d, is
  the quantizer with its clamp raised to 0: max(Q(y), 0) = round(clamp(y, 0, m) / d) d,
  since Q(y) <= 0 exactly where y <= 0 or y rounds to 0;
- a max-pool after a non-decreasing elementwise f (Q, the ReLU, or both) is f after the
  max-pool: a window's largest f(y_i) is f of its largest y_i. Each op is one IEEE
  operation (min, max, a division, a rounding, a product by d > 0), so f is
  non-decreasing in floating point too.

So :func:`layer_output` pools the layer's output first and runs the quantizer and the
ReLU on the pooled values (a quarter of them for 2x2 windows), in place. Where the
windows do not tile the input, or the quantizer's range is its batch's (then it depends
on all the values, not on each one), the ops run as written, in their order.

A convolution of one input channel (a batch of grey images, whose memory layout is
ambiguous) gets a slow kernel from oneDNN; as a grouped convolution over pairs of images,
channels last (:func:`conv_of_pairs`), it gets one about twice as fast that sums each
output in the same order, and so do the convolutions after it: those run on the pairs
too, which go back to one image a row after the last of them.

:func:`inference_graph` rewrites a model's traced graph with these fused calls, for a
chip's forward (:class:`swimkit.chips.ChipRunner`, which checks the graph's logits bit
for bit against the model's before it uses it); the layers are called without their
hooks (their quantizer's hook is what the fused call applies), so only layers whose sole
hook is swimkit's output quantizer are fused. The swim pass uses the pairs and the
ReLU's fold in its own way (:mod:`swimkit.sensitivity.swim.pairs`, ``folding``).
:func:`disabled` turns every fused path off (the chips' and the swim pass's), for
comparisons; :func:`keep_freed_memory` stops glibc from faulting each batch's memory in
again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .quantization import (
    QUANTIZABLE,
    OutputQuantizer,
    _quantize_output_hook,
    fake_quantize_fixed,
)

_ENABLED = [True]
#: Whether :func:`keep_freed_memory` set glibc's thresholds (None: not asked yet).
_KEEPING: list[bool | None] = [None]
#: glibc's ``mallopt`` parameters, and the ceilings its own dynamic rule raises them to.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 * 2**20, 64 * 2**20


def enabled() -> bool:
    """Whether the fused paths are on (they are unless :func:`disabled` is open)."""
    return _ENABLED[0]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Every fused path off while open: chips and the swim pass run their ops as
    written (for comparisons and benchmarks; the numbers are the same)."""
    before = _ENABLED[0]
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = before


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MiB for the next batch (once per
    process; True where it did).

    By default glibc hands large freed blocks back to the system and takes fresh pages
    on the next batch, each page faulted in again: about a quarter of LeNet's swim pass
    (tens of thousands of faults a pass over 10,240 images). Its dynamic rule raises the
    thresholds at most to 32 MiB (mmap) and 64 MiB (trim); this sets them there at once,
    so a process keeps at most 64 MiB more than it would. Not where the environment sets
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` (the user's choice), nor
    off glibc.
    """
    if _KEEPING[0] is None:
        _KEEPING[0] = False
        chosen = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ)
        if sys.platform.startswith("linux") and not chosen:
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
            except (OSError, AttributeError):
                return False
            _KEEPING[0] = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return bool(_KEEPING[0])


# --- max-pooling whose windows tile the input ----------------------------------------------------


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def tiling(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
           dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False
           ) -> tuple[int, int] | None:
    """The window (rows, columns) of a 2-d max-pool of ``x`` whose windows tile it
    (kernel equal to the stride, no padding, no dilation, no indices; with
    ``ceil_mode``, sizes the kernel divides), else None."""
    kernel = _pair(kernel_size)
    step = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    if (kernel is None or step != kernel or _pair(padding) != (0, 0)
            or _pair(dilation) != (1, 1) or return_indices or x.dim() not in (3, 4)):
        return None
    height, width = x.shape[-2], x.shape[-1]
    if ceil_mode and (height % kernel[0] or width % kernel[1]):
        return None
    if height < kernel[0] or width < kernel[1]:
        return None
    return kernel


def pool_by_maxima(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
                   dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False
                   ) -> Tensor | None:
    """``F.max_pool2d`` as the maximum of strided views, where that is the same thing.

    Applies where the windows tile the input (:func:`tiling`); returns None where they
    do not. Maximum is exact, so the result equals ATen's bit for bit (NaNs propagate in
    both).
    """
    kernel = tiling(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    if kernel is None:
        return None
    rows, cols = x.shape[-2] // kernel[0], x.shape[-1] // kernel[1]
    window = x[..., :rows * kernel[0], :cols * kernel[1]]
    # rows first (whole rows are read in order), then columns of the result
    by_rows = _maximum_of(window[..., i::kernel[0], :] for i in range(kernel[0]))
    out = _maximum_of(by_rows[..., j::kernel[1]] for j in range(kernel[1]))
    return out.clone() if out._base is not None or out is x else out


def _maximum_of(views: Iterable[Tensor]) -> Tensor:
    out: Tensor | None = None
    for view in views:
        out = view if out is None else torch.maximum(out, view)
    assert out is not None
    return out


def relu_max_pool2d(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
                    dilation: Any = 1, ceil_mode: bool = False) -> Tensor:
    """``F.max_pool2d(F.relu(x), ...)``: the pool first, then the ReLU on its output (the
    same numbers; see the module's doc). Under autograd it runs as written, so its
    gradient is the max-pool's (ties go to the first maximum)."""
    pooled = None
    if not (torch.is_grad_enabled() and x.requires_grad):
        pooled = pool_by_maxima(x, kernel_size, stride, padding, dilation, ceil_mode)
    if pooled is None:
        return F.max_pool2d(F.relu(x), kernel_size, stride, padding, dilation, ceil_mode)
    return pooled.relu_()


# --- a layer with its quantizer, ReLU and pool --------------------------------------------------


def pairs_conv(layer: nn.Module) -> bool:
    """Whether ``layer`` may run on pairs of images (:func:`conv_of_pairs`): a plain 2-d
    convolution (one group, zero padding, its own forward)."""
    return (isinstance(layer, nn.Conv2d) and type(layer).forward is nn.Conv2d.forward
            and layer.groups == 1 and layer.padding_mode == "zeros")


#: ``F.conv2d`` as torch defines it: a convolution on pairs calls it with weights of its
#: own, so where something takes over the function (swimkit's converters, which act on
#: the layers' weight tensors) convolutions run as written.
_CONV2D = F.conv2d


def pairs_allowed() -> bool:
    """Whether convolutions may run on pairs of images: ``F.conv2d`` is torch's own."""
    return F.conv2d is _CONV2D


def is_paired(layer: nn.Module, x: Tensor) -> bool:
    """Whether ``x`` holds pairs of images for ``layer`` (twice its input channels)."""
    return x.dim() == 4 and x.shape[1] == 2 * layer.in_channels


def conv_of_pairs(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """``layer(x)`` as a grouped convolution of pairs of images, channels last: images
    2i and 2i + 1 are the two groups of row i, in and out (``x``: one image a row, an
    even batch, or pairs already). oneDNN's channels-last kernel for this layout is
    faster than the one it takes for a single image a row (about twice for one input
    channel, where the layout of a batch of images is ambiguous) and sums each output in
    the same order (a runner checks that it does, bit for bit)."""
    last = torch.channels_last
    if not is_paired(layer, x):
        x = x.reshape(x.shape[0] // 2, 2 * x.shape[1], *x.shape[2:]).contiguous(
            memory_format=last)
    weight = layer.weight.repeat(2, 1, 1, 1).contiguous(memory_format=last)
    bias = None if layer.bias is None else layer.bias.repeat(2)
    return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, 2)


def images_of_pairs(y: Tensor) -> Tensor:
    """Pairs of images (:func:`conv_of_pairs`' layout) back to one image a row (a copy)."""
    half, channels = y.shape[0], y.shape[1] // 2
    return y.reshape(half, 2, channels, *y.shape[2:]).reshape(half * 2, channels,
                                                              *y.shape[2:])


def layer_output(layer: nn.Module, x: Tensor, relu: bool = False,
                 pool: dict[str, Any] | None = None, pairs: bool = False,
                 keep_pairs: bool = False) -> Tensor:
    """``layer(x)`` (its output quantizer included), then a ReLU and a max-pool
    (``pool``: ``F.max_pool2d``'s arguments) when asked, fused (see the module's doc).

    ``pairs``: a convolution runs on pairs of images (:func:`conv_of_pairs`) where its
    input holds pairs, or has one channel and an even batch; ``keep_pairs``: its output
    stays in pairs for the next convolution (else it is put back to one image a row).
    For evaluation: no autograd.
    """
    if pairs and not pairs_allowed():
        x = images_of_pairs(x) if is_paired(layer, x) else x
    elif pairs and (is_paired(layer, x) or (
            layer.in_channels == 1 and x.dim() == 4 and x.shape[0] % 2 == 0)):
        out = _on_pairs(layer, x, relu, pool)
        if out is not None:
            return out if keep_pairs else images_of_pairs(out)
        if is_paired(layer, x):
            x = images_of_pairs(x)
    y = layer.forward(x)  # without hooks: the quantizer's is applied here
    quantizer = getattr(layer, "output_quantizer", None)
    max_abs = quantizer.fixed_range(y.dtype) if quantizer is not None else None
    if quantizer is not None and max_abs is None:  # its batch's range: ops as written
        y = quantizer(y)
        y = F.relu(y) if relu else y
        return F.max_pool2d(y, **pool) if pool is not None else y
    return _epilogue(y, quantizer, max_abs, relu, pool)


def _epilogue(y: Tensor, quantizer: OutputQuantizer | None, max_abs: float | None,
              relu: bool, pool: dict[str, Any] | None) -> Tensor:
    """A fresh layer output ``y`` quantized with the fixed ``max_abs`` (when there is a
    quantizer), ReLU'd and pooled as asked: pooled first where the windows tile it."""
    if pool is not None:
        pooled = pool_by_maxima(y, **pool)
        if pooled is None:  # windows that do not tile: quantize and ReLU first
            y = _epilogue(y, quantizer, max_abs, relu, None)
            return F.max_pool2d(y, **pool)
        y = pooled
    if quantizer is not None:
        return fake_quantize_fixed(y, quantizer.bits, max_abs, relu=relu, out=y)
    return y.relu_() if relu else y


def _on_pairs(layer: nn.Module, x: Tensor, relu: bool, pool: dict[str, Any] | None
              ) -> Tensor | None:
    """:func:`layer_output` run on pairs of images, left in pairs (None where the
    quantizer's range is its batch's: that range would span two images' worth)."""
    quantizer = getattr(layer, "output_quantizer", None)
    max_abs = quantizer.fixed_range(x.dtype) if quantizer is not None else None
    if quantizer is not None and max_abs is None:
        return None
    return _epilogue(conv_of_pairs(layer, x), quantizer, max_abs, relu, pool)


# --- the rewritten graph -------------------------------------------------------------------------

_RELU_FUNCTIONS = (F.relu, torch.relu)
_POOL_FUNCTIONS = (F.max_pool2d, torch.max_pool2d)
_POOL_ARGUMENTS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                   "return_indices")
_POOL_DEFAULTS = (None, None, 0, 1, False, False)


def _module(graph_module: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return graph_module.get_submodule(str(node.target))


def is_relu(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` is a ReLU (function, method or layer) of one argument."""
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1
    if node.op == "call_method":
        return node.target in ("relu", "relu_") and len(node.args) == 1
    return type(_module(root, node)) is nn.ReLU


def max_pool_arguments(node: fx.Node, root: nn.Module) -> dict[str, Any] | None:
    """``F.max_pool2d``'s keyword arguments (but ``return_indices``) of a 2-d max-pool
    node (function or layer) whose arguments are constants, else None."""
    module = _module(root, node)
    if type(module) is nn.MaxPool2d:
        found = {name: getattr(module, name) for name in _POOL_ARGUMENTS}
    elif node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        given = dict(zip(_POOL_ARGUMENTS, node.args[1:], strict=False))
        if set(given) & set(node.kwargs) or not set(node.kwargs) <= set(_POOL_ARGUMENTS):
            return None
        given.update(node.kwargs)
        found = {name: given.get(name, default)
                 for name, default in zip(_POOL_ARGUMENTS, _POOL_DEFAULTS, strict=True)}
    else:
        return None
    if found["return_indices"] or any(isinstance(v, fx.Node) for v in found.values()):
        return None
    del found["return_indices"]
    return found


def fusable_layer(module: nn.Module | None) -> bool:
    """A conv / linear layer whose only hook (if any) is swimkit's output quantizer."""
    if not isinstance(module, QUANTIZABLE) or module._forward_pre_hooks:
        return False
    hooks = list(module._forward_hooks.values())
    if not hooks:
        return True
    return hooks == [_quantize_output_hook] and isinstance(
        getattr(module, "output_quantizer", None), OutputQuantizer)


def _sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _global_hooks() -> bool:
    """Whether hooks are registered for every module (a fused call would skip them)."""
    module = torch.nn.modules.module
    return any(getattr(module, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_module_registration_hooks"))


def inference_graph(model: nn.Module) -> fx.GraphModule | None:
    """``model``'s forward traced by torch.fx with each conv / linear layer, its output
    quantizer, a ReLU after it and a 2-d max-pool after that fused into one
    :func:`layer_output` call (and a ReLU then a max-pool into :func:`relu_max_pool2d`).
    None where the model cannot be traced or nothing is fused. The graph calls the
    model's own layers, so weights swapped into them are used."""
    if not enabled() or _global_hooks():
        return None
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model runs as written
        return None
    graph = graph_module.graph
    if any(node.op == "get_attr" and "." in str(node.target) for node in graph.nodes):
        return None  # a layer's tensor read as an attribute: the graph would hold a copy
    fused = False
    for node in list(graph.nodes):
        if node.op == "call_module" and fusable_layer(_module(graph_module, node)):
            fused |= _fuse_layer(graph, graph_module, node)
        elif is_relu(node, graph_module):
            fused |= _fuse_relu_pool(graph, graph_module, node)
    if not fused:
        return None
    _chain_pairs(graph, graph_module)
    graph.lint()
    graph_module.recompile()
    return graph_module


def _fuse_layer(graph: fx.Graph, root: nn.Module, layer: fx.Node) -> bool:
    if len(layer.args) != 1 or layer.kwargs:
        return False
    chain = [layer]
    relu = _sole_user(layer)
    if relu is not None and is_relu(relu, root):
        chain.append(relu)
        pool_node = _sole_user(relu)
        pool = None if pool_node is None else max_pool_arguments(pool_node, root)
        if pool is not None:
            chain.append(pool_node)
    else:
        pool = None
    quantized = bool(root.get_submodule(str(layer.target))._forward_hooks)
    if len(chain) == 1 and not quantized:
        return False
    module = root.get_submodule(str(layer.target))
    pairs = pool is not None and pairs_conv(module) and module.in_channels == 1
    with graph.inserting_before(layer):
        new = graph.call_function(layer_output, (graph.get_attr(str(layer.target)),
                                                 layer.args[0]),
                                  {"relu": len(chain) > 1, "pool": pool, "pairs": pairs,
                                   "keep_pairs": False})
    _replace(chain, new)
    return True


def _chain_pairs(graph: fx.Graph, root: nn.Module) -> None:
    """A convolution on pairs of images whose only user is another convolution leaves
    its output in pairs, and that one takes them (in graph order, so chains follow)."""
    for node in graph.nodes:
        user = _sole_user(node) if node.target is layer_output else None
        if (node.kwargs.get("pairs") and user is not None and user.target is layer_output
                and user.args[1] is node
                and pairs_conv(root.get_submodule(str(user.args[0].target)))):
            node.kwargs = {**node.kwargs, "keep_pairs": True}
            user.kwargs = {**user.kwargs, "pairs": True}


def takes_pairs(graph_module: fx.GraphModule) -> bool:
    """Whether a graph of :func:`inference_graph` runs a convolution on pairs of images."""
    return any(node.target is layer_output and node.kwargs.get("pairs")
               for node in graph_module.graph.nodes)


def without_pairs(graph_module: fx.GraphModule) -> fx.GraphModule:
    """``graph_module`` with every convolution on single images (rewritten in place):
    for a machine whose kernel for pairs of images sums in another order."""
    for node in graph_module.graph.nodes:
        if node.target is layer_output:
            node.kwargs = {**node.kwargs, "pairs": False, "keep_pairs": False}
    graph_module.recompile()
    return graph_module


def _fuse_relu_pool(graph: fx.Graph, root: nn.Module, relu: fx.Node) -> bool:
    pool_node = _sole_user(relu)
    pool = None if pool_node is None else max_pool_arguments(pool_node, root)
    if pool is None:
        return False
    with graph.inserting_before(relu):
        new = graph.call_function(relu_max_pool2d, (relu.args[0],), pool)
    _replace([relu, pool_node], new)
    return True


def _replace(chain: list[fx.Node], new: fx.Node) -> None:
    """``new`` in place of the nodes of ``chain`` (each the sole user of the one before)."""
    chain[-1].replace_all_uses_with(new)
    for node in reversed(chain):
        node.graph.erase_node(node)


__all__ = ["conv_of_pairs", "disabled", "enabled", "fusable_layer", "images_of_pairs",
           "inference_graph", "is_paired", "is_relu", "keep_freed_memory", "layer_output",
           "max_pool_arguments", "pairs_allowed", "pairs_conv", "pool_by_maxima",
           "relu_max_pool2d", "takes_pairs", "tiling", "without_pairs"]
