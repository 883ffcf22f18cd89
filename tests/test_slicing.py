"""Bit slicing: a weight on K devices of m bits, and each device's share of the error."""

from __future__ import annotations

import pytest

import swimkit
from swimkit.devices import GaussianDevice
from swimkit.slicing import BitSlicing


def test_slicing_shares_and_slice_factor():
    """c = sum_j 4^(-j m); the most significant device carries 75 % of a 1-bit slicing's
    variance."""
    assert GaussianDevice().slice_factor == pytest.approx(sum(4.0**-j for j in range(1, 9)))
    assert GaussianDevice().slice_factor == pytest.approx(0.33333, abs=1e-5)
    two_bit = GaussianDevice(bits_per_weight=8, bits_per_device=2)
    assert two_bit.devices_per_weight == 4
    assert two_bit.slice_factor == pytest.approx(sum(16.0**-j for j in range(1, 5)))
    shares = BitSlicing().variance_weights() / BitSlicing().slice_factor
    assert float(shares[0]) == pytest.approx(0.75, abs=1e-4)  # the MSB holds 75 %
    assert float(BitSlicing(4, 2).significances()[1]) == 1 / 16


@pytest.mark.parametrize("bits", [(0, 1), (8, 3), (8, 0)])
def test_a_slicing_that_does_not_divide_the_weight_is_refused(bits):
    with pytest.raises(swimkit.SwimkitError):
        BitSlicing(*bits)
