"""A device model on a crossbar's device sets: signed weights as pairs or with an offset,
drawn and priced through the base model."""

from __future__ import annotations

import pytest
import torch
from chip_draws import empirical_second_moment, layer

import swimkit
from swimkit import ChipSpec, Crossbar, GaussianDevice
from swimkit.devices import build_device_model
from swimkit.devices.mapped import MappedDevice


def test_a_chip_maps_its_device_model_only_on_a_crossbar_that_needs_it():
    """The idealised crossbar holds the model as it is; another one maps it, and the
    description names the crossbar. A mapped model is not itself a chip's model."""
    dm = GaussianDevice()
    assert ChipSpec(dm).device is dm
    crossbar = Crossbar(signed="pair")
    mapped = ChipSpec(dm, crossbar=crossbar).device
    assert isinstance(mapped, MappedDevice) and mapped.base is dm
    assert mapped.describe() == {**dm.describe(), "crossbar": crossbar.describe()}
    assert ChipSpec(dm, crossbar=crossbar).describe() == mapped.describe()
    assert mapped.slicing == dm.slicing and mapped.loop == dm.loop
    with pytest.raises(swimkit.SwimkitError, match="as siblings"):
        ChipSpec(mapped)


@pytest.mark.parametrize("signed,factor", [("pair", 2.0), ("offset", 4.0)])
def test_a_weight_on_two_sets_or_an_offset_adds_their_errors(signed, factor):
    """Uniform Gaussian devices: a pair holds a weight on two device sets (twice the
    variance, twice the time), an offset maps it over twice the range (four times the
    variance of dW / s, the time of one set); the chips show that variance."""
    dm = GaussianDevice()
    values, scales = layer(shape=(60, 20))
    mapped = MappedDevice(dm, Crossbar(signed=signed))
    full = swimkit.Plan.uniform(values, True)
    for plan in (None, full):
        base = dm.variance(values, scales, plan)["w"].double()
        torch.testing.assert_close(mapped.variance(values, scales, plan)["w"].double(),
                                   factor * base, rtol=1e-6, atol=0.0)
        assert empirical_second_moment(mapped, values, scales, 0.0, plan, chips=200) == (
            pytest.approx(float(factor * base.mean()), rel=0.03))
    sets = 2 if signed == "pair" else 1
    full_s, none_s = mapped.reference_times(values, scales)
    assert (full_s, none_s) == pytest.approx(
        tuple(sets * t for t in dm.reference_times(values, scales)), rel=1e-12)
    report = mapped.programming_report(values, scales, full)
    assert report.speedup == pytest.approx(1.0) and report.time_plan_s == pytest.approx(full_s)


def test_a_pair_over_time_reads_both_sets_at_each_time():
    """Drifting devices on pairs: every time read, each set drifted, the variance the
    chips show."""
    values, scales = layer(shape=(60, 20))
    mapped = MappedDevice(build_device_model("pcm"), Crossbar(signed="pair"))
    assert mapped.changes_with_time
    for time in (0.0, 86400.0):
        analytic = float(mapped.variance(values, scales, None, time)["w"].mean())
        assert empirical_second_moment(mapped, values, scales, time, chips=200) == (
            pytest.approx(analytic, rel=0.05))
