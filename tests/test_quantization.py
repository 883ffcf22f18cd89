"""Fake quantization attached from outside: values, ranges, gradients, any model."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import swimkit
from swimkit.quantization import OutputQuantizer, fake_quantize, is_quantized, quantization_bits


def test_values_lie_on_the_grid_round_x_over_d_times_d():
    """Fake quantization rounds to the grid of max|x| / 2^(bits-1)."""
    x = torch.randn(1000)
    q = fake_quantize(x, 4)
    step = x.abs().max() / 16
    torch.testing.assert_close(q, torch.round(x / step) * step)
    assert q.unique().numel() <= 2 * 16 + 1
    assert (q - x).abs().max() <= step / 2 + 1e-7


def test_fixed_range_saturates():
    """A fixed range clips values outside it."""
    x = torch.tensor([-3.0, -0.5, 0.26, 2.0])
    q = fake_quantize(x, 2, torch.tensor(1.0))
    torch.testing.assert_close(q, torch.tensor([-1.0, -0.5, 0.25, 1.0]))


def test_straight_through_gradient_and_same_values_without_autograd():
    """The gradient passes straight through; values are the same without autograd."""
    x = torch.randn(50, requires_grad=True)
    q = fake_quantize(x, 3, torch.tensor(1.0))
    q.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(50))
    with torch.no_grad():
        torch.testing.assert_close(fake_quantize(x, 3, torch.tensor(1.0)), q.detach())


def test_zero_tensor_stays_zero():
    """An all-zero tensor stays zero (no division by a zero range)."""
    assert torch.equal(fake_quantize(torch.zeros(4), 4), torch.zeros(4))


def test_running_range_is_calibrated_in_training_and_used_in_eval():
    """The output range is a moving maximum in training, used as is in eval."""
    quantizer = OutputQuantizer(4)
    assert not bool(quantizer.calibrated)
    quantizer(torch.tensor([2.0, -1.0]))
    assert bool(quantizer.calibrated) and float(quantizer.running_max) == 2.0
    quantizer(torch.tensor([4.0]))
    assert float(quantizer.running_max) == pytest.approx(2.2)  # moving average, momentum 0.1
    quantizer.eval()
    small = torch.tensor([0.1, 0.2])
    step = 2.2 / 16
    torch.testing.assert_close(quantizer(small), torch.round(small / step) * step)


def test_batch_range_depends_on_the_batch():
    """A per-batch range makes one output depend on its batch."""
    quantizer = OutputQuantizer(2, output_range="batch").eval()
    alone = quantizer(torch.tensor([0.3]))
    together = quantizer(torch.tensor([0.3, 4.0]))[:1]
    assert not torch.equal(alone, together)


def test_quantize_any_model_from_outside():
    """quantize() attaches to any model (torchvision's ResNet) from outside."""
    model = torchvision.models.resnet18(num_classes=10).eval()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    swimkit.quantize(model, 8)
    assert is_quantized(model) and quantization_bits(model) == 8
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in layers)
    assert not any(m.training for m in model.modules())
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    conv = model.conv1
    step = conv.parametrizations.weight.original.abs().max() / 256
    torch.testing.assert_close(conv.weight, torch.round(conv.parametrizations.weight.original
                                                        / step) * step)


@pytest.mark.parametrize("bits", [0, -1, 2.5, "4", True])
def test_bad_bits(bits):
    """Bits that are not an integer >= 1 are refused."""
    with pytest.raises(swimkit.SwimkitError, match="bits"):
        swimkit.quantize(nn.Linear(2, 2), bits)
    with pytest.raises(swimkit.SwimkitError, match="bits"):
        swimkit.FakeQuantize(bits)


def test_quantizing_twice_is_refused():
    """A model is quantized once."""
    model = swimkit.quantize(nn.Sequential(nn.Linear(2, 2)), 4)
    with pytest.raises(swimkit.SwimkitError, match="already quantized"):
        swimkit.quantize(model, 6)
