"""How aihwkit's noise models put weights on conductances, program, drift and read them.

The converter (a device pair or one device a weight), aihwkit's split of a layer into
tiles, the closed forms of ``PCMLikeNoiseModel`` (programming error with or without
swimkit's verify loop, drift and read noise: :func:`pcm_moments`) and, for every other
model, moments sampled from its own functions (:func:`sampled_moments`, cached). The device
model built on them is :class:`swimkit.interop.aihwkit.devices.AihwkitDevice`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ...errors import SwimkitError
from . import _lib

PAIR, SINGLE = "pair", "single"
#: Where a clamped or truncated normal is cut (its mass beyond is below 1e-15).
_CUT = 8.0
_NODES = 48


# --- the converter ----------------------------------------------------------------------


def converter_kind(noise: Any) -> str:
    """``pair`` or ``single``: how the converter of ``noise`` holds a weight, or an error."""
    name = type(getattr(noise, "g_converter", None)).__name__
    if name == "SinglePairConductanceConverter":
        return PAIR
    if name == "SingleDeviceConductanceConverter":
        return SINGLE
    raise SwimkitError(f"aihwkit's {name or 'missing'} conductance converter is not modelled "
                       "by swimkit (a weight on several pairs with factors, or a custom "
                       "table); use SinglePairConductanceConverter or "
                       "SingleDeviceConductanceConverter")


def split_sizes(size: int, most: int) -> list[int]:
    """How aihwkit splits ``size`` rows or columns into tiles of at most ``most``: into as
    few as fit, of sizes differing by at most one (``TileModuleArray``)."""
    if most <= 0:
        return [size]
    count = -(-size // most)
    base, extra = divmod(size, count)
    return [base + (i < extra) for i in range(count)]


def tile_blocks(shape: Sequence[int], tile_inputs: int, tile_outputs: int
                ) -> list[tuple[slice, slice]]:
    """The (rows, columns) of each aihwkit tile of a weight of ``shape`` held as the matrix
    ``[out, in * kernel]`` (aihwkit's layout of a convolution)."""
    out, cols = int(shape[0]), int(math.prod(shape[1:]))
    blocks, r0 = [], 0
    for rows in split_sizes(out, tile_outputs):
        c0 = 0
        for width in split_sizes(cols, tile_inputs):
            blocks.append((slice(r0, r0 + rows), slice(c0, c0 + width)))
            c0 += width
        r0 += rows
    return blocks


# --- closed forms -----------------------------------------------------------------------


def _phi(x: Tensor) -> Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x: Tensor) -> Tensor:
    return torch.special.ndtr(x)


def _folded_exp(b: float, mean: Tensor, spread: Tensor) -> Tensor:
    """E[exp(-b |X|)], X ~ Normal(mean, spread^2) (the folded drift exponent's moments)."""
    s = spread.clamp_min(1e-300)
    first = -b * mean + 0.5 * (b * s) ** 2 + torch.special.log_ndtr(mean / s - b * s)
    second = b * mean + 0.5 * (b * s) ** 2 + torch.special.log_ndtr(-mean / s - b * s)
    return torch.exp(first) + torch.exp(second)


def _clamped_factors(k: Tensor) -> tuple[Tensor, Tensor]:
    """E[max(Y, 0)] / m and E[max(Y, 0)^2] / m^2 for Y ~ Normal(m, (k m)^2), m > 0."""
    k = k.clamp_min(1e-12)
    inv = 1.0 / k
    first = _cdf(inv) + k * _phi(inv)
    second = (1 + k * k) * _cdf(inv) + k * _phi(inv)
    return first, second


def _legendre() -> tuple[Tensor, Tensor]:
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(_NODES)
    return torch.from_numpy(x), torch.from_numpy(w)


def segments(g: Tensor, sigma: Tensor, tolerance: float | None, max_attempts: int
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The programming error e of a device at target ``g`` with plain spread ``sigma`` (uS,
    ``(G,)``) as pieces of a normal density: ``lo``, ``hi``, ``weight`` (``(G, S)``, the
    density on [lo, hi] is weight * phi(e / sigma) / sigma), and the acceptance q of one
    attempt. ``tolerance`` (uS) None is a plain write; else swimkit's loop on the clamped
    conductance: a device whose target is below the tolerance also accepts every draw that
    the clamp at 0 brings within it."""
    cut = _CUT * sigma
    if tolerance is None:
        return (-cut).unsqueeze(1), cut.unsqueeze(1), torch.ones_like(g).unsqueeze(1), \
            torch.ones_like(g)
    tol = torch.full_like(g, tolerance)
    low = torch.where(g >= tol, -tol, -cut)
    s = sigma.clamp_min(1e-300)
    q = (_cdf(tol / s) - _cdf(low / s)).clamp(1e-300, 1.0)
    fail = torch.exp(max_attempts * torch.log1p(-q.clamp(max=1 - 1e-16)))
    accepted = (1 - fail) / q
    failed = torch.where(q < 1, fail / (1 - q).clamp_min(1e-300), torch.zeros_like(q))
    lo = torch.stack([low, -cut, tol], 1)
    hi = torch.stack([tol, torch.where(g >= tol, -tol, -cut), cut], 1)
    weight = torch.stack([accepted, failed, failed], 1)
    return lo, hi, weight, q


def pcm_moments(noise: Any, g: Tensor, tolerance: float | None, max_attempts: int,
                time: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """E[g(t)], E[g(t)^2] of one PCM device at each target ``g`` (uS), E[g_prog] after
    programming, and the acceptance q of a verify attempt, from the formulas of aihwkit's
    ``PCMLikeNoiseModel`` (its statistics: Nandakumar et al., ICECS 2019; Joshi et al.,
    Nature Communications 11, 2473, 2020):

    - g_prog = max(g + e, 0), e ~ Normal(0, sigma(g)^2), sigma(g) = prog_noise_scale
      sum_i c_i (g / g_max)^i g_max / g_max_ref (narrowed by swimkit's loop when verified);
    - D = ((t + t0) / t0)^(-nu), nu = drift_scale |Normal(mu(g), s(g)^2)|, mu and s the
      clipped logarithmic fits of the drift exponent against g / g_max;
    - g(t) = max(g_prog D (1 + k z), 0), k = read_noise_scale Q(g_prog / g_max)
      sqrt(ln((t + t0 + t_read) / (2 t_read))), Q(x) = min(0.0088 / max(x^0.65, 1e-3), 0.2).

    The clamps are exact (clamped-normal moments); the expectation over e is Gauss-Legendre
    quadrature on each piece of its density."""
    g = g.double()
    g_max = float(noise.g_max)
    sigma = programming_sigma_pcm(noise, g)
    lo, hi, weight, q = segments(g, sigma, tolerance, max_attempts)
    lo = torch.maximum(lo, -g.unsqueeze(1))  # below -g the device reads 0
    hi = torch.maximum(hi, lo)
    x, w = _legendre()
    half = (hi - lo) / 2
    e = (lo + hi).unsqueeze(-1) / 2 + half.unsqueeze(-1) * x  # (G, S, n)
    s = sigma.clamp_min(1e-300).reshape(-1, 1, 1)
    density = weight.unsqueeze(-1) * _phi(e / s) / s * (half.unsqueeze(-1) * w)
    gp = (g.reshape(-1, 1, 1) + e).clamp_min(0.0)
    programmed = (density * gp).sum((1, 2))
    if time <= 0:
        return programmed, (density * gp * gp).sum((1, 2)), programmed, q
    t = time + float(noise.t_0)
    rel = (gp / g_max).abs()
    qs = (0.0088 / rel.pow(0.65).clamp_min(1e-3)).clamp(max=0.2)
    growth = math.sqrt(math.log((t + float(noise.t_read)) / (2 * float(noise.t_read))))
    first, second = _clamped_factors(float(noise.read_noise_scale) * qs * growth)
    mean, spread = _drift_fit(g / g_max)
    log_t = math.log(t / float(noise.t_0))
    scale = float(noise.drift_scale)
    d1 = _folded_exp(log_t * scale, mean, spread)
    d2 = _folded_exp(2 * log_t * scale, mean, spread)
    m1 = (density * gp * first).sum((1, 2)) * d1
    m2 = (density * gp * gp * second).sum((1, 2)) * d2
    return m1, m2, programmed, q


def programming_sigma_pcm(noise: Any, g: Tensor) -> Tensor:
    rel = g / float(noise.g_max)
    coeff = [float(c) for c in noise.prog_coeff]
    sigma = torch.full_like(g, coeff[0])
    power = torch.ones_like(g)
    for c in coeff[1:]:
        power = power * rel
        sigma = sigma + c * power
    reference = float(getattr(noise, "prog_coeff_g_max_reference", noise.g_max))
    return (sigma * float(noise.g_max) / reference * float(noise.prog_noise_scale)).abs()


def _drift_fit(rel: Tensor) -> tuple[Tensor, Tensor]:
    log = torch.log(rel.abs().clamp_min(1e-7))
    return (-0.0155 * log + 0.0244).clamp(0.049, 0.1), (-0.0125 * log - 0.0059).clamp(0.008, 0.045)


def is_pcm(noise: Any) -> bool:
    """True for aihwkit's ``PCMLikeNoiseModel`` or a subclass that keeps its three draws."""
    cls = _lib.module("aihwkit.inference.noise.pcm").PCMLikeNoiseModel
    methods = ("apply_programming_noise_to_conductance", "generate_drift_coefficients",
               "apply_drift_noise_to_conductance")
    return isinstance(noise, cls) and all(
        getattr(type(noise), m) is getattr(cls, m) for m in methods)


# --- sampling the model's own functions -------------------------------------------------

_CACHE: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}


def program(noise: Any, g: Tensor) -> Tensor:
    return noise.apply_programming_noise_to_conductance(g.clone()).to(g.dtype)


def verify_loop(noise: Any, g: Tensor, tolerance: float, max_attempts: int
                ) -> tuple[Tensor, Tensor]:
    """Program ``g`` with the model's own draw and repeat for the devices beyond
    ``tolerance`` (uS) of their target, at most ``max_attempts`` times: the programmed
    conductances and the attempts each took."""
    programmed = program(noise, g)
    attempts = torch.ones_like(g)
    left = (programmed - g).abs() > tolerance
    for _ in range(max_attempts - 1):
        if not bool(left.any()):
            break
        index = left.nonzero(as_tuple=True)
        again = program(noise, g[index])
        programmed[index] = again
        attempts[index] += 1
        left[index] = (again - g[index]).abs() > tolerance
    return programmed, attempts


def read_at(noise: Any, programmed: Tensor, target: Tensor, time: float) -> Tensor:
    """What devices programmed to ``programmed`` (targets ``target``) read ``time`` s later,
    by the model's own functions (no re-conversion)."""
    if time <= 0:
        return programmed
    nu = noise.generate_drift_coefficients(target.clone())
    return drift(noise, programmed, nu, time)


def drift(noise: Any, programmed: Tensor, nu: Any, time: float) -> Tensor:
    try:
        return noise.apply_drift_noise_to_conductance(programmed.clone(), nu, time).to(
            programmed.dtype)
    except Exception as err:  # aihwkit's own refusal, e.g. a time the fit does not cover
        keys = getattr(noise, "coeff_dic", None)
        hint = f" (it reads at {sorted(keys)} s)" if isinstance(keys, dict) else ""
        raise SwimkitError(f"aihwkit's {type(noise).__name__} cannot read at {time:g} s"
                           f"{hint}: {str(err).splitlines()[0] if str(err) else err!r}") from None


def sampled_moments(noise: Any, g: Tensor, tolerance: float | None, max_attempts: int,
                    time: float, samples: int, seed: int = 0
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """E[g(t)], E[g(t)^2], E[g_prog] and the mean attempts per device at each target ``g``,
    from ``samples`` draws of the model's own functions per target (cached per model,
    targets, tolerance and time; drawn from ``seed``, not from the chips' generators)."""
    key = (type(noise).__qualname__, str(noise), tuple(g.tolist()), tolerance, max_attempts,
           float(time), samples, seed)
    if key not in _CACHE:
        with _lib.seeded(torch.Generator().manual_seed(seed), g.device):
            target = g.double().repeat_interleave(samples)
            if tolerance is None:
                programmed, attempts = program(noise, target), torch.ones_like(target)
            else:
                programmed, attempts = verify_loop(noise, target, tolerance, max_attempts)
            read = read_at(noise, programmed, target, time).reshape(-1, samples)
        _CACHE[key] = (read.mean(1), read.square().mean(1),
                       programmed.reshape(-1, samples).mean(1),
                       attempts.reshape(-1, samples).mean(1))
    return _CACHE[key]


__all__ = ["PAIR", "SINGLE", "converter_kind", "drift", "is_pcm", "pcm_moments", "program",
           "programming_sigma_pcm", "read_at", "sampled_moments", "segments", "split_sizes",
           "tile_blocks", "verify_loop"]
