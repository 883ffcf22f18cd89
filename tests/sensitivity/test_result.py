"""Sensitivity files: round trip, and refusal of damaged or non-finite contents."""

from __future__ import annotations

import pytest
import torch

from swimkit import SwimkitError
from swimkit.sensitivity.result import Sensitivity


def sensitivity(h: torch.Tensor) -> Sensitivity:
    return Sensitivity(second={"fc.weight": h}, first={"fc.weight": torch.zeros_like(h)},
                       scale={"fc.weight": torch.tensor(1.0)}, engine="test", samples=3)


def test_round_trip(tmp_path):
    """A sensitivity file round-trips its tensors, engine and sample count."""
    path = tmp_path / "s.pt"
    sensitivity(torch.arange(6.0).reshape(2, 3)).save(path)
    loaded = Sensitivity.load(path)
    assert torch.equal(loaded.second["fc.weight"], torch.arange(6.0).reshape(2, 3))
    assert loaded.engine == "test" and loaded.samples == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_are_refused_when_computed_and_when_loaded(tmp_path, bad):
    """NaN or infinite values are refused when made and when read, named."""
    h = torch.ones(2, 3)
    h[1, 2] = bad
    with pytest.raises(SwimkitError, match=r"second\['fc.weight'\] holds NaN or infinite"):
        sensitivity(h)
    path = tmp_path / "s.pt"
    good = sensitivity(torch.ones(2, 3))
    good.save(path)
    data = torch.load(path, weights_only=True)
    data["first"]["fc.weight"][0, 0] = bad
    torch.save(data, path)
    with pytest.raises(SwimkitError, match=r"s.pt: sensitivity first\['fc.weight'\] holds NaN"):
        Sensitivity.load(path)


def test_missing_fields_and_mismatched_shapes_are_named(tmp_path):
    """A file missing a field and h and g of different shapes are named."""
    path = tmp_path / "s.pt"
    sensitivity(torch.ones(2, 3)).save(path)
    data = torch.load(path, weights_only=True)
    del data["first"]
    torch.save(data, path)
    with pytest.raises(SwimkitError, match="not a complete sensitivity file .no first"):
        Sensitivity.load(path)
    with pytest.raises(SwimkitError, match="has shape"):
        Sensitivity(second={"w": torch.ones(2)}, first={"w": torch.ones(3)},
                    scale={"w": torch.tensor(1.0)}, engine="test", samples=1)


def test_sensitivities_follow_the_ranges_they_are_used_with():
    """Rescaled to other ranges (a crossbar's columns), h scales with the square of the
    ratio and g with the ratio; the same ranges give the same object."""
    h, g = torch.rand(3, 4), torch.randn(3, 4)
    sens = Sensitivity({"w": h}, {"w": g}, {"w": torch.tensor(2.0)}, "swim", 10)
    assert sens.rescaled({"w": torch.tensor(2.0)}) is sens
    columns = torch.tensor([[1.0], [2.0], [4.0]])
    other = sens.rescaled({"w": columns})
    torch.testing.assert_close(other.second["w"], h * (columns / 2) ** 2)
    torch.testing.assert_close(other.first["w"], g * (columns / 2))
