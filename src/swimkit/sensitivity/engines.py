"""The registry of sensitivity engines, and what an engine is.

Each engine is registered beside its definition: ``swim`` in :mod:`.swim.graph`, the exact
engines (``ggn``, ``hutchinson``, ``fisher``) in :mod:`.exact`. A plug-in adds one with
:func:`register_engine`, from a notebook or a package (entry-point group
``swimkit.engines``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..registry import Entry, Registry

Compute = Callable[..., tuple[dict[str, Tensor], dict[str, Tensor], int]]

#: Images per batch of g's mean-loss gradient where the images are drawn for the pass
#: (SWIM's).
GRADIENT_BATCH = 128


@dataclass(frozen=True)
class Engine(Entry):
    """A sensitivity engine: ``compute(model, weights, batches, progress=, **options)``
    returns raw (second, first, samples); ``options`` are the options it takes, with
    their defaults (``--engine-option K=V``), ``option_flags`` command-line flags that
    set one option each (``{"--probes": "probes"}``). ``own_batch``: it also takes
    ``batch_size=`` and runs the batches it is given at that batch (None: its own
    choice), which changes its results only by float rounding."""

    compute: Compute | None = None
    options: dict[str, Any] = field(default_factory=dict)
    option_flags: dict[str, str] = field(default_factory=dict)
    own_batch: bool = False

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(self.options)

    @property
    def option_help(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options.items()) or "-"


ENGINES: Registry[Engine] = Registry("sensitivity engine", entry_point_group="swimkit.engines")


def register_engine(name: str, compute: Compute, *, options: dict[str, Any] | None = None,
                    option_flags: dict[str, str] | None = None, aliases: Sequence[str] = (),
                    help: str = "", own_batch: bool = False) -> Engine:
    """Add a sensitivity engine (see :class:`Engine`)."""
    return ENGINES.add(Engine(name=name, aliases=tuple(aliases), help=help, compute=compute,
                              options=dict(options or {}),
                              option_flags=dict(option_flags or {}), own_batch=own_batch))


__all__ = ["ENGINES", "GRADIENT_BATCH", "Compute", "Engine", "register_engine"]
