"""Training that learns ranges: clipping after every step, learnable clipping ranges,
and noise training through a crossbar (its ranges, converters and output noise)."""

from __future__ import annotations

import pytest
import torch
from test_training import fit, fresh, same_state

import swimkit
from swimkit.checkpoints import load_checkpoint
from swimkit.crossbar import Crossbar
from swimkit.errors import SwimkitError
from swimkit.training import TrainConfig


def _device_weights(model):
    return {n: w.value.detach().clone() for n, w in swimkit.device_weights(model).items()}


@pytest.mark.parametrize("per", ["tensor", "channel"])
def test_clipping_clamps_at_k_standard_deviations(per: str):
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
    plain, clipped = fit(epochs=1), fit(epochs=1, clip_sigma=1.2)
    for name, w in _device_weights(clipped.model).items():
        assert float(w.abs().max() / w.std()) <= 1.2 * 1.1, name
    ratios = [float(w.abs().max() / w.std()) for w in _device_weights(plain.model).values()]
    assert min(ratios) > 1.6  # without clipping the ranges are wider


def test_learned_ranges_bound_the_trained_weights_and_resume_bit_for_bit(tmp_path):
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
    initial = _device_weights(fresh())
    fit(epochs=1, learn_ranges=True, clip_sigma=1.0, sigma_train=0.1, scale_aware=True,
        checkpoint_dir=tmp_path)
    _, info = load_checkpoint(tmp_path / "last.pt")
    for name, bound in info["extra"]["ranges"].items():
        start = 1.0 * float(initial[name].std())
        assert float(bound.abs()) != pytest.approx(start, rel=1e-4), name


def test_noise_training_goes_through_the_crossbar():
    plain = fit(epochs=1, sigma_train=0.1)
    device = Crossbar(ranges="column", adc_bits=4, adc_range=2.0, dac_bits=4,
                      output_noise=0.2).wrap(swimkit.DeviceModel())
    through = fit(epochs=1, sigma_train=0.1, noise_model=device)
    assert through.history[0]["train_loss"] != plain.history[0]["train_loss"]
    again = fit(epochs=1, sigma_train=0.1, noise_model=device)
    assert same_state(through.model, again.model)  # output noise is seeded per epoch


def test_clip_options_that_would_not_act_are_refused():
    with pytest.raises(SwimkitError, match="clip_per says how weights are clipped"):
        TrainConfig(clip_per="channel")
    with pytest.raises(SwimkitError, match="clip_sigma must be"):
        TrainConfig(clip_sigma=0.0)


def test_clean_training_on_a_crossbar_with_converters_trains_through_them():
    from swimkit.steps import training_noise

    device = swimkit.DeviceModel()
    assert training_noise(device, 0.0) is None
    assert training_noise(Crossbar(ranges="column").wrap(device), 0.0) is None
    converting = Crossbar(adc_bits=3, adc_range=1.0).wrap(device)
    through = training_noise(converting, 0.0)
    assert through.sigma == 0.0 and through.crossbar == converting.crossbar
    clean = fit(epochs=1)
    quantized = fit(epochs=1, noise_model=through)
    assert quantized.history[0]["train_loss"] != clean.history[0]["train_loss"]
