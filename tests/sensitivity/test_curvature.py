"""The swim engine: every curvature rule against the squared Jacobian, parity, coverage."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import swimkit
from swimkit.chip import ChipSpec, Placement
from swimkit.mapping import device_weights
from swimkit.sensitivity.swim import CurvaturePass, UnsupportedOperation, out_of_place_layers, trace
from swimkit.sensitivity.swim import registry as rule_registry

torch.manual_seed(0)


class Wrap(nn.Module):
    """A one-operation model: y = op(x), or op(x, other) for binary operations."""

    def __init__(self, op, *extra):
        super().__init__()
        self.op = op
        self.extra = extra

    def forward(self, x):
        return self.op(x, *self.extra)


def squared_jacobian_backward(fn, x, s_out):
    """Reference: S_x[i] = sum_j J[j, i]^2 S_out[j] from the full Jacobian."""
    jac = torch.autograd.functional.jacobian(fn, x)
    jac = jac.reshape(s_out.numel(), x.numel())
    return (jac.square().T @ s_out.reshape(-1)).reshape(x.shape)


def rule_backward(model: nn.Module, x: torch.Tensor, s_out: torch.Tensor) -> torch.Tensor:
    """Run the engine's rules on a small model and return the S reaching its input."""
    run = CurvaturePass(model, trace(model), {}, curvature_at_input=True)
    with out_of_place_layers(model):
        run.forward(x.clone())
        left = run.backward(s_out)
    return left[next(n for n in run.nodes if n.op == "placeholder")]


OPS = {
    "relu": (nn.ReLU(), (2, 3, 5, 5)),
    "relu_fn": (Wrap(F.relu), (2, 3, 5, 5)),
    "relu_inplace": (nn.ReLU(inplace=True), (2, 3, 5, 5)),
    "relu6": (nn.ReLU6(), (2, 3, 5, 5)),
    "hardtanh": (nn.Hardtanh(-0.5, 0.7), (2, 3, 5, 5)),
    "hardtanh_fn": (Wrap(F.hardtanh, -0.3, 0.4), (2, 3, 5, 5)),
    "leaky": (nn.LeakyReLU(0.2), (2, 3, 5, 5)),
    "leaky_fn": (Wrap(F.leaky_relu, 0.1), (2, 3, 5, 5)),
    "maxpool": (nn.MaxPool2d(2), (2, 3, 6, 6)),
    "maxpool_overlap": (nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 7, 7)),
    "maxpool1d": (nn.MaxPool1d(2), (2, 3, 8)),
    "maxpool_fn": (Wrap(F.max_pool2d, 2), (2, 3, 6, 6)),
    "avgpool": (nn.AvgPool2d(2), (2, 3, 6, 6)),
    "avgpool_pad": (nn.AvgPool2d(3, stride=2, padding=1), (2, 3, 7, 7)),
    "avgpool_nopad": (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (1, 2, 7, 7)),
    "avgpool_ceil": (nn.AvgPool2d(2, ceil_mode=True), (1, 2, 5, 5)),
    "avgpool1d": (nn.AvgPool1d(3, stride=2, padding=1), (2, 3, 9)),
    "avgpool_fn": (Wrap(F.avg_pool2d, 2), (2, 3, 6, 6)),
    "adaptive_avg": (nn.AdaptiveAvgPool2d(1), (2, 3, 5, 5)),
    "adaptive_avg_uneven": (nn.AdaptiveAvgPool2d((2, 3)), (1, 2, 5, 7)),
    "adaptive_avg_fn": (Wrap(F.adaptive_avg_pool2d, (1, 1)), (2, 3, 4, 4)),
    "adaptive_avg_unbatched": (nn.AdaptiveAvgPool2d((2, 3)), (2, 5, 7)),
    "adaptive_avg_1d": (nn.AdaptiveAvgPool1d(3), (2, 4, 7)),
    "adaptive_max": (nn.AdaptiveMaxPool2d((2, 2)), (1, 2, 5, 5)),
    "mean": (Wrap(torch.mean, (2, 3)), (2, 3, 4, 4)),
    "flatten": (nn.Flatten(), (2, 3, 4, 4)),
    "flatten_fn": (Wrap(torch.flatten, 1), (2, 3, 4, 4)),
    "dropout_eval": (nn.Dropout(0.5).eval(), (2, 7)),
    "identity": (nn.Identity(), (2, 7)),
    "scale": (Wrap(operator.mul, 3.0), (2, 7)),
    "divide": (Wrap(operator.truediv, 4.0), (2, 7)),
    "slice": (Wrap(operator.getitem, (slice(None), slice(1, 4))), (2, 7)),
    "pad": (Wrap(F.pad, (1, 2)), (2, 3, 5)),
    "tanh": (nn.Tanh(), (2, 7)),
    "tanh_fn": (Wrap(torch.tanh), (2, 7)),
    "sigmoid": (nn.Sigmoid(), (2, 7)),
    "gelu": (nn.GELU(), (2, 7)),
    "gelu_tanh": (nn.GELU(approximate="tanh"), (2, 7)),
    "gelu_fn": (Wrap(F.gelu), (2, 7)),
    "silu": (nn.SiLU(), (2, 7)),
    "silu_inplace": (nn.SiLU(inplace=True), (2, 7)),
    "softplus": (nn.Softplus(beta=2.0), (2, 7)),
    "elu": (nn.ELU(alpha=0.7), (2, 7)),
    "hardswish": (nn.Hardswish(), (2, 7)),
    "mish": (nn.Mish(), (2, 7)),
    "layer_norm": (nn.LayerNorm(7), (3, 7)),
    "layer_norm_2d": (nn.LayerNorm((2, 4)), (3, 2, 4)),
}


class ViewModel(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1).relu()


class BinaryModel(nn.Module):
    """Residual add, broadcast add, subtraction, concatenation and a product."""

    def __init__(self):
        super().__init__()
        self.register_buffer("bias", torch.randn(3, 1, 1))
        self.register_buffer("gate", torch.randn(1, 3, 4, 4))

    def forward(self, x):
        a = x.relu()
        b = a + x + self.bias
        c = torch.cat([b, a - x], dim=1)
        return c.flatten(1) * 2.0 + torch.cat([x * self.gate, x], 1).flatten(1)


class ChunkModel(nn.Module):
    def forward(self, x):
        a, b = torch.chunk(x, 2, dim=1)
        return torch.relu(a) + b.mean(dim=(2, 3), keepdim=True)


@pytest.mark.parametrize("name", sorted(OPS))
def test_rule_equals_squared_jacobian(name):
    """Each rule's S equals the squared-Jacobian backward of its op."""
    module, shape = OPS[name]
    if isinstance(module, nn.LayerNorm):
        nn.init.normal_(module.weight)
    x = torch.randn(shape)
    y = module(x.clone())
    s_out = torch.rand(y.shape)
    expected = squared_jacobian_backward(lambda t: module(t.clone()), x, s_out)
    got = rule_backward(module, x, s_out)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def rule_gradients(model: nn.Module, x: torch.Tensor, g_out: torch.Tensor,
                   weights: dict | None = None) -> tuple[torch.Tensor, dict]:
    """The gradient the rules carry beside S to the input and to the device weights of a
    small model, in the sweep the pass runs (the forward without autograd)."""
    run = CurvaturePass(model, trace(model), weights or {}, curvature_at_input=True)
    assert run.carries_gradient
    with out_of_place_layers(model), torch.no_grad():
        y = run.forward(x.clone())
        run.backward(torch.rand(y.shape), g_out)
    return run.grad_left[next(n for n in run.nodes if n.op == "placeholder")], run.g


def autograd_gradient(fn, x: torch.Tensor, g_out: torch.Tensor) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(leaf), leaf, g_out)
    return grad


@pytest.mark.parametrize("name", sorted(OPS))
def test_rule_carries_the_gradient(name):
    """Each rule's gradient equals autograd's."""
    module, shape = OPS[name]
    x = torch.randn(shape)
    g_out = torch.randn(module(x.clone()).shape)
    expected = autograd_gradient(lambda t: module(t.clone()), x, g_out)
    torch.testing.assert_close(rule_gradients(module, x, g_out)[0], expected, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("model_cls", [ViewModel, ChunkModel, BinaryModel])
def test_structural_ops_carry_the_gradient(model_cls):
    """Views, chunks and binary ops carry autograd's gradient."""
    model = model_cls()
    x = torch.randn(2, 3, 4, 4)
    g_out = torch.randn(model(x).shape)
    torch.testing.assert_close(rule_gradients(model, x, g_out)[0],
                               autograd_gradient(model, x, g_out), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_cls", [ViewModel, ChunkModel])
def test_single_path_structural_ops_are_exact(model_cls):
    """Structural ops on one path give the exact squared Jacobian."""
    model = model_cls()
    x = torch.randn(2, 3, 4, 4)
    s_out = torch.rand(model(x).shape)
    expected = squared_jacobian_backward(model, x, s_out)
    torch.testing.assert_close(rule_backward(model, x, s_out), expected, rtol=1e-5, atol=1e-6)


def test_fan_out_sums_the_squared_jacobian_of_every_path():
    """S flows to each operand with the cross terms dropped: the sum, over the six paths
    from x to the output, of each path's own squared-Jacobian backward."""
    model = BinaryModel()
    x = torch.randn(2, 3, 4, 4)
    s_out = torch.rand(model(x).shape)

    def through(relu_in, add_in, sub_relu, sub_in, gate_in, cat_in):
        b = relu_in.relu() + add_in + model.bias
        c = torch.cat([b, sub_relu.relu() - sub_in], dim=1)
        return c.flatten(1) * 2.0 + torch.cat([gate_in * model.gate, cat_in], 1).flatten(1)

    def path(i):
        return lambda t: through(*[t if j == i else x for j in range(6)])

    expected = sum(squared_jacobian_backward(path(i), x, s_out) for i in range(6))
    torch.testing.assert_close(rule_backward(model, x, s_out), expected, rtol=1e-5, atol=1e-6)


def batch_norm_model(channels: int = 3):
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    return bn.eval()


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
        nn.Conv2d(4, 5, 3, padding="same"),
        nn.Conv1d(4, 5, 3, stride=2, padding=1),
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        nn.Linear(4, 5),
    ],
    ids=["conv", "conv_strided_dilated_grouped", "depthwise", "same", "conv1d", "convT", "linear"],
)
def test_weight_layers_match_squared_jacobian(layer):
    """S_W and S_x of conv / linear layers equal the squared-Jacobian contractions, and the
    gradients they carry autograd's."""
    if isinstance(layer, nn.Linear):
        x = torch.randn(3, 4)
    elif isinstance(layer, nn.Conv1d):
        x = torch.randn(2, 4, 9)
    else:
        x = torch.randn(2, layer.in_channels, 6, 6)
    model = nn.Sequential(layer)
    weights = device_weights(model)
    run = CurvaturePass(model, trace(model), weights, curvature_at_input=True)
    y = run.forward(x.clone())
    s_out = torch.rand(y.shape)
    expected_w = squared_jacobian_backward(
        lambda w: torch.func.functional_call(layer, {"weight": w}, (x,)),
        layer.weight.detach(),
        s_out,
    )
    expected_x = squared_jacobian_backward(layer, x, s_out)
    got_x = rule_backward(model, x, s_out)
    run.backward(s_out)
    torch.testing.assert_close(run.h["0.weight"], expected_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_x, expected_x, rtol=1e-5, atol=1e-6)
    g_out = torch.randn(y.shape)
    got_x, got_w = rule_gradients(model, x, g_out, weights)
    leaves = (x.clone().requires_grad_(True), layer.weight.detach().clone().requires_grad_(True))
    out = torch.func.functional_call(layer, {"weight": leaves[1]}, (leaves[0],))
    expected_x, expected_w = torch.autograd.grad(out, leaves, g_out)
    torch.testing.assert_close(got_x, expected_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w["0.weight"], expected_w, rtol=1e-5, atol=1e-6)


def test_batch_norm_1d_rule():
    """BatchNorm1d in eval mode is its squared affine map."""
    bn = nn.BatchNorm1d(5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    model = nn.Sequential(bn.eval())
    x = torch.randn(3, 5)
    s_out = torch.rand(3, 5)
    expected = squared_jacobian_backward(model, x, s_out)
    torch.testing.assert_close(rule_backward(model, x, s_out), expected, rtol=1e-5, atol=1e-6)


def test_batch_norm_rule():
    """BatchNorm2d in eval mode is its squared affine map."""
    bn = nn.Sequential(batch_norm_model())
    x = torch.randn(2, 3, 4, 4)
    s_out = torch.rand(2, 3, 4, 4)
    expected = squared_jacobian_backward(bn, x, s_out)
    torch.testing.assert_close(rule_backward(bn, x, s_out), expected, rtol=1e-5, atol=1e-6)


def test_fake_quantizer_is_straight_through():
    """The weight quantizer passes S straight through."""
    model = nn.Sequential(swimkit.FakeQuantize(4), nn.ReLU())
    x = torch.randn(2, 5)
    s_out = torch.rand(2, 5)
    got = rule_backward(model, x, s_out)
    y = model[0](x)
    torch.testing.assert_close(got, s_out * (y > 0))


# --- whole models -----------------------------------------------------------------------


def lenet():
    return swimkit.models.LeNet()


def test_parity_with_reference_fixture(reference):
    """h, g and S of the stored SWIM reference run on LeNet are reproduced."""
    model = lenet()
    model.load_state_dict(reference["state_dict"])
    sens = swimkit.sensitivity(model, [(reference["x"], reference["y"])], engine="swim")
    for name in reference["h"]:
        for ours, key in ((sens.second, "h"), (sens.first, "g"), (sens.combined, "S")):
            ref = reference[key][name]
            rel = (ours[name] - ref).norm() / ref.norm()
            assert rel < 1e-4, (name, key, float(rel))
            torch.testing.assert_close(ours[name], ref, rtol=1e-4, atol=1e-4 * ref.abs().max())
        torch.testing.assert_close(sens.scale[name], reference["scale"][name])


def test_single_linear_layer_is_exact():
    """For one linear layer the diagonal recursion is the exact GGN (= Hessian) diagonal."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    batches = [(torch.randn(5, 3, 2, 2), torch.randint(0, 4, (5,))) for _ in range(2)]
    swim = swimkit.sensitivity(model, batches, engine="swim")
    ggn = swimkit.sensitivity(model, batches, engine="ggn")
    torch.testing.assert_close(
        swim.second["1.weight"], ggn.second["1.weight"], rtol=1e-4, atol=1e-7
    )
    torch.testing.assert_close(swim.first["1.weight"], ggn.first["1.weight"], rtol=1e-5, atol=1e-7)


def test_first_derivative_is_mean_loss_gradient_summed_over_batches():
    """g is the mean-loss gradient of each batch, summed, in SWIM's units."""
    model = lenet()
    batches = [(torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))) for _ in range(3)]
    sens = swimkit.sensitivity(model, batches)
    model.zero_grad()
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    scale = model.fc1.weight.detach().abs().max()
    torch.testing.assert_close(sens.first["fc1.weight"], model.fc1.weight.grad * scale)
    assert sens.samples == 12


@pytest.mark.parametrize(
    "builder,size",
    [
        (lambda: torchvision.models.resnet18(num_classes=10), 32),
        pytest.param(lambda: torchvision.models.vgg11_bn(num_classes=10), 32,
                     marks=pytest.mark.slow),
        (lambda: torchvision.models.mobilenet_v2(num_classes=10), 32),
    ],
    ids=["resnet18", "vgg11_bn", "mobilenet_v2"],
)
def test_torchvision_models_unmodified(builder, size):
    """torchvision models as written get finite, non-negative h and are left as they
    were."""
    model = builder()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(2, 3, size, size), torch.randint(0, 10, (2,)))]
    sens = swimkit.sensitivity(model, batches)
    names = device_weights(model)
    assert set(sens.names) == set(names)
    for name, h in sens.second.items():
        assert h.shape == names[name].value.shape
        assert bool((h >= 0).all()) and bool(torch.isfinite(h).all())
    assert sum(float(h.sum()) for h in sens.second.values()) > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(isinstance(m, nn.ReLU) for m in model.modules() if type(m).__name__ == "ReLU")


def test_swimkit_models_and_quantized(small_models):
    """swimkit's models, float and quantized, get finite h."""
    for name, model, shape in small_models:
        batches = [(torch.randn(2, *shape), torch.randint(0, 10, (2,)))]
        sens = swimkit.sensitivity(model, batches)
        assert all(bool(torch.isfinite(h).all()) for h in sens.second.values()), name


def test_quantized_model_uses_quantized_weights():
    """h of a quantized layer is taken at its quantized weights."""
    model = swimkit.quantize(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), 2)
    model.train()
    x = torch.randn(8, 3, 2, 2)
    model(x)  # calibrates the output range
    batches = [(x, torch.randint(0, 4, (8,)))]
    sens = swimkit.sensitivity(model, batches)
    layer = model[1]
    q_weight = layer.weight.detach()
    assert not torch.equal(q_weight, layer.parametrizations.weight.original)
    model.eval()
    hidden = x.flatten(1)
    logits = model(x)
    p = logits.softmax(-1)
    expected = (p * (1 - p)).T @ hidden.square() * q_weight.abs().max() ** 2
    torch.testing.assert_close(sens.second["1.weight"], expected, rtol=1e-5, atol=1e-7)


def test_layers_can_stay_digital():
    """Layers the chip keeps digital get no sensitivity and change no other."""
    model = lenet()
    batches = [(torch.rand(3, 1, 28, 28), torch.randint(0, 10, (3,)))]
    chip = ChipSpec(placement=Placement(exclude=["conv1", "fc3"]))
    sens = swimkit.sensitivity(model, batches, chip=chip)
    assert sens.names == ["conv2.weight", "fc1.weight", "fc2.weight"]
    full = swimkit.sensitivity(model, batches)
    torch.testing.assert_close(sens.second["fc1.weight"], full.second["fc1.weight"])


class LogSumExpOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.fc(x)
        return y - torch.logsumexp(y, dim=-1, keepdim=True)


class TwoUnknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.act = nn.PReLU()
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(torch.cumsum(self.act(self.fc1(x)), dim=-1))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class NoBatches:
    """A loader that fails if anything reads it: the check must come before any compute."""

    def __iter__(self):
        raise AssertionError("a batch was read before the graph was checked")


@pytest.mark.parametrize(
    "model,needles",
    [
        (LogSumExpOut(), ["logsumexp"]),
        (nn.Sequential(nn.Linear(4, 3), nn.PReLU()), ["PReLU"]),
        (TwoUnknown(), ["PReLU", "cumsum"]),
    ],
)
def test_unsupported_operations_all_named_before_any_compute(model, needles):
    """Every op without a rule is named at once, before any batch is read."""
    with pytest.raises(UnsupportedOperation) as err:
        swimkit.sensitivity(model, NoBatches())
    message = str(err.value)
    assert all(n in message for n in needles)
    assert "graph node" in message and "ggn" in message and "register_rule" in message


def test_untraceable_model_suggests_ggn():
    """A model that cannot be traced points to the ggn engine."""
    with pytest.raises(swimkit.SwimkitError, match="ggn"):
        swimkit.sensitivity(Branchy(), [(torch.randn(2, 4), torch.randint(0, 3, (2,)))])


def test_ops_before_the_first_device_layer_need_no_rule():
    """An unsupported op that only touches the input (no device weight upstream) is fine."""
    model = nn.Sequential(nn.PReLU(), nn.Linear(4, 3))
    sens = swimkit.sensitivity(model, [(torch.randn(2, 4), torch.randint(0, 3, (2,)))])
    assert sens.names == ["1.weight"]


def test_trace_keeps_graph_nodes_named():
    """The trace keeps layers whole and named."""
    graph = trace(lenet())
    calls = [(n.op, n.target) for n in graph.nodes if n.op != "placeholder"]
    assert ("call_module", "fc1") in calls and ("call_module", "conv2") in calls
    assert ("call_function", F.max_pool2d) in calls


def test_quantizing_an_eval_model_keeps_eval_mode():
    """Quantizing leaves an eval model in eval mode."""
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    swimkit.quantize(model, 4)
    assert not any(m.training for m in model.modules())


def test_swim_engine_rejects_options():
    """The swim engine declares no option: one given is refused by name."""
    with pytest.raises(swimkit.SwimkitError,
                       match="engine 'swim' has no option 'probes'; its options: none"):
        swimkit.sensitivity(lenet(), [(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))],
                            options={"probes": 3})


# --- in-place operations --------------------------------------------------------------------


class InPlaceRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc1(x)
        y.relu_()
        return self.fc2(y)


class OutOfPlaceRelu(InPlaceRelu):
    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class InPlaceThroughView(InPlaceRelu):
    def forward(self, x):
        y = self.fc1(x)
        z = y.view(-1)
        z.relu_()
        return self.fc2(y)


class InPlaceOnBuffer(InPlaceRelu):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.zeros(6))

    def forward(self, x):
        self.shift.add_(x.mean(0))
        return self.fc2(self.fc1(x + self.shift))


class InPlaceOnInput(InPlaceRelu):
    def forward(self, x):
        x.mul_(2.0)
        return self.fc2(self.fc1(x))


class TimesTwo(InPlaceRelu):
    def forward(self, x):
        return self.fc2(self.fc1(x * 2.0))


def test_in_place_op_on_the_input_runs_out_of_place():
    """An in-place op on the model's input does not write the caller's tensor."""
    torch.manual_seed(1)
    model, twin = InPlaceOnInput(), TimesTwo()
    twin.load_state_dict(model.state_dict())
    batches = mlp_batches()
    kept = [x.clone() for x, _ in batches]
    got, want = swimkit.sensitivity(model, batches), swimkit.sensitivity(twin, mlp_batches())
    torch.testing.assert_close(got.second["fc1.weight"], want.second["fc1.weight"])
    assert all(torch.equal(x, k) for (x, _), k in zip(batches, kept, strict=True))


def mlp_batches():
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(2)]


def test_in_place_relu_gives_the_sensitivities_of_the_network_it_computes():
    """In-place ReLUs give the sensitivities of the network they compute."""
    torch.manual_seed(0)
    in_place = InPlaceRelu()
    twin = OutOfPlaceRelu()
    twin.load_state_dict(in_place.state_dict())
    got = swimkit.sensitivity(in_place, mlp_batches())
    want = swimkit.sensitivity(twin, mlp_batches())
    ggn = swimkit.sensitivity(twin, mlp_batches(), engine="ggn")
    for name in want.names:
        torch.testing.assert_close(got.second[name], want.second[name])
        torch.testing.assert_close(got.first[name], want.first[name])
        torch.testing.assert_close(got.first[name], ggn.first[name], rtol=1e-5, atol=1e-7)
    # the last layer's diagonal is exact: equal to the GGN's
    torch.testing.assert_close(got.second["fc2.weight"], ggn.second["fc2.weight"],
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("model_cls,needle", [(InPlaceThroughView, "view"),
                                              (InPlaceOnBuffer, "buffer 'shift'")])
def test_in_place_ops_that_cannot_be_followed_are_refused_before_compute(model_cls, needle):
    """In-place writes through views or into buffers are refused before compute."""
    with pytest.raises(UnsupportedOperation, match=needle):
        swimkit.sensitivity(model_cls(), NoBatches())


# --- rules from outside ---------------------------------------------------------------------


class Square(nn.Module):
    """A layer swimkit has no rule for: y = x^2 (elementwise), written as a custom module."""

    def forward(self, x):
        return torch.square(x)


def test_register_elementwise_in_one_line(clean_rules):
    """register_elementwise adds an op in one line, its rule equal to the squared
    Jacobian."""
    model = nn.Sequential(nn.Linear(4, 5), Wrap(torch.erf), nn.Linear(5, 3))
    with pytest.raises(UnsupportedOperation, match="erf"):
        swimkit.sensitivity(model, [(torch.randn(3, 4), torch.randint(0, 3, (3,)))])
    swimkit.register_elementwise(torch.erf)
    x = torch.randn(2, 7)
    s_out = torch.rand(2, 7)
    erf = Wrap(torch.erf)
    torch.testing.assert_close(rule_backward(erf, x, s_out),
                               squared_jacobian_backward(erf, x, s_out), rtol=1e-5, atol=1e-6)
    sens = swimkit.sensitivity(model, [(torch.randn(3, 4), torch.randint(0, 3, (3,)))])
    assert all(bool(torch.isfinite(h).all()) for h in sens.second.values())


def test_register_rule_for_a_custom_layer(clean_rules):
    """register_rule adds a layer type (kept whole by the tracer); a target of no kind
    is refused."""
    def square_rule(ctx, s):
        x = ctx.value(ctx.input_node)
        return ctx.to_input(s * (2 * x).square())

    swimkit.register_rule(Square, square_rule)
    assert Square in rule_registry.leaf_types()
    x = torch.randn(2, 7)
    s_out = torch.rand(2, 7)
    model = nn.Sequential(Square())  # the root is always traced into; its children are not
    torch.testing.assert_close(rule_backward(model, x, s_out),
                               squared_jacobian_backward(model, x, s_out))
    with pytest.raises(swimkit.SwimkitError, match="module type, a function or a tensor method"):
        swimkit.register_rule(3, square_rule)


class TransformerMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = x + self.down(F.gelu(self.up(self.norm(x))))
        return self.head(x.mean(dim=1))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU(inplace=True)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.expand(F.silu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x * gate, 1), 1))


@pytest.mark.parametrize("model_cls,shape", [(TransformerMLP, (4, 5, 8)),
                                             (SqueezeExcite, (4, 3, 6, 6))])
def test_transformer_and_efficientnet_style_blocks_run(model_cls, shape):
    """Transformer MLP and squeeze-excite blocks get finite sensitivities."""
    torch.manual_seed(0)
    model = model_cls().eval()
    batches = [(torch.randn(shape), torch.randint(0, 3, (shape[0],)))]
    swim = swimkit.sensitivity(model, batches)
    ggn = swimkit.sensitivity(model, batches, engine="ggn")
    for name in swim.names:
        assert bool(torch.isfinite(swim.second[name]).all())
        assert bool((swim.second[name] >= 0).all())
        torch.testing.assert_close(swim.first[name], ggn.first[name], rtol=1e-4, atol=1e-6)
    # the head sees the logits through no other layer: its diagonal is exact
    torch.testing.assert_close(swim.second["head.weight"], ggn.second["head.weight"],
                               rtol=1e-4, atol=1e-7)


# --- S updated in place ------------------------------------------------------------------------


class FanOut(nn.Module):
    """S meets itself: a value used by three ops, a residual add, the same value twice in
    one add, and a stack and a concatenation whose VJPs hand out views of one tensor."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = batch_norm_model(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = batch_norm_model(4)
        self.head = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        a = F.relu(self.bn2(self.conv2(y)))
        z = torch.relu(a + torch.tanh(y)) + y
        z = torch.stack([F.relu(z), torch.sigmoid(z)]).sum(0)
        w = torch.cat([z, z * 0.5], 1)
        return self.head(torch.flatten(F.avg_pool2d(w + w, 2), 1))


def test_updating_s_in_place_changes_no_result(monkeypatch):
    """Rules write into S only where nothing else holds it: the same h and g as a pass
    that never writes in place, on a model where S is shared in every way it can be."""
    model = FanOut().eval()
    gen = torch.Generator().manual_seed(4)
    data = [(torch.randn(3, 3, 4, 4, generator=gen), torch.randint(0, 5, (3,), generator=gen))
            for _ in range(2)]
    written = []
    writable = CurvaturePass.writable

    def spy(self, s, *others):
        written.append(writable(self, s, *others))
        return written[-1]

    monkeypatch.setattr(CurvaturePass, "writable", spy)
    in_place = swimkit.sensitivity(model, data)
    assert any(written) and not all(written)  # both kinds of update happened
    monkeypatch.setattr(CurvaturePass, "writable", lambda self, s, *others: False)
    fresh = swimkit.sensitivity(model, data)
    for name in fresh.names:
        assert torch.equal(in_place.second[name], fresh.second[name]), name
        assert torch.equal(in_place.first[name], fresh.first[name]), name


def test_the_callers_s_is_never_written():
    """The S a caller hands to the pass is never written."""
    model = nn.Sequential(nn.ReLU(), batch_norm_model(3), nn.ReLU()).eval()
    x = torch.randn(2, 3, 4, 4)
    s_out = torch.rand(2, 3, 4, 4)
    kept = s_out.clone()
    rule_backward(model, x, s_out)
    assert torch.equal(s_out, kept)


class Keeper(nn.Module):
    """An op whose rule (registered from outside) keeps the S it hands on."""

    def forward(self, x):
        return x * 1.0


def test_what_an_outside_rule_returns_is_never_written(clean_rules):
    """What a rule from outside returns is never written afterwards."""
    handed = []

    def keeping_rule(ctx, s):
        handed.append((s * 1.0, (s * 1.0).clone()))  # (what it returns, a copy to compare)
        return ctx.to_input(handed[-1][0])

    swimkit.register_rule(Keeper, keeping_rule)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.BatchNorm1d(6).eval(), Keeper(),
                          nn.ReLU(), nn.Linear(6, 3)).eval()
    swimkit.sensitivity(model, [(torch.randn(5, 4), torch.randint(0, 3, (5,)))])
    assert handed and all(torch.equal(returned, copy) for returned, copy in handed)


@pytest.mark.parametrize("op, kwargs, shape", [
    (F.max_pool2d, {"kernel_size": 2}, (2, 3, 6, 6)),
    (F.max_pool2d, {"kernel_size": 2}, (2, 3, 5, 7)),  # floor mode drops the last row
    (F.max_pool2d, {"kernel_size": (2, 3), "stride": (2, 3)}, (1, 2, 4, 6)),
    (nn.MaxPool2d(2), {}, (2, 3, 4, 4)),
    (F.max_pool2d, {"kernel_size": 3, "stride": 1, "padding": 1}, (1, 2, 5, 5)),  # VJP path
], ids=["tiles", "floor", "rectangular", "module", "overlapping"])
def test_max_pool_routes_to_the_first_maximum_with_ties(op, kwargs, shape):
    """Windows full of equal values (as after a ReLU): S and the gradient go where
    autograd's max-pool backward sends them, one position per window."""
    x = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(0)).double()
    result = swimkit.check_rule(op, x, tolerance=1e-12, **kwargs)
    assert result.ok and result.gradient_error is not None, str(result)
