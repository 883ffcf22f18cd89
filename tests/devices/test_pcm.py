"""Phase-change memory: drift, read noise and compensation, what chips show at a time,
and noise-injection training for a drifted chip."""

from __future__ import annotations

import pytest
import torch
from chip_draws import empirical_second_moment, layer
from toys import toy_problem

import swimkit
from swimkit.devices import PCM, build_device_model

YEAR = 31536000.0


@pytest.mark.parametrize("options", [{}, {"compensation": True}])
@pytest.mark.parametrize("time", [0.0, 86400.0, YEAR])
def test_variance_at_a_time_is_what_the_chips_show(options, time):
    dm = build_device_model("pcm", **options)
    values, scales = layer()
    analytic = float(dm.variance(values, scales, None, time)["w"].mean())
    # compensation's gain is calibrated per chip; the variance uses its expectation
    tolerance = 0.05 if dm.compensated else 0.03
    assert empirical_second_moment(dm, values, scales, time) == pytest.approx(
        analytic, rel=tolerance)


def test_write_verify_cannot_undo_drift():
    """Drift shrinks what verify removed and adds an error of its own; compensation
    takes part of it back."""
    values, scales = layer()
    dm = PCM()
    full = swimkit.Plan.uniform(values, True)
    gain = {t: float((dm.variance(values, scales, None, t)["w"]
                      - dm.variance(values, scales, full, t)["w"]).mean())
            for t in (0.0, YEAR)}
    floor = float(dm.variance(values, scales, full, YEAR)["w"].mean())
    assert gain[YEAR] < gain[0.0]
    assert floor > float(dm.variance(values, scales, full, 0.0)["w"].mean())
    compensated = PCM(compensation=True)
    assert float(compensated.variance(values, scales, full, YEAR)["w"].mean()) < floor


def test_a_chip_read_at_a_time_is_the_same_whatever_else_is_read():
    values, scales = layer()
    for dm in (PCM(), build_device_model("stuck", base="pcm", low=0.05)):
        both = dm.sampler(values, scales, None, (1.0, 86400.0))(torch.Generator().manual_seed(3))
        late = dm.sampler(values, scales, None, (86400.0,))(torch.Generator().manual_seed(3))
        assert torch.equal(both[1]["w"], late[0]["w"])
        assert not torch.equal(both[0]["w"], both[1]["w"])


def test_evaluate_over_time_reads_the_same_chips_at_every_time():
    """A chip read at several times is the chip read at each alone; one time or none
    gives one result, a repeated time is refused."""
    model, batches = toy_problem()
    pcm = PCM(sigma=0.5, drift_scale=3.0)
    assert pcm.changes_with_time
    over = swimkit.evaluate(model, batches, pcm, samples=4, times=[1, YEAR])
    alone = swimkit.evaluate(model, batches, pcm, samples=4, times=[YEAR])
    assert [r.meta["time_s"] for r in over] == [1.0, YEAR]
    assert torch.equal(over[1].accuracies, alone[0].accuracies)
    single = swimkit.evaluate(model, batches, pcm, samples=4)
    assert isinstance(single, swimkit.MCResult)
    with pytest.raises(swimkit.SwimkitError, match="repeat"):
        swimkit.evaluate(model, batches, pcm, samples=2, times=[1, 1])


def test_noise_injection_trains_for_the_drifted_device():
    """Training noise comes from the chip at sigma_train, read at the noise time."""
    from swimkit.noise_injection import NoiseInjector
    from swimkit.training import TrainConfig

    model, _ = toy_problem()
    config = TrainConfig(sigma_train=0.1, noise_time=86400.0, scale_aware=True)
    injector = NoiseInjector.create(model, config, PCM(compensation=True))
    assert injector.noise_model == PCM(sigma=0.1, compensation=True)
    assert injector.describe()["time_s"] == 86400.0
    with injector.epoch(1) as redraw:
        redraw()  # draws the drifted chip without error
