"""Adaptive chip counts: rounds, the stopping rule (mean or paired difference), what is
reported, and the inputs that are refused."""

from __future__ import annotations

import pytest
import torch
from toys import toy_problem

import swimkit
from swimkit.chipstats import ci_half_width
from swimkit.montecarlo import ROUND_GROWTH, ROUND_MIN, round_ends


def test_round_ends_grow_within_bounds():
    for done in (2, 5, 10, 37, 80):
        for half in (0.1, 0.6, 2.0, 40.0, float("inf")):
            end = round_ends(done, half, 0.5, 100)
            assert min(100, done + ROUND_MIN) <= end <= max(done + ROUND_MIN,
                                                            -(-done * ROUND_GROWTH // 1))
            assert end <= 100
    # a spread that needs few more chips asks for few more (at least ROUND_MIN)
    assert round_ends(40, 0.51, 0.5, 100) == 44


def _setup():
    model, batches = toy_problem()
    return model, batches, swimkit.DeviceModel(sigma=0.5, sigma_verified=0.05)


def test_an_adaptive_run_stops_at_the_first_round_that_meets_the_target():
    model, batches, dm = _setup()
    full = swimkit.evaluate(model, batches, dm, samples=60)
    target = 1.5 * ci_half_width(full.accuracies[:30])
    res = swimkit.evaluate(model, batches, dm, samples=60, ci_target=target, min_samples=6)
    n = res.samples
    assert 6 <= n < 60
    # the same chips as the fixed run: chip k depends on (seed, k) only
    assert torch.equal(res.accuracies, full.accuracies[:n])
    assert res.ci_reached == pytest.approx(ci_half_width(res.accuracies))
    assert res.ci_reached <= target
    # ... and no earlier round boundary met the target
    done = 6
    while done < n:
        assert ci_half_width(full.accuracies[:done]) > target
        done = round_ends(done, ci_half_width(full.accuracies[:done]), target, 60)
    assert done == n
    again = swimkit.evaluate(model, batches, dm, samples=60, ci_target=target, min_samples=6)
    assert torch.equal(again.accuracies, res.accuracies)  # deterministic
    data = res.to_dict()
    assert data["samples"] == n and data["ci_target_points"] == target
    assert data["ci_of"] == "mean" and data["ci_reached_points"] == res.ci_reached
    back = swimkit.MCResult.from_dict(data)
    assert (back.ci_target, back.ci_of, back.ci_reached) == (target, "mean", res.ci_reached)


def test_an_unreachable_target_uses_every_chip():
    model, batches, dm = _setup()
    res = swimkit.evaluate(model, batches, dm, samples=15, ci_target=1e-6, min_samples=4)
    assert res.samples == 15 and res.ci_reached > 1e-6


def test_the_paired_rule_stops_on_the_gap_to_the_reference():
    model, batches, dm = _setup()
    reference = swimkit.evaluate(model, batches, dm, "all", samples=80)
    alone = swimkit.evaluate(model, batches, dm, "none", samples=80)
    gaps = alone.accuracies - reference.accuracies
    target = 1.2 * ci_half_width(gaps[:40])
    paired = swimkit.evaluate(model, batches, dm, "none", samples=80, ci_target=target,
                              min_samples=8, against=reference)
    n = paired.samples
    assert paired.ci_of == "paired difference"
    assert paired.ci_reached == pytest.approx(ci_half_width(gaps[:n]))
    assert paired.ci_reached <= target
    assert torch.equal(paired.accuracies, alone.accuracies[:n])
    gap = paired.paired_difference(reference)  # over the chips both have
    assert gap.samples == n and torch.equal(gap.accuracies, gaps[:n])


@pytest.mark.parametrize("kwargs,message", [
    (dict(ci_target=0), "ci_target must be a number of points > 0"),
    (dict(ci_target=float("nan")), "ci_target must be a number of points >= 0"),
    (dict(ci_target=0.5, min_samples=1), "min_samples must be an integer >= 2"),
    (dict(against="all"), "give ci_target as well"),
])
def test_bad_stopping_inputs_are_refused(kwargs, message):
    model, batches, dm = _setup()
    with pytest.raises(swimkit.SwimkitError, match=message):
        swimkit.evaluate(model, batches, dm, samples=10, **kwargs)


def test_a_reference_that_cannot_be_paired_is_refused():
    model, batches, dm = _setup()
    short = swimkit.evaluate(model, batches, dm, "all", samples=5)
    with pytest.raises(swimkit.SwimkitError, match="against has 5 chips but this run may use 20"):
        swimkit.evaluate(model, batches, dm, samples=20, ci_target=0.5, against=short)
    other = swimkit.evaluate(model, batches, dm, "all", samples=20, seed=1)
    with pytest.raises(swimkit.SwimkitError, match="seed 1, this run with 0"):
        swimkit.evaluate(model, batches, dm, samples=20, ci_target=0.5, against=other)
