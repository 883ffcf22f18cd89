"""The fused inference path of chips (swimkit.fused): the same logits and the same
per-chip counts as the ops run as written, on the zoo's models and on ones built to
break it (ties, odd batches, windows that do not tile, other hooks, batch ranges)."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import ReluPoolNet

import swimkit
from swimkit import fused
from swimkit.chips import ChipRunner
from swimkit.quantization import fake_quantize_fixed


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    if swimkit.quantization.quantization_bits(model):
        model.train()
        with torch.no_grad():
            model(x)
    return model.eval()


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name in ("relupool", "qrelupool"):
        model = ReluPoolNet()
        return (swimkit.quantize(model, 8) if name == "qrelupool" else model), (1, 15, 15)
    return swimkit.build_model(name, seed=0), swimkit.models.model_info(name).input_shape


def _data(shape: tuple[int, ...], sizes=(32, 32, 7), seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen))
            for n in sizes]


MODELS = ["lenet", "qlenet", "convnet", "qconvnet", "relupool", "qrelupool", "qvit"]


@pytest.mark.parametrize("name", MODELS)
def test_the_fused_graph_gives_the_plain_logits_bit_for_bit(name):
    model, shape = _model(name)
    data = _data(shape)
    _calibrated(model, data[0][0])
    graph = fused.inference_graph(model)
    assert graph is not None
    calls = [n for n in graph.graph.nodes if n.target is fused.layer_output]
    assert calls, "nothing fused"
    with torch.inference_mode():
        for x, _ in data:  # an odd batch too: its one-channel convolution runs as written
            assert torch.equal(graph(x), model(x))
            assert torch.equal(graph(x[:1]), model(x[:1]))
    if name in ("lenet", "qlenet", "relupool", "qrelupool"):
        assert fused.takes_pairs(graph)  # the first convolution has one input channel


def _device_values(model):
    return {n: w.value.detach() for n, w in swimkit.device_weights(model).items()}


def _chips(values, count: int, scale: float = 0.15):
    gen = torch.Generator().manual_seed(5)
    return [{n: v + scale * v.abs().amax() * torch.randn(v.shape, generator=gen)
             for n, v in values.items()} for _ in range(count)]


@pytest.mark.parametrize("name", MODELS)
def test_fused_chips_count_exactly_as_chips_run_as_written(name):
    model, shape = _model(name)
    data = _data(shape, sizes=(24, 24, 10) if "convnet" in name else (64, 64, 22))
    _calibrated(model, data[0][0])
    values = _device_values(model)
    chips = _chips(values, 6, scale=0.3 if "convnet" in name else 0.15)
    with fused.disabled(), ChipRunner(model, data, values) as plain:
        expected = plain.correct(chips)
    assert not plain.fused
    with ChipRunner(model, data, values) as runner:
        counts = runner.correct(chips)
    assert runner.fused
    assert counts == expected and len(set(counts)) > 1  # the chips differ, and match


def test_relu_after_the_quantizer_and_the_pool_commute_exactly():
    """max-pool(ReLU(Q(y))) = Q with its clamp at 0 of max-pool(y), bit for bit, with
    ties (values on the quantizer's grid), zeros, -0.0 and values beyond the range."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(64, 5, 12, 12, generator=gen) * 2
    y[:, :2] = torch.round(y[:, :2] * 4) / 4  # many ties inside windows
    y.view(-1)[:50] = -0.0
    y.view(-1)[50:100] = 0.0
    for bits, max_abs in ((4, 1.7), (6, 0.3), (2, 5.0)):
        plain = F.max_pool2d(F.relu(fake_quantize_fixed(y, bits, max_abs)), 2)
        pooled = fused.pool_by_maxima(y, 2)
        assert torch.equal(fake_quantize_fixed(pooled, bits, max_abs, relu=True), plain)
        assert torch.equal(fake_quantize_fixed(y, bits, max_abs, relu=True),
                           F.relu(fake_quantize_fixed(y, bits, max_abs)))


def test_a_fusion_that_changes_the_numbers_is_caught(monkeypatch):
    """The runner compares the fused logits with the model's before it uses them: a
    quantizer fused wrongly (rounding down instead of to nearest) falls back, with a
    warning, to the ops as written, whose counts it then gives."""
    model, shape = _model("qlenet")
    data = _data(shape, sizes=(64, 20))
    _calibrated(model, data[0][0])
    values = _device_values(model)
    chips = _chips(values, 4)
    with fused.disabled(), ChipRunner(model, data, values) as plain:
        expected = plain.correct(chips)

    def floor_quantize(x, bits, max_abs, *, relu=False, out=None):
        step = max(max_abs / 2**bits, torch.finfo(x.dtype).tiny)
        low = 0.0 if relu else -max_abs
        return torch.clamp(x, low, max_abs, out=out).div_(step).floor_().mul_(step)

    monkeypatch.setattr(fused, "fake_quantize_fixed", floor_quantize)
    graph = fused.inference_graph(model)
    with torch.inference_mode():
        assert not torch.equal(graph(data[0][0]), model(data[0][0]))  # it is caught ...
    with pytest.warns(UserWarning, match="fused forward of .* does not give its plain"), \
            ChipRunner(model, data, values) as runner:
        counts = runner.correct(chips)
    assert not runner.fused and counts == expected  # ... and not used


def test_pairs_of_images_that_sum_differently_are_dropped_not_the_fusion(monkeypatch):
    """Where the convolution of pairs of images would not give the plain sums, the
    runner keeps the fused graph without it (no warning)."""
    model, shape = _model("lenet")
    data = _data(shape, sizes=(32, 16))
    values = _device_values(model)
    real = fused.conv_of_pairs
    monkeypatch.setattr(fused, "conv_of_pairs",
                        lambda layer, x: real(layer, x) * (1 + 2**-20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ChipRunner(model, data, values) as runner:
            assert runner.fused and not fused.takes_pairs(runner._graph)
            counts = runner.correct(_chips(values, 3))
    with fused.disabled(), ChipRunner(model, data, values) as plain:
        assert counts == plain.correct(_chips(values, 3))


def test_the_convolution_of_pairs_gives_the_plain_sums():
    conv = nn.Conv2d(1, 6, 3, padding=1)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        pairs = fused.conv_of_pairs(conv, x)
        assert pairs.shape == (32, 12, 28, 28)
        assert torch.equal(fused.images_of_pairs(pairs), conv(x))


def test_layers_with_hooks_of_their_own_or_a_batch_range_run_as_written():
    """A layer with a hook swimkit did not put there is not fused (the hook still runs);
    a quantizer whose range is its batch's quantizes before the ReLU and the pool."""
    model = swimkit.build_model("lenet", seed=0).eval()
    model.conv2.register_forward_hook(lambda module, args, out: out * 0.5)
    graph = fused.inference_graph(model)
    targets = {str(n.args[0].target) for n in graph.graph.nodes
               if n.target is fused.layer_output}
    assert "conv2" not in targets and "conv1" in targets
    batch_range = swimkit.build_model("qlenet", output_range="batch", seed=0).eval()
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(graph(x), model(x))
        assert torch.equal(fused.inference_graph(batch_range)(x), batch_range(x))


def test_nothing_is_fused_where_nothing_can_be():
    plain = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2))
    assert fused.inference_graph(plain) is None
    with fused.disabled():
        assert fused.inference_graph(swimkit.build_model("lenet")) is None


def test_freed_memory_is_kept_once_and_never_against_the_users_choice(monkeypatch):
    """glibc's thresholds are set once per process, and not where the environment sets
    them (the user's choice)."""
    calls = []

    class FakeLibc:
        @staticmethod
        def mallopt(parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(fused.ctypes, "CDLL", lambda name: FakeLibc)
    monkeypatch.setattr(fused.sys, "platform", "linux")
    monkeypatch.setattr(fused, "_KEEPING", [None])
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert fused.keep_freed_memory() is False and calls == []
    monkeypatch.setattr(fused, "_KEEPING", [None])
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert fused.keep_freed_memory() is True and fused.keep_freed_memory() is True
    assert calls == [(-3, fused.MMAP_THRESHOLD), (-1, fused.TRIM_THRESHOLD)]  # once


def test_converters_see_the_layers_own_calls():
    """A crossbar's converters take over ``F.conv2d`` and ``F.linear`` for the layers'
    weights: convolutions then run on single images (a convolution of pairs calls it
    with weights of its own), and every chip counts as without the fused paths."""
    model, shape = _model("qlenet")
    data = _data(shape, sizes=(32, 32))
    _calibrated(model, data[0][0])
    chip = swimkit.ChipSpec(swimkit.GaussianDevice(sigma=0.3), crossbar=swimkit.Crossbar(
        tile_rows=64, tile_columns=64, adc_bits=6, dac_bits=6, output_noise=0.02))
    runs = []
    for context in (fused.disabled, lambda: contextlib.nullcontext()):
        with context():
            runs.append(swimkit.evaluate(model, data, chip, samples=4).accuracies)
    assert torch.equal(runs[0], runs[1]) and len(set(runs[0].tolist())) > 1


class _ReadsItsWeight(nn.Module):
    """A model that reads a layer's weight as an attribute (no call of the layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return F.linear(torch.flatten(x, 1), self.fc.weight, self.fc.bias)


def test_a_graph_that_would_read_stale_weights_is_not_used(monkeypatch):
    """A layer's tensor read as an attribute is not fused (the traced graph would hold the
    tensor, not the chip's); and a graph that reads weights of its own (here: another
    LeNet's, equal to this one's before the chips) is caught by the check with the
    weights moved round, and not used."""
    assert fused.inference_graph(_ReadsItsWeight().eval()) is None
    lenet = swimkit.build_model("lenet", seed=0).eval()
    twin = fused.inference_graph(swimkit.build_model("lenet", seed=0).eval())
    data = _data((1, 28, 28), sizes=(16, 16))
    values = _device_values(lenet)
    with fused.disabled(), ChipRunner(lenet, data, values) as plain:
        expected = plain.correct(_chips(values, 3))
    monkeypatch.setattr("swimkit.chips.inference_graph", lambda model: twin)
    with pytest.warns(UserWarning, match="does not give its plain"), \
            ChipRunner(lenet, data, values) as runner:
        counts = runner.correct(_chips(values, 3))
    assert not runner.fused and counts == expected
