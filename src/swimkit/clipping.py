"""Training that keeps weight ranges small: clipping after every step, learnable ranges.

A device error is proportional to the range its weight is mapped with (max|W| of its
layer, tile or column), so one outlier weight makes every device of its range noisier.
Two ways to train ranges down, alone or with scale-aware noise injection:

- **clipping at k standard deviations** after every optimizer step: each device weight
  (per tensor, or per output channel) is clamped to +-k std (aihwkit-lightning's
  recipe for hardware-aware training clips at 2.5 std);
- **learnable ranges**: a range a per tensor (or per output channel), trained with the
  model. The forward computes with the weights clamped to +-a (the gradient still
  reaches every weight, and a gets the gradient of the weights at its bound, as in
  PACT), and after every step the weights are clamped to +-a, so the trained model is
  a plain model whose range is at most a. Started at k std with ``clip_sigma``,
  else at max|W|. With scale-aware noise the injected error grows with a, which pulls a
  down while the clipped weights pull it up. a is learned as log a, at a tenth of the
  weights' learning rate (:data:`RANGE_LR_FACTOR`): an adaptive optimizer moves every
  parameter by about its learning rate per step, which would move a range far faster
  than the weights it bounds.

The ranges a are saved with each checkpoint, so a resumed run goes on bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import require
from .mapping import DeviceWeight, attached

CLIP_PER = ("tensor", "channel")

#: Learning rate of the log ranges, as a share of the weights' learning rate.
RANGE_LR_FACTOR = 0.1


def _stored(weight: DeviceWeight) -> Tensor:
    """The parameter the optimizer updates (the original of a parametrized weight)."""
    module, attribute = weight.module, weight.attribute
    if parametrize.is_parametrized(module, attribute):
        return module.parametrizations[attribute].original
    return getattr(module, attribute)


def _bound_shape(value: Tensor, per: str) -> tuple[int, ...]:
    return (value.shape[0], *([1] * (value.dim() - 1))) if per == "channel" else ()


def _spread(value: Tensor, per: str) -> Tensor:
    """Standard deviation per tensor or per output channel, shaped to broadcast."""
    if per == "channel":
        return value.reshape(value.shape[0], -1).std(dim=1).reshape(_bound_shape(value, per))
    return value.std()


def _maximum(value: Tensor, per: str) -> Tensor:
    if per == "channel":
        return value.abs().reshape(value.shape[0], -1).amax(1).reshape(
            _bound_shape(value, per))
    return value.abs().amax()


class _Clamp(nn.Module):
    """Parametrization: the weight clamped to +-a, gradients to the weight straight
    through and to a from the weights at or beyond it."""

    def __init__(self, bound: nn.Parameter) -> None:
        super().__init__()
        self.bound = bound

    def forward(self, weight: Tensor) -> Tensor:
        bound = self.bound.exp()
        over = (weight.abs() >= bound).detach()
        clipped = torch.sign(weight).detach() * bound + (weight - weight.detach())
        return torch.where(over, clipped, weight)


class WeightClipping:
    """Clipping after every step (``sigmas`` standard deviations) and learnable ranges
    (``learn``) of the device weights ``weights``, ``per`` tensor or output channel."""

    def __init__(self, weights: Mapping[str, DeviceWeight], sigmas: float | None,
                 per: str = "tensor", learn: bool = False) -> None:
        require(per in CLIP_PER, f"clip_per must be one of {', '.join(CLIP_PER)} "
                f"(got {per!r})")
        self.weights = dict(weights)
        self.sigmas = sigmas
        self.per = per
        self.learn = learn
        self.bounds: dict[str, nn.Parameter] = {}
        if learn:
            with torch.no_grad():
                for name, w in self.weights.items():
                    value = w.value.detach()
                    start = sigmas * _spread(value, per) if sigmas else _maximum(value, per)
                    self.bounds[name] = nn.Parameter(start.clamp_min(1e-12).log())
            self.clip()

    def parameters(self) -> list[nn.Parameter]:
        """The learnable ranges (their logarithms), for the optimizer."""
        return list(self.bounds.values())

    def ranges(self) -> dict[str, Tensor]:
        """The learned ranges a."""
        return {name: bound.detach().exp() for name, bound in self.bounds.items()}

    def describe(self) -> dict[str, Any]:
        return {"clip_sigma": self.sigmas, "clip_per": self.per, "learn_ranges": self.learn}

    @torch.no_grad()
    def clip(self) -> None:
        """Clamp every stored device weight to its bound (after an optimizer step)."""
        for name, w in self.weights.items():
            stored = _stored(w)
            if self.learn:
                bound = self.bounds[name].exp()
            else:
                bound = self.sigmas * _spread(stored, self.per)
            stored.copy_(torch.maximum(torch.minimum(stored, bound), -bound))

    @contextlib.contextmanager
    def epoch(self) -> Iterator[None]:
        """While training: the weights computed with are clamped to the learnable ranges
        (nothing attached without them)."""
        if not self.learn:
            yield
            return
        with attached(self.weights, {n: _Clamp(b) for n, b in self.bounds.items()}):
            yield

    def state_dict(self) -> dict[str, Tensor]:
        """The learned ranges a, for a checkpoint."""
        return self.ranges()

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        require(set(state) == set(self.bounds), "the checkpoint's learned ranges name other "
                "weights than this run's")
        with torch.no_grad():
            for name, bound in self.bounds.items():
                bound.copy_(state[name].clamp_min(1e-12).log())


__all__ = ["CLIP_PER", "RANGE_LR_FACTOR", "WeightClipping"]
