"""Attention through the swim engine: every rule against its oracle, MHA's device weights,
and check_rule itself."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import swimkit
from swimkit.sensitivity.swim import check_rule

gen = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=gen)


# --- single-term Jacobians: the squared-Jacobian oracle ------------------------------------

ORACLE = {
    "matmul": (torch.matmul, (randn(2, 3, 4), randn(2, 4, 5)), {}),
    "matmul_broadcast": (torch.matmul, (randn(2, 1, 3, 4), randn(3, 4, 2)), {}),
    "matmul_vector": (torch.matmul, (randn(3, 4), randn(4)), {}),
    "operator_matmul": (operator.matmul, (randn(3, 4), randn(4, 2)), {}),
    "method_matmul": ("matmul", (randn(3, 4), randn(4, 2)), {}),
    "bmm": (torch.bmm, (randn(2, 3, 4), randn(2, 4, 5)), {}),
    "mm": (torch.mm, (randn(3, 4), randn(4, 5)), {}),
    "einsum_heads": (lambda a, b: torch.einsum("bhqd,bhkd->bhqk", a, b),
                     (randn(2, 2, 3, 4), randn(2, 2, 5, 4)), {}),
    "einsum_dot": (lambda a, b: torch.einsum("ij,ij->i", a, b), (randn(3, 4), randn(3, 4)), {}),
    "softmax": (torch.softmax, (randn(3, 5),), {"dim": -1}),
    "softmax_fn": (F.softmax, (randn(2, 3, 5),), {"dim": 1}),
    "softmax_method": ("softmax", (randn(3, 5),), {"dim": 0}),
    "softmax_layer": (nn.Softmax(dim=-1), (randn(4, 6),), {}),
    "log_softmax": (F.log_softmax, (randn(3, 5),), {"dim": -1}),
    "log_softmax_layer": (nn.LogSoftmax(dim=1), (randn(3, 5),), {}),
    "masked_fill": (lambda x: x.masked_fill(torch.eye(4, dtype=torch.bool), 0.0),
                    (randn(4, 4),), {}),
    "roll": (lambda x: torch.roll(x, 1, 0), (randn(4, 3),), {}),
    "embedding_add": (lambda x, pos: x + pos, (randn(2, 5, 4), randn(1, 5, 4)), {}),
}


@pytest.mark.parametrize("name", sorted(ORACLE))
def test_rule_equals_the_squared_jacobian(name):
    """Each attention-family rule equals the squared-Jacobian backward of its op."""
    op, inputs, kwargs = ORACLE[name]
    result = check_rule(op, *inputs, **kwargs)
    assert result.ok, str(result)


# --- chained rules: the op written out part by part -------------------------------------------

CAUSAL = torch.ones(5, 6, dtype=torch.bool).tril()
MASK = randn(5, 6)


def written_attention(q, k, v, is_causal=False, attn_mask=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        logits = logits.masked_fill(~CAUSAL, float("-inf"))
    if attn_mask is not None:
        logits = logits + attn_mask
    return torch.softmax(logits, -1) @ v


QKV = (randn(2, 2, 5, 4), randn(2, 2, 6, 4), randn(2, 2, 6, 3))


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True}, {"attn_mask": MASK},
                                    {"scale": 0.3}], ids=["plain", "causal", "mask", "scale"])
def test_fused_attention_equals_attention_written_out(kwargs):
    """Fused scaled dot-product attention gets the S of attention written out op by op."""
    result = check_rule(F.scaled_dot_product_attention, *QKV, against=written_attention,
                        **kwargs)
    assert result.ok, str(result)


def test_a_boolean_mask_is_where_attention_may_look():
    """A boolean mask marks where attention may look, as torch reads it."""
    allowed = CAUSAL.clone()
    result = check_rule(F.scaled_dot_product_attention, *QKV, attn_mask=allowed,
                        against=lambda q, k, v, attn_mask: written_attention(q, k, v, True))
    assert result.ok, str(result)


def test_chained_rules_are_not_the_squared_jacobian_of_the_whole():
    """The oracle of the fused op keeps cross terms the chained rules drop: check_rule says
    where they differ instead of passing."""
    result = check_rule(F.scaled_dot_product_attention, *QKV)
    assert not result.ok and result.error > 1e-3
    assert "differs" in str(result) and str(result.index) in str(result)


class WrittenMHA(nn.Module):
    """nn.MultiheadAttention(batch_first) written out with functional ops."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.mha = mha

    def forward(self, query, key, value):
        m, heads = self.mha, self.mha.num_heads
        wq, wk, wv = m.in_proj_weight.chunk(3)
        bq, bk, bv = m.in_proj_bias.chunk(3)
        n, length, embed = query.shape

        def split(t):
            return t.reshape(n, -1, heads, embed // heads).transpose(1, 2)

        q, k, v = split(F.linear(query, wq, bq)), split(F.linear(key, wk, bk)), split(
            F.linear(value, wv, bv))
        p = torch.softmax((q @ k.transpose(-2, -1)) * (embed // heads) ** -0.5, -1)
        out = (p @ v).transpose(1, 2).reshape(n, length, embed)
        return F.linear(out, m.out_proj.weight, m.out_proj.bias)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_equals_it_written_out(batch_first):
    """nn.MultiheadAttention gets the S of its computation written out."""
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    x, memory = randn(3, 5, 8), randn(3, 7, 8)
    written = WrittenMHA(mha)
    if batch_first:
        result = check_rule(mha, x, memory, memory, output=0, against=written)
    else:
        result = check_rule(mha, x.transpose(0, 1), memory.transpose(0, 1),
                            memory.transpose(0, 1), output=0,
                            against=Transposed(written))
    assert result.ok, str(result)


class Transposed(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, q, k, v):
        return self.inner(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)


class AttentionNet(nn.Module):
    """A tiny self-attention classifier around nn.MultiheadAttention."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


class WrittenNet(nn.Module):
    """The same network with q, k, v and the output projection as four linear layers."""

    def __init__(self, net: AttentionNet):
        super().__init__()
        self.embed, self.head = net.embed, net.head
        self.q, self.k, self.v = (nn.Linear(8, 8) for _ in range(3))
        with torch.no_grad():
            for layer, w, b in zip((self.q, self.k, self.v), net.attn.in_proj_weight.chunk(3),
                                   net.attn.in_proj_bias.chunk(3), strict=True):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        self.out = net.attn.out_proj

    def forward(self, x):
        h = self.embed(x)
        n, length, embed = h.shape

        def split(t):
            return t.reshape(n, length, 2, 4).transpose(1, 2)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        p = torch.softmax((q @ k.transpose(-2, -1)) * 0.5, -1)
        a = self.out((p @ v).transpose(1, 2).reshape(n, length, embed))
        return self.head((h + a).mean(1))


def test_multihead_attention_weights_get_the_sensitivities_of_attention_written_out():
    """MHA's packed and output projections get the sensitivities of the same network
    written out."""
    batches = [(randn(4, 5, 4), torch.randint(0, 3, (4,), generator=gen))]
    net = AttentionNet().eval()
    fused = swimkit.sensitivity(net, batches)
    assert set(fused.names) == {"embed.weight", "attn.in_proj_weight", "attn.out_proj.weight",
                                "head.weight"}
    written = swimkit.sensitivity(WrittenNet(net).eval(), batches)

    def raw(sens, kind, name):  # sensitivities are per normalised weight w / max|w|
        return getattr(sens, kind)[name] / sens.scale[name] ** (2 if kind == "second" else 1)

    pairs = {"embed.weight": "embed.weight", "head.weight": "head.weight",
             "attn.out_proj.weight": "out.weight"}
    for kind in ("second", "first"):
        for name, other in pairs.items():
            torch.testing.assert_close(raw(fused, kind, name), raw(written, kind, other),
                                       rtol=1e-5, atol=1e-8)
        packed = torch.cat([raw(written, kind, f"{p}.weight") for p in "qkv"])
        torch.testing.assert_close(raw(fused, kind, "attn.in_proj_weight"), packed,
                                   rtol=1e-5, atol=1e-8)


def test_multihead_attention_ggn_agrees_on_the_last_layer():
    """On the layer after attention swim equals ggn."""
    batches = [(randn(4, 5, 4), torch.randint(0, 3, (4,), generator=gen))]
    model = AttentionNet().eval()
    swim = swimkit.sensitivity(model, batches)
    ggn = swimkit.sensitivity(model, batches, engine="ggn")
    assert set(swim.names) == set(ggn.names)
    torch.testing.assert_close(swim.second["head.weight"], ggn.second["head.weight"],
                               rtol=1e-4, atol=1e-8)
    for name in swim.names:
        assert bool((swim.second[name] >= 0).all())


# --- check_rule -------------------------------------------------------------------------------


def test_check_rule_refuses_what_it_cannot_check():
    """check_rule needs a floating-point input and, for several outputs, which one."""
    with pytest.raises(swimkit.SwimkitError, match="floating-point example input"):
        check_rule(torch.softmax, torch.arange(4), dim=0)
    with pytest.raises(swimkit.SwimkitError, match="output=N"):
        check_rule(nn.MultiheadAttention(4, 1), randn(2, 4), randn(2, 4), randn(2, 4))


def test_check_rule_leaves_the_callers_layer_alone():
    """check_rule works on a copy of the caller's layer."""
    layer = nn.Softmax(dim=-1)
    mha = nn.MultiheadAttention(4, 1)
    check_rule(mha, randn(2, 4), randn(2, 4), randn(2, 4), output=0)
    assert mha.in_proj_weight.dtype == torch.float32 and layer is not None


def test_an_einsum_that_sums_within_one_operand_is_named():
    """An einsum the rule cannot follow is named before compute."""
    model = nn.Sequential(nn.Linear(4, 4), EinsumSum(), nn.Linear(1, 2))
    batches = [(randn(3, 4), torch.randint(0, 2, (3,), generator=gen))]
    with pytest.raises(swimkit.SwimkitError, match="einsum"):
        swimkit.sensitivity(model, batches)


class EinsumSum(nn.Module):
    def forward(self, x):
        return torch.einsum("bi,bj->b", x, x).unsqueeze(1)


# --- torchvision's Swin: shifted-window attention --------------------------------------------


def shift_mask(height: int, width: int, window: list[int], shift: list[int]) -> torch.Tensor:
    """Swin's mask of a shifted window: -100 between positions from different regions."""
    region = torch.zeros(height, width)
    spans = [(slice(0, -w), slice(-w, -s), slice(-s, None))
             for w, s in zip(window, shift, strict=True)]
    for count, (rows, cols) in enumerate((r, c) for r in spans[0] for c in spans[1]):
        region[rows, cols] = count
    windows = region.view(height // window[0], window[0], width // window[1], window[1])
    windows = windows.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0)


def written_swin(x, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads,
                 shift_size, training, size, padded):
    """shifted_window_attention written op by op for inputs of ``size`` padded to
    ``padded`` (the shapes given, so it traces)."""
    (batch, height, width, channels), (pad_h, pad_w) = size, padded
    (wh, ww), (sh, sw) = window_size, shift_size
    x = F.pad(x, (0, 0, 0, pad_w - width, 0, pad_h - height))
    x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    count = (pad_h // wh) * (pad_w // ww)
    x = x.view(batch, pad_h // wh, wh, pad_w // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch * count, wh * ww, channels)
    qkv = (x @ qkv_weight.transpose(0, 1)).reshape(batch * count, wh * ww, 3, num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    logits = (q * (channels // num_heads) ** -0.5) @ k.transpose(-2, -1)
    logits = logits + relative_position_bias
    mask = shift_mask(pad_h, pad_w, window_size, shift_size)
    logits = (logits.view(batch, count, num_heads, wh * ww, wh * ww)
              + mask.unsqueeze(1).unsqueeze(0)).view(-1, num_heads, wh * ww, wh * ww)
    x = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(batch * count, wh * ww, channels)
    x = (x @ proj_weight.transpose(0, 1)).view(batch, pad_h // wh, pad_w // ww, wh, ww, channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, pad_h, pad_w, channels)
    x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


@pytest.mark.parametrize("size", [(2, 4, 4), (1, 5, 3)], ids=["even", "padded"])
def test_swin_window_attention_equals_it_written_out(size):
    """Pad, shift, windows, projections, biased and masked attention and the way back:
    the rule of the one fx-wrapped function gives what its parts' rules give, and its
    gradient is autograd's."""
    from torchvision.models.swin_transformer import shifted_window_attention

    batch, height, width = size
    channels, heads, window = 4, 2, [2, 2]
    padded = (-(-height // 2) * 2, -(-width // 2) * 2)
    inputs = (randn(batch, height, width, channels), randn(3 * channels, channels),
              randn(channels, channels))
    kwargs = {"relative_position_bias": randn(1, heads, 4, 4), "window_size": window,
              "num_heads": heads, "shift_size": [1, 1], "training": False}
    result = check_rule(shifted_window_attention, *inputs, **kwargs, against=lambda *a, **k:
                        written_swin(*a, **k, size=(batch, height, width, channels),
                                     padded=padded))
    assert result.ok and result.gradient_error is not None, str(result)


def test_swin_v2_cosine_attention_is_refused():
    """Swin V2's cosine attention, which has no rule, is refused by name."""
    from torchvision.models.swin_transformer import shifted_window_attention

    with pytest.raises(swimkit.SwimkitError, match="cosine attention"):
        check_rule(shifted_window_attention, randn(1, 2, 2, 4), randn(12, 4), randn(4, 4),
                   relative_position_bias=torch.zeros(1, 1, 4, 4), window_size=[2, 2],
                   num_heads=1, shift_size=[0, 0], logit_scale=torch.ones(1, 1, 1),
                   training=False)
