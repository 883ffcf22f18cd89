"""Device model band: U-SWIM's value-dependent spread."""

from __future__ import annotations

import math

import pytest
import torch

from swimkit import BandVariation
from swimkit.devices import GaussianDevice, build_device_model


def test_value_dependent_band_sigma():
    """r times the spread inside the band, renormalised; verified weights get the
    verified spread."""
    device = GaussianDevice(sigma=0.3, variation="band:3")
    value = torch.tensor([0.1, 0.5, 0.9, 1.0])
    sigma = device.weight_sigma(value, torch.tensor(1.0))
    norm = math.sqrt(0.4 * 9 + 0.6)
    torch.testing.assert_close(sigma, torch.tensor([0.3, 0.9, 0.3, 0.3]) / norm)
    assert device.value_dependent and not GaussianDevice().value_dependent
    verified = device.weight_sigma(value, torch.tensor(1.0), torch.tensor([1, 1, 0, 0]).bool())
    torch.testing.assert_close(verified[:2], torch.tensor([0.03, 0.03]))


def test_the_band_model_is_the_gaussian_model_with_a_band():
    band = build_device_model("band", r=2.0)
    assert band.describe() == GaussianDevice(variation="band:2").describe()
    narrow = build_device_model("band", r=2.0, low=0.1, high=0.3)
    assert narrow.describe() == GaussianDevice(variation=BandVariation(2.0, 0.1, 0.3)).describe()
    assert narrow.describe()["variation"]["share"] == pytest.approx(0.2)
