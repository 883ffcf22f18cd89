"""The crossbar's converters and output noise (swimkit.converters): layers computed
through DACs and ADCs, in tiles, reproducibly, on every kind of device weight."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import toy_problem

import swimkit
from swimkit.chip import ChipSpec
from swimkit.chips import Slots
from swimkit.converters import AnalogReads, analog_conv, analog_linear, mark_weights
from swimkit.crossbar import Crossbar
from swimkit.mapping import effective_weights


def _reads(crossbar: Crossbar) -> AnalogReads:
    """Reads through ``crossbar`` with a seeded generator."""
    reads = AnalogReads(crossbar)
    reads.generator = torch.Generator().manual_seed(0)
    return reads


def test_exact_converters_compute_the_plain_layers():
    """Without converter bits or noise, tiled reads add up to the plain layer."""
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 37, generator=gen), torch.randn(11, 37, generator=gen), torch.randn(11)
    for crossbar in (Crossbar(), Crossbar(tile_rows=8, ranges="column"),
                     Crossbar(tile_rows=8, tile_columns=4, ranges="tile")):
        geo = crossbar.geometry("fc.weight", w.shape)
        got = analog_linear(x, w, b, geo, crossbar.column_ranges("fc.weight", w),
                            _reads(crossbar))
        torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    xc, wc = torch.randn(2, 5, 9, 9, generator=gen), torch.randn(7, 5, 3, 3, generator=gen)
    crossbar = Crossbar(tile_rows=18, ranges="column")  # two channels a tile: three tiles
    geo = crossbar.geometry("conv.weight", wc.shape)
    got = analog_conv(xc, wc, None, geo, crossbar.column_ranges("conv.weight", wc),
                      _reads(crossbar), 2, {"padding": 1, "stride": 2})
    torch.testing.assert_close(got, F.conv2d(xc, wc, padding=1, stride=2), rtol=1e-5,
                               atol=1e-5)


def test_converters_quantize_clip_and_add_noise():
    """The DAC rounds to its steps, the ADC clips at its full scale, output noise is
    drawn from the reads' generator."""
    x = torch.tensor([[1.0, 0.4, -0.25, 0.126]])
    w = torch.eye(4)
    geo = Crossbar().geometry("fc.weight", w.shape)
    ranges = torch.ones(4, 1)
    dac = analog_linear(x, w, None, geo, ranges, _reads(Crossbar(dac_bits=3)))
    torch.testing.assert_close(dac, torch.tensor([[1.0, 1 / 3, -1 / 3, 0.0]]))  # steps of 1/3
    adc = analog_linear(4 * x, w, None, geo, ranges,
                        _reads(Crossbar(adc_bits=3, adc_range=0.6)))
    assert adc[0, 0] == pytest.approx(4 * 0.6)  # clipped at the full scale (times 4, the gain)
    noisy = [analog_linear(x, w, None, geo, ranges, _reads(Crossbar(output_noise=0.1)))
             for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1])  # the same generator state, the same read
    assert 0 < float((noisy[0] - x).abs().max()) < 1.0


def test_chips_read_through_converters_are_reproducible_and_pair_with_full_verify():
    """Chips read through converters: the same seed gives the same chips, which differ
    from the idealised chip's; asking for several chips a pass warns and changes nothing."""
    model, batches = toy_problem()
    chip = ChipSpec(swimkit.GaussianDevice(sigma=0.3), crossbar=Crossbar(
        adc_bits=6, adc_range=4.0, dac_bits=6, output_noise=0.05))
    first = swimkit.evaluate(model, batches, chip, "all", samples=4, seed=3)
    again = swimkit.evaluate(model, batches, chip, "all", samples=4, seed=3)
    assert torch.equal(first.accuracies, again.accuracies)
    ideal = swimkit.evaluate(model, batches, swimkit.GaussianDevice(sigma=0.3), "all",
                             samples=4, seed=3)
    assert not torch.equal(first.accuracies, ideal.accuracies)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stacked = swimkit.evaluate(model, batches, chip, "all", samples=4, seed=3,
                                   chips_per_pass=2)
    assert any("one chip a pass" in str(w.message) for w in caught)
    assert torch.equal(stacked.accuracies, first.accuracies)


def test_converters_reach_attention_projections():
    """Output noise reaches attention's packed projection, its out_proj and the head."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=True).eval()

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attention
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))

    model = Wrapper().eval()
    x = torch.randn(4, 5, 8)
    values = effective_weights(swimkit.device_weights(model))
    crossbar = Crossbar(output_noise=0.5)
    reads = _reads(crossbar)
    slots = {k: v.clone() for k, v in values.items()}
    with torch.no_grad(), Slots(model, slots):
        plain = model(x)
        mark_weights(reads, slots, values)
        with reads:
            noisy = model(x)
    assert not torch.allclose(plain, noisy)
    counted = []

    class Count(AnalogReads):
        def _analog(self, func, marked, ranges, args, kwargs):
            counted.append(marked.name)
            return super()._analog(func, marked, ranges, args, kwargs)

    counting = Count(Crossbar(output_noise=0.1))
    with torch.no_grad(), Slots(model, slots):
        mark_weights(counting, slots, values)
        with counting:
            model(x)
    assert set(counted) == {"attn.in_proj_weight", "attn.out_proj.weight", "head.weight"}
