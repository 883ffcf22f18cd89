"""Variation curves: the spread they produce, interpolation, CSV tables, settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from swimkit.errors import SwimkitError
from swimkit.variation import (
    BandVariation,
    FunctionVariation,
    TableVariation,
    UniformVariation,
    Variation,
    as_variation,
)


def _sample_std(
    curve: Variation, sigma: float, lo: float, hi: float, n: int, seed: int
) -> tuple[float, float]:
    """Sampled std of Normal(0, (sigma * factor(level))^2) over levels uniform in (lo, hi),
    and a 5-standard-error tolerance for it."""
    gen = torch.Generator().manual_seed(seed)
    level = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
    draw = torch.randn(n, generator=gen, dtype=torch.float64) * sigma * curve(level)
    std = float(draw.std())
    # Standard error of a sample std: sd(x^2) / (2 std sqrt(n)).
    se = float((draw**2).std()) / (2.0 * std * math.sqrt(n))
    return std, 5.0 * se


@pytest.mark.parametrize("r", [0.5, 3.0])
def test_band_sampled_std_matches_formula_in_each_region(r: float) -> None:
    curve = BandVariation(r)
    sigma = 0.1
    norm = math.sqrt(0.4 * r**2 + 0.6)
    regions = [(0.0, 0.25, 1.0), (0.25, 0.75, r), (0.75, 1.0, 1.0)]
    for seed, (lo, hi, factor) in enumerate(regions):
        std, tol = _sample_std(curve, sigma, lo, hi, 100_000, seed)
        assert std == pytest.approx(sigma * factor / norm, abs=tol)


def test_band_with_authors_share_keeps_mean_variance() -> None:
    # With 40 % of the weights in the band, the mean variance is sigma^2 exactly.
    curve = BandVariation(3.0)
    level = torch.cat(
        [torch.full((400,), 0.5), torch.full((300,), 0.1), torch.full((300,), 0.9)]
    ).double()
    assert float((curve(level) ** 2).mean()) == pytest.approx(1.0, rel=1e-12)
    assert curve.norm == pytest.approx(math.sqrt(0.4 * 9 + 0.6))


def test_band_other_band_uses_its_width_and_keeps_mean_variance() -> None:
    curve = BandVariation(2.0, low=0.1, high=0.3)
    assert curve.share == pytest.approx(0.2)
    std, tol = _sample_std(curve, 1.0, 0.0, 1.0, 200_000, 7)
    assert std == pytest.approx(1.0, abs=tol)


def test_band_edges_are_outside_and_renormalize_off() -> None:
    curve = BandVariation(3.0, renormalize=False)
    level = torch.tensor([0.0, 0.25, 0.2501, 0.5, 0.7499, 0.75, 1.0])
    expected = torch.tensor([1.0, 1.0, 3.0, 3.0, 3.0, 1.0, 1.0])
    assert torch.equal(curve(level), expected)
    assert curve.norm == 1.0
    assert curve(level.double()).dtype == torch.float64


def test_band_describe_is_json_ready() -> None:
    info = BandVariation(3.0).describe()
    assert info["kind"] == "band" and info["r"] == 3.0 and info["share"] == 0.4
    assert info["norm"] == pytest.approx(math.sqrt(4.2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"r": 0.0},
        {"r": -1.0},
        {"r": float("inf")},
        {"r": 2.0, "low": 0.8, "high": 0.2},
        {"r": 2.0, "low": -0.1},
        {"r": 2.0, "high": 1.5},
        {"r": 2.0, "share": 1.5},
    ],
)
def test_band_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(SwimkitError):
        BandVariation(**kwargs)


def test_uniform_is_one() -> None:
    level = torch.rand(5, 3)
    assert torch.equal(UniformVariation()(level), torch.ones(5, 3))
    std, tol = _sample_std(UniformVariation(), 0.2, 0.0, 1.0, 50_000, 3)
    assert std == pytest.approx(0.2, abs=tol)


def test_function_variation_sampled_std() -> None:
    curve = FunctionVariation(lambda level: 1.0 + level)
    sigma = 0.05
    # Levels in a narrow bin: the spread is sigma * (1 + level) at the bin's centre.
    std, tol = _sample_std(curve, sigma, 0.59, 0.61, 100_000, 11)
    assert std == pytest.approx(sigma * 1.6, abs=tol + sigma * 0.01)
    assert curve.describe()["kind"] == "function"


@pytest.mark.parametrize(
    "fn",
    [
        lambda level: 2.0,  # not a tensor
        lambda level: torch.ones(3),  # wrong shape
        lambda level: level - 0.5,  # negative
        lambda level: level / 0.0,  # not finite
        lambda level: 1 / 0,  # raises
    ],
)
def test_function_variation_rejects_bad_callables(fn) -> None:
    with pytest.raises(SwimkitError):
        FunctionVariation(fn)


def test_function_variation_checks_shape_on_each_call() -> None:
    def sometimes_scalar(level: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(level) if level.numel() == 101 else torch.ones(())

    curve = FunctionVariation(sometimes_scalar)
    with pytest.raises(SwimkitError, match="shaped like its input"):
        curve(torch.rand(4))


def test_table_interpolates_and_clamps() -> None:
    curve = TableVariation([0.1, 0.5, 0.9], [1.0, 3.0, 2.0])
    level = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    # By hand: between (0.1, 1) and (0.5, 3) the slope is 5; between (0.5, 3) and (0.9, 2)
    # it is -2.5; outside the table the end values hold.
    expected = torch.tensor([1.0, 1.0, 1.0 + 5 * 0.2, 3.0, 3.0 - 2.5 * 0.2, 2.0, 2.0])
    torch.testing.assert_close(curve(level), expected)
    twod = curve(level.reshape(1, -1).double())
    assert twod.shape == (1, 7) and twod.dtype == torch.float64


def test_table_sampled_std_matches_interpolation() -> None:
    curve = TableVariation([0.0, 1.0], [0.5, 1.5])
    std, tol = _sample_std(curve, 1.0, 0.495, 0.505, 100_000, 5)
    assert std == pytest.approx(1.0, abs=tol + 0.01)


@pytest.mark.parametrize(
    ("levels", "factors"),
    [
        ([0.0], [1.0]),
        ([0.0, 0.5], [1.0]),
        ([0.5, 0.2], [1.0, 1.0]),
        ([0.2, 0.2, 0.5], [1.0, 1.0, 1.0]),
        ([0.0, 0.5], [1.0, -1.0]),
        ([-0.1, 0.5], [1.0, 1.0]),
        ([0.0, 1.5], [1.0, 1.0]),
        ([0.0, float("nan")], [1.0, 1.0]),
    ],
)
def test_table_rejects_bad_points(levels: list, factors: list) -> None:
    with pytest.raises(SwimkitError):
        TableVariation(levels, factors)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "curve.csv"
    path.write_text(text)
    return path


def test_csv_with_header(tmp_path: Path) -> None:
    curve = TableVariation.from_csv(_write(tmp_path, "level,sigma\n0,0.1\n0.5, 0.3\n1,0.2\n"))
    torch.testing.assert_close(curve.levels, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(curve.factors, torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64))
    assert curve.describe()["source"].endswith("curve.csv")
    torch.testing.assert_close(curve(torch.tensor([0.25])), torch.tensor([0.2]))


def test_csv_without_header_blank_lines_and_comments(tmp_path: Path) -> None:
    curve = TableVariation.from_csv(_write(tmp_path, "# measured\n0,1\n\n1,2\n"))
    assert curve.levels.tolist() == [0.0, 1.0] and curve.factors.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("level,sigma\n0,1\nabc,2\n", "not two numbers"),
        ("level,sigma\n0,1\n", "at least 2"),
        ("", "at least 2"),
        ("0,1,2\n1,2,3\n", "2 columns"),
        ("x,y\n0,1\n1,2\n", "not two numbers"),
        ("0,1\n0,2\n", "increasing"),
        ("0.5,1\n0.2,2\n", "increasing"),
        ("0,1\n1,-2\n", "negative"),
        ("0,1\n1,inf\n", "finite"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SwimkitError, match=message):
        TableVariation.from_csv(_write(tmp_path, text))


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SwimkitError, match="not found"):
        TableVariation.from_csv(tmp_path / "missing.csv")


def test_as_variation(tmp_path: Path) -> None:
    assert isinstance(as_variation(None), UniformVariation)
    assert isinstance(as_variation("uniform"), UniformVariation)
    band = BandVariation(2.0)
    assert as_variation(band) is band
    parsed = as_variation("band:3")
    assert isinstance(parsed, BandVariation) and parsed.r == 3.0 and parsed.low == 0.25
    custom = as_variation("band:2:0.1:0.3")
    assert isinstance(custom, BandVariation) and (custom.low, custom.high) == (0.1, 0.3)
    assert isinstance(as_variation(lambda level: torch.ones_like(level)), FunctionVariation)
    path = _write(tmp_path, "level,sigma\n0,1\n1,2\n")
    assert isinstance(as_variation(str(path)), TableVariation)
    assert isinstance(as_variation(path), TableVariation)


@pytest.mark.parametrize("spec", ["band", "band:x", "band:1:2", "gaussian", 3.0, "nope.csv"])
def test_as_variation_rejects(spec: object) -> None:
    with pytest.raises(SwimkitError):
        as_variation(spec)
