"""The swim pass on pairs of images (sensitivity/swim/pairs.py): the same forward values
bit for bit, the same S and g within float rounding as the pass run as written, on the
models where it applies, odd batches and chains it must stop."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import swimkit
from swimkit import fused
from swimkit.sensitivity.swim import CurvaturePass, trace
from swimkit.sensitivity.swim import linear as linear_rules
from swimkit.sensitivity.swim.pairs import PAIRS, from_pairs, to_pairs


class _Branches(nn.Module):
    """A one-channel convolution whose ReLU feeds two users (the chain stops there), a
    max-pool layer, a pool that does not tile, and a quantizable head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4 * 2, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))                 # 15 -> 7
        y = F.max_pool2d(self.conv2(x).relu(), 2, ceil_mode=True)  # 7 -> 4
        return self.fc(torch.cat([torch.flatten(y, 1), torch.flatten(y * 0.5, 1)], 1))


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name in ("branches", "qbranches"):
        model = _Branches()
        return (swimkit.quantize(model, 4) if name == "qbranches" else model), (1, 15, 15)
    return swimkit.build_model(name, seed=0), (1, 28, 28)


def _data(shape, sizes=(40, 40, 18)):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen))
            for n in sizes]


def _prepared(name: str, sizes=(40, 40, 18)):
    model, shape = _model(name)
    data = _data(shape, sizes)
    if swimkit.quantization.quantization_bits(model):
        with torch.no_grad():
            model.train()(torch.cat([x for x, _ in data]))
    return model.eval(), data


def close(a: dict, b: dict, rtol: float = 2e-5) -> None:
    """Equal within float rounding: the same sums in another order."""
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * float(
            b[name].abs().max()), msg=name)


NAMES = ["lenet", "qlenet", "branches", "qbranches"]


@pytest.mark.parametrize("name", NAMES)
def test_the_chain_runs_on_pairs_and_the_forward_is_the_models(name):
    model, data = _prepared(name)
    run = CurvaturePass(model, trace(model), swimkit.device_weights(model))
    paired = [n for n in run.nodes if n.meta.get(PAIRS)]
    assert [n.target for n in paired] == (["conv1", "conv2"] if "lenet" in name else
                                          ["conv1", "conv2"])
    targets = [n.target for n in run.nodes]
    assert targets.count(to_pairs) == 1 and targets.count(from_pairs) == 1
    with torch.no_grad():
        for x, _ in data:  # an odd batch runs as written
            assert torch.equal(run.forward(x), model(x))
            assert torch.equal(run.forward(x[:7]), model(x[:7]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch_size", [None, 20, 17])
def test_pairs_give_the_sensitivities_of_the_pass_as_written(name, batch_size):
    """In one even batch, in even batches, in odd ones (run as written)."""
    model, data = _prepared(name)
    paired = swimkit.sensitivity(model, data, batch_size=batch_size)
    with fused.disabled():
        plain = swimkit.sensitivity(model, data, batch_size=batch_size)
    close(paired.second, plain.second)
    close(paired.first, plain.first)
    assert paired.samples == plain.samples == 98


@contextmanager
def _two_sweeps(monkeypatch: pytest.MonkeyPatch):
    """Every pass takes g from autograd (the forward recorded, on pairs too)."""
    made = CurvaturePass.__init__

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        self.carries_gradient = False

    with monkeypatch.context() as patch:
        patch.setattr(CurvaturePass, "__init__", init)
        yield


def test_pairs_under_autograd_give_the_same_g(monkeypatch):
    model, data = _prepared("qlenet")
    with _two_sweeps(monkeypatch):
        paired = swimkit.sensitivity(model, data)
        with fused.disabled():
            plain = swimkit.sensitivity(model, data)
    close(paired.second, plain.second)
    close(paired.first, plain.first)


def test_a_wrong_sum_over_the_pairs_is_caught(monkeypatch):
    """The comparison above fails when the pairs' weight gradients are not both added
    (here only the first image of each pair counts)."""
    model, data = _prepared("lenet")
    with fused.disabled():
        plain = swimkit.sensitivity(model, data)
    monkeypatch.setattr(linear_rules, "_summed",
                        lambda gradient, pairs: gradient[: gradient.shape[0] // 2]
                        if pairs else gradient)
    wrong = swimkit.sensitivity(model, data)
    with pytest.raises(AssertionError):
        close(wrong.second, plain.second)


def test_models_without_a_one_channel_convolution_run_as_written():
    torch.manual_seed(0)
    model = swimkit.build_model("convnet").eval()
    run = CurvaturePass(model, trace(model), swimkit.device_weights(model))
    assert not any(n.meta.get(PAIRS) for n in run.nodes)
    assert to_pairs not in [n.target for n in run.nodes]
    with fused.disabled():
        lenet = swimkit.build_model("lenet")
        run = CurvaturePass(lenet, trace(lenet), swimkit.device_weights(lenet))
    assert not any(n.meta.get(PAIRS) for n in run.nodes)
