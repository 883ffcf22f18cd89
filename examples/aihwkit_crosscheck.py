"""swimkit's own ``pcm`` against aihwkit's ``PCMLikeNoiseModel`` on the same conductances:
programming error, drift exponent, read noise and the whole chain at 1 s, 1 h, 1 day and
1 year, from ``--devices`` aihwkit draws per conductance against swimkit's formulas (its
``pcm`` with sigma set to aihwkit's spread at g_max; and the ``aihwkit-pcm`` device model's
formulas, which follow aihwkit's clamps).

    python examples/aihwkit_crosscheck.py --devices 100000
"""

from __future__ import annotations

import argparse
import math

import torch

from swimkit.devices import PCM
from swimkit.devices.cells import cells_of
from swimkit.interop.aihwkit import _lib
from swimkit.interop.aihwkit.conductances import pcm_moments

TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 31536000.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100000)
    parser.add_argument("--digits", default="3,26,64,128,191,255")
    args = parser.parse_args()
    noise = _lib.module("aihwkit.inference.noise.pcm").PCMLikeNoiseModel()
    g_max, n = float(noise.g_max), args.devices
    swim = PCM(sigma=1.0554 / 25 * 255, sigma_verified=1.0, bits_per_weight=8,
               bits_per_device=8)
    step = g_max / 255
    print("| g / g_max | what | aihwkit (samples) | swimkit pcm | aihwkit-pcm formulas |")
    print("|---:|---|---:|---:|---:|")
    for digit in (int(d) for d in args.digits.split(",")):
        x = digit / 255
        cells = cells_of(torch.full((1,), digit / 256 + 1e-9), torch.tensor(1.0), swim.slicing)
        torch.manual_seed(digit)
        target = torch.full((n,), x * g_max, dtype=torch.float64)
        programmed = noise.apply_programming_noise_to_conductance(target.clone())
        nu = noise.generate_drift_coefficients(target.clone())
        m1, m2, _, _ = pcm_moments(noise, target[:1], None, 100, 0.0)
        spread = float((m2 - m1.square()).sqrt())
        print(f"| {x:.3f} | programming error std (uS) | {float((programmed - target).std()):.4f}"
              f" +- {float((programmed - target).std()) / math.sqrt(2 * n):.4f} | "
              f"{float(swim.plain_sigmas(cells)) * step:.4f} | {spread:.4f} |")
        mean, s = (float(v) for v in swim.drift_exponent(cells.levels))
        print(f"| {x:.3f} | drift exponent mean / std | {float(nu.mean()):.5f} / "
              f"{float(nu.std()):.5f} | {mean:.5f} / {s:.5f} (its fit; draws clipped at 0) | "
              "folded: aihwkit's abs(nu) |")
        for label, t in TIMES.items():
            still = noise.apply_drift_noise_to_conductance(target.clone(),
                                                           torch.zeros_like(nu), t)
            relative = float(((still - target) / target).std())
            read = noise.apply_drift_noise_to_conductance(programmed.clone(), nu, t)
            error = read - target
            variances = swim.option_sigmas(cells, None)[..., :1].square()
            second = float(swim.second_moments(cells, variances, t)) * step**2
            bias = float(swim.device_means(cells, t)) * step
            f1, f2, _, _ = pcm_moments(noise, target[:1], None, 100, t)
            g = float(target[0])
            se = float(error.std()) / math.sqrt(n)
            print(f"| {x:.3f} | read noise at {label} (relative std, nu = 0) | {relative:.4f} | "
                  f"{float(swim.read_noise(cells.levels, t)):.4f} | - |")
            print(f"| {x:.3f} | error at {label}: mean (uS) / rms (uS) | "
                  f"{float(error.mean()):.4f} +- {se:.4f} / "
                  f"{float(error.square().mean().sqrt()):.4f} | {bias:.4f} / "
                  f"{math.sqrt(second):.4f} | {float(f1) - g:.4f} / "
                  f"{math.sqrt(float(f2 - 2 * g * f1 + g * g)):.4f} |")


if __name__ == "__main__":
    main()
