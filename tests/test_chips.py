"""The chip engine: exact fast ops, weights read from slots, several chips per pass, and
the fallbacks (vmap, torch.compile) a user may meet."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import toy_problem

import swimkit
from swimkit import fused
from swimkit.chips import (
    ChipRunner,
    ExactFastOps,
    Slots,
    pool_by_maxima,
    unfused_attention,
)
from swimkit.threads import check_threads


@pytest.mark.parametrize("shape,kernel,stride,ceil", [
    ((2, 3, 8, 8), 2, None, False), ((2, 3, 9, 7), 2, 2, False), ((3, 5, 6), 3, 3, False),
    ((1, 2, 8, 6), (2, 3), (2, 3), True), ((2, 4, 5, 5), 5, 5, False)])
def test_pooling_by_maxima_equals_aten_bit_for_bit(shape, kernel, stride, ceil):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    x.view(-1)[3] = float("nan")
    fast = pool_by_maxima(x, kernel, stride, ceil_mode=ceil)
    expected = F.max_pool2d(x, kernel, stride, ceil_mode=ceil)
    assert fast is not None and fast.shape == expected.shape
    assert torch.equal(fast.nan_to_num(-7.0), expected.nan_to_num(-7.0))
    assert torch.equal(fast.isnan(), expected.isnan())


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2), dict(kernel_size=2, padding=1),
                                    dict(kernel_size=2, dilation=2),
                                    dict(kernel_size=2, return_indices=True),
                                    dict(kernel_size=2, ceil_mode=True)])
def test_pooling_by_maxima_declines_what_it_cannot_do_exactly(kwargs):
    x = torch.randn(1, 2, 7, 7)
    assert pool_by_maxima(x, **kwargs) is None
    with torch.no_grad(), ExactFastOps():  # and the mode hands those to ATen unchanged
        out = F.max_pool2d(x, **kwargs)
    expected = F.max_pool2d(x, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(
        out if isinstance(out, tuple) else (out,),
        expected if isinstance(expected, tuple) else (expected,), strict=True))


def test_lenet_under_the_fast_ops_gives_the_same_logits():
    model = swimkit.build_model("lenet").eval()
    x = torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        plain = model(x)
        with ExactFastOps():
            fast = model(x)
    assert torch.equal(plain, fast)


def _lenet_data(n: int = 64, batch: int = 32):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _chips(values, count: int, scale: float = 0.2):
    gen = torch.Generator().manual_seed(5)
    return [{n: v + scale * v.abs().amax() * torch.randn(v.shape, generator=gen)
             for n, v in values.items()} for _ in range(count)]


def _reference_counts(model, data, chips):
    """What a chip is: the model with its weights replaced, evaluated plainly."""
    counts = []
    for chip in chips:
        copy_ = copy.deepcopy(model)
        with torch.no_grad():
            for name, value in chip.items():
                copy_.get_parameter(name).copy_(value)
        counts.append(sum(int((copy_(x).argmax(-1) == y).sum()) for x, y in data))
    return counts


def test_a_chip_is_the_model_with_its_weights_replaced_and_the_model_is_untouched():
    model = swimkit.build_model("lenet").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    values = {n: w.value.detach() for n, w in swimkit.device_weights(model).items()}
    data, chips = _lenet_data(), _chips(values, 3)
    with ChipRunner(model, data, values) as runner:
        counts = runner.correct(chips)
    assert counts == _reference_counts(model, data, chips)
    assert type(model.conv1) is nn.Conv2d and all(
        torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("model_name", ["lenet", "qlenet"])
def test_several_chips_per_pass_count_exactly_as_one_at_a_time(model_name):
    model = swimkit.build_model(model_name).eval()
    data = _lenet_data()
    if swimkit.quantization.quantization_bits(model):
        model.train()
        model(data[0][0])
        model.eval()
    values = {n: w.value.detach() for n, w in swimkit.device_weights(model).items()}
    chips = _chips(values, 7)
    results = []
    for per_pass in (1, 4):
        with ChipRunner(model, data, values, chips_per_pass=per_pass) as runner:
            results.append(runner.correct(chips))
            assert runner.chips_per_pass == per_pass
    assert results[0] == results[1]


class _Residual(nn.Module):
    """A small conv net with batch norm, a residual block and a pool the fast ops take."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 4 * 4, 10)
        gen = torch.Generator().manual_seed(2)
        for bn in (self.bn0, self.bn1, self.bn2):  # eval statistics that are not 0 and 1
            bn.running_mean.normal_(0, 0.2, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
            bn.weight.data.uniform_(0.5, 1.5, generator=gen)
            bn.bias.data.normal_(0, 0.1, generator=gen)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        return self.head(torch.flatten(F.max_pool2d(x, 2), 1))


def _model_and_data(name: str):
    """An eval-mode model of the zoo (or the residual net) and random batches for it."""
    if name in ("residual", "qresidual"):
        model = _Residual()
        model = swimkit.quantize(model, 6) if name == "qresidual" else model
        shape = (3, 8, 8)
    else:
        model = swimkit.build_model(name, seed=0)
        shape = swimkit.models.model_info(name).input_shape
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(96, *shape, generator=gen)
    y = torch.randint(0, 10, (96,), generator=gen)
    data = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    if swimkit.quantization.quantization_bits(model):  # calibrate the output ranges
        model.train()
        with torch.no_grad():
            model(x)
    return model.eval(), data


@pytest.mark.parametrize("name", ["lenet", "qlenet", "residual", "qresidual", "vit", "qvit"])
def test_fast_chips_count_exactly_as_plain_chips(name):
    """The fast ops only where they route an op, attention on its plain path either way,
    the fused graph where it fuses: every chip's count is the one of the plain run (no
    fast ops)."""
    model, data = _model_and_data(name)
    values = {n: w.value.detach() for n, w in swimkit.device_weights(model).items()}
    chips = _chips(values, 8, scale=0.15)
    with ChipRunner(model, data, values, fast_ops=False) as plain:
        expected = plain.correct(chips)
    with fused.disabled(), ChipRunner(model, data, values) as fast:
        counts = fast.correct(chips)
    with ChipRunner(model, data, values) as fusing:
        fused_counts = fusing.correct(chips)
    assert counts == expected == fused_counts and len(set(counts)) > 1  # they differ, and match
    assert fast.routes_ops == (not name.endswith("vit"))  # the ViT does not pool
    assert not plain.routes_ops and not plain.fused and not fast.fused
    assert fusing.fused == (name != "vit")  # the float ViT has no ReLU, quantizer or pool
    assert not fusing.routes_ops  # every pool of these models is fused


def test_attention_runs_its_plain_path_and_the_switch_is_restored():
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with unfused_attention():
        assert not torch.backends.mha.get_fastpath_enabled()
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    with pytest.raises(RuntimeError), unfused_attention():
        raise RuntimeError("inside")
    assert torch.backends.mha.get_fastpath_enabled() == fastpath


def test_slots_restore_the_class_even_when_the_forward_raises():
    model = swimkit.quantize(swimkit.build_model("lenet"), 4).eval()
    original = type(model.fc1)
    with pytest.raises(RuntimeError), Slots(model, {"fc1.weight": torch.zeros(120, 784)}):
        assert torch.equal(model.fc1.weight, torch.zeros(120, 784))  # the quantizer bypassed
        raise RuntimeError("inside")
    assert type(model.fc1) is original and "_swimkit_slot_weight" not in model.fc1.__dict__
    assert not torch.equal(model.fc1.weight, torch.zeros(120, 784))


class _Item(nn.Module):
    """A model vmap cannot map: it reads a tensor's value in Python."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x) * float(self.fc.weight.abs().amax() > 0)


def test_a_model_vmap_cannot_map_falls_back_to_one_chip_per_pass():
    model = _Item().eval()
    _, batches = toy_problem()
    values = {"fc.weight": model.fc.weight.detach()}
    chips = _chips(values, 3)
    with pytest.warns(UserWarning, match="one chip per pass"), \
            ChipRunner(model, batches, values, chips_per_pass=2) as runner:
        counts = runner.correct(chips)
    with ChipRunner(model, batches, values) as runner:
        assert counts == runner.correct(chips)


def test_compile_that_cannot_run_falls_back_to_eager(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nmore")

    monkeypatch.setattr(torch, "compile", broken)
    model, batches = toy_problem()
    dm = swimkit.DeviceModel(sigma=0.3)
    with pytest.warns(UserWarning, match="torch.compile cannot run here .no compiler here."):
        compiled = swimkit.evaluate(model, batches, dm, samples=3, compile=True)
    assert compiled.meta["compiled"] is False
    assert torch.equal(compiled.accuracies, swimkit.evaluate(model, batches, dm, samples=3)
                       .accuracies)


def test_threads_oversubscribed_warn_and_bad_counts_are_refused(monkeypatch):
    monkeypatch.setattr("swimkit.threads.machine_threads", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert check_threads(None) == 1
    with pytest.warns(UserWarning, match="oversubscribed.*--threads 1"):
        assert check_threads(2) == 2
    with pytest.raises(swimkit.SwimkitError, match="threads must be an integer >= 1"):
        check_threads(0)
    model, batches = toy_problem()
    with pytest.raises(swimkit.SwimkitError, match="chips_per_pass must be an integer >= 1"):
        swimkit.evaluate(model, batches, swimkit.DeviceModel(), chips_per_pass=0)


# --- the evaluation batch size ---------------------------------------------------------------


def test_the_evaluation_batch_follows_the_largest_activation():
    """A power of two whose largest activation is nearest the device's budget: the same
    for a model and its quantized form (weights are not activations), larger on a GPU,
    clamped to the device's range."""
    from swimkit.chips import BATCH_RANGE, evaluation_batch_size, largest_activation_bytes

    lenet = swimkit.build_model("lenet", seed=0)
    assert largest_activation_bytes(lenet, (1, 28, 28)) == 6 * 28 * 28 * 4  # conv1's output
    assert largest_activation_bytes(swimkit.build_model("qlenet", seed=0), (1, 28, 28)) == \
        6 * 28 * 28 * 4
    assert evaluation_batch_size(lenet, (1, 28, 28), "cpu") == 256  # 4 MiB / 18.4 KiB = 223
    assert evaluation_batch_size(lenet, (1, 28, 28), "cuda") == BATCH_RANGE["cuda"][1]
    vit = swimkit.build_model("vit", seed=0)  # attention's q, k, v projection: no layer's output
    assert largest_activation_bytes(vit, (1, 28, 28)) == 17 * 3 * 64 * 4
    assert evaluation_batch_size(vit, (1, 28, 28), "cpu") == 256  # 4 MiB / 12.75 KiB = 321
    wide = nn.Sequential(nn.Conv2d(3, 512, 3, padding=1))
    assert evaluation_batch_size(wide, (3, 64, 64), "cpu") == BATCH_RANGE["cpu"][0]
    narrow = nn.Linear(4, 2)
    assert evaluation_batch_size(narrow, (4,), "cpu") == BATCH_RANGE["cpu"][1]


def test_measuring_activations_leaves_the_model_as_it_was():
    from swimkit.chips import largest_activation_bytes

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert largest_activation_bytes(model, (3,)) == 4 * 4
    assert model.training and all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
