"""Device model table: a measured spread-against-level curve."""

from __future__ import annotations

import pytest
import torch

import swimkit
from swimkit.devices import GaussianDevice, build_device_model


def test_the_table_model_reads_its_curve(tmp_path):
    """The curve of the file scales the spread by level; no file is refused."""
    path = tmp_path / "curve.csv"
    path.write_text("level,sigma\n0,1\n1,3\n")
    dm = build_device_model("table", path=str(path), sigma=0.2)
    assert dm.describe() == GaussianDevice(sigma=0.2, variation=str(path)).describe()
    sigma = dm.weight_sigma(torch.tensor([0.0, 0.5, 1.0]), torch.tensor(1.0))
    assert sigma[2] / sigma[0] == pytest.approx(3.0) and sigma[1] / sigma[0] == pytest.approx(2.0)
    with pytest.raises(swimkit.SwimkitError, match="needs its curve"):
        build_device_model("table")
