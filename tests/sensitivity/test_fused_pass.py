"""The swim pass's fused paths: pairs of images through the first convolutions
(sensitivity/swim/pairs.py) and ReLUs folded into the layer before them (folding.py).
Against the pass run as written (``swimkit.fused.disabled()``): the forward values bit
for bit, S and g within float rounding, on the models where they apply, odd batches,
chains they must stop, autograd's g; and a wrong rule is caught."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from toys import ReluPoolNet

import swimkit
from swimkit import fused
from swimkit.sensitivity.swim import CurvaturePass, folding, registry, trace
from swimkit.sensitivity.swim import linear as linear_rules
from swimkit.sensitivity.swim.folding import FOLDED, max_pool_of_relu, relued
from swimkit.sensitivity.swim.pairs import PAIRS, from_pairs, to_pairs


def _prepared(name: str, sizes=(40, 40, 18)):
    """A model in eval mode (a quantized one calibrated) and batches of ``sizes``."""
    torch.manual_seed(0)
    channels = 3 if name.endswith("3") else 1
    if "relupool" in name:
        model, shape = ReluPoolNet(channels), (channels, 15, 15)
        model = swimkit.quantize(model, 6) if name.startswith("q") else model
    else:
        model = swimkit.build_model(name)
        shape = swimkit.models.model_info(name).input_shape
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen))
            for n in sizes]
    if swimkit.quantization.quantization_bits(model):
        with torch.no_grad():
            model.train()(torch.cat([x for x, _ in data]))
    return model.eval(), data


def close(a: dict, b: dict, rtol: float = 2e-5) -> None:
    """Equal within float rounding: the same sums in another order."""
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * float(
            b[name].abs().max()), msg=name)


def _run(model) -> CurvaturePass:
    return CurvaturePass(model, trace(model), swimkit.device_weights(model))


def _against_written(model, data, batch_size=None) -> None:
    ours = swimkit.sensitivity(model, data, batch_size=batch_size)
    with fused.disabled():
        plain = swimkit.sensitivity(model, data, batch_size=batch_size)
    close(ours.second, plain.second)
    close(ours.first, plain.first)
    assert ours.samples == plain.samples == sum(len(y) for _, y in data)


NAMES = ["lenet", "qlenet", "relupool", "qrelupool", "relupool3", "qrelupool3", "convnet",
         "qconvnet"]


@pytest.mark.parametrize("name", NAMES)
def test_the_forward_is_the_models_bit_for_bit(name):
    model, data = _prepared(name, sizes=(8, 7) if "convnet" in name else (40, 18))
    run = _run(model)
    with torch.no_grad():
        for x, _ in data:  # an odd batch runs as written
            assert torch.equal(run.forward(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_what_runs_on_pairs_and_what_is_folded(name):
    model, _ = _prepared(name, sizes=(2,))
    run = _run(model)
    paired = [str(n.target) for n in run.nodes if n.meta.get(PAIRS)]
    folded = [str(n.target) for n in run.nodes if n.meta.get(FOLDED)]
    targets = [n.target for n in run.nodes]
    if name in ("relupool", "qrelupool"):  # the chain stops at conv3, whose output has two users
        assert paired == ["conv1", "conv2", "conv3"]
    elif "lenet" in name:
        assert paired == ["conv1", "conv2"]
    else:  # no one-channel convolution
        assert paired == [] and to_pairs not in targets
    assert targets.count(to_pairs) == targets.count(from_pairs) == (1 if paired else 0)
    if "relupool" in name:  # conv3's ReLU stays: its output has two users
        assert folded == ["conv1", "conv2", "fc1"]
        assert targets.count(max_pool_of_relu) == 2 and targets.count(relued) == 1
    else:  # every ReLU follows a layer
        assert len(folded) == len([m for m in model.modules()
                                   if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]) - 1


@pytest.mark.parametrize("name", ["lenet", "qlenet", "relupool", "qrelupool", "qrelupool3"])
@pytest.mark.parametrize("batch_size", [None, 20, 17])
def test_s_and_g_are_the_pass_as_written(name, batch_size):
    """In one even batch, in even batches, in odd ones (pairs then run as written)."""
    model, data = _prepared(name)
    _against_written(model, data, batch_size)


@pytest.mark.parametrize("name", ["convnet", "qconvnet"])
def test_s_and_g_are_the_pass_as_written_on_the_convnet(name):
    model, data = _prepared(name, sizes=(8, 8))
    _against_written(model, data)


@contextmanager
def _two_sweeps(monkeypatch: pytest.MonkeyPatch):
    """Every pass takes g from autograd (its forward recorded, on pairs too)."""
    made = CurvaturePass.__init__

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        self.carries_gradient = False

    with monkeypatch.context() as patch:
        patch.setattr(CurvaturePass, "__init__", init)
        yield


def test_under_autograd_g_is_the_same(monkeypatch):
    model, data = _prepared("qlenet")
    with _two_sweeps(monkeypatch):
        _against_written(model, data)


def test_a_wrong_sum_over_the_pairs_is_caught(monkeypatch):
    """The comparison fails when the pairs' weight gradients are not both added (here
    only the first image of each pair counts)."""
    model, data = _prepared("lenet")
    monkeypatch.setattr(linear_rules, "_summed",
                        lambda gradient, pairs: gradient[: gradient.shape[0] // 2]
                        if pairs else gradient)
    with pytest.raises(AssertionError):
        _against_written(model, data)


def test_a_fold_without_the_relus_mask_is_caught():
    """The comparison fails when the folded ReLU's mask is left out of the pool's rule
    (S then also flows back through windows whose maximum is 0)."""
    model, data = _prepared("lenet")
    options = {"replace": True, "writes_in_place": True, "gradient": True, "local_graph": True}
    registry.register_rule(max_pool_of_relu, lambda ctx, s: ctx.vjp(s), **options)
    try:
        with pytest.raises(AssertionError):
            _against_written(model, data)
    finally:
        registry.register_rule(max_pool_of_relu, folding.max_pool_of_relu_rule, **options)
    assert registry.entry_of(max_pool_of_relu).rule is folding.max_pool_of_relu_rule


def test_disabled_the_pass_runs_as_written():
    model, _ = _prepared("lenet", sizes=(2,))
    with fused.disabled():
        run = _run(model)
    assert not any(n.meta.get(PAIRS) or n.meta.get(FOLDED) for n in run.nodes)
    assert {to_pairs, from_pairs, relued, max_pool_of_relu}.isdisjoint(
        n.target for n in run.nodes)
