"""A model with tied weights: one Parameter used by two Linear layers."""

from __future__ import annotations

import torch
from torch import nn


class TiedMLP(nn.Module):
    """x -> a -> relu -> b -> relu -> head, where ``b.weight`` is ``a.weight``."""

    def __init__(self, width: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)
        self.b.weight = self.a.weight
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def tied_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> TiedMLP:
    """A :class:`TiedMLP` initialised from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return TiedMLP().to(dtype).eval()


def tied_batches(n: int = 5, batches: int = 2, seed: int = 1,
                 dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` batches of ``n`` inputs for :class:`TiedMLP` with labels."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 6, generator=gen, dtype=dtype),
             torch.randint(0, 3, (n,), generator=gen)) for _ in range(batches)]
