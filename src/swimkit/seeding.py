"""One way to derive seeds: a 63-bit integer from a namespace and a few parts.

Every random stream of swimkit (Monte-Carlo chip k of a run, the data order and the
training noise of epoch e, a learned plan's noise) is seeded by what identifies it and
nothing else, so a result never depends on how many processes computed it or on what
ran before.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(namespace: str, *parts: object) -> int:
    """A 63-bit seed from ``namespace`` and ``parts`` (stable across runs and machines)."""
    text = ":".join([namespace, *(str(p) for p in parts)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(
    namespace: str, *parts: object, where: torch.device | str = "cpu"
) -> torch.Generator:
    """A torch generator on the torch device ``where`` seeded by :func:`derive_seed`."""
    generator = torch.Generator(device=where)
    generator.manual_seed(derive_seed(namespace, *parts))
    return generator


def epoch_generator(seed: int, stream: str, epoch: int,
                    where: torch.device | str = "cpu") -> torch.Generator:
    """The generator of training stream ``stream`` ("data", "noise") in epoch ``epoch``:
    seeded by (seed, stream, epoch) alone, so any epoch can be replayed."""
    return seeded_generator("swimkit-train", stream, int(seed), int(epoch), where=where)


def generator_for(seed: int, index: int, where: torch.device | str = "cpu") -> torch.Generator:
    """The generator of Monte-Carlo chip ``index`` of a run seeded with ``seed``.

    Each chip's draw depends only on (seed, index), so a run gives the same numbers on
    any number of processes, and plans evaluated with the same seed see the same
    underlying draws (common random numbers).
    """
    return seeded_generator("swimkit", int(seed), int(index), where=where)


__all__ = ["derive_seed", "epoch_generator", "generator_for", "seeded_generator"]
