"""Exact and stochastic diagonal curvature engines: ``ggn``, ``hutchinson``, ``fisher``.

All derivatives are taken with respect to the *effective* device weights (what a layer
computes with, after parametrizations such as swimkit's weight quantizer): a zero offset
is added to each effective weight through :func:`swimkit.perturbed` and the offsets are
the only variables of :mod:`torch.func` transforms. The model's parameters are never
written. Each engine returns raw (unnormalised) ``(second, first, samples)``:

- ``first``: the gradient of each batch's mean cross-entropy, summed over batches;
- ``second``: a diagonal curvature of the cross-entropy *summed* over samples:

  - ``ggn``: the exact generalised Gauss-Newton diagonal, sum_n diag(J_n^T H_n J_n) with
    H_n = diag(p) - p p^T. It equals the Hessian diagonal for piecewise-linear networks
    (ReLU, max-pooling, batch norm in eval mode, residual adds, straight-through
    quantizers), whose logits are linear in each single weight.
  - ``hutchinson``: the unbiased estimate mean_v[v * (H v)] of the Hessian diagonal,
    with Rademacher probes v and double-backward Hessian-vector products.
  - ``fisher``: the empirical Fisher diagonal, sum_n (grad of sample n's loss)^2.

The engines expect the model in eval mode (the :func:`swimkit.sensitivity` dispatcher
puts it there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import SwimkitError, first_line
from ..mapping import DeviceWeight, Perturbation, effective_weights, perturbed
from ..models import require_logits
from ..progress import progress_bar
from ..quantization import OutputQuantizer, fake_quantize
from .engines import register_engine

Grads = dict[str, Tensor]
Result = tuple[Grads, Grads, int]

# Default bound on the per-sample results held at once by ggn / fisher (elements).
_PER_SAMPLE_BUDGET = 2**24

#: The engines' options and their defaults (None: chosen from a memory budget).
GGN_OPTIONS: dict[str, Any] = {"class_chunk": None, "sample_chunk": None}
FISHER_OPTIONS: dict[str, Any] = {"sample_chunk": None}
HUTCHINSON_OPTIONS: dict[str, Any] = {"probes": 100, "seed": 0, "probe_chunk": 8}


# ---------------------------------------------------------------------------------------
# Engines


def ggn_diagonal(
    model: nn.Module,
    weights: dict[str, DeviceWeight],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    progress: bool = False,
    **options: Any,
) -> Result:
    """Exact Gauss-Newton diagonal of the summed cross-entropy, and the gradient.

    Options: ``class_chunk`` (classes pulled back at once; default all) and
    ``sample_chunk`` (samples vectorised at once; default from a memory budget).
    """
    opts = _options("ggn", options, GGN_OPTIONS)
    term = partial(_outer_product_diagonal, factor=_softmax_hessian_factor, **opts)
    return _accumulate("ggn", model, weights, batches, term, progress)


def fisher_diagonal(
    model: nn.Module,
    weights: dict[str, DeviceWeight],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    progress: bool = False,
    **options: Any,
) -> Result:
    """Empirical Fisher diagonal (squared per-sample gradients, summed), and the gradient.

    Option: ``sample_chunk`` (samples vectorised at once; default from a memory budget).
    """
    opts = _options("fisher", options, FISHER_OPTIONS)
    term = partial(_outer_product_diagonal, factor=_loss_gradient_factor, class_chunk=None, **opts)
    return _accumulate("fisher", model, weights, batches, term, progress)


def hutchinson_diagonal(
    model: nn.Module,
    weights: dict[str, DeviceWeight],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    progress: bool = False,
    **options: Any,
) -> Result:
    """Hutchinson estimate of the Hessian diagonal of the summed loss, and the gradient.

    Options: ``probes`` (Rademacher probes per batch, default 100), ``seed`` (default 0;
    the same seed gives the same result) and ``probe_chunk`` (probes vectorised at once,
    default 8).
    """
    opts = _options("hutchinson", options, HUTCHINSON_OPTIONS)
    generator = torch.Generator(device=next(iter(weights.values())).value.device)
    generator.manual_seed(opts.pop("seed"))
    term = partial(_hutchinson_term, generator=generator, **opts)
    return _accumulate("hutchinson", model, weights, batches, term, progress)


# ---------------------------------------------------------------------------------------
# The shared batch loop and the first-order term


@dataclass(frozen=True)
class _Forward:
    """The model as a function of offsets on its effective weights: (deltas, x) -> logits."""

    model: nn.Module
    handle: Perturbation

    def __call__(self, deltas: Mapping[str, Tensor] | None, x: Tensor) -> Tensor:
        self.handle.set(deltas)
        try:
            return require_logits(self.model(x))
        finally:
            self.handle.set(None)  # transformed (wrapped) offsets never outlive the call


# A per-batch second-order term: (forward, zero offsets, x, y) -> per-weight tensors.
_SecondTerm = Callable[[_Forward, Grads, Tensor, Tensor], Grads]


def _accumulate(
    name: str,
    model: nn.Module,
    weights: Mapping[str, DeviceWeight],
    batches: Iterable[tuple[Tensor, Tensor]],
    second_term: _SecondTerm,
    progress: bool,
) -> Result:
    """Sum the mean-loss gradient and ``second_term`` over ``batches``."""
    zeros = {k: torch.zeros_like(v) for k, v in effective_weights(weights).items()}
    device = next(iter(zeros.values())).device
    second = {k: v.clone() for k, v in zeros.items()}
    first = {k: v.clone() for k, v in zeros.items()}
    samples = 0
    # Outer no_grad: torch.func transforms still differentiate the offsets, but no graph
    # is recorded for the model's own parameters. Attention runs as plain ops (the math
    # kernel): the fused CPU kernels have no second derivative and no per-sample batching.
    with perturbed(model, weights) as handle, torch.no_grad(), \
            sdpa_kernel(SDPBackend.MATH):
        forward = _Forward(model, handle)
        for x, y in progress_bar(batches, progress, f"sensitivity ({name})"):
            x, y = x.to(device), y.to(device)
            _add_to(first, _mean_loss_gradient(forward, zeros, x, y))
            _add_to(second, second_term(forward, zeros, x, y))
            samples += x.shape[0]
    if samples == 0:
        raise SwimkitError(f"sensitivity ({name}) got no batches: pass a non-empty loader")
    return second, first, samples


def _mean_loss_gradient(forward: _Forward, zeros: Grads, x: Tensor, y: Tensor) -> Grads:
    """Gradient of the batch's mean cross-entropy (g, shared by every engine)."""
    return grad(lambda d: F.cross_entropy(forward(d, x), y))(zeros)


def _add_to(total: Grads, part: Mapping[str, Tensor]) -> None:
    for k, v in part.items():
        total[k] += v


# ---------------------------------------------------------------------------------------
# ggn and fisher: sums of squared per-sample pullbacks


def _softmax_hessian_factor(z: Tensor, y: Tensor) -> Tensor:
    """Rows a_k = sqrt(p_k) (e_k - p), with sum_k a_k a_k^T = diag(p) - p p^T."""
    p = torch.softmax(z, dim=-1)
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    return p.sqrt()[:, None] * (eye - p[None, :])


def _loss_gradient_factor(z: Tensor, y: Tensor) -> Tensor:
    """One row p - e_y: the cross-entropy gradient with respect to the logits."""
    p = torch.softmax(z, dim=-1)
    classes = torch.arange(p.shape[-1], device=p.device)
    return (p - (classes == y).to(p.dtype))[None, :]


def _outer_product_diagonal(
    forward: _Forward,
    zeros: Grads,
    x: Tensor,
    y: Tensor,
    *,
    factor: Callable[[Tensor, Tensor], Tensor],
    class_chunk: int | None,
    sample_chunk: int | None,
) -> Grads:
    """sum_n sum_k (J_n^T a_nk)^2, the rows a_nk = ``factor(z_n, y_n)`` held constant.

    With a_nk a factor of the softmax Hessian this is diag(sum_n J_n^T H_n J_n); with the
    single row p - e_y it is the sum of squared per-sample loss gradients. The square is
    per sample, so the pullbacks are vectorised over samples (and classes) with vmap.
    """

    def per_sample(xn: Tensor, yn: Tensor) -> Grads:
        z, pullback = vjp(lambda d: forward(d, xn[None])[0], zeros)
        a = factor(z.detach(), yn)
        squares = [_squares(vmap(pullback)(rows)[0]) for rows in a.split(class_chunk or len(a))]
        return {k: sum(s[k] for s in squares) for k in zeros}

    numel = sum(v.numel() for v in zeros.values())
    width = class_chunk or _num_classes(forward, x)
    step = sample_chunk or max(1, _PER_SAMPLE_BUDGET // (numel * width))
    result = {k: v.clone() for k, v in zeros.items()}
    with _whole_batch_ranges(forward, x):
        for xs, ys in zip(x.split(step), y.split(step), strict=True):
            _add_to(result, {k: v.sum(0) for k, v in vmap(per_sample)(xs, ys).items()})
    return result


def _squares(pulled: Grads) -> Grads:
    """sum_k of the squared pullbacks of one class chunk (freed right after)."""
    return {k: v.square().sum(0) for k, v in pulled.items()}


def _num_classes(forward: _Forward, x: Tensor) -> int:
    return forward(None, x[:1]).shape[-1]


@contextmanager
def _whole_batch_ranges(forward: _Forward, x: Tensor) -> Iterator[None]:
    """Pin batch-dependent output-quantizer ranges to those of the whole batch ``x``.

    A quantizer whose range is max|y| over the batch tensor (``output_range="batch"``, or
    not yet calibrated) would see one sample at a time under a per-sample vmap and
    quantize differently from the batched forward. Its range is recorded on the batched
    forward and reused; the hooks are removed on exit.
    """
    quantizers = [
        m for m in forward.model.modules() if isinstance(m, OutputQuantizer) and _batchwise(m)
    ]
    if not quantizers:
        yield
        return
    ranges: dict[OutputQuantizer, Tensor] = {}

    def record(module: OutputQuantizer, args: tuple, output: Tensor) -> None:
        ranges[module] = args[0].detach().abs().amax()

    def pin(module: OutputQuantizer, args: tuple, output: Tensor) -> Tensor:
        return fake_quantize(args[0], module.bits, ranges[module])

    with _hooks(quantizers, record):
        forward(None, x)
    with _hooks(quantizers, pin):
        yield


def _batchwise(quantizer: OutputQuantizer) -> bool:
    return (
        quantizer.output_range == "batch" or quantizer.training or not bool(quantizer.calibrated)
    )


@contextmanager
def _hooks(modules: Iterable[nn.Module], hook: Callable[..., Any]) -> Iterator[None]:
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------
# hutchinson


def _hutchinson_term(
    forward: _Forward,
    zeros: Grads,
    x: Tensor,
    y: Tensor,
    *,
    probes: int,
    probe_chunk: int,
    generator: torch.Generator,
) -> Grads:
    """mean over Rademacher v of v * (H v), H the Hessian of the batch's summed loss.

    H v is the vector-Jacobian product of the gradient with v (H is symmetric), so one
    forward and backward pass is recorded per batch and replayed for every probe.
    """

    def summed_loss(d: Grads) -> Tensor:
        return F.cross_entropy(forward(d, x), y, reduction="sum")

    _, hessian_product = vjp(grad(summed_loss), zeros)
    total = {k: v.clone() for k, v in zeros.items()}
    for start in range(0, probes, probe_chunk):
        vs = _rademacher(zeros, min(probe_chunk, probes - start), generator)
        (hvs,) = vmap(hessian_product)(vs)
        _add_to(total, {k: (vs[k] * hvs[k]).sum(0) for k in vs})
    return {k: v / probes for k, v in total.items()}


def _rademacher(like: Grads, count: int, generator: torch.Generator) -> Grads:
    """``count`` probes of +-1, drawn probe by probe (independent of the chunking)."""

    def draw(v: Tensor) -> Tensor:
        return torch.randint(0, 2, v.shape, generator=generator, device=v.device)

    draws = [{k: draw(v) for k, v in like.items()} for _ in range(count)]
    return {k: torch.stack([d[k] for d in draws]).to(v.dtype) * 2 - 1 for k, v in like.items()}


# ---------------------------------------------------------------------------------------
# Options


def _options(engine: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """``defaults`` updated by ``given``, checked: unknown or bad values raise SwimkitError.

    Every option is an integer; all but ``seed`` must be >= 1 (None keeps the default).
    """
    for key, value in given.items():
        if key not in defaults:
            raise SwimkitError(
                f"unknown option {key!r} for sensitivity engine {engine!r}; "
                f"valid options: {', '.join(defaults)}"
            )
        if value is None and defaults[key] is None:
            continue
        least = None if key == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or (least and value < least):
            rule = "an integer" if least is None else f"an integer >= {least}"
            raise SwimkitError(f"{key} must be {rule} (got {value!r})")
    return {**defaults, **given}


def _readable(name: str, compute: Callable[..., Result]) -> Callable[..., Result]:
    """``compute`` with torch.func's errors as one line that says what to do instead."""

    def run(model: nn.Module, weights: dict[str, DeviceWeight], batches: Any,
            **kwargs: Any) -> Result:
        try:
            return compute(model, weights, batches, **kwargs)
        except SwimkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch.func's errors, in one line
            raise SwimkitError(
                f"engine {name!r} cannot run this model: torch.func could not transform its "
                f"forward per sample ({first_line(exc, with_type=True)}); models with "
                "data-dependent control flow or ops torch.func cannot map (recurrent "
                "layers, for one) need engine='swim' with a curvature rule per op "
                "(swimkit.register_rule)") from None

    return run


register_engine("ggn", _readable("ggn", ggn_diagonal), options=GGN_OPTIONS,
                help="exact generalised Gauss-Newton diagonal (= Hessian diagonal for "
                     "piecewise-linear nets)")
register_engine("hutchinson", _readable("hutchinson", hutchinson_diagonal),
                options=HUTCHINSON_OPTIONS,
                option_flags={"--probes": "probes", "--probe-seed": "seed"},
                help="unbiased Hessian-diagonal estimate with Rademacher probes")
register_engine("fisher", _readable("fisher", fisher_diagonal), options=FISHER_OPTIONS,
                help="empirical Fisher diagonal (squared per-sample gradients)")
