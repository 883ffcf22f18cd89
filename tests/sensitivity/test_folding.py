"""ReLUs folded into the layer before them in the swim pass (sensitivity/swim/folding.py):
the same forward values bit for bit and the same S and g as the pass run as written."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import swimkit
from swimkit import fused
from swimkit.sensitivity.swim import CurvaturePass, folding, registry, trace
from swimkit.sensitivity.swim.folding import FOLDED, max_pool_of_relu, relued


class _Mixed(nn.Module):
    """ReLU layers (one in place), a ReLU method, a layer whose output has two users (its
    ReLU is not folded), a max-pool layer and a pool after a folded ReLU that does not
    tile (ceil mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 3 * 3, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.act(self.conv1(x)))                         # 10 -> 5
        z = self.conv2(x)
        y = F.relu(z) + 0.1 * z
        x = F.max_pool2d(self.conv3(y + x).relu(), 2, ceil_mode=True)  # 5 -> 3
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))) + 0.0)


def _prepared(name: str, images: int = 40):
    torch.manual_seed(0)
    if name in ("mixed", "qmixed"):
        model, shape = _Mixed(), (3, 10, 10)
        model = swimkit.quantize(model, 6) if name == "qmixed" else model
    else:
        model = swimkit.build_model(name)
        shape = swimkit.models.model_info(name).input_shape
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen))
            for n in (images // 2, images - images // 2)]
    if swimkit.quantization.quantization_bits(model):
        with torch.no_grad():
            model.train()(torch.cat([x for x, _ in data]))
    return model.eval(), data


def close(a: dict, b: dict, rtol: float = 2e-5) -> None:
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * float(
            b[name].abs().max()), msg=name)


NAMES = ["mixed", "qmixed", "lenet", "qlenet", "convnet", "qconvnet"]


@pytest.mark.parametrize("name", NAMES)
def test_folded_relus_give_the_forward_and_the_sensitivities_of_the_pass_as_written(name):
    model, data = _prepared(name, images=16 if "convnet" in name else 40)
    run = CurvaturePass(model, trace(model), swimkit.device_weights(model))
    folded = [n.target for n in run.nodes if n.meta.get(FOLDED)]
    assert folded and all(n.target is not F.relu for n in run.nodes if n.meta.get(FOLDED))
    with torch.no_grad():
        for x, _ in data:
            assert torch.equal(run.forward(x), model(x))
    ours = swimkit.sensitivity(model, data)
    with fused.disabled():
        plain = swimkit.sensitivity(model, data)
    close(ours.second, plain.second)
    close(ours.first, plain.first)


def test_what_is_folded_in_the_mixed_model():
    model, _ = _prepared("mixed")
    run = CurvaturePass(model, trace(model), swimkit.device_weights(model))
    folded = sorted(str(n.target) for n in run.nodes if n.meta.get(FOLDED))
    assert folded == ["conv1", "conv3", "fc1"]  # conv2's output has two users
    targets = [n.target for n in run.nodes]
    assert targets.count(max_pool_of_relu) == 2 and targets.count(relued) == 1


def test_a_fold_without_the_relus_mask_is_caught():
    """The comparison above fails when the folded ReLU's mask is left out of the pool's
    rule (S then also flows back through windows whose maximum is 0)."""
    model, data = _prepared("lenet")
    with fused.disabled():
        plain = swimkit.sensitivity(model, data)
    options = {"replace": True, "writes_in_place": True, "gradient": True, "local_graph": True}
    registry.register_rule(max_pool_of_relu, lambda ctx, s: ctx.vjp(s), **options)
    try:
        wrong = swimkit.sensitivity(model, data)
    finally:
        registry.register_rule(max_pool_of_relu, folding.max_pool_of_relu_rule, **options)
    with pytest.raises(AssertionError):
        close(wrong.second, plain.second)
    assert registry.entry_of(max_pool_of_relu).rule is folding.max_pool_of_relu_rule
