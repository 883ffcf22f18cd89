"""fit_prefix: the budget's prefix of ranked entries, found by histograms in pieces."""

from __future__ import annotations

import pytest
import torch

from swimkit.selection import prefix
from swimkit.selection.prefix import Entries, fit_prefix, float_key

NEVER = -(2**63)  # below every bound: never taken


def random_entries(seed: int, count: int, keys: int, secondary: bool):
    """Entries with many ties (keys drawn from ``keys`` values), some never taken, integer
    costs (so every sum is exact), cut into pieces of random sizes."""
    gen = torch.Generator().manual_seed(seed)
    primary = torch.randint(-keys, keys, (count,), generator=gen) * 2**40
    primary[torch.rand(count, generator=gen) < 0.1] = NEVER
    second = torch.randint(0, 3, (count,), generator=gen) if secondary else None
    cost = torch.randint(1, 5, (count,), generator=gen).double()
    bounds, pieces = [0], []
    while bounds[-1] < count:
        bounds.append(min(count, bounds[-1] + int(torch.randint(1, 60, (1,), generator=gen))))
    for first, last in zip(bounds, bounds[1:], strict=False):
        pieces.append(Entries(primary[first:last], cost[first:last], first,
                              None if second is None else second[first:last]))
    return primary, second, cost, pieces


def brute_force(primary, second, cost, budget: float, low: int) -> torch.Tensor:
    """Sort every entry with a primary key from ``low`` up (then by secondary key, then
    position) and take the longest prefix that fits."""
    order = sorted(range(len(primary)), key=lambda i: (
        -int(primary[i]), -int(second[i]) if second is not None else 0, i))
    order = [i for i in order if int(primary[i]) >= low]
    taken = torch.zeros(len(primary), dtype=torch.bool)
    spent = 0.0
    for i in order:
        if spent + float(cost[i]) > budget:
            break
        spent += float(cost[i])
        taken[i] = True
    return taken


@pytest.mark.parametrize("secondary", [False, True])
@pytest.mark.parametrize("collect", [2**20, 3])
def test_the_prefix_is_that_of_sorting_every_entry(monkeypatch, secondary, collect):
    """Whatever the bins, the pieces or the collection size, the cut takes exactly the
    entries a full sort takes (ties by position), for budgets from none to all; keys
    below the lower bound are never taken."""
    monkeypatch.setattr(prefix, "COLLECT", collect)
    monkeypatch.setattr(prefix, "BIN_BITS", 3)
    for seed in range(6):
        primary, second, cost, pieces = random_entries(seed, 500, 20 if seed % 2 else 3,
                                                       secondary)
        real = primary[primary != NEVER]
        low = int(real.min()) if seed < 3 else int(real.median()) + 2**39  # keys cut off
        bounds = (low, int(real.max()))
        total = float(cost[primary >= low].sum())
        for budget in (0.0, 1.0, 17.5, total / 3, total - 1, total, total + 5):
            cut = fit_prefix(lambda p=pieces: iter(p), budget, bounds,
                             (0, 2) if secondary else None)
            got = torch.cat([cut.taken(piece) for piece in pieces])
            want = brute_force(primary, second, cost, budget, low)
            assert torch.equal(got, want), (seed, budget)
            assert cut.total == total and cut.count == int((primary >= low).sum())


def test_float_keys_keep_the_order_of_the_floats():
    values = [0.0, 5e-324, 1e-300, 0.25, 0.5, 1.0, 3.0, 1e300]
    keys = [float_key(v) for v in values]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    weighted = torch.tensor(values[2:], dtype=torch.float64) * 2.0**-6
    shifted = torch.tensor(keys[2:]) - (6 << 52)  # times 2^-6: six exponent steps less
    assert torch.equal(weighted.view(torch.int64), shifted)
