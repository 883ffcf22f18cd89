"""The device protocols: what a model must have, whether it changes with time, the times
it is read at, and the option tables planners read in pieces."""

from __future__ import annotations

import pytest
import torch
from chip_draws import DrawsOnly

import swimkit
from swimkit import ChipSpec, Crossbar, GaussianDevice
from swimkit.devices import (
    Device,
    NoiseModel,
    PricingModel,
    build_device_model,
    check_times,
    require_device,
    require_noise_model,
)
from swimkit.devices.checked import checked
from swimkit.devices.protocol import changes_with_time, missing, require_time_acts


def test_what_a_model_lacks_is_named_also_through_a_wrapper():
    """A model that only draws lacks the pricing members, and so does any wrapper of it
    (checked, on a crossbar); the refusal names the model given, not the wrapper."""
    draws = DrawsOnly()
    assert missing(draws, NoiseModel) == [] and "reference_times" in missing(draws, Device)
    assert missing(GaussianDevice(), Device) == []
    for wrapped in (checked(draws), ChipSpec(draws, crossbar=Crossbar(signed="pair")).device):
        assert missing(wrapped, PricingModel) == missing(draws, PricingModel)
        with pytest.raises(swimkit.SwimkitError, match="price programming \\(DrawsOnly has "
                                                       "no sigma"):
            require_device(wrapped)
    assert require_noise_model(draws) is draws
    with pytest.raises(swimkit.SwimkitError, match="NoiseModel \\(object has no slicing"):
        require_noise_model(object())


@pytest.mark.parametrize("build,changes", [
    (lambda: GaussianDevice(), False),
    (lambda: build_device_model("gaussian", levels="pcm", bits_per_device=2), False),
    (lambda: build_device_model("band"), False),
    (lambda: build_device_model("pcm"), True),
    (lambda: build_device_model("stuck", base="pcm"), True),
    (lambda: build_device_model("stuck"), False),
    (lambda: DrawsOnly(), True),  # a model that does not say is taken to change
])
def test_whether_a_model_changes_with_time(build, changes):
    """Reading a model that stays as programmed at a later time is refused by name."""
    dm = build()
    assert changes_with_time(dm) is changes
    assert changes_with_time(ChipSpec(dm, crossbar=Crossbar(signed="pair")).device) is changes
    if changes:
        require_time_acts(dm, "--times", "0,60")
    else:
        with pytest.raises(swimkit.SwimkitError, match="--times 0,60 would have no effect: "
                                                       "device model '"):
            require_time_acts(dm, "--times", "0,60")


def test_times_are_seconds_each_once():
    assert check_times(5) == (5.0,) and check_times([0, 3600]) == (0.0, 3600.0)
    for bad, needle in (([], "seconds >= 0"), ([-1], "seconds >= 0"),
                        ([1, 1.0], "repeat a time"), ("soon", "seconds >= 0"),
                        (None, "list of seconds"), ([float("nan")], "seconds >= 0")):
        with pytest.raises(swimkit.SwimkitError, match=needle):
            check_times(bad)


@pytest.mark.parametrize("build", [
    lambda: GaussianDevice(),
    lambda: build_device_model("band", r=3.0),
    lambda: build_device_model("pcm", compensation=True),
    lambda: build_device_model("stuck", base="pcm", compensation=True),
    lambda: build_device_model("gaussian", levels="pcm", bits_per_device=2),
])
def test_option_tables_in_pieces_are_the_rows_of_the_whole_tables(build):
    """A planner reads a layer's options in pieces of weights: the pieces, stacked, are
    the whole layer's tables to the bit (a compensation gain is the whole layer's)."""
    dm = build()
    value = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(0))
    scale = value.abs().amax()
    menu = dm.default_menu()
    for time in (0.0, 86400.0):
        whole = (dm.option_variances(value, scale, menu, time),
                 dm.option_times(value, scale, menu))
        pieces = list(dm.option_tables(value, scale, menu, time, 4))
        for got, want in zip(zip(*pieces, strict=True), whole, strict=True):
            if want.dim() == 1:  # every device alike: one piece stands for all
                assert len(got) == 1 and torch.equal(got[0], want)
            else:
                assert torch.equal(torch.cat(got), want.reshape(value.numel(), *want.shape[3:]))
