"""Crossbar mapping (swimkit.crossbar): tiles and ranges, signed weights on device pairs or
with an offset, the settings that would not act, and what follows them (variances,
prices, plans, a chip's fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from toys import toy_problem

import swimkit
from swimkit.chip import ChipSpec
from swimkit.crossbar import MAX_NORMALISED, Crossbar
from swimkit.devices import build_device_model
from swimkit.devices.mapped import MappedDevice
from swimkit.errors import SwimkitError
from swimkit.mapping import layer_ranges


def _tiles_by_loops(w: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """max |w| over each rows x columns block of a matrix, written out by loops."""
    out = torch.empty_like(w)
    for r in range(0, w.shape[1], rows):
        for c in range(0, w.shape[0], columns):
            block = w[c:c + columns, r:r + rows]
            out[c:c + columns, r:r + rows] = block.abs().max()
    return out


def test_default_crossbar_is_the_idealised_chip_bit_for_bit():
    """On the default crossbar the chip's device is the device model itself and every
    weight has one range, max |W|."""
    assert swimkit.Crossbar is Crossbar
    device = swimkit.GaussianDevice()
    chip = ChipSpec(device)
    assert chip.crossbar.is_default and chip.device is device
    values = {"a": torch.randn(5, 7), "b": torch.randn(3, 2, 3, 3)}
    for scales in (chip.scales(values), layer_ranges(values)):
        for name, scale in scales.items():
            assert scale.dim() == 0 and torch.equal(scale, values[name].abs().amax())
    mapped = ChipSpec(device, crossbar=Crossbar(signed="pair")).device
    assert isinstance(mapped, MappedDevice) and mapped.base is device


def test_tile_and_column_ranges_match_blocks_written_out():
    """Tile and column ranges are the maxima of the blocks written out by loops."""
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
    """A convolution's tile holds whole input channels; one that cannot is refused."""
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
        Crossbar(tile_rows=4, ranges="column").geometry("conv.weight", w.shape)


def test_packed_attention_projection_has_a_range_per_matrix():
    """q, k and v of a packed projection each get their own range."""
    w = torch.randn(12, 4)
    w[0, 0] = 50.0  # an outlier in q must not set k's or v's range
    ranges = Crossbar(ranges="tile").weight_ranges("attn.in_proj_weight", w).expand_as(w)
    assert torch.equal(ranges[:4], torch.full((4, 4), 50.0))
    assert torch.equal(ranges[4:8], w[4:8].abs().amax().expand(4, 4))
    assert torch.equal(ranges[8:], w[8:].abs().amax().expand(4, 4))
    layer = Crossbar().weight_ranges("attn.in_proj_weight", w)
    assert layer.dim() == 0  # the idealised chip keeps one range per tensor


def test_tile_indices_say_where_each_device_sits():
    """Row and column tile of every input and output, packed matrices numbered apart."""
    tiled = Crossbar(tile_rows=4, tile_columns=3, ranges="tile")
    rows, columns = tiled.tile_indices("fc.weight", (10, 9))
    assert rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert columns.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    _, packed = Crossbar(tile_columns=3, ranges="tile").tile_indices("a.in_proj_weight",
                                                                      (12, 4))
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
    """A pair's variance is both devices', an offset's four times a magnitude's."""
    base = swimkit.GaussianDevice()
    values = {"w": torch.randn(30, 20)}
    scales = layer_ranges(values)
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
    """Errors drawn on pairs or offsets have the variance the model predicts."""
    device = MappedDevice(build_device_model("pcm"), Crossbar(signed=signed))
    gen = torch.Generator().manual_seed(0)
    values = {"w": torch.randn(8, 8, generator=gen)}
    scales = layer_ranges(values)
    predicted = device.variance(values, scales)["w"] * scales["w"] ** 2
    draw = device.sampler(values, scales)
    errors = torch.stack([draw(gen)[0]["w"] for _ in range(3000)]).double()
    measured = errors.square().mean(0)
    assert torch.allclose(measured.mean(), predicted.mean(), rtol=0.06)


def test_a_pair_costs_twice_the_programming_time_and_keeps_the_cap():
    """Both devices of a pair are programmed: twice the time, the same speedup cap."""
    base = swimkit.GaussianDevice()
    values = {"w": torch.randn(10, 10)}
    scales = layer_ranges(values)
    full, none = base.reference_times(values, scales)
    pair = MappedDevice(base, Crossbar(signed="pair"))
    assert pair.reference_times(values, scales) == pytest.approx((2 * full, 2 * none))
    plan = swimkit.plans.Plan.uniform(values, verify=True)
    report = pair.programming_report(values, scales, plan)
    assert report.time_plan_s == pytest.approx(2 * full)
    assert report.speedup == pytest.approx(1.0)


def test_plans_on_a_crossbar_know_ranges_and_tiles(tmp_path):
    """A plan made on a crossbar records it, keeps its ranges through a file, and
    exports each device's range and tile."""
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches, engine="ggn")
    crossbar = Crossbar(tile_rows=4, tile_columns=8, ranges="column", signed="pair")
    chip = ChipSpec(swimkit.GaussianDevice(), crossbar=crossbar)
    plan = swimkit.select(model, sens, method="allocate", speedup=4.0, chip=chip)
    assert plan.meta["crossbar"] == crossbar.describe()
    assert plan.chip == chip.describe_all()
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
    model, batches = toy_problem()
    with torch.no_grad():
        model[0].weight[:16] *= 0.05  # half the columns hold small weights
    sens = swimkit.sensitivity(model, batches, engine="ggn")
    layer = swimkit.select(model, sens, method="allocate", speedup=3.0,
                           chip=swimkit.GaussianDevice())
    column = swimkit.select(model, sens, method="allocate", speedup=3.0, chip=ChipSpec(
        swimkit.GaussianDevice(), crossbar=Crossbar(ranges="column")))
    small_layer = int((layer.levels["0.weight"][:16] > 0).sum())
    small_column = int((column.levels["0.weight"][:16] > 0).sum())
    assert small_column < small_layer


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"ranges": "row"}, "ranges must be one of"),
    ({"signed": "sign"}, "signed must be one of"),
    ({"tile_rows": 0}, "tile_rows must be an integer >= 1"),
    ({"adc_bits": 1}, "adc_bits must be an integer from 2"),
    ({"output_noise": -1.0}, "output_noise must be a number >= 0"),
    ({"adc_bits": 8, "adc_range": 1e300}, "adc_range must be a number > 0 and <= 1e+09"),
    ({"adc_bits": 8, "adc_range": float("inf")}, "adc_range must be a number > 0"),
    ({"output_noise": 1e300}, "output_noise must be a number >= 0 and <= 1e+09"),
    ({"adc_range": 4.0}, "adc_range would have no effect"),
    ({"tile_rows": 64, "tile_columns": 64}, "tiles would change nothing here"),
    ({"tile_rows": 64, "ranges": "layer", "signed": "pair"}, "tiles would change nothing"),
])
def test_bad_crossbar_settings_are_one_line_errors(kwargs: dict, words: str):
    """Values out of range, values a float32 sum cannot carry, and settings that would
    not act (an ADC range without ADC bits, tiles with layer ranges and exact
    converters) are each one line, no traceback of an overflow."""
    with pytest.raises(SwimkitError) as err:
        Crossbar(**kwargs)
    assert "\n" not in str(err.value) and words in str(err.value)


def test_settings_that_act_are_accepted():
    """The same settings where they act: an ADC range with ADC bits, tiles with tile or
    column ranges, or with converters or output noise; the largest range allowed."""
    assert Crossbar(adc_bits=8, adc_range=4.0).converts
    assert Crossbar(adc_bits=8, adc_range=MAX_NORMALISED).adc_range == MAX_NORMALISED
    for acting in ({"ranges": "tile"}, {"ranges": "column"}, {"dac_bits": 8},
                   {"adc_bits": 8}, {"output_noise": 0.1}):
        assert Crossbar(tile_rows=64, tile_columns=64, **acting).tile_rows == 64


def test_a_tile_smaller_than_a_kernel_is_refused_by_the_chip_before_work():
    """ChipSpec.fit checks every device weight against the tiles: a 1 x 1 tile cannot
    hold a 3 x 3 kernel's rows (one line naming the weight and the rows needed); a tile
    that holds them fits."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 3))
    small = ChipSpec(crossbar=Crossbar(tile_rows=1, tile_columns=1, ranges="column"))
    with pytest.raises(SwimkitError) as err:
        small.fit(model)
    message = str(err.value)
    assert "\n" not in message and message.startswith("0.weight: a tile of 1 rows")
    assert "use tile_rows >= 9" in message
    assert list(small.weights(model)) == ["0.weight", "2.weight"]  # fit checks, weights lists
    fitting = ChipSpec(crossbar=Crossbar(tile_rows=9, tile_columns=1, ranges="column"))
    assert list(fitting.fit(model)) == ["0.weight", "2.weight"]
    assert list(ChipSpec().fit(model)) == ["0.weight", "2.weight"]


def test_reports_name_the_crossbar_and_the_adaptive_chips():
    """A plot title or run summary says which mapping the chips were on, and that
    adaptive chips stop before their maximum."""
    from swimkit.reports import chips_summary, device_summary

    chip = ChipSpec(swimkit.GaussianDevice(sigma=0.3), crossbar=Crossbar(
        tile_rows=256, tile_columns=256, ranges="column", signed="pair", dac_bits=8,
        adc_bits=8))
    text = device_summary(chip.describe())
    assert text.startswith("sigma 0.3")
    assert text.endswith("256x256 tiles, column ranges, pairs, DAC 8 / ADC 8 bits")
    assert "tiles" not in device_summary(swimkit.GaussianDevice(sigma=0.3).describe())
    assert chips_summary({"samples": 100, "ci_target": 0.5}).startswith("up to 100")
    assert chips_summary({"samples": 100, "ci_target": None}) == "100 Monte-Carlo chips"
