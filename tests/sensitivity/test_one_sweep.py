"""The swim pass's one sweep (S and g together) and its own batch.

The one sweep is checked against the two-sweep pass (curvature sweep, then g by
autograd: what a graph with an S-only rule runs) and g against autograd itself; the
results against the pass's batch.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from tied import TiedMLP, tied_batches, tied_model
from torch import nn

import swimkit
from swimkit.sensitivity import SensitivitySettings
from swimkit.sensitivity.batching import depends_on_batch, pass_batch_size, regrouped
from swimkit.sensitivity.swim import CurvaturePass, trace
from swimkit.sensitivity.swim import graph as swim_graph
from swimkit.sensitivity.swim import registry as rule_registry


class SmallResNet(nn.Module):
    """A stem, one residual block with a downsampling shortcut (conv + BN), pooling, head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False),
                                      nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out = F.relu(out + self.shortcut(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _statistics(model: nn.Module) -> nn.Module:
    """Batch-norm statistics and affine parameters away from their defaults."""
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


SHAPES = {"lenet": (1, 28, 28), "qlenet": (1, 28, 28), "resnet": (3, 16, 16),
          "vit": (1, 28, 28)}


def model_and_data(name: str, sizes=(6, 6, 5)) -> tuple[nn.Module, list]:
    """A model in eval mode (a quantized one calibrated) and batches of the given sizes."""
    torch.manual_seed(0)
    model = _statistics(SmallResNet()) if name == "resnet" else swimkit.build_model(name)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, *SHAPES[name], generator=gen),
             torch.randint(0, 10, (n,), generator=gen)) for n in sizes]
    if swimkit.quantization.quantization_bits(model):
        with torch.no_grad():
            model.train()(torch.cat([x for x, _ in data]))
    return model.eval(), data


@pytest.fixture()
def two_sweeps(monkeypatch: pytest.MonkeyPatch):
    """A block in which every pass takes g from autograd after the curvature sweep."""
    made = CurvaturePass.__init__

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        self.carries_gradient = False

    @contextmanager
    def forced():
        with monkeypatch.context() as patch:
            patch.setattr(CurvaturePass, "__init__", init)
            yield

    return forced


def close(a: dict, b: dict, rtol: float = 1e-5) -> None:
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * float(
            b[name].abs().max()), msg=name)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_one_sweep_gives_the_two_sweep_results(name, two_sweeps):
    """S and g from one sweep equal those of a curvature sweep then autograd."""
    model, data = model_and_data(name)
    assert CurvaturePass(model, trace(model), swimkit.device_weights(model)).carries_gradient
    one = swimkit.sensitivity(model, data)
    with two_sweeps():
        two = swimkit.sensitivity(model, data)
    close(one.second, two.second)
    close(one.first, two.first)


def autograd_g(model: nn.Module, data: list) -> dict[str, torch.Tensor]:
    """The mean-loss gradient of each batch, summed: by autograd on the parameters."""
    names = list(swimkit.device_weights(model))
    params = [model.get_parameter(n) for n in names]
    total = [torch.zeros_like(p) for p in params]
    for x, y in data:
        for t, g in zip(total, torch.autograd.grad(F.cross_entropy(model(x), y), params),
                        strict=True):
            t += g
    return dict(zip(names, total, strict=True))


@pytest.mark.parametrize("name", ["lenet", "resnet", "vit"])
def test_g_is_autograds_mean_loss_gradient(name):
    """g is autograd's mean-loss gradient per batch, summed."""
    model, data = model_and_data(name)
    sens = swimkit.sensitivity(model, data)
    close({k: v / sens.scale[k] for k, v in sens.first.items()}, autograd_g(model, data))


def test_a_tied_weight_gets_the_sums_over_its_uses():
    """One Parameter read by two layers: swim's h is the sum of what each use gets (the
    h of both weights of an untied twin), g autograd's gradient of the loss with respect
    to the shared parameter, both in SWIM's units."""
    model, data = tied_model(), tied_batches()
    sens = swimkit.sensitivity(model, data)
    assert sens.names == ["a.weight", "head.weight"]
    twin = TiedMLP()
    twin.b.weight = nn.Parameter(torch.empty_like(model.a.weight))
    twin.load_state_dict(model.state_dict())
    untied = swimkit.sensitivity(twin.eval(), data)
    assert untied.names == ["a.weight", "b.weight", "head.weight"]
    close({"a.weight": sens.second["a.weight"]},
          {"a.weight": untied.second["a.weight"] + untied.second["b.weight"]})
    close({"a.weight": sens.first["a.weight"]},
          {"a.weight": untied.first["a.weight"] + untied.first["b.weight"]})
    close({k: v / sens.scale[k] for k, v in sens.first.items()}, autograd_g(model, data))
    assert not torch.allclose(sens.second["a.weight"], untied.second["a.weight"])


class Cube(nn.Module):
    """A layer swimkit has no rule for: y = x^3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x * x


def cube_rule(ctx, s):
    """S only: S_x = S_y (3 x^2)^2."""
    return ctx.to_input(s * (3 * ctx.value(ctx.input_node).square()).square())


def cube_rule_with_gradient(ctx, s):
    """S and the gradient g_x = g_y 3 x^2."""
    slope = 3 * ctx.value(ctx.input_node).square()
    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(ctx.grad * slope))
    return ctx.to_input(s * slope.square())


@pytest.fixture()
def cube_net():
    torch.manual_seed(2)
    yield nn.Sequential(nn.Linear(6, 8), Cube(), nn.Linear(8, 4)).eval()
    if rule_registry.entry_of(Cube) is not None:
        rule_registry.remove_rule(Cube)


def test_an_outside_rule_without_the_gradient_takes_g_from_autograd(cube_net):
    """An S-only rule from outside makes g come from autograd, with the same results."""
    gen = torch.Generator().manual_seed(3)
    data = [(torch.randn(5, 6, generator=gen) * 0.5, torch.randint(0, 4, (5,), generator=gen))
            for _ in range(2)]
    weights = swimkit.device_weights(cube_net)
    swimkit.register_rule(Cube, cube_rule)
    assert not CurvaturePass(cube_net, trace(cube_net), weights).carries_gradient
    by_autograd = swimkit.sensitivity(cube_net, data)
    swimkit.register_rule(Cube, cube_rule_with_gradient, replace=True, gradient=True)
    assert CurvaturePass(cube_net, trace(cube_net), weights).carries_gradient
    one_sweep = swimkit.sensitivity(cube_net, data)
    close(by_autograd.second, one_sweep.second)
    close(by_autograd.first, one_sweep.first)
    close({k: v / one_sweep.scale[k] for k, v in one_sweep.first.items()},
          autograd_g(cube_net, data))


# --- the pass's batch --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_the_results_do_not_depend_on_the_pass_batch(name):
    """The pass batch changes h and g only by float rounding."""
    model, data = model_and_data(name, sizes=(10, 10, 7))
    chosen = swimkit.sensitivity(model, data)
    for batch in (3, 8, 64):
        other = swimkit.sensitivity(model, data, SensitivitySettings(batch_size=batch))
        close(other.second, chosen.second)
        close(other.first, chosen.first)
        assert other.samples == chosen.samples == 27


def test_the_pass_runs_at_the_batch_chosen_per_model_or_given(monkeypatch):
    """The pass regroups its images at pass_batch_size's choice, or at the batch given
    (as a keyword override, or in the settings)."""
    sizes = []

    def spy(chunks, size):
        sizes.append(size)
        return regrouped(chunks, size)

    monkeypatch.setattr(swim_graph, "regrouped", spy)
    model, data = model_and_data("lenet")
    swimkit.sensitivity(model, data)
    swimkit.sensitivity(model, data, batch_size=4)
    swimkit.sensitivity(model, data, SensitivitySettings(batch_size=8))
    swimkit.sensitivity(model, data, SensitivitySettings(batch_size=8), batch_size=3)
    assert sizes == [pass_batch_size(model, (1, 28, 28), "cpu"), 4, 8, 3]


def test_a_forward_that_depends_on_the_batch_runs_the_batches_as_given(monkeypatch):
    """A forward that depends on its batch runs the batches as given."""
    torch.manual_seed(0)
    model = swimkit.build_model("qlenet", output_range="batch").eval()
    assert depends_on_batch(model)
    monkeypatch.setattr(swim_graph, "regrouped", lambda chunks, size: pytest.fail("regrouped"))
    _, data = model_and_data("lenet")
    swimkit.sensitivity(model, data, batch_size=4)
