"""Noise-injection training (swimkit.noise_injection): a fresh draw of the chip's device
errors per mini-batch, from any device model, through the crossbar, on every use of a
tied weight."""

from __future__ import annotations

import pytest
import torch
from tied import tied_batches, tied_model
from torch.nn.utils import parametrize
from toy_training import CountingStuckAt, fit, fresh, same_state, toy

import swimkit
from swimkit import training
from swimkit.chip import ChipSpec
from swimkit.crossbar import Crossbar
from swimkit.noise_injection import NoiseInjector
from swimkit.training import TrainConfig, make_optimizer, train


@pytest.mark.slow
def test_noise_injection_changes_training_and_leaves_plain_parameters(monkeypatch) -> None:
    """Noise training changes the weights learnt (reproducibly, by seed) and leaves the
    model's parameters, their names and the optimizer's as they were."""
    built = []

    def spy(*args, **kwargs):
        built.append(make_optimizer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(training, "make_optimizer", spy)
    model = fresh()
    names_before = [name for name, _ in model.named_parameters()]
    params_before = list(model.parameters())
    result = train(model, toy(), TrainConfig(epochs=2, batch_size=32, sigma_train=0.3))
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert [name for name, _ in model.named_parameters()] == names_before
    assert all(a is b for a, b in zip(model.parameters(), params_before, strict=True))
    held = [p for group in built[0][0].param_groups for p in group["params"]]
    assert all(a is b for a, b in zip(held, params_before, strict=True))
    clean = fit(epochs=2)
    assert not same_state(result.model, clean.model)
    assert same_state(result.model, fit(epochs=2, sigma_train=0.3).model)  # seeded noise


def test_noise_reaches_the_forward() -> None:
    """Huge injected noise ruins the training loss."""
    clean = fit(epochs=1)
    noisy = fit(epochs=1, sigma_train=50.0)
    assert noisy.history[0]["train_loss"] > 3 * clean.history[0]["train_loss"]


def test_scale_aware_training_differs_from_plain_noise_training() -> None:
    """Noise that follows the ranges with their gradient trains other weights."""
    aware = fit(epochs=1, sigma_train=0.3, scale_aware=True)
    assert not same_state(aware.model, fit(epochs=1, sigma_train=0.3).model)


def test_noise_injection_with_a_device_model_from_outside() -> None:
    """sigma_train goes through the protocol (with_sigma: here the stuck probability),
    one draw per mini-batch; at sigma_train 0 the model trains clean, drawing nothing."""
    noise = CountingStuckAt(0.9)
    clean = fit(epochs=1, chip=noise)
    assert noise.draws == 0 and same_state(clean.model, fit(epochs=1).model)
    stuck = fit(epochs=1, chip=noise, sigma_train=0.5)
    assert noise.draws == 4  # one draw per mini-batch: 128 images / 32
    assert not same_state(stuck.model, clean.model)
    rescaled = fit(epochs=1, chip=noise, sigma_train=0.1)
    assert same_state(rescaled.model, fit(epochs=1, chip=CountingStuckAt(0.3),
                                          sigma_train=0.1).model)
    assert not same_state(rescaled.model, stuck.model)


def test_noise_training_goes_through_the_crossbar() -> None:
    """On a chip with converters and output noise the training loss changes, and the
    output noise is seeded per epoch."""
    plain = fit(epochs=1, sigma_train=0.1)
    chip = ChipSpec(swimkit.GaussianDevice(), crossbar=Crossbar(
        ranges="column", adc_bits=4, adc_range=2.0, dac_bits=4, output_noise=0.2))
    through = fit(epochs=1, sigma_train=0.1, chip=chip)
    assert through.history[0]["train_loss"] != plain.history[0]["train_loss"]
    again = fit(epochs=1, sigma_train=0.1, chip=chip)
    assert same_state(through.model, again.model)


def test_clean_training_on_a_crossbar_with_converters_trains_through_them() -> None:
    """sigma_train 0: no injector on the idealised chip or a crossbar without converters;
    through the converters (at sigma 0) on a crossbar that has them."""
    model = fresh()
    config = TrainConfig()
    device = swimkit.GaussianDevice()
    assert NoiseInjector.create(model, config, device) is None
    assert NoiseInjector.create(model, config, ChipSpec(
        device, crossbar=Crossbar(ranges="column"))) is None
    converting = ChipSpec(device, crossbar=Crossbar(adc_bits=3, adc_range=1.0))
    through = NoiseInjector.create(model, config, converting)
    assert through.chip.device_model.sigma == 0.0
    assert through.chip.crossbar == converting.crossbar
    clean = fit(epochs=1)
    quantized = fit(epochs=1, chip=converting)
    assert quantized.history[0]["train_loss"] != clean.history[0]["train_loss"]


def test_a_tied_weight_gets_one_draw_on_both_uses() -> None:
    """Both layers that read one Parameter compute with the same noisy value, redrawn
    per batch; the parameter is untouched afterwards."""
    model = tied_model().train()
    stored = model.a.weight.detach().clone()
    injector = NoiseInjector.create(model, TrainConfig(sigma_train=0.5), None)
    assert set(injector.weights) == {"a.weight", "head.weight"}
    reads = []
    with injector.epoch(1) as redraw:
        for _ in range(2):
            redraw()
            reads.append((model.a.weight.detach().clone(), model.b.weight.detach().clone()))
            x, y = tied_batches(batches=1)[0]
            torch.nn.functional.cross_entropy(model(x), y).backward()
    for a, b in reads:
        assert torch.equal(a, b) and not torch.equal(a, stored)
    assert not torch.equal(reads[0][0], reads[1][0])
    assert model.b.weight is model.a.weight and torch.equal(model.a.weight, stored)
    assert model.a.weight.grad is not None and bool(model.a.weight.grad.any())
