"""Weight clipping (swimkit.clipping): clamping at k standard deviations after every
step, and learnable clipping ranges trained with the model."""

from __future__ import annotations

import pytest
import torch
from toy_training import fit, fresh, same_state

import swimkit
from swimkit.checkpoints import load_checkpoint
from swimkit.errors import SwimkitError
from swimkit.training import TrainConfig


def _device_weights(model):
    return {n: w.value.detach().clone() for n, w in swimkit.device_weights(model).items()}


@pytest.mark.parametrize("per", ["tensor", "channel"])
def test_clipping_clamps_at_k_standard_deviations(per: str):
    """clip() clamps each tensor (or output channel) at +-k of its standard deviation."""
    from swimkit.clipping import WeightClipping

    model = fresh()
    before = _device_weights(model)
    WeightClipping(swimkit.device_weights(model), 1.5, per).clip()
    for name, w in _device_weights(model).items():
        old = before[name]
        rows = old.reshape(old.shape[0], -1) if per == "channel" else old.reshape(1, -1)
        bound = 1.5 * rows.std(dim=1, keepdim=True)
        expected = torch.maximum(torch.minimum(rows, bound), -bound)
        assert torch.equal(w.reshape(expected.shape), expected), name


def test_training_with_clipping_keeps_ranges_near_k_standard_deviations():
    """After training with clip_sigma the ranges stay near k std; without, wider."""
    plain, clipped = fit(epochs=1), fit(epochs=1, clip_sigma=1.2)
    for name, w in _device_weights(clipped.model).items():
        assert float(w.abs().max() / w.std()) <= 1.2 * 1.1, name
    ratios = [float(w.abs().max() / w.std()) for w in _device_weights(plain.model).values()]
    assert min(ratios) > 1.6  # without clipping the ranges are wider


@pytest.mark.slow
def test_learned_ranges_bound_the_trained_weights_and_resume_bit_for_bit(tmp_path):
    """Learned ranges bound the trained weights, are checkpointed, and a resumed run
    gives the weights of an uninterrupted one."""
    whole = fit(epochs=2, learn_ranges=True, sigma_train=0.1, scale_aware=True,
                checkpoint_dir=tmp_path / "whole")
    fit(epochs=1, learn_ranges=True, sigma_train=0.1, scale_aware=True,
        checkpoint_dir=tmp_path / "parts")
    resumed = fit(epochs=2, learn_ranges=True, sigma_train=0.1, scale_aware=True,
                  checkpoint_dir=tmp_path / "parts")
    assert same_state(whole.model, resumed.model)
    _, info = load_checkpoint(tmp_path / "whole" / "last.pt")
    bounds = info["extra"]["ranges"]
    assert set(bounds) == set(_device_weights(whole.model))
    for name, w in _device_weights(whole.model).items():
        assert float(w.abs().max()) <= float(bounds[name].abs()) * (1 + 1e-6)
    started = fit(epochs=0, learn_ranges=True)
    assert started.model is not None  # no epoch: nothing to learn, nothing broken


def test_learned_ranges_start_at_k_standard_deviations_and_move(tmp_path):
    """Learned ranges start at clip_sigma std and training moves them."""
    initial = _device_weights(fresh())
    fit(epochs=1, learn_ranges=True, clip_sigma=1.0, sigma_train=0.1, scale_aware=True,
        checkpoint_dir=tmp_path)
    _, info = load_checkpoint(tmp_path / "last.pt")
    for name, bound in info["extra"]["ranges"].items():
        start = 1.0 * float(initial[name].std())
        assert float(bound.abs()) != pytest.approx(start, rel=1e-4), name


def test_clip_options_that_would_not_act_are_refused():
    """clip_per without clipping, and a zero clip_sigma, are refused."""
    with pytest.raises(SwimkitError, match="clip_per says how weights are clipped"):
        TrainConfig(clip_per="channel")
    with pytest.raises(SwimkitError, match="clip_sigma must be"):
        TrainConfig(clip_sigma=0.0)
