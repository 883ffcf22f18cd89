"""Evaluating programmed chips fast: the accuracy of a model with given device weights.

A chip is the model with its device weights replaced by perturbed values. The values
are swapped in with :func:`torch.func.functional_call` (the stored parameters are never
written, parametrizations such as a weight quantizer are bypassed for the swapped
weights), so one function serves every chip:

- under ``torch.inference_mode``, with every other parametrized tensor (a quantized
  bias, say) computed once instead of once per batch;
- with exact fast paths for ops whose ATen kernel is slow on the CPU (a max-pool whose
  kernel equals its stride is the maximum of its strided views: the same numbers, about
  ten times faster here), taken only by a model that has such an op;
- multi-head attention on its plain path, the one it takes under the fast paths, so a
  chip's count does not depend on which model has them;
- ``chips_per_pass`` chips at once: their weights stacked and the model mapped over
  them with :func:`torch.func.vmap` (batched matmuls, grouped convolutions);
- optionally compiled once with :func:`torch.compile` and reused for every chip.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import SwimkitError, first_line
from .models import require_logits

Batch = tuple[Tensor, Tensor]
Weights = Mapping[str, Tensor]


# --- exact fast paths --------------------------------------------------------------------------


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def pool_by_maxima(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
                   dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False
                   ) -> Tensor | None:
    """``F.max_pool2d`` as the maximum of strided views, where that is the same thing.

    Applies when the windows tile the input: kernel equal to the stride, no padding, no
    dilation, no indices, and (with ``ceil_mode``) sizes the kernel divides. Returns None
    where it does not apply. Maximum is exact, so the result equals ATen's bit for bit
    (NaNs propagate in both).
    """
    kernel = _pair(kernel_size)
    step = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    if (kernel is None or step != kernel or _pair(padding) != (0, 0)
            or _pair(dilation) != (1, 1) or return_indices or x.dim() not in (3, 4)):
        return None
    height, width = x.shape[-2], x.shape[-1]
    if ceil_mode and (height % kernel[0] or width % kernel[1]):
        return None
    rows, cols = height // kernel[0], width // kernel[1]
    if rows == 0 or cols == 0:
        return None
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


class ExactFastOps(TorchFunctionMode):
    """Routes ops with a faster exact equivalent to it (see :func:`pool_by_maxima`);
    ``routed`` counts the calls it routed."""

    POOLS = (F.max_pool2d, torch.max_pool2d)

    def __init__(self) -> None:
        super().__init__()
        self.routed = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.POOLS and args and not torch.is_grad_enabled():
            fast = pool_by_maxima(*args, **kwargs)
            if fast is not None:
                self.routed += 1
                return fast
        return func(*args, **kwargs)


def fast_ops_apply(forward: Callable[[Tensor], Any], x: Tensor) -> bool:
    """Whether :class:`ExactFastOps` routes any op of ``forward(x)`` (run once): the
    mode is worth its cost only then (while it is active every torch call passes
    through Python)."""
    mode = ExactFastOps()
    with torch.inference_mode(), unfused_attention(), mode:
        forward(x)
    return mode.routed > 0


@contextlib.contextmanager
def unfused_attention() -> Iterator[None]:
    """Multi-head attention on its plain path (projections, scaled dot-product attention)
    while open, as under :class:`ExactFastOps`: its fused inference path rounds
    differently, so a chip's count would depend on whether the mode is active."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


# --- swapping tensors in ---------------------------------------------------------------------


def _slot_key(name: str) -> str:
    return f"_swimkit_slot_{name}"


def _slot_property(name: str) -> property:
    key = _slot_key(name)
    return property(lambda module: module.__dict__[key], doc=f"swapped-in {name}")


_SLOT_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _slot_class(original: type, names: tuple[str, ...]) -> type:
    """A subclass of ``original`` whose tensors ``names`` are read from slots."""
    key = (original, names)
    if key not in _SLOT_CLASSES:
        _SLOT_CLASSES[key] = type(original.__name__, (original,),
                                  {n: _slot_property(n) for n in names})
    return _SLOT_CLASSES[key]


class Slots:
    """Tensors of a model's modules read from slots instead of the module's own.

    While open, ``module.weight`` (a parameter, or a parametrization's output) is
    whatever was last put in its slot; the stored parameters are never written, and
    closing restores every module's class, whatever happened inside.
    """

    def __init__(self, model: nn.Module, values: Mapping[str, Tensor]) -> None:
        self._modules: dict[str, tuple[nn.Module, str]] = {}
        modules = dict(model.named_modules())
        for name in values:
            module_name, _, tensor_name = name.rpartition(".")
            self._modules[name] = (modules[module_name], tensor_name)
        self._values = values
        self._classes: list[tuple[nn.Module, type]] = []

    def __enter__(self) -> Slots:
        by_module: dict[int, tuple[nn.Module, list[str]]] = {}
        for module, tensor_name in self._modules.values():
            by_module.setdefault(id(module), (module, []))[1].append(tensor_name)
        for module, names in by_module.values():
            self._classes.append((module, module.__class__))
            module.__class__ = _slot_class(module.__class__, tuple(sorted(names)))
        self.put(self._values)
        return self

    def put(self, values: Mapping[str, Tensor]) -> None:
        """Read ``values`` (name -> tensor) from now on."""
        for name, value in values.items():
            module, tensor_name = self._modules[name]
            module.__dict__[_slot_key(tensor_name)] = value

    def __exit__(self, *exc: object) -> None:
        for module, original in reversed(self._classes):
            module.__class__ = original
        for module, tensor_name in self._modules.values():
            module.__dict__.pop(_slot_key(tensor_name), None)
        self._classes.clear()


def fixed_values(model: nn.Module, swapped: Sequence[str]) -> dict[str, Tensor]:
    """The value of every parametrized tensor of ``model`` not in ``swapped`` (computed
    once, read from a slot instead of being recomputed for every batch)."""
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            for tensor_name in module.parametrizations:
                name = f"{module_name}.{tensor_name}" if module_name else tensor_name
                if name not in swapped:
                    out[name] = getattr(module, tensor_name).detach()
    return out


# --- the chip function ------------------------------------------------------------------------


class ChipRunner:
    """Counts the correct predictions of chips (sets of device weights) on ``data``.

    Use it as a context manager: while open, the device weights of ``model`` are read
    from slots. ``chips_per_pass`` chips are evaluated per forward pass (vmap over
    their stacked weights); ``compile`` compiles the forward once, falling back to eager
    with a warning where torch.compile cannot run. ``fast_ops`` allows
    :class:`ExactFastOps`, which the runner then uses if a probe forward shows that it
    routes an op (``routes_ops``). The model must be in eval mode.
    """

    def __init__(self, model: nn.Module, data: Sequence[Batch], values: Weights, *,
                 chips_per_pass: int = 1, compile: bool = False, fast_ops: bool = True) -> None:
        self.model = model
        self.data = data
        self.names = list(values)
        self.chips_per_pass = check_chips_per_pass(chips_per_pass) or 1
        self.fast_ops = fast_ops
        self.compiled = False
        self._passed = False
        self.routes_ops = False
        # one tensor per device weight, written in place for every chip: a compiled
        # forward sees the same tensors every time and is reused
        self._inputs = {n: v.detach().clone() for n, v in values.items()}
        self._slots = Slots(model, {**fixed_values(model, self.names), **self._inputs})
        self._forward = self._make_forward()
        self._want_compile = compile

    @property
    def inputs(self) -> dict[str, Tensor]:
        """The tensors the layers compute with while open: one per device weight,
        written in place for every chip."""
        return self._inputs

    def __enter__(self) -> ChipRunner:
        self._slots.__enter__()
        if self._want_compile:
            self._compile()
        self.routes_ops = self.fast_ops and not self.compiled and fast_ops_apply(
            self.model, self.data[0][0][:2])  # which ops route does not depend on the batch
        return self

    def __exit__(self, *exc: object) -> None:
        self._slots.__exit__(*exc)

    def _make_forward(self) -> Callable[[Weights, Tensor], Tensor]:
        model, slots = self.model, self._slots

        def forward(weights: Weights, x: Tensor) -> Tensor:
            slots.put(weights)
            return require_logits(model(x))

        if self.chips_per_pass == 1:
            return forward
        return vmap(forward, in_dims=(0, None), randomness="error")

    def _compile(self) -> None:
        try:
            self._forward = torch.compile(self._forward, dynamic=False)
            self.compiled = True
        except Exception as exc:  # noqa: BLE001 - any failure means: stay eager
            warnings.warn(f"torch.compile cannot run here ({first_line(exc)}); evaluating "
                          "without compiling", stacklevel=3)

    def correct(self, chips: Iterable[Weights]) -> list[int]:
        """Correct predictions of each chip over all of ``data``, in order. ``chips`` is
        read a pass at a time, so a generator keeps only that many chips in memory."""
        counts: list[int] = []
        chips = iter(chips)
        while group := list(itertools.islice(chips, self.chips_per_pass)):
            counts.extend(self._pass(group))
        return counts

    @torch.inference_mode()
    def _pass(self, chips: Sequence[Weights]) -> list[int]:
        if self.chips_per_pass == 1:
            for name, value in chips[0].items():
                self._inputs[name].copy_(value)
            return [int(self._count(self._inputs).cpu())]
        stacked = {n: torch.stack([c[n] for c in chips]) for n in self.names}
        try:
            counts = self._count(stacked)
        except Exception as exc:  # noqa: BLE001 - an op vmap cannot map: one chip a pass
            if self._passed:
                raise
            warnings.warn(f"cannot evaluate {self.chips_per_pass} chips per pass with this "
                          f"model ({first_line(exc)}); evaluating one chip per pass",
                          stacklevel=4)
            self.chips_per_pass = 1
            self._forward = self._make_forward()
            return [c for chip in chips for c in self._pass([chip])]
        self._passed = True
        return [int(c) for c in counts.cpu()]

    def _count(self, weights: Weights) -> Tensor:
        """Correct predictions over ``data`` (one count, or one per stacked chip), on the
        data's device: nothing is read back until the chip is done."""
        total: Tensor | int = 0
        fast = ExactFastOps() if self.routes_ops else contextlib.nullcontext()
        with unfused_attention(), fast:
            for x, y in self.data:
                total = total + (self._forward(weights, x).argmax(dim=-1) == y).sum(dim=-1)
        return torch.as_tensor(total)


def auto_chips_per_pass(device: torch.device, data: Sequence[Batch], parameters: int) -> int:
    """The chips per pass to use by default: 1 on the CPU (measured in
    benchmarks/bench_montecarlo.py: stacking chips did not pay there); on a GPU as many
    as fit a quarter of the free memory, at most 8."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    x = data[0][0]
    per_chip = 4 * (parameters + 64 * x.numel())  # weights + a generous activation guess
    return int(max(1, min(8, math.floor(free / 4 / max(per_chip, 1)))))


#: Evaluation batch sizes: a batch's largest activation about this many bytes. On the CPU
#: a batch that stays in the caches is fastest (measured: benchmarks/bench_montecarlo.py,
#: 2-core EPYC, 1 MiB L2 a core, 32 MiB L3: LeNet best at 256, ConvNet and ResNet-18 at
#: 16-32, 1.7-1.8x faster than at 256; the ViT at 128-256, 1.3-1.4x faster than at 512);
#: on a GPU large batches keep it busy (not measured here).
ACTIVATION_BUDGET = {"cpu": 4 * 2**20, "cuda": 256 * 2**20}
BATCH_RANGE = {"cpu": (16, 512), "cuda": (256, 4096)}


def largest_activation_bytes(model: nn.Module, image_shape: Sequence[int]) -> int:
    """Bytes per image of the largest tensor an op of ``model``'s forward makes, inside
    layers too (attention's packed q, k, v projection is no layer's output).

    Measured as the growth of each op's output from a batch of two images to four (a
    batch of one takes other paths in some ops), counting the memory behind a tensor, so
    weights (a parametrization's output, an expanded or transposed matrix) and anything
    else that does not grow with the batch are left out. The forward runs as chips run
    it (eval mode, attention on its plain path); the model's modes are restored.
    """
    two, four = (_op_output_bytes(model, image_shape, images) for images in (2, 4))
    return max([(size - two.get(key, 0)) // 2 for key, size in four.items()] + [0])


class _OutputBytes(TorchDispatchMode):
    """Records the bytes of the largest storage behind a tensor each ATen op call
    returns, keyed by the op and how many calls of it came before."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()
        self.sizes: dict[tuple[Any, int], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]
        self.sizes[(func, self.calls[func])] = max(
            [t.untyped_storage().nbytes() for t in tensors] + [0])
        self.calls[func] += 1
        return out


def _op_output_bytes(model: nn.Module, image_shape: Sequence[int], images: int
                     ) -> dict[tuple[Any, int], int]:
    """:class:`_OutputBytes`' record of a forward of ``images`` zero images."""
    reference = next(itertools.chain(model.parameters(), model.buffers()), None)
    example = torch.zeros(images, *image_shape, device=None if reference is None else
                          reference.device)
    modes = [(m, m.training) for m in model.modules()]
    recorder = _OutputBytes()
    try:
        with torch.no_grad(), unfused_attention(), recorder:
            model.eval()(example)
    finally:
        for m, training in modes:
            m.training = training
    return recorder.sizes


def evaluation_batch_size(model: nn.Module, image_shape: Sequence[int],
                          device: torch.device | str) -> int:
    """The evaluation batch size for ``model`` on ``device``: the power of two whose
    largest activation comes nearest the device's budget (:data:`ACTIVATION_BUDGET`),
    within :data:`BATCH_RANGE`."""
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    per_image = max(largest_activation_bytes(model, image_shape), 1)
    fitting = max(ACTIVATION_BUDGET[kind] / per_image, 1.0)
    low, high = BATCH_RANGE[kind]
    return min(max(2 ** round(math.log2(fitting)), low), high)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a run on ``device`` (None where it cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_chips_fit(chips: int, device: torch.device, data: Sequence[Batch],
                    parameters: int) -> None:
    """Refuse, before any work, more chips per pass than half the free memory holds
    (each chip: its weights and a generous guess of its activations)."""
    if chips == 1:
        return
    free = available_memory(device)
    if free is None:
        return
    per_chip = 4 * (parameters + 64 * data[0][0].numel())
    fits = max(1, free // 2 // max(per_chip, 1))
    if chips > fits:
        raise SwimkitError(
            f"{chips} chips per pass need about {chips * per_chip / 2**30:.1f} GiB, more "
            f"than half of the {free / 2**30:.1f} GiB free here; use chips_per_pass <= "
            f"{fits}", command_line=f"--chips-per-pass {chips} needs about "
            f"{chips * per_chip / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free); use at most "
            f"{fits}")


def check_chips_per_pass(value: int | None) -> int | None:
    """None (choose) or an integer >= 1, else a clear error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SwimkitError(f"chips_per_pass must be an integer >= 1 or None to choose "
                           f"(got {value!r})",
                           command_line=f"--chips-per-pass must be >= 1 (got {value!r})")
    return value


__all__ = ["ACTIVATION_BUDGET", "BATCH_RANGE", "ChipRunner", "ExactFastOps", "Slots",
           "auto_chips_per_pass", "check_chips_per_pass", "evaluation_batch_size",
           "fast_ops_apply", "fixed_values", "largest_activation_bytes", "pool_by_maxima",
           "unfused_attention"]
