"""The ggn, hutchinson and fisher engines against explicit torch.func references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tied import tied_batches, tied_model
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev
from toys import toy_problem

import swimkit
from swimkit.mapping import device_weights, perturbed
from swimkit.sensitivity.exact import fisher_diagonal, ggn_diagonal, hutchinson_diagonal

DTYPE = torch.float64
# torch.func.hessian's forward mode loads torch's jit-scripted decompositions.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script:FutureWarning")


# ---------------------------------------------------------------------------------------
# Models and data


class ResidualBN(nn.Module):
    """conv-bn-relu-conv-bn + skip, relu, average pooling, linear (batch norm in eval)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)) + x)
        return self.fc(self.pool(out).flatten(1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 4)
    )


def residual_bn() -> nn.Module:
    model = ResidualBN()
    for bn in (model.bn1, model.bn2):  # non-trivial running statistics and affine terms
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return model


def tanh_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4))


INPUTS = {mlp: (6,), cnn: (1, 8, 8), residual_bn: (2, 4, 4), tanh_mlp: (5,)}


def build(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory().to(DTYPE).eval()


def data(factory, n: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *INPUTS[factory], generator=gen, dtype=DTYPE)
    classes = {mlp: 5, tanh_mlp: 4}.get(factory, 4)
    return x, torch.randint(0, classes, (n,), generator=gen)


# ---------------------------------------------------------------------------------------
# References (plain models: the effective weight is the parameter)


def plain_offsets(model: nn.Module, x: Tensor):
    """(logits of flat offsets on every device weight, split flat -> dict, zero offsets)."""
    names = list(device_weights(model))
    base = {n: model.get_parameter(n).detach() for n in names}
    sizes = [base[n].numel() for n in names]

    def split(flat: Tensor) -> dict[str, Tensor]:
        return {n: p.view(base[n].shape) for n, p in zip(names, flat.split(sizes), strict=True)}

    def logits(flat: Tensor) -> Tensor:
        params = {n: base[n] + d for n, d in split(flat).items()}
        return functional_call(model, params, (x,))

    return logits, split, torch.zeros(sum(sizes), dtype=DTYPE)


def exact_hessian(model: nn.Module, x: Tensor, y: Tensor):
    """Full Hessian of the summed loss over all device weights, and the splitter."""
    logits, split, zero = plain_offsets(model, x)
    return hessian(lambda f: F.cross_entropy(logits(f), y, reduction="sum"))(zero), split


def explicit_ggn(logits, zero: Tensor) -> Tensor:
    """diag(sum_n J_n^T (diag(p_n) - p_n p_n^T) J_n), J from jacrev of the batched logits."""
    jac = jacrev(logits)(zero)  # [N, C, P]
    p = torch.softmax(logits(zero), dim=-1).detach()
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nci,ncd,ndi->i", jac, h, jac)


def flat(result: dict[str, Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1) for v in result.values()])


def snapshot(model: nn.Module) -> dict:
    """Everything an engine must leave as it was."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "params": [n for n, _ in model.named_parameters()],
        "hooks": [len(m._forward_hooks) for m in model.modules()],
        "chains": [
            len(m.parametrizations["weight"]) if hasattr(m, "parametrizations") else 0
            for m in model.modules()
        ],
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["params"] == before["params"]
    assert after["hooks"] == before["hooks"]
    assert after["chains"] == before["chains"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    assert all(p.grad is None for p in model.parameters())


def run(engine, model: nn.Module, batches, **options):
    return engine(model, device_weights(model), batches, **options)


# ---------------------------------------------------------------------------------------
# ggn


@pytest.mark.parametrize("factory", [mlp, cnn, residual_bn])
def test_ggn_equals_hessian_diagonal_for_piecewise_linear_nets(factory) -> None:
    """For piecewise-linear nets ggn's h is the exact Hessian diagonal."""
    model = build(factory)
    x, y = data(factory, 6)
    before = snapshot(model)
    second, first, samples = run(ggn_diagonal, model, [(x[:4], y[:4]), (x[4:], y[4:])])
    assert samples == 6
    assert_untouched(model, before)
    hess, split = exact_hessian(model, x, y)
    expected = split(torch.diagonal(hess))
    for k, v in expected.items():
        assert second[k].shape == v.shape
        torch.testing.assert_close(second[k], v, rtol=1e-8, atol=1e-12)


def test_ggn_in_single_precision() -> None:
    """ggn in float32 agrees with the float64 Hessian diagonal."""
    model = build(cnn)
    x, y = data(cnn, 6)
    hess, _ = exact_hessian(model, x, y)
    second, _, _ = run(ggn_diagonal, model.float(), [(x.float(), y)])
    torch.testing.assert_close(flat(second).double(), torch.diagonal(hess), rtol=1e-4, atol=1e-7)


def test_ggn_is_gauss_newton_not_hessian_for_tanh() -> None:
    """With tanh ggn is the Gauss-Newton diagonal, not the Hessian's."""
    model = build(tanh_mlp)
    x, y = data(tanh_mlp, 5)
    second, _, _ = run(ggn_diagonal, model, [(x, y)], class_chunk=3, sample_chunk=2)
    logits, _, zero = plain_offsets(model, x)
    torch.testing.assert_close(flat(second), explicit_ggn(logits, zero), rtol=1e-8, atol=1e-12)
    hess, _ = exact_hessian(model, x, y)
    assert not torch.allclose(flat(second), torch.diagonal(hess), rtol=1e-3)


def test_ggn_chunking_does_not_change_the_result() -> None:
    """Class and sample chunks change no result."""
    model = build(cnn)
    x, y = data(cnn, 7)
    whole = run(ggn_diagonal, model, [(x, y)])[0]
    chunked = run(ggn_diagonal, model, [(x, y)], class_chunk=1, sample_chunk=3)[0]
    torch.testing.assert_close(flat(chunked), flat(whole), rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------
# first (shared by every engine), fisher


@pytest.mark.parametrize("engine", [ggn_diagonal, fisher_diagonal, hutchinson_diagonal])
def test_first_is_the_mean_loss_gradient_summed_over_batches(engine) -> None:
    """Every exact engine's g is the mean-loss gradient of each batch, summed."""
    model = build(residual_bn)
    x, y = data(residual_bn, 7)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    options = {"probes": 2} if engine is hutchinson_diagonal else {}
    _, first, samples = run(engine, model, batches, **options)
    weights = device_weights(model)
    expected = {k: torch.zeros_like(w.value) for k, w in weights.items()}
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        grads = torch.autograd.grad(loss, [w.value for w in weights.values()])
        for k, g in zip(expected, grads, strict=True):
            expected[k] += g
    assert samples == 7
    for k, v in expected.items():
        torch.testing.assert_close(first[k], v, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("factory", [cnn, residual_bn])
def test_fisher_is_the_sum_of_squared_per_sample_gradients(factory) -> None:
    """fisher's h sums the squared per-sample gradients."""
    model = build(factory)
    x, y = data(factory, 5)
    before = snapshot(model)
    second, _, _ = run(fisher_diagonal, model, [(x[:2], y[:2]), (x[2:], y[2:])], sample_chunk=2)
    assert_untouched(model, before)
    weights = device_weights(model)
    expected = {k: torch.zeros_like(w.value) for k, w in weights.items()}
    for n in range(len(x)):
        loss = F.cross_entropy(model(x[n : n + 1]), y[n : n + 1])
        grads = torch.autograd.grad(loss, [w.value for w in weights.values()])
        for k, g in zip(expected, grads, strict=True):
            expected[k] += g.square()
    for k, v in expected.items():
        torch.testing.assert_close(second[k], v, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------
# hutchinson


@pytest.mark.parametrize("factory", [cnn, tanh_mlp])
def test_hutchinson_converges_to_the_hessian_diagonal(factory) -> None:
    """hutchinson's error stays within its variance bound and falls with more probes."""
    model = build(factory)
    x, y = data(factory, 6)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    hessians = [exact_hessian(model, xb, yb)[0] for xb, yb in batches]
    diag = sum(torch.diagonal(h) for h in hessians)
    # Var[v_i (H v)_i] = sum_{j != i} H_ij^2 for Rademacher v, batches independent.
    var_one = sum(h.square().sum(1) - torch.diagonal(h).square() for h in hessians)
    errors = {}
    for probes in (100, 2000):
        second, _, _ = run(hutchinson_diagonal, model, batches, probes=probes, seed=3)
        error = (flat(second) - diag).abs()
        assert torch.all(error <= 5 * (var_one / probes).sqrt() + 1e-10)
        errors[probes] = error.mean()
    assert errors[2000] < errors[100] / 2


def test_hutchinson_is_reproducible_by_seed() -> None:
    """hutchinson is reproducible by seed, whatever its probe chunks."""
    model = build(cnn)
    x, y = data(cnn, 4)
    before = snapshot(model)
    a = run(hutchinson_diagonal, model, [(x, y)], probes=5, seed=7)[0]
    b = run(hutchinson_diagonal, model, [(x, y)], probes=5, seed=7)[0]
    c = run(hutchinson_diagonal, model, [(x, y)], probes=5, seed=8)[0]
    d = run(hutchinson_diagonal, model, [(x, y)], probes=5, seed=7, probe_chunk=2)[0]
    assert_untouched(model, before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.allclose(flat(a), flat(c))
    torch.testing.assert_close(flat(d), flat(a), rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------
# Dispatcher, quantized models, options


@pytest.mark.parametrize("engine", ["ggn", "fisher", "hutchinson"])
def test_dispatcher_normalises_the_raw_outputs(engine) -> None:
    """sensitivity() turns an engine's raw output into SWIM's units and restores
    training mode."""
    model = build(cnn).train()
    x, y = data(cnn, 4)
    options = {"probes": 3, "seed": 1} if engine == "hutchinson" else {}
    result = swimkit.sensitivity(model, [(x, y)], engine=engine, options=options)
    assert model.training and result.engine == engine and result.samples == 4
    raw_engine = {"ggn": ggn_diagonal, "fisher": fisher_diagonal,
                  "hutchinson": hutchinson_diagonal}[engine]
    second, first, _ = run(raw_engine, model.eval(), [(x, y)], **options)
    for k, w in device_weights(model).items():
        s = w.value.detach().abs().amax()
        torch.testing.assert_close(result.scale[k], s)
        torch.testing.assert_close(result.second[k], second[k] * s**2)
        torch.testing.assert_close(result.first[k], first[k] * s)


@pytest.mark.parametrize("engine", [ggn_diagonal, fisher_diagonal, hutchinson_diagonal])
def test_quantized_weights_are_differentiated_at_their_effective_value(engine) -> None:
    """A quantized model is differentiated at its quantized weights."""
    quantized = swimkit.quantize(build(residual_bn), 4, outputs=False)
    plain = build(residual_bn)
    with torch.no_grad():  # the plain twin holds the quantized weights and biases
        for name, twin in plain.named_modules():
            if isinstance(twin, nn.Conv2d | nn.Linear):
                layer = quantized.get_submodule(name)
                for attr in ("weight", "bias"):
                    if getattr(twin, attr) is not None:
                        getattr(twin, attr).copy_(getattr(layer, attr))
        assert not torch.equal(quantized.fc.parametrizations.weight.original, plain.fc.weight)
    x, y = data(residual_bn, 5)
    options = {"probes": 4} if engine is hutchinson_diagonal else {}
    before = snapshot(quantized)
    got = run(engine, quantized, [(x, y)], **options)
    assert_untouched(quantized, before)
    expected = run(engine, plain, [(x, y)], **options)
    for got_part, expected_part in zip(got[:2], expected[:2], strict=True):
        torch.testing.assert_close(flat(got_part), flat(expected_part), rtol=1e-9, atol=1e-12)


def test_quantized_outputs_keep_their_whole_batch_range() -> None:
    # Uncalibrated output quantizers take max|y| over the batch: the per-sample pullbacks
    # of ggn must still see the batched forward.
    """Per-sample pullbacks see the batch's output range."""
    model = swimkit.quantize(build(cnn), 4).eval()
    x, y = data(cnn, 6)
    before = snapshot(model)
    second, _, _ = run(ggn_diagonal, model, [(x, y)], sample_chunk=2)
    assert_untouched(model, before)
    weights = device_weights(model)
    shapes = {k: w.value.shape for k, w in weights.items()}
    sizes = [shape.numel() for shape in shapes.values()]
    with perturbed(model, weights) as handle:

        def logits(offsets: Tensor) -> Tensor:
            parts = zip(shapes.items(), offsets.split(sizes), strict=True)
            handle.set({k: d.view(shape) for (k, shape), d in parts})
            try:
                return model(x)  # batched: the quantizers take this batch's range
            finally:
                handle.set(None)

        expected = explicit_ggn(logits, torch.zeros(sum(sizes), dtype=DTYPE))
    torch.testing.assert_close(flat(second), expected, rtol=1e-8, atol=1e-12)
    # One sample alone would get another range than the batch: the pinning matters here.
    layer = model[0]
    with torch.no_grad():
        one_by_one = torch.cat([layer(x[n : n + 1]) for n in range(len(x))])
        assert not torch.allclose(layer(x), one_by_one)


def test_options_are_checked() -> None:
    """Unknown options and bad values are refused by name."""
    model = build(mlp)
    x, y = data(mlp, 2)
    with pytest.raises(swimkit.SwimkitError, match="'probez'.*probes, seed"):
        run(hutchinson_diagonal, model, [(x, y)], probez=3)
    with pytest.raises(swimkit.SwimkitError, match="'probes'.*class_chunk"):
        swimkit.sensitivity(model, [(x, y)], engine="ggn", options={"probes": 3})
    with pytest.raises(swimkit.SwimkitError, match="probes must be an integer >= 1"):
        run(hutchinson_diagonal, model, [(x, y)], probes=0)
    with pytest.raises(swimkit.SwimkitError, match="class_chunk must be an integer >= 1"):
        run(ggn_diagonal, model, [(x, y)], class_chunk=0)
    with pytest.raises(swimkit.SwimkitError, match="sample_chunk"):
        run(fisher_diagonal, model, [], sample_chunk=2.5)
    with pytest.raises(swimkit.SwimkitError, match="seed must be an integer"):
        run(hutchinson_diagonal, model, [(x, y)], seed="0")
    with pytest.raises(swimkit.SwimkitError, match="no batches"):
        run(fisher_diagonal, model, [])


def test_progress_bar_gives_the_same_numbers(capsys) -> None:
    """A progress bar changes no number."""
    model = build(mlp)
    x, y = data(mlp, 4)
    quiet = run(ggn_diagonal, model, [(x, y)])
    shown = run(ggn_diagonal, model, [(x, y)], progress=True)
    assert all(torch.equal(quiet[0][k], shown[0][k]) for k in quiet[0])
    assert "sensitivity (ggn)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Tied weights, and models the engines cannot map


def test_ggn_of_a_tied_weight_is_the_exact_ggn_of_the_shared_parameter() -> None:
    """One Parameter read by two layers: ggn's h is the GGN diagonal of that parameter
    (cross terms between its uses included), g the loss gradient, both in SWIM's units."""
    model = tied_model(dtype=DTYPE)
    batches = tied_batches(dtype=DTYPE)
    sens = swimkit.sensitivity(model, batches, "ggn")
    assert sens.names == ["a.weight", "head.weight"]
    names = sens.names
    base = {n: model.get_parameter(n).detach() for n in names}
    sizes = [base[n].numel() for n in names]
    h = torch.zeros(sum(sizes), dtype=DTYPE)
    g = torch.zeros(sum(sizes), dtype=DTYPE)
    for x, y in batches:

        def logits(flat: Tensor, x: Tensor = x) -> Tensor:
            parts = zip(names, flat.split(sizes), strict=True)
            params = {n: base[n] + d.view(base[n].shape) for n, d in parts}
            return functional_call(model, params, (x,))  # ties b.weight to a.weight

        zero = torch.zeros(sum(sizes), dtype=DTYPE)
        h += explicit_ggn(logits, zero)
        g += jacrev(lambda f, x=x, y=y, logits=logits: F.cross_entropy(logits(f), y))(zero)
    for name, part_h, part_g in zip(names, h.split(sizes), g.split(sizes), strict=True):
        scale = base[name].abs().amax()
        torch.testing.assert_close(sens.second[name], part_h.view(base[name].shape) * scale**2,
                                   rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(sens.first[name], part_g.view(base[name].shape) * scale,
                                   rtol=1e-8, atol=1e-12)


class DataDependent(nn.Module):
    """A forward whose control flow depends on the data: torch.func cannot map it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc(x)
        return y * 2 if bool(y.sum() > 0) else y


def test_the_exact_engines_explain_what_they_cannot_map() -> None:
    """A model torch.func cannot transform is one line naming the engine and the way out."""
    _, batches = toy_problem()
    with pytest.raises(swimkit.SwimkitError, match="engine 'ggn' cannot run this model"):
        swimkit.sensitivity(DataDependent(), batches, "ggn")
