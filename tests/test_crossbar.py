"""Crossbar mapping: tiles and ranges, signed weights on device pairs or with an offset,
converters and output noise, and what follows them (variances, prices, plans, chips)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import toy_problem

import swimkit
from swimkit.converters import AnalogReads, analog_conv, analog_linear
from swimkit.crossbar import Crossbar, MappedDevice
from swimkit.devices import build_device_model
from swimkit.errors import SwimkitError
from swimkit.mapping import effective_weights, weight_scales


def _tiles_by_loops(w: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """max |w| over each rows x columns block of a matrix, written out by loops."""
    out = torch.empty_like(w)
    for r in range(0, w.shape[1], rows):
        for c in range(0, w.shape[0], columns):
            block = w[c:c + columns, r:r + rows]
            out[c:c + columns, r:r + rows] = block.abs().max()
    return out


def test_default_crossbar_is_the_idealised_chip_bit_for_bit():
    assert swimkit.Crossbar is Crossbar
    device = swimkit.DeviceModel()
    assert Crossbar().wrap(device) is device
    values = {"a": torch.randn(5, 7), "b": torch.randn(3, 2, 3, 3)}
    for name, scale in weight_scales(values, Crossbar().wrap(device)).items():
        assert scale.dim() == 0 and torch.equal(scale, values[name].abs().amax())


def test_tile_and_column_ranges_match_blocks_written_out():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(10, 13, generator=gen)
    tiled = Crossbar(tile_rows=4, tile_columns=3, ranges="tile")
    assert torch.equal(tiled.weight_ranges("fc.weight", w).expand_as(w),
                       _tiles_by_loops(w, 4, 3))
    per_column = Crossbar(tile_rows=4, ranges="column")
    assert torch.equal(per_column.weight_ranges("fc.weight", w).expand_as(w),
                       _tiles_by_loops(w, 4, 1))
    whole_columns = Crossbar(ranges="column").weight_ranges("fc.weight", w)
    assert whole_columns.shape == (10, 1)
    assert torch.equal(whole_columns[:, 0], w.abs().amax(1))


def test_convolution_tiles_hold_whole_input_channels():
    w = torch.randn(6, 5, 3, 3)
    crossbar = Crossbar(tile_rows=20, ranges="column")  # 20 rows: two channels of 3x3
    geo = crossbar.geometry("conv.weight", w.shape)
    assert (geo.per_tile, geo.row_tiles) == (2, 3)
    ranges = crossbar.weight_ranges("conv.weight", w).expand_as(w)
    for channel, tile in ((0, 0), (1, 0), (2, 1), (4, 2)):
        lo = 2 * tile
        expected = w[:, lo:lo + 2].abs().amax(dim=(1, 2, 3))
        assert torch.equal(ranges[:, channel, 0, 0], expected)
    with pytest.raises(SwimkitError, match="cannot hold one input channel"):
        Crossbar(tile_rows=4).geometry("conv.weight", w.shape)


def test_packed_attention_projection_has_a_range_per_matrix():
    w = torch.randn(12, 4)
    w[0, 0] = 50.0  # an outlier in q must not set k's or v's range
    ranges = Crossbar(ranges="tile").weight_ranges("attn.in_proj_weight", w).expand_as(w)
    assert torch.equal(ranges[:4], torch.full((4, 4), 50.0))
    assert torch.equal(ranges[4:8], w[4:8].abs().amax().expand(4, 4))
    assert torch.equal(ranges[8:], w[8:].abs().amax().expand(4, 4))
    layer = Crossbar().weight_ranges("attn.in_proj_weight", w)
    assert layer.dim() == 0  # the idealised chip keeps one range per tensor


def test_tile_indices_say_where_each_device_sits():
    rows, columns = Crossbar(tile_rows=4, tile_columns=3).tile_indices("fc.weight", (10, 9))
    assert rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert columns.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    _, packed = Crossbar(tile_columns=3).tile_indices("a.in_proj_weight", (12, 4))
    assert packed.tolist() == [0, 0, 0, 1, 2, 2, 2, 3, 4, 4, 4, 5]


@pytest.mark.parametrize("name", ["gaussian", "band", "pcm", "stuck"])
def test_per_column_ranges_give_each_column_its_own_scale(name: str):
    """A device model given per-column ranges answers as if each column were a layer."""
    device = build_device_model(name)
    gen = torch.Generator().manual_seed(1)
    value = torch.randn(4, 6, generator=gen) * torch.tensor([[0.1], [1.0], [3.0], [0.5]])
    scale = value.abs().amax(1, keepdim=True)
    whole = device.variance({"w": value}, {"w": scale})["w"]
    for row in range(4):
        alone = device.variance({"w": value[row:row + 1]}, {"w": scale[row, 0]})["w"]
        torch.testing.assert_close(whole[row:row + 1], alone)
    times = device.option_times(value, scale, None)
    for row in range(4):
        torch.testing.assert_close(times[row:row + 1] if times.dim() > 1 else times,
                                   device.option_times(value[row:row + 1], scale[row, 0], None))


def test_pair_and_offset_variances():
    base = swimkit.DeviceModel()
    values = {"w": torch.randn(30, 20)}
    scales = weight_scales(values)
    plain = base.variance(values, scales)["w"]
    pair = MappedDevice(base, Crossbar(signed="pair")).variance(values, scales)["w"]
    offset = MappedDevice(base, Crossbar(signed="offset")).variance(values, scales)["w"]
    torch.testing.assert_close(pair, 2 * plain)  # both devices of a pair land with errors
    torch.testing.assert_close(offset, 4 * plain)  # a device step is twice the weight
    pcm = build_device_model("pcm")
    on_pair = MappedDevice(pcm, Crossbar(signed="pair"))
    expected = (pcm.variance({"w": values["w"].clamp(min=0)}, scales)["w"]
                + pcm.variance({"w": (-values["w"]).clamp(min=0)}, scales)["w"])
    torch.testing.assert_close(on_pair.variance(values, scales)["w"], expected)


@pytest.mark.parametrize("signed", ["pair", "offset"])
def test_drawn_errors_have_the_predicted_variance(signed: str):
    device = MappedDevice(build_device_model("pcm"), Crossbar(signed=signed))
    gen = torch.Generator().manual_seed(0)
    values = {"w": torch.randn(8, 8, generator=gen)}
    scales = weight_scales(values)
    predicted = device.variance(values, scales)["w"] * scales["w"] ** 2
    draw = device.sampler(values, scales)
    errors = torch.stack([draw(gen)[0]["w"] for _ in range(3000)]).double()
    measured = errors.square().mean(0)
    assert torch.allclose(measured.mean(), predicted.mean(), rtol=0.06)


def test_a_pair_costs_twice_the_programming_time_and_keeps_the_cap():
    base = swimkit.DeviceModel()
    values = {"w": torch.randn(10, 10)}
    scales = weight_scales(values)
    full, none = base.reference_times(values, scales)
    pair = MappedDevice(base, Crossbar(signed="pair"))
    assert pair.reference_times(values, scales) == pytest.approx((2 * full, 2 * none))
    plan = swimkit.plans.Plan.uniform(values, verify=True)
    report = pair.programming_report(values, scales, plan)
    assert report.time_plan_s == pytest.approx(2 * full)
    assert report.speedup == pytest.approx(1.0)


def _reads(crossbar: Crossbar) -> AnalogReads:
    reads = AnalogReads(crossbar)
    reads.generator = torch.Generator().manual_seed(0)
    return reads


def test_exact_converters_compute_the_plain_layers():
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


def _trained_model():
    model, batches = toy_problem()
    return model, batches


def test_chips_read_through_converters_are_reproducible_and_pair_with_full_verify():
    model, batches = _trained_model()
    device = Crossbar(adc_bits=6, adc_range=4.0, dac_bits=6, output_noise=0.05).wrap(
        swimkit.DeviceModel(sigma=0.3))
    first = swimkit.evaluate(model, batches, device, "all", samples=4, seed=3)
    again = swimkit.evaluate(model, batches, device, "all", samples=4, seed=3)
    assert torch.equal(first.accuracies, again.accuracies)
    ideal = swimkit.evaluate(model, batches, swimkit.DeviceModel(sigma=0.3), "all",
                             samples=4, seed=3)
    assert not torch.equal(first.accuracies, ideal.accuracies)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stacked = swimkit.evaluate(model, batches, device, "all", samples=4, seed=3,
                                   chips_per_pass=2)
    assert any("one chip a pass" in str(w.message) for w in caught)
    assert torch.equal(stacked.accuracies, first.accuracies)


def test_converters_reach_attention_projections():
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
    from swimkit.chips import Slots
    from swimkit.converters import mark_weights

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


def test_sensitivities_follow_the_ranges_they_are_used_with():
    from swimkit.sensitivity import Sensitivity

    h, g = torch.rand(3, 4), torch.randn(3, 4)
    sens = Sensitivity({"w": h}, {"w": g}, {"w": torch.tensor(2.0)}, "swim", 10)
    assert sens.rescaled({"w": torch.tensor(2.0)}) is sens
    columns = torch.tensor([[1.0], [2.0], [4.0]])
    other = sens.rescaled({"w": columns})
    torch.testing.assert_close(other.second["w"], h * (columns / 2) ** 2)
    torch.testing.assert_close(other.first["w"], g * (columns / 2))


def test_plans_on_a_crossbar_know_ranges_and_tiles(tmp_path):
    model, batches = _trained_model()
    sens = swimkit.sensitivity(model, batches, engine="ggn")
    crossbar = Crossbar(tile_rows=4, tile_columns=8, ranges="column", signed="pair")
    device = crossbar.wrap(swimkit.DeviceModel())
    plan = swimkit.select(model, sens, method="allocate", speedup=4.0, device_model=device)
    assert plan.meta["crossbar"] == crossbar.describe()
    assert plan.programming.speedup == pytest.approx(4.0, rel=0.02)
    plan.save(tmp_path / "plan.pt")
    loaded = swimkit.plans.Plan.load(tmp_path / "plan.pt")
    assert torch.equal(loaded.ranges["0.weight"], plan.ranges["0.weight"])
    plan.export_npz(tmp_path / "levels.npz")
    arrays = np.load(tmp_path / "levels.npz")
    w = model[0].weight.detach()
    assert np.allclose(arrays["0.weight:range"],
                       _tiles_by_loops(w, 4, 1).numpy())
    assert arrays["0.weight:tile_row"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert arrays["0.weight:tile_column"].tolist() == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8


def test_column_ranges_let_the_planner_spend_less_on_small_columns():
    """With per-column ranges a column of small weights has small errors in weight
    units: allocate verifies fewer of its devices than with one range per layer."""
    model, batches = _trained_model()
    with torch.no_grad():
        model[0].weight[:16] *= 0.05  # half the columns hold small weights
    sens = swimkit.sensitivity(model, batches, engine="ggn")
    layer = swimkit.select(model, sens, method="allocate", speedup=3.0,
                           device_model=swimkit.DeviceModel())
    column = swimkit.select(model, sens, method="allocate", speedup=3.0,
                            device_model=Crossbar(ranges="column").wrap(swimkit.DeviceModel()))
    small_layer = int((layer.levels["0.weight"][:16] > 0).sum())
    small_column = int((column.levels["0.weight"][:16] > 0).sum())
    assert small_column < small_layer


def test_bad_crossbar_settings_are_one_line_errors():
    for kwargs, words in (({"ranges": "row"}, "ranges must be one of"),
                          ({"signed": "sign"}, "signed must be one of"),
                          ({"tile_rows": 0}, "tile_rows must be an integer >= 1"),
                          ({"adc_bits": 1}, "adc_bits must be an integer from 2"),
                          ({"output_noise": -1.0}, "output_noise must be a number >= 0")):
        with pytest.raises(SwimkitError, match=words):
            Crossbar(**kwargs)


def test_reports_name_the_crossbar_and_the_adaptive_chips():
    """A plot title or run summary says which mapping the chips were on, and that
    adaptive chips stop before their maximum."""
    from swimkit.reports import chips_summary, device_summary

    device = Crossbar(tile_rows=256, tile_columns=256, ranges="column", signed="pair",
                      dac_bits=8, adc_bits=8).wrap(swimkit.DeviceModel(sigma=0.3))
    text = device_summary(device.describe())
    assert text.startswith("sigma 0.3")
    assert text.endswith("256x256 tiles, column ranges, pairs, DAC 8 / ADC 8 bits")
    assert "tiles" not in device_summary(swimkit.DeviceModel(sigma=0.3).describe())
    assert chips_summary({"samples": 100, "ci_target": 0.5}).startswith("up to 100")
    assert chips_summary({"samples": 100, "ci_target": None}) == "100 Monte-Carlo chips"
