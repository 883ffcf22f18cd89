"""The batch the swim pass runs at (swimkit.sensitivity.batching): chosen per model, the
given batches regrouped to it with each sample's weight kept."""

from __future__ import annotations

import pytest
import torch

import swimkit
from swimkit.sensitivity.batching import (
    PASS_BATCH_RANGE,
    depends_on_batch,
    pass_batch_size,
    regrouped,
    weighted,
)


@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_the_pass_batch_is_a_power_of_two_in_range_smaller_for_larger_models(where: str):
    """The chosen batch is a power of two within the device's range, and a model with
    larger activations gets a smaller one."""
    small, large = swimkit.build_model("lenet"), swimkit.build_model("resnet18")
    low, high = PASS_BATCH_RANGE[where]
    for model, shape in ((small, (1, 28, 28)), (large, (3, 32, 32))):
        batch = pass_batch_size(model, shape, where)
        assert low <= batch <= high and batch & (batch - 1) == 0
    assert pass_batch_size(small, (1, 28, 28), where) > pass_batch_size(large, (3, 32, 32),
                                                                          where)


def test_a_forward_depends_on_the_batch_only_through_a_per_batch_range():
    """Only an output quantizer with a per-batch range (asked for, or not calibrated
    yet) makes a forward depend on which images share its batch."""
    assert not depends_on_batch(swimkit.build_model("lenet"))
    assert depends_on_batch(swimkit.build_model("qlenet", output_range="batch"))
    quantized = swimkit.build_model("qlenet")
    assert depends_on_batch(quantized)  # not calibrated: each batch's own range
    with torch.no_grad():
        quantized.train()(torch.randn(4, 1, 28, 28))
    assert not depends_on_batch(quantized.eval())


def test_regrouping_keeps_every_sample_in_order_with_its_batch_weight():
    """Regrouped batches hold every sample in order, each with the weight 1 / its
    original batch size."""
    batches = [(torch.arange(n, dtype=torch.float32) + 10 * i, torch.full((n,), i))
               for i, n in enumerate((5, 3, 0, 6))]
    for size in (1, 2, 4, 7, 20):
        chunks = list(regrouped(weighted(batches), size))
        assert [len(y) for _, y, _ in chunks[:-1]] == [size] * (len(chunks) - 1)
        x, y, w = (torch.cat(parts) for parts in zip(*chunks, strict=True))
        assert torch.equal(x, torch.cat([b[0] for b in batches]))
        assert torch.equal(y, torch.cat([b[1] for b in batches]))
        assert torch.equal(w, torch.tensor([0.2] * 5 + [1 / 3] * 3 + [1 / 6] * 6,
                                           dtype=torch.float64))


def test_samples_of_another_shape_start_a_new_batch():
    """Samples of another shape are never joined with the ones before."""
    batches = [(torch.zeros(3, 5), torch.zeros(3)), (torch.zeros(2, 5), torch.zeros(2)),
               (torch.zeros(4, 7), torch.zeros(4))]
    got = [tuple(x.shape) for x, _, _ in regrouped(weighted(batches), 4)]
    assert got == [(4, 5), (1, 5), (4, 7)]
