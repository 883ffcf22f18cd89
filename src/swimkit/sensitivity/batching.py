"""The batch the swim pass runs at: chosen per model, the given batches regrouped to it.

h sums over samples, and g sums the mean-loss gradient of each batch the caller gives:
each sample's gradient weighs 1 / the size of its batch. Both are sums over samples, so
the pass may run the images in batches of any size and the results change only by float
rounding; the batches given decide g, the pass's batch only the speed. A model whose
forward depends on the batch (an output quantizer with a per-batch range) runs the
batches as given.

The pass's batch, unless given, follows the rule of the evaluation batch
(:func:`swimkit.chips.evaluation_batch_size`): the power of two whose largest activation
comes nearest a budget (:data:`PASS_ACTIVATION_BUDGET`). On a CPU the pass's budget is
twice the evaluation's: every conv and linear weight gets two weight-sized gradients a
batch (S and g), which a larger batch shares out, against activations that stay in the
caches. Measured on a 2-core CPU, one thread: ResNet-18's pass 5-10 % faster at 32 to 64
than at 16, LeNet's 5 % faster at 512 than at 256, ConvNet's within 3 % from 16 to 64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..chips import largest_activation_bytes
from ..quantization import OutputQuantizer

#: Bytes of a batch's largest activation the pass aims at, per device kind (on a GPU the
#: evaluation's, not measured).
PASS_ACTIVATION_BUDGET = {"cpu": 8 * 2**20, "cuda": 256 * 2**20}
#: The smallest and largest batch the rule picks, per device kind.
PASS_BATCH_RANGE = {"cpu": (16, 512), "cuda": (256, 4096)}

Chunk = tuple[Tensor, Tensor, Tensor]


def pass_batch_size(model: nn.Module, image_shape: Sequence[int],
                    device: torch.device | str) -> int:
    """The swim pass's batch for ``model`` on ``device``: the power of two whose largest
    activation comes nearest :data:`PASS_ACTIVATION_BUDGET`, within
    :data:`PASS_BATCH_RANGE`."""
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    per_image = max(largest_activation_bytes(model, image_shape), 1)
    fitting = max(PASS_ACTIVATION_BUDGET[kind] / per_image, 1.0)
    low, high = PASS_BATCH_RANGE[kind]
    return min(max(2 ** round(math.log2(fitting)), low), high)


def depends_on_batch(model: nn.Module) -> bool:
    """True when the model's forward depends on which images share its batch: an output
    quantizer with a per-batch range (``output_range="batch"`` or not calibrated)."""
    return any(isinstance(m, OutputQuantizer) and (
        m.output_range == "batch" or not bool(m.calibrated)) for m in model.modules())


def weighted(batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[Chunk]:
    """Each batch with its samples' weights 1 / its size (its mean loss)."""
    for x, y in batches:
        if len(y):
            yield x, y, torch.full((len(y),), 1.0 / len(y), dtype=torch.float64,
                                   device=y.device)


def regrouped(chunks: Iterable[Chunk], size: int) -> Iterator[Chunk]:
    """The same samples, in order, in batches of ``size`` (the last one may be short):
    slices where a batch holds several, joined where several make one. Samples of
    another shape than those held (sequences of another length) start a new batch."""
    held: list[Chunk] = []
    count = 0
    for chunk in chunks:
        if held and _shapes(chunk) != _shapes(held[-1]):
            yield _take(held, count)[0]
            held, count = [], 0
        held.append(chunk)
        count += len(chunk[1])
        while count >= size:
            out, held = _take(held, size)
            count -= size
            yield out
    if count:
        yield _take(held, count)[0]


def _shapes(chunk: Chunk) -> tuple[tuple[int, ...], ...]:
    """A sample's shapes: what two chunks must share to be joined."""
    return tuple(tuple(t.shape[1:]) for t in chunk)


def _take(held: list[Chunk], size: int) -> tuple[Chunk, list[Chunk]]:
    """The first ``size`` samples of ``held`` as one chunk, and the rest."""
    parts: list[Chunk] = []
    need = size
    while need:
        chunk = held.pop(0)
        n = len(chunk[1])
        if n > need:
            held.insert(0, tuple(t[need:] for t in chunk))
            chunk = tuple(t[:need] for t in chunk)
            n = need
        parts.append(chunk)
        need -= n
    if len(parts) == 1:
        return parts[0], held
    return tuple(torch.cat(items) for items in zip(*parts, strict=True)), held


__all__ = ["PASS_ACTIVATION_BUDGET", "PASS_BATCH_RANGE", "depends_on_batch",
           "pass_batch_size", "regrouped", "weighted"]
