"""Stuck cells on top of another model: the variance chips show, and what verifying a
stuck cell costs."""

from __future__ import annotations

import pytest
from chip_draws import empirical_second_moment, layer

import swimkit
from swimkit.devices import GaussianDevice, MultiLevelGaussian, Stuck, build_device_model
from swimkit.programming import WriteVerify


@pytest.mark.parametrize("options", [{"low": 0.03, "high": 0.01}, {"base": "pcm"}])
@pytest.mark.parametrize("time", [0.0, 86400.0, 31536000.0])
def test_variance_at_a_time_is_what_the_chips_show(options, time):
    dm = build_device_model("stuck", **options)
    values, scales = layer()
    analytic = float(dm.variance(values, scales, None, time)["w"].mean())
    assert empirical_second_moment(dm, values, scales, time) == pytest.approx(
        analytic, rel=0.03)


def test_verifying_stuck_cells_burns_the_loop_and_is_reported():
    """A stuck cell runs the loop to its last attempt: the report counts those devices
    and their seconds, and verify leaves a floor of variance."""
    values, scales = layer()
    loop = WriteVerify(max_attempts=30, tolerance=0.1)
    base = MultiLevelGaussian(levels="uniform", write_verify=loop)
    stuck = Stuck(base, low=0.04, high=0.01)
    full = swimkit.Plan.uniform(values, True)
    report = stuck.programming_report(values, scales, full)
    plain = base.programming_report(values, scales, full)
    devices = values["w"].numel() * 8
    attempt = stuck.loop.attempt_time
    expected = 0.95 * plain.time_plan_s + 0.05 * devices * 30 * attempt
    assert report.time_plan_s == pytest.approx(expected, rel=1e-9)
    assert report.stuck_devices_verified == pytest.approx(0.05 * devices)
    assert report.time_stuck_s == pytest.approx(report.time_plan_s - 0.95 * plain.time_plan_s
                                                 - 0.05 * plain.time_plan_s, rel=1e-6)
    assert "stuck_devices_verified" not in GaussianDevice().programming_report(
        values, scales, full).to_dict()
    assert float(stuck.variance(values, scales, full)["w"].mean()) > 3 * float(
        base.variance(values, scales, full)["w"].mean())


@pytest.mark.parametrize("settings,needle", [
    ({"low": 1.5}, "between 0 and 1"), ({"low": 0.6, "high": 0.6}, "at most 1")])
def test_bad_shares_are_refused(settings, needle):
    with pytest.raises(swimkit.SwimkitError, match=needle):
        Stuck(MultiLevelGaussian(levels="uniform"), **settings)
    with pytest.raises(swimkit.SwimkitError, match="device-by-device model"):
        Stuck(GaussianDevice())
