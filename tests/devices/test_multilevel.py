"""Multi-level cells: a spread per device level, priced and drawn device by device."""

from __future__ import annotations

import pytest
import torch
from chip_draws import empirical_second_moment, layer

import swimkit
from swimkit.devices import GaussianDevice, MultiLevelGaussian, build_device_model
from swimkit.devices.cells import cells_of


def test_multilevel_with_uniform_levels_is_the_gaussian_model():
    values, scales = layer()
    gaussian = GaussianDevice()
    cells = MultiLevelGaussian(levels="uniform")
    full = swimkit.Plan.uniform(values, True)
    for plan in (None, full):
        assert torch.allclose(cells.variance(values, scales, plan)["w"],
                              gaussian.variance(values, scales, plan)["w"].double(), rtol=1e-6)
    assert cells.reference_times(values, scales) == pytest.approx(
        gaussian.reference_times(values, scales), rel=1e-9)


def test_multilevel_levels_price_and_sample_device_by_device():
    """The measured PCM shape: the lowest level lands far tighter than the top one, so
    verifying the top level costs more attempts; chips show the variance."""
    values, scales = layer()
    dm = build_device_model("gaussian", levels="pcm", bits_per_device=2)
    assert isinstance(dm, MultiLevelGaussian) and not dm.changes_with_time
    table = dm.option_variances(values["w"], scales["w"], None)
    times = dm.option_times(values["w"], scales["w"], None)
    assert table.shape == (*values["w"].shape, 4, 2) and times.shape == table.shape
    cells = cells_of(values["w"], scales["w"], dm.slicing)
    low, high = cells.digits == 0, cells.digits == 3
    assert float(table[..., 0][low].mean()) < float(table[..., 0][high].mean()) / 10
    assert float(times[..., 1][high].mean()) > float(times[..., 1][low].mean())
    expected = float(dm.variance(values, scales)["w"].mean())
    assert empirical_second_moment(dm, values, scales, 0.0) == pytest.approx(expected, rel=0.03)


def test_levels_with_a_verified_curve_are_refused():
    with pytest.raises(swimkit.SwimkitError, match="drop --verified-variation"):
        build_device_model("gaussian", levels="pcm", verified_variation="band:3")
