"""A direct Monte-Carlo of the write-verify loop, to check the closed forms against."""

from __future__ import annotations

import torch

from swimkit.programming import WriteVerify


def simulate(loop: WriteVerify, sigma: float | torch.Tensor, n: int,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Run the loop on ``n`` devices (per element of a sigma tensor).

    Returns ``attempts`` (int64), ``error`` (the final error, device steps) and
    ``accepted`` (bool), each shaped ``(n, *sigma.shape)``.
    """
    sig = torch.as_tensor(sigma, dtype=torch.float64)
    shape = (n, *sig.shape)
    flat_sigma = sig.expand(shape).reshape(-1)
    error = torch.zeros(flat_sigma.numel(), dtype=torch.float64)
    attempts = torch.zeros(flat_sigma.numel(), dtype=torch.int64)
    active = torch.arange(flat_sigma.numel())
    for _ in range(loop.max_attempts):
        draw = torch.randn(active.numel(), dtype=torch.float64, generator=generator)
        draw = draw * flat_sigma[active]
        error[active] = draw
        attempts[active] += 1
        active = active[draw.abs() > loop.tolerance]
        if active.numel() == 0:
            break
    out_dtype = sigma.dtype if isinstance(sigma, torch.Tensor) else torch.float64
    return {
        "attempts": attempts.reshape(shape),
        "error": error.reshape(shape).to(out_dtype),
        "accepted": (error.abs() <= loop.tolerance).reshape(shape),
    }
