"""Write-verify closed forms against scipy and a direct simulation of the loop; timing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from loop_simulation import simulate
from scipy import optimize, stats

import swimkit
from swimkit.errors import SwimkitError
from swimkit.plans import Plan
from swimkit.programming import ProgrammingReport, WriteVerify, price, weight_level_price

T_P, T_R = 100e-9, 50e-9


# --- independent references (scipy) ------------------------------------------------


def ref_acceptance(sigma: float, tol: float) -> float:
    a = tol / sigma
    return stats.norm.cdf(a) - stats.norm.cdf(-a)


def ref_attempts(sigma: float, tol: float, n: int) -> float:
    # E = sum_{k=1..n} P(attempt k happens) = sum_k (1 - q)^(k-1).
    miss = 1.0 - ref_acceptance(sigma, tol)
    return float(sum(miss**k for k in range(n)))


def ref_accepted_sigma(sigma: float, tol: float) -> float:
    a = tol / sigma
    return float(stats.truncnorm(-a, a, scale=sigma).std())


def ref_residual_sigma(sigma: float, tol: float, n: int) -> float:
    a = tol / sigma
    pf = (1.0 - ref_acceptance(sigma, tol)) ** n
    var_in = stats.truncnorm(-a, a).var()
    var_out = stats.truncnorm(a, np.inf).moment(2)  # symmetric: E[x^2 | |x| > a]
    return float(sigma * math.sqrt((1 - pf) * var_in + pf * var_out))


def std_and_tolerance(x: torch.Tensor) -> tuple[float, float]:
    """Sample std of zero-mean data and 5 standard errors of it."""
    x = x.double()
    std = float(x.pow(2).mean().sqrt())
    se = float(x.pow(2).std()) / (2.0 * std * math.sqrt(x.numel()))
    return std, 5.0 * se


def mean_and_tolerance(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), 5.0 * float(x.std()) / math.sqrt(x.numel())


# --- closed forms against scipy ----------------------------------------------------


@pytest.mark.parametrize(("sigma", "tol", "n"), [(0.3, 0.05, 20), (0.1, 0.2, 5), (1.0, 0.01, 3)])
def test_closed_forms_match_scipy(sigma: float, tol: float, n: int) -> None:
    wv = WriteVerify(tol, max_attempts=n)
    assert wv.acceptance(sigma) == pytest.approx(ref_acceptance(sigma, tol), rel=1e-10)
    assert wv.expected_attempts(sigma) == pytest.approx(ref_attempts(sigma, tol, n), rel=1e-10)
    assert wv.accepted_sigma(sigma) == pytest.approx(ref_accepted_sigma(sigma, tol), rel=1e-7)
    assert wv.residual_sigma(sigma) == pytest.approx(ref_residual_sigma(sigma, tol, n), rel=1e-7)
    q = ref_acceptance(sigma, tol)
    assert wv.failure_probability(sigma) == pytest.approx((1 - q) ** n, rel=1e-10)


def test_failed_device_second_moment_by_quadrature() -> None:
    # E[e^2 | |e| > delta] = sigma^2 (1 + a phi(a) / (1 - Phi(a))), checked by integration.
    from scipy import integrate

    sigma, tol = 0.3, 0.2
    a = tol / sigma
    tail = integrate.quad(lambda x: x * x * stats.norm.pdf(x), a, np.inf)[0]
    expected = sigma**2 * tail / stats.norm.sf(a)
    formula = sigma**2 * (1 + a * stats.norm.pdf(a) / stats.norm.sf(a))
    assert formula == pytest.approx(expected, rel=1e-9)
    # With max_attempts = 1, every device keeps its only draw: residual = sigma.
    assert WriteVerify(tol, max_attempts=1).residual_sigma(sigma) == pytest.approx(sigma)


def test_limits() -> None:
    wv = WriteVerify(0.05)
    # sigma = 0: always accepted at once, no error.
    assert wv.expected_attempts(0.0) == 1.0
    assert wv.residual_sigma(0.0) == 0.0 and wv.accepted_sigma(0.0) == 0.0
    # Tiny tolerance relative to sigma: accepted error ~ uniform on [-delta, delta].
    assert wv.accepted_sigma(1e4) == pytest.approx(0.05 / math.sqrt(3), rel=1e-6)
    assert wv.expected_attempts(1e4) == pytest.approx(wv.max_attempts, rel=1e-3)
    # Huge tolerance: one attempt, untouched spread.
    assert wv.expected_attempts(1e-4) == 1.0
    assert wv.accepted_sigma(1e-4) == pytest.approx(1e-4)


def test_float_in_float_out_tensor_in_tensor_out() -> None:
    wv = WriteVerify(0.05)
    sigmas = [0.0, 0.02, 0.3, 1.0]
    tensor = torch.tensor(sigmas, dtype=torch.float32).reshape(2, 2)
    for method in ("acceptance", "expected_attempts", "failure_probability"):
        out = getattr(wv, method)(tensor)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert out.shape == (2, 2)
        scalars = [getattr(wv, method)(s) for s in sigmas]
        assert all(isinstance(s, float) for s in scalars)
        torch.testing.assert_close(out.flatten(), torch.tensor(scalars, dtype=torch.float32))
    for method in ("accepted_sigma", "residual_sigma"):
        out = getattr(wv, method)(tensor.double())
        assert out.dtype == torch.float64
        expected = torch.tensor([getattr(wv, method)(s) for s in sigmas], dtype=torch.float64)
        torch.testing.assert_close(out.flatten(), expected)


# --- closed forms against the loop itself ------------------------------------------


def test_simulation_matches_expected_attempts_and_residual() -> None:
    sigma, wv = 0.3, WriteVerify(0.05, max_attempts=20)
    run = simulate(wv, sigma, 200_000, generator=torch.Generator().manual_seed(1))
    mean, tol = mean_and_tolerance(run["attempts"])
    assert mean == pytest.approx(wv.expected_attempts(sigma), abs=tol)
    std, tol = std_and_tolerance(run["error"])
    assert std == pytest.approx(wv.residual_sigma(sigma), abs=tol)
    failed, tol = mean_and_tolerance((~run["accepted"]).double())
    assert failed == pytest.approx(wv.failure_probability(sigma), abs=tol)
    assert int(run["attempts"].max()) == 20 and int(run["attempts"].min()) == 1


@pytest.mark.parametrize(("tol", "n", "failing"), [(0.05, 3, 0.5), (0.3, 2, 0.05)])
def test_simulation_residual_with_failures(tol: float, n: int, failing: float) -> None:
    # (0.05, 3): about 65 % of devices run out of attempts; (0.3, 2): about 10 %, whose
    # errors lie beyond one sigma and dominate the residual.
    sigma, wv = 0.3, WriteVerify(tol, max_attempts=n)
    run = simulate(wv, sigma, 200_000, generator=torch.Generator().manual_seed(2))
    assert wv.failure_probability(sigma) > failing
    std, tol = std_and_tolerance(run["error"])
    assert std == pytest.approx(wv.residual_sigma(sigma), abs=tol)
    mean, tol = mean_and_tolerance(run["attempts"])
    assert mean == pytest.approx(wv.expected_attempts(sigma), abs=tol)


def test_simulation_accepted_sigma_with_many_attempts() -> None:
    sigma, wv = 0.3, WriteVerify(0.05, max_attempts=200)
    run = simulate(wv, sigma, 100_000, generator=torch.Generator().manual_seed(3))
    accepted = run["error"][run["accepted"]]
    assert accepted.numel() == 100_000  # (1 - q)^200 ~ 4e-13: none fails
    assert float(accepted.abs().max()) <= 0.05
    std, tol = std_and_tolerance(accepted)
    assert std == pytest.approx(wv.accepted_sigma(sigma), abs=tol)
    assert std == pytest.approx(ref_accepted_sigma(sigma, 0.05), abs=tol)


def test_simulation_per_weight_sigma() -> None:
    wv = WriteVerify(0.1, max_attempts=10)
    sigma = torch.tensor([0.05, 0.3, 1.0])
    run = simulate(wv, sigma, 60_000, generator=torch.Generator().manual_seed(4))
    assert run["error"].shape == (60_000, 3) and run["error"].dtype == torch.float32
    assert run["attempts"].dtype == torch.int64 and run["accepted"].dtype == torch.bool
    expected_attempts = wv.expected_attempts(sigma.double())
    residual = wv.residual_sigma(sigma.double())
    for j in range(3):
        mean, tol = mean_and_tolerance(run["attempts"][:, j])
        assert mean == pytest.approx(float(expected_attempts[j]), abs=tol)
        std, tol = std_and_tolerance(run["error"][:, j])
        assert std == pytest.approx(float(residual[j]), abs=tol)


def test_simulation_is_reproducible() -> None:
    wv = WriteVerify(0.05)
    first = simulate(wv, 0.3, 1000, generator=torch.Generator().manual_seed(9))
    second = simulate(wv, 0.3, 1000, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first["error"], second["error"])
    assert torch.equal(first["attempts"], second["attempts"])


# --- choosing the tolerance --------------------------------------------------------


def test_for_residual_accepted_only_matches_truncnorm_solution() -> None:
    wv = WriteVerify.for_residual(0.3, 0.03, include_failures=False)
    expected = optimize.brentq(lambda d: ref_accepted_sigma(0.3, d) - 0.03, 1e-4, 1.0)
    assert wv.tolerance == pytest.approx(expected, rel=1e-6)
    assert wv.accepted_sigma(0.3) == pytest.approx(0.03, rel=1e-9)
    assert 0.05 < wv.tolerance < 0.055  # about sqrt(3) * 0.03: nearly uniform


def test_for_residual_with_failures_round_trip() -> None:
    wv = WriteVerify.for_residual(0.3, 0.03, max_attempts=100)
    assert wv.max_attempts == 100
    assert wv.residual_sigma(0.3) == pytest.approx(0.03, rel=1e-9)
    # The larger of the two solutions: residual still rises with the tolerance there.
    assert WriteVerify(wv.tolerance * 1.01, 100).residual_sigma(0.3) > 0.03
    # Round trip from a tolerance on that branch.
    start = WriteVerify(0.2, max_attempts=20)
    back = WriteVerify.for_residual(0.3, start.residual_sigma(0.3), max_attempts=20)
    assert back.tolerance == pytest.approx(0.2, rel=1e-8)


def test_for_residual_unreachable_with_few_attempts() -> None:
    # With 20 attempts, failures keep the residual above ~0.056 for sigma = 0.3.
    grid = np.linspace(0.005, 0.5, 400)
    lowest = min(ref_residual_sigma(0.3, d, 20) for d in grid)
    assert lowest > 0.03
    with pytest.raises(SwimkitError, match="not reachable"):
        WriteVerify.for_residual(0.3, 0.03, max_attempts=20)


@pytest.mark.parametrize(
    ("sigma", "target"), [(0.3, 0.3), (0.3, 0.5), (0.3, 0.0), (0.3, -0.1), (0.0, 0.01)]
)
def test_for_residual_rejects_bad_targets(sigma: float, target: float) -> None:
    with pytest.raises(SwimkitError):
        WriteVerify.for_residual(sigma, target)


# --- programming time --------------------------------------------------------------


def test_verify_time() -> None:
    wv = WriteVerify(0.05)
    expected = ref_attempts(0.3, 0.05, wv.max_attempts) * (T_P + T_R)
    assert wv.verify_time(0.3) == pytest.approx(expected, rel=1e-10)
    per = wv.verify_time(torch.tensor([0.3, 0.01], dtype=torch.float64))
    assert float(per[1]) == pytest.approx(T_P + T_R)


def weights_of(*shapes: tuple[int, ...]) -> tuple[dict, dict]:
    values = {f"l{i}.weight": torch.randn(*shape) for i, shape in enumerate(shapes)}
    return values, {k: v.abs().amax() for k, v in values.items()}


def test_weight_level_plan_time_and_speedup_by_hand() -> None:
    dm = swimkit.DeviceModel(write_verify=WriteVerify(0.05))
    values, scales = weights_of((1000,))
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:100]] = True
    e = ref_attempts(0.3, 0.05, 100)
    plan_time = 8 * (100 * e * (T_P + T_R) + 900 * T_P)
    full = 8 * 1000 * e * (T_P + T_R)
    report = dm.programming_report(values, scales, Plan(masks={"l0.weight": mask}))
    assert isinstance(report, ProgrammingReport)
    assert report.time_plan_s == pytest.approx(plan_time, rel=1e-10)
    assert report.time_full_verify_s == pytest.approx(full, rel=1e-10)
    assert report.time_no_verify_s == pytest.approx(8 * 1000 * T_P, rel=1e-12)
    assert report.speedup == pytest.approx(full / plan_time, rel=1e-10)
    assert report.max_speedup == pytest.approx(full / (8 * 1000 * T_P), rel=1e-10)
    assert report.fraction_verified == pytest.approx(0.1)
    assert report.devices_fraction_verified == pytest.approx(0.1)
    assert set(report.to_dict()) == {"time_plan_s", "time_full_verify_s", "time_no_verify_s",
                                     "speedup", "fraction_verified", "devices_fraction_verified"}


def test_device_level_plan_is_priced_device_by_device() -> None:
    """Each device at its own option: t_program, or E(tolerance) (t_program + t_read)."""
    menu = (0.45, 0.2, 0.05)
    dm = swimkit.DeviceModel(bits_per_weight=4, bits_per_device=1)
    values, scales = weights_of((3, 2), (5,))
    gen = torch.Generator().manual_seed(1)
    levels = {k: torch.randint(0, 4, (*v.shape, 4), generator=gen, dtype=torch.uint8)
              for k, v in values.items()}
    plan = Plan(levels=levels, menu=menu)
    per_option = [T_P] + [ref_attempts(0.3, t, 100) * (T_P + T_R) for t in menu]
    by_hand = sum(per_option[int(v)] for lv in levels.values() for v in lv.flatten())
    report = dm.programming_report(values, scales, plan)
    assert report.time_plan_s == pytest.approx(by_hand, rel=1e-10)
    counted = sum(int((lv > 0).sum()) for lv in levels.values())
    assert plan.devices_verified == counted
    assert report.devices_fraction_verified == pytest.approx(counted / (11 * 4))


def test_value_dependent_times_follow_each_weight_sigma() -> None:
    dm = swimkit.DeviceModel(variation="band:3", bits_per_weight=2, bits_per_device=1,
                             write_verify=WriteVerify(0.05, max_attempts=10))
    value = torch.tensor([0.1, 0.5, 1.0])
    scale = torch.tensor(1.0)
    times = dm.option_times(value, scale, (0.2, 0.05))
    assert times.shape == (3, 3)
    sigma = dm.weight_sigma(value, scale).double()
    for i in range(3):
        for j, tol in enumerate((0.2, 0.05)):
            expected = ref_attempts(float(sigma[i]), tol, 10) * (T_P + T_R)
            assert float(times[i, j + 1]) == pytest.approx(expected, rel=1e-8)
    levels = torch.tensor([[0, 2], [1, 1], [2, 0]], dtype=torch.uint8)
    assert price(levels, times) == pytest.approx(float(torch.gather(times, 1, levels.long()).sum()))
    verified = torch.tensor([1, 0, 2], dtype=torch.uint8)
    expected = 2 * float(times[0, 1] + times[1, 0] + times[2, 2])
    assert weight_level_price(verified, times, 2) == pytest.approx(expected)


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tolerance": 0.0},
        {"tolerance": -0.1},
        {"tolerance": float("nan")},
        {"tolerance": 0.05, "max_attempts": 0},
        {"tolerance": 0.05, "max_attempts": 2.5},
        {"tolerance": 0.05, "max_attempts": True},
        {"tolerance": 0.05, "t_program": -1e-9},
        {"tolerance": 0.05, "t_read": float("inf")},
    ],
)
def test_write_verify_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(SwimkitError):
        WriteVerify(**kwargs)


def test_bad_sigmas_and_budgets() -> None:
    wv = WriteVerify(0.05)
    with pytest.raises(SwimkitError, match="sigma"):
        wv.expected_attempts(-0.1)
    with pytest.raises(SwimkitError, match="sigma"):
        wv.residual_sigma(torch.tensor([0.1, -0.1]))
    with pytest.raises(SwimkitError, match="no tolerance yet"):
        WriteVerify().expected_attempts(0.3)
    with pytest.raises(SwimkitError, match="no time"):
        WriteVerify(0.05, t_program=0.0, t_read=0.0)
    dm = swimkit.DeviceModel(write_verify=WriteVerify(0.05, t_program=0.0))
    values, scales = weights_of((3,))
    with pytest.raises(SwimkitError, match="no programming time"):
        dm.programming_report(values, scales, Plan.uniform(values, False))
