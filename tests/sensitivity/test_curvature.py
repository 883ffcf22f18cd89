"""The swim engine: every curvature rule against the squared Jacobian, parity, coverage."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision
from torch import nn

import swimkit
from swimkit.mapping import device_weights
from swimkit.sensitivity.curvature import UnsupportedOperation, _Pass, trace

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
    run = _Pass(model, trace(model), {})
    run.upstream = set(run.nodes)  # ask for S everywhere, the input included
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
    module, shape = OPS[name]
    x = torch.randn(shape)
    y = module(x.clone())
    s_out = torch.rand(y.shape)
    expected = squared_jacobian_backward(lambda t: module(t.clone()), x, s_out)
    got = rule_backward(module, x, s_out)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_cls", [ViewModel, BinaryModel, ChunkModel])
def test_structural_ops_per_operand(model_cls):
    """Fan-out sums per-path S (cross terms dropped); one path per op is exact."""
    model = model_cls()
    x = torch.randn(2, 3, 4, 4)
    y = model(x)
    s_out = torch.rand(y.shape)
    got = rule_backward(model, x, s_out)
    if model_cls is ViewModel or model_cls is ChunkModel:
        expected = squared_jacobian_backward(model, x, s_out)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    else:
        assert got.shape == x.shape and bool((got >= 0).all())


def batch_norm_model():
    bn = nn.BatchNorm2d(3)
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
    """S_W and S_x of conv / linear layers equal the squared-Jacobian contractions."""
    if isinstance(layer, nn.Linear):
        x = torch.randn(3, 4)
    elif isinstance(layer, nn.Conv1d):
        x = torch.randn(2, 4, 9)
    else:
        x = torch.randn(2, layer.in_channels, 6, 6)
    model = nn.Sequential(layer)
    weights = device_weights(model)
    run = _Pass(model, trace(model), weights)
    run.upstream = set(run.nodes)
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


def test_batch_norm_1d_rule():
    bn = nn.BatchNorm1d(5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    model = nn.Sequential(bn.eval())
    x = torch.randn(3, 5)
    s_out = torch.rand(3, 5)
    expected = squared_jacobian_backward(model, x, s_out)
    torch.testing.assert_close(rule_backward(model, x, s_out), expected, rtol=1e-5, atol=1e-6)


def test_batch_norm_rule():
    bn = nn.Sequential(batch_norm_model())
    x = torch.randn(2, 3, 4, 4)
    s_out = torch.rand(2, 3, 4, 4)
    expected = squared_jacobian_backward(bn, x, s_out)
    torch.testing.assert_close(rule_backward(bn, x, s_out), expected, rtol=1e-5, atol=1e-6)


def test_fake_quantizer_is_straight_through():
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
        (lambda: torchvision.models.vgg11_bn(num_classes=10), 32),
        (lambda: torchvision.models.mobilenet_v2(num_classes=10), 32),
    ],
    ids=["resnet18", "vgg11_bn", "mobilenet_v2"],
)
def test_torchvision_models_unmodified(builder, size):
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
    for name, model, shape in small_models:
        batches = [(torch.randn(2, *shape), torch.randint(0, 10, (2,)))]
        sens = swimkit.sensitivity(model, batches)
        assert all(bool(torch.isfinite(h).all()) for h in sens.second.values()), name


def test_quantized_model_uses_quantized_weights():
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
    model = lenet()
    batches = [(torch.rand(3, 1, 28, 28), torch.randint(0, 10, (3,)))]
    sens = swimkit.sensitivity(model, batches, exclude=["conv1", "fc3"])
    assert sens.names == ["conv2.weight", "fc1.weight", "fc2.weight"]
    full = swimkit.sensitivity(model, batches)
    torch.testing.assert_close(sens.second["fc1.weight"], full.second["fc1.weight"])


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SoftmaxOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.log_softmax(self.fc(x), dim=-1)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


@pytest.mark.parametrize(
    "model,needle",
    [
        (GeluNet(), "gelu"),
        (SoftmaxOut(), "log_softmax"),
        (nn.Sequential(nn.Linear(4, 3), nn.GELU()), "GELU"),
    ],
)
def test_unsupported_operation_names_op_and_node(model, needle):
    batches = [(torch.randn(2, 4), torch.randint(0, 3, (2,)))]
    with pytest.raises(UnsupportedOperation) as err:
        swimkit.sensitivity(model, batches)
    message = str(err.value)
    assert needle in message and "graph node" in message and "ggn" in message


def test_untraceable_model_suggests_ggn():
    with pytest.raises(swimkit.SwimkitError, match="ggn"):
        swimkit.sensitivity(Branchy(), [(torch.randn(2, 4), torch.randint(0, 3, (2,)))])


def test_ops_before_the_first_device_layer_need_no_rule():
    """An unsupported op that only touches the input (no device weight upstream) is fine."""
    model = nn.Sequential(nn.GELU(), nn.Linear(4, 3))
    sens = swimkit.sensitivity(model, [(torch.randn(2, 4), torch.randint(0, 3, (2,)))])
    assert sens.names == ["1.weight"]


def test_trace_keeps_graph_nodes_named():
    graph = trace(lenet())
    assert isinstance(graph, fx.Graph)
    assert any(n.op == "call_module" and n.target == "fc1" for n in graph.nodes)


def test_quantizing_an_eval_model_keeps_eval_mode():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    swimkit.quantize(model, 4)
    assert not any(m.training for m in model.modules())


def test_swim_engine_rejects_options():
    with pytest.raises(swimkit.SwimkitError, match="no options"):
        swimkit.sensitivity(lenet(), [(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))],
                            probes=3)
