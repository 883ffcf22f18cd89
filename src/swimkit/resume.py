"""Resuming a training run: what its checkpoints carry from one epoch to the next, and the
settings a resumed run must share with the stored one.

A checkpoint's ``extra`` holds the optimizer, scheduler and RNG states, the history and
the resolved settings; resuming restores them so the run continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .checkpoints import load_checkpoint
from .clipping import WeightClipping
from .errors import SwimkitError, first_line
from .train_config import ADDED_LATER

#: Resolved settings a resumed run must share with the stored one (epochs may grow).
MUST_MATCH = (
    "model_name",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "sigma_train",
    "scale_aware",
    "seed",
    "augment",
    "noise",
    "ranges",
    "teacher",
    "data",
    "train",
)

#: Settings the first release's checkpoints do not hold, and the value they trained with.
FIRST_RELEASE = {"noise": None, "scale_aware": False, "ranges": None, "teacher": None}
#: Settings earlier checkpoints do not hold and nothing can tell: not compared there.
UNRECORDED = ("data", "train")

def cannot_resume(problem: str) -> SwimkitError:
    """The error for a folder training cannot continue in, with the way out for the API
    and for the command line (where --no-resume exists on `train` only)."""
    return SwimkitError(
        f"{problem}; use another checkpoint_dir, or resume=False to start again (it "
        "overwrites the folder)",
        command_line=f"{problem}; use another --out, or delete the folder to train again "
                     "from scratch",
    )


@dataclass
class Progress:
    """The part of a run that a checkpoint carries from one epoch to the next."""

    epoch: int = 0
    history: list[dict[str, Any]] | None = None
    best_accuracy: float | None = None
    best_epoch: int | None = None

    def __post_init__(self) -> None:
        self.history = list(self.history or [])


def checkpoint_extra(
    state: Progress,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    config: Mapping[str, Any],
    settings: Mapping[str, Any],
    device: torch.device,
    clipping: WeightClipping | None = None,
) -> dict[str, Any]:
    """The checkpoint's ``extra``: everything needed to continue after this epoch (the
    learned clipping ranges too)."""
    rng: dict[str, Tensor] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {
        "epoch": state.epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "history": [dict(row) for row in state.history],
        "best_accuracy": state.best_accuracy,
        "best_epoch": state.best_epoch,
        "config": dict(config),
        "settings": dict(settings),
        "ranges": clipping.state_dict() if clipping is not None else None,
    }


def resume_from(
    path: Path,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    settings: Mapping[str, Any],
    device: torch.device,
    clipping: WeightClipping | None = None,
) -> Progress:
    """Load ``path`` into the model, optimizer, scheduler, RNG and learned clipping
    ranges; return the progress."""
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        _, info = load_checkpoint(path, model)
    except SwimkitError as err:
        raise cannot_resume(f"cannot resume from {path} ({err})") from None
    extra = info["extra"]
    try:
        _check_settings(path, extra["settings"], settings)
        if clipping is not None:
            clipping.load_state_dict(extra.get("ranges") or {})
        optimizer.load_state_dict(extra["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["rng"]["torch"])
        if device.type == "cuda" and "cuda" in extra["rng"]:
            torch.cuda.set_rng_state(extra["rng"]["cuda"], device)
        return Progress(
            epoch=int(extra["epoch"]),
            history=extra["history"],
            best_accuracy=extra["best_accuracy"],
            best_epoch=extra["best_epoch"],
        )
    except SwimkitError:
        model.load_state_dict(backup)
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        model.load_state_dict(backup)
        reason = f"missing {err}" if isinstance(err, KeyError) else first_line(err)
        raise cannot_resume(
            f"{path} is not a training checkpoint of this run ({reason})"
        ) from None


def _check_settings(path: Path, stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse to continue a run whose stored settings differ from the requested ones."""
    for key in MUST_MATCH:
        if key in UNRECORDED and key not in stored:
            continue
        was, now = stored.get(key, FIRST_RELEASE.get(key)), current.get(key)
        if key == "train" and isinstance(was, Mapping) and isinstance(now, Mapping):
            was, now = ({**ADDED_LATER, **dict(was)}, {**ADDED_LATER, **dict(now)})
        if was != now:
            if isinstance(was, Mapping) and isinstance(now, Mapping):  # name the setting
                key = next(k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))
                was, now = was.get(key), now.get(key)
            raise cannot_resume(
                f"{path} holds a run with {key}={was!r}, but this run asks for {key}={now!r}")


__all__ = ["FIRST_RELEASE", "MUST_MATCH", "Progress", "cannot_resume", "checkpoint_extra",
           "resume_from"]
