"""Rules of attention: products of two activations, softmax, fused attention, MHA.

- a product of two tensors (``matmul``, ``@``, ``bmm``, ``mm``, a two-operand
  ``einsum``): every Jacobian entry with respect to one operand is one entry of the
  other, so S of an operand is the VJP of the same product with the other squared:
  S_A = S (B^2)^T and S_B = (A^2)^T S for C = A B (cross terms dropped);
- softmax p = softmax(x): S_x = p^2 ((1 - 2p) S + sum p^2 S) along its dim;
  log_softmax: S_x = (1 - 2p) S + p^2 sum S;
- ``F.scaled_dot_product_attention`` (masks, causal, a scale) and
  ``nn.MultiheadAttention`` (its packed q, k, v projection and ``out_proj`` device
  weights): the rules above chained through their parts, so a fused call gives what the
  same attention written out op by op gives;
- torchvision's Swin ``shifted_window_attention``: its moves of pixels into windows and
  back by their VJP, its projections and the windows' attention by the rules above.

Each rule carries the gradient too: the same backward with the operands unsquared and
softmax's own Jacobian (g_x = p (g - sum p g)).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import swin_transformer as swin

from .context import RuleContext, SValue, unsupported, vjp_rule
from .registry import register_own

# --- products of two tensors -------------------------------------------------------------------


def _product_vjp(op: Callable[..., Tensor], values: Sequence[Any], index: int, flow: Tensor,
                 squared: bool) -> Tensor:
    """VJP of ``op`` at ``flow`` with respect to operand ``index``, the other operands
    squared (``squared``: S) or as they are (the gradient)."""
    with torch.enable_grad():
        leaf = values[index].detach().requires_grad_(True)
        args = [leaf if i == index else _power(v, squared) for i, v in enumerate(values)]
        (grad,) = torch.autograd.grad(op(*args), leaf, flow)
    return grad


def _power(value: Any, squared: bool) -> Any:
    """A tensor operand squared (for S) or as it is, detached; constants as they are."""
    if not isinstance(value, Tensor):
        return value
    return value.detach().square() if squared else value.detach()


def _product_results(ctx: RuleContext, op: Callable[..., Tensor], nodes: Sequence[Any],
                     values: Sequence[Any], s: Tensor) -> dict[fx.Node, SValue]:
    """S of each operand of a product that needs one (a device weight's accumulated),
    and its gradient sent on (a device weight's reaches its attribute node)."""
    result: dict[fx.Node, SValue] = {}
    grads: dict[fx.Node, SValue] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, fx.Node) or not isinstance(values[i], Tensor):
            continue
        weight_name = ctx.device_weight_name(node)
        if weight_name is None and not ctx.needs(node):
            continue
        if ctx.grad is not None:
            _add_into(grads, node, _product_vjp(op, values, i, ctx.grad, squared=False))
        s_in = _product_vjp(op, values, i, s, squared=True)
        if weight_name is not None:
            ctx.accumulate(weight_name, s_in)
        else:
            _add_into(result, node, s_in)  # the same tensor on both sides: terms add up
    ctx.send_grad(grads)
    return result


def _add_into(found: dict[fx.Node, SValue], node: fx.Node, part: Tensor) -> None:
    found[node] = found[node] + part if node in found else part


def matmul_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """A product of two tensors: S_A = S (B^2)^T, S_B = (A^2)^T S."""
    op = ctx.node.target if ctx.node.op == "call_function" else (
        lambda a, b: getattr(a, str(ctx.node.target))(b))
    return _product_results(ctx, op, ctx.node.args[:2], ctx.args[:2], s)


def _einsum_operands(ctx: RuleContext) -> tuple[str, list[Any], list[Any]]:
    equation = ctx.args[0]
    if len(ctx.args) == 2 and isinstance(ctx.args[1], (list, tuple)):
        return equation, list(ctx.node.args[1]), list(ctx.args[1])
    return equation, list(ctx.node.args[1:]), list(ctx.args[1:])


def _einsum_is_bilinear(equation: str, count: int) -> bool:
    """True when each Jacobian entry is one entry of the other operand: two operands, no
    ellipsis, and no index of one operand summed away without touching the other."""
    if count != 2 or "..." in equation or "->" not in equation:
        return False
    inputs, output = equation.replace(" ", "").split("->")
    parts = inputs.split(",")
    if len(parts) != 2:
        return False
    for mine, other in (parts, parts[::-1]):
        if any(i not in mine and i not in output for i in other):
            return False
    return True


def einsum_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """A two-operand einsum (the contractions attention uses), as a product."""
    equation, nodes, values = _einsum_operands(ctx)
    if not _einsum_is_bilinear(str(equation), len(values)):
        raise unsupported(ctx.node, f"einsum {equation!r} (the swim engine takes two "
                          "operands with an explicit '->' and no index summed within one)")
    return _product_results(ctx, lambda *ops: torch.einsum(equation, *ops), nodes, values, s)


# --- softmax -----------------------------------------------------------------------------------


def softmax_curvature(p: Tensor, s: Tensor, dim: int) -> Tensor:
    """S_x of p = softmax(x) along ``dim``: p^2 ((1 - 2p) S + sum p^2 S)."""
    p2 = p.square()
    return p2 * ((1 - 2 * p) * s + (p2 * s).sum(dim, keepdim=True))


def softmax_gradient(p: Tensor, g: Tensor, dim: int) -> Tensor:
    """g_x of p = softmax(x) along ``dim``: p (g - sum p g)."""
    return p * (g - (p * g).sum(dim, keepdim=True))


def _softmax_dim(ctx: RuleContext) -> int:
    dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim")
    if dim is None:
        raise unsupported(ctx.node, "softmax without an explicit dim")
    return int(dim)


def softmax_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """Softmax: S_x = p^2 ((1 - 2p) S + sum p^2 S), g_x = p (g - sum p g)."""
    p, dim = ctx.out.to(s.dtype), _softmax_dim(ctx)
    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(softmax_gradient(p, ctx.grad, dim)))
    return ctx.to_input(softmax_curvature(p, s, dim))


def log_softmax_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """Log-softmax: S_x = (1 - 2p) S + p^2 sum S, g_x = g - p sum g."""
    p, dim = ctx.out.to(s.dtype).exp(), _softmax_dim(ctx)
    if ctx.grad is not None:
        ctx.send_grad(ctx.to_input(ctx.grad - p * ctx.grad.sum(dim, keepdim=True)))
    return ctx.to_input((1 - 2 * p) * s + p.square() * s.sum(dim, keepdim=True))


# --- attention ---------------------------------------------------------------------------------


def attention_probabilities(q: Tensor, k: Tensor, scale: float, mask: Tensor | None = None,
                            allowed: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + mask) with the positions where ``allowed`` is False at -inf."""
    logits = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        logits = logits + mask
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)


def attention_curvature(q: Tensor, k: Tensor, v: Tensor, p: Tensor, scale: float,
                        s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """S of q, k and v of out = p v, p = softmax(q k^T * scale + mask), from S of out."""
    s_v = p.square().transpose(-2, -1) @ s
    s_logits = softmax_curvature(p, s @ v.square().transpose(-2, -1), -1)
    s_logits = torch.nan_to_num(s_logits) * scale**2  # rows masked everywhere carry none
    s_q = s_logits @ k.square()
    s_k = s_logits.transpose(-2, -1) @ q.square()
    return s_q.sum_to_size(q.shape), s_k.sum_to_size(k.shape), s_v.sum_to_size(v.shape)


def attention_gradient(q: Tensor, k: Tensor, v: Tensor, p: Tensor, scale: float,
                       g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradient of q, k and v of the same attention, from the gradient of out."""
    g_v = p.transpose(-2, -1) @ g
    g_logits = softmax_gradient(p, g @ v.transpose(-2, -1), -1)
    g_logits = torch.nan_to_num(g_logits) * scale
    g_q = g_logits @ k
    g_k = g_logits.transpose(-2, -1) @ q
    return g_q.sum_to_size(q.shape), g_k.sum_to_size(k.shape), g_v.sum_to_size(v.shape)


#: What S and the gradient take: the operands' power and the attention's backward.
_FLOWS = {True: (attention_curvature, lambda t: t.square()),
          False: (attention_gradient, lambda t: t)}


def _causal(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """Where a causal attention may look: query i at keys up to i."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()


def sdpa_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """F.scaled_dot_product_attention: the product, softmax and product rules chained."""
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    mask, causal = ctx.arg(3, "attn_mask"), bool(ctx.arg(5, "is_causal", False))
    if float(ctx.arg(4, "dropout_p", 0.0)) > 0:
        raise unsupported(ctx.node, "scaled_dot_product_attention with dropout_p > 0")
    if ctx.kwargs.get("enable_gqa"):
        raise unsupported(ctx.node, "scaled_dot_product_attention with enable_gqa")
    scale = ctx.arg(6, "scale")
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    allowed = _causal(q.shape[-2], k.shape[-2], q.device) if causal else None
    if mask is not None and mask.dtype == torch.bool:
        allowed = mask if allowed is None else allowed & mask
        mask = None
    p = attention_probabilities(q, k, scale, mask, allowed)
    if ctx.grad is not None:
        ctx.send_grad(_to_qkv(ctx, attention_gradient(q, k, v, p, scale, ctx.grad)))
    return _to_qkv(ctx, attention_curvature(q, k, v, p, scale, s))


def _to_qkv(ctx: RuleContext, parts: Sequence[Tensor]) -> dict[fx.Node, SValue]:
    """Query, key and value parts to the operands that need them."""
    names = ((0, "query"), (1, "key"), (2, "value"))
    return _to_operands(ctx, [(i, n, t) for (i, n), t in zip(names, parts, strict=True)])


def _to_operands(ctx: RuleContext, items: Sequence[tuple[int, str, Tensor]]
                 ) -> dict[fx.Node, SValue]:
    """S of each operand (argument ``index`` / ``name``) that needs one, summed per node."""
    result: dict[fx.Node, SValue] = {}
    for index, name, s_in in items:
        node = ctx.arg_node(index, name)
        if isinstance(node, fx.Node) and ctx.needs(node):
            result[node] = result[node] + s_in if node in result else s_in
    return result


# --- nn.MultiheadAttention ---------------------------------------------------------------------


def _check_mha(ctx: RuleContext, m: nn.MultiheadAttention, s: SValue) -> Tensor:
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise unsupported(ctx.node, "MultiheadAttention with kdim / vdim, add_bias_kv or "
                          "add_zero_attn")
    if m.training and m.dropout > 0:
        raise unsupported(ctx.node, "MultiheadAttention with dropout in training mode")
    if not isinstance(s, dict) or set(s) != {0}:
        raise unsupported(ctx.node, "MultiheadAttention whose attention weights feed the "
                          "output")
    return s[0]


def _mha_masks(ctx: RuleContext, batch: int, heads: int, q_len: int, k_len: int,
               like: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The float mask and the allowed positions, shaped (N, H, L, S) or broadcastable."""
    attn_mask, padding = ctx.arg(5, "attn_mask"), ctx.arg(3, "key_padding_mask")
    mask, allowed = None, None
    if attn_mask is None and bool(ctx.arg(7, "is_causal", False)):
        allowed = _causal(q_len, k_len, like.device)
    if attn_mask is not None:
        attn_mask = attn_mask.reshape(-1, heads, q_len, k_len) if attn_mask.dim() == 3 \
            else attn_mask
        if attn_mask.dtype == torch.bool:
            allowed = ~attn_mask  # True in MultiheadAttention's masks: not attended
        else:
            mask = attn_mask.to(like.dtype)
    if padding is not None:
        padding = padding.reshape(batch, 1, 1, k_len)
        if padding.dtype == torch.bool:
            allowed = ~padding if allowed is None else allowed & ~padding
        else:
            mask = padding.to(like.dtype) if mask is None else mask + padding.to(like.dtype)
    return mask, allowed


def _batch_first(t: Tensor, m: nn.MultiheadAttention, unbatched: bool) -> Tensor:
    if unbatched:
        return t.unsqueeze(0)
    return t if m.batch_first else t.transpose(0, 1)


def _module_layout(t: Tensor, m: nn.MultiheadAttention, unbatched: bool) -> Tensor:
    if unbatched:
        return t.squeeze(0)
    return t if m.batch_first else t.transpose(0, 1)


def mha_rule(ctx: RuleContext, s: SValue) -> dict[fx.Node, SValue]:
    """nn.MultiheadAttention: q, k, v projections, scaled dot-product attention, out_proj."""
    m = ctx.module
    assert isinstance(m, nn.MultiheadAttention)
    s_out = _check_mha(ctx, m, s)
    parts = _MhaParts(ctx, m)
    if ctx.grad is not None:
        ctx.send_grad(parts.backward(ctx.grad[0], squared=False))
    return parts.backward(s_out, squared=True)


class _MhaParts:
    """An nn.MultiheadAttention call's parts, recomputed once from its recorded inputs,
    for the backward of S and of the gradient."""

    def __init__(self, ctx: RuleContext, m: nn.MultiheadAttention) -> None:
        self.ctx, self.m = ctx, m
        self.unbatched = ctx.arg(0, "query").dim() == 2
        self.inputs = tuple(_batch_first(ctx.arg(i, n), m, self.unbatched)
                            for i, n in enumerate(("query", "key", "value")))
        heads, embed = m.num_heads, m.embed_dim
        self.weights = m.in_proj_weight.chunk(3)
        biases = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None,) * 3
        projected = [F.linear(x, w, b)
                     for x, w, b in zip(self.inputs, self.weights, biases, strict=True)]
        self.batch = self.inputs[0].shape[0]
        self.q, self.k, self.v = (self._heads(t) for t in projected)
        self.scale = 1 / math.sqrt(embed // heads)
        mask, allowed = _mha_masks(ctx, self.batch, heads, self.q.shape[-2], self.k.shape[-2],
                                   self.q)
        self.p = attention_probabilities(self.q, self.k, self.scale, mask, allowed)
        self.merged = self._merge(self.p @ self.v)

    def _heads(self, t: Tensor) -> Tensor:
        m = self.m
        return t.reshape(self.batch, -1, m.num_heads, m.embed_dim // m.num_heads).transpose(1, 2)

    def _merge(self, t: Tensor) -> Tensor:
        return t.transpose(1, 2).reshape(self.batch, -1, self.m.embed_dim)

    def backward(self, flow: Tensor, squared: bool) -> dict[fx.Node, SValue]:
        """S (``squared``) or the gradient of the inputs from that of the output; the
        device weights' parts are accumulated."""
        ctx, m, embed = self.ctx, self.m, self.m.embed_dim
        attention, power = _FLOWS[squared]
        accumulate = ctx.accumulate if squared else ctx.accumulate_grad
        y = _batch_first(flow, m, self.unbatched)
        out_name = ctx.device_weight_name_of(m.out_proj, "weight")
        if out_name is not None:
            ctx.accumulate_product(out_name, y.reshape(-1, embed).T,
                                   power(self.merged.reshape(-1, embed)), gradient=not squared)
        heads = self._heads(y @ power(m.out_proj.weight))
        projected = [self._merge(t) for t in attention(self.q, self.k, self.v, self.p,
                                                       self.scale, heads)]
        in_name = ctx.device_weight_name_of(m, "in_proj_weight")
        if in_name is not None:
            accumulate(in_name, torch.cat([
                part.reshape(-1, embed).T @ power(x.reshape(-1, embed))
                for part, x in zip(projected, self.inputs, strict=True)]))
        items = [(i, n, _module_layout(part @ power(w), m, self.unbatched))
                 for i, (n, part, w) in enumerate(zip(("query", "key", "value"), projected,
                                                      self.weights, strict=True))]
        return _to_operands(ctx, items)


# --- torchvision's Swin: shifted-window attention ---------------------------------------------


def swin_attention_rule(ctx: RuleContext, s: Tensor) -> dict[fx.Node, SValue]:
    """torchvision's ``shifted_window_attention`` (Swin v1): the moves of pixels into
    windows and back (pad, roll, permute, crop: Jacobian entries 0 or 1, so S takes their
    VJP), the qkv and proj projections (device weights) and the windows' attention (the
    product and softmax rules; the relative position bias, the shift's mask and the
    projections' biases are constants, as the attention mask of the fused call)."""
    parts = _SwinParts(ctx)
    if ctx.grad is not None:
        ctx.send_grad(parts.backward(ctx.grad, squared=False))
    return parts.backward(s, squared=True)


class _SwinParts:
    """One ``shifted_window_attention`` call run again on its recorded inputs, its two
    linear calls and its softmax taken over: the windows' input (with the autograd graph
    of the moves from the input), the attention probabilities, the heads' merged output,
    and the projection's output as a leaf of the moves back."""

    WEIGHTS = ((1, "qkv_weight"), (2, "proj_weight"))

    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx
        self._check(ctx)
        self.heads = int(ctx.arg(5, "num_heads"))
        self.qkv_weight, self.proj_weight = (ctx.arg(i, n) for i, n in self.WEIGHTS)
        linears: list[tuple[Tensor, Tensor]] = []
        probabilities: list[Tensor] = []
        linear, softmax = F.linear, F.softmax

        def take_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
            out = linear(x.detach(), weight.detach(), None if bias is None else bias.detach())
            if linears:  # the projection: the moves back start from a leaf
                out = out.requires_grad_()
            linears.append((x, out))
            return out

        def take_softmax(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            probabilities.append(softmax(x, *args, **kwargs))
            return probabilities[-1]

        self.input = ctx.arg(0, "input").detach().requires_grad_()
        args = [self.input, *ctx.args[1:]]
        try:
            F.linear, F.softmax = take_linear, take_softmax
            with torch.enable_grad():
                self.output = ctx.node.target(*args, **ctx.kwargs)
        finally:
            F.linear, F.softmax = linear, softmax
        (self.windows, qkv), (merged, self.projected) = linears
        self.merged = merged.detach()
        self.p = probabilities[0]
        windows, tokens, channels = qkv.shape
        self.q, self.k, self.v = qkv.reshape(windows, tokens, 3, self.heads, -1).permute(
            2, 0, 3, 1, 4)
        self.scale = (channels // 3 // self.heads) ** -0.5

    @staticmethod
    def _check(ctx: RuleContext) -> None:
        if ctx.arg(11, "logit_scale") is not None:
            raise unsupported(ctx.node, "Swin v2's cosine attention (logit_scale)")
        dropping = float(ctx.arg(7, "attention_dropout", 0.0)) > 0 or float(
            ctx.arg(8, "dropout", 0.0)) > 0
        if dropping and bool(ctx.arg(12, "training", True)):
            raise unsupported(ctx.node, "shifted_window_attention with dropout in training")

    def backward(self, flow: Tensor, squared: bool) -> dict[fx.Node, SValue]:
        """S (``squared``) or the gradient of the input and of the weights that need one,
        from that of the output."""
        attention, power = _FLOWS[squared]
        (projected,) = torch.autograd.grad(self.output, self.projected, flow, retain_graph=True)
        found = self._weight(2, "proj_weight", projected, self.merged, squared)
        merged = projected @ power(self.proj_weight)
        windows, tokens, channels = merged.shape
        heads = merged.reshape(windows, tokens, self.heads, -1).transpose(1, 2)
        q, k, v = attention(self.q, self.k, self.v, self.p, self.scale, heads)
        qkv = torch.stack([q, k, v]).permute(1, 3, 0, 2, 4).reshape(windows, tokens, -1)
        found.update(self._weight(1, "qkv_weight", qkv, self.windows.detach(), squared))
        if self.ctx.needs(self.ctx.input_node):
            (found[self.ctx.input_node],) = torch.autograd.grad(
                self.windows, self.input, qkv @ power(self.qkv_weight), retain_graph=True)
        return found

    def _weight(self, index: int, name: str, flow: Tensor, x: Tensor,
                squared: bool) -> dict[fx.Node, SValue]:
        """A projection weight's part: added to a device weight's sums, else handed to
        the node it comes from (a weight computed from device weights)."""
        ctx, node = self.ctx, self.ctx.arg_node(index, name)
        rows, inputs = flow.reshape(-1, flow.shape[-1]).T, x.reshape(-1, x.shape[-1])
        inputs = inputs.square() if squared else inputs
        weight_name = ctx.device_weight_name(node)
        if weight_name is not None:
            ctx.accumulate_product(weight_name, rows, inputs, gradient=not squared)
            return {}
        return {node: rows @ inputs} if ctx.needs(node) else {}


register_own(matmul_rule, torch.matmul, operator.matmul, torch.bmm, torch.mm, "matmul", "bmm",
             "mm")
register_own(einsum_rule, torch.einsum)
register_own(softmax_rule, nn.Softmax, F.softmax, torch.softmax, "softmax")
register_own(log_softmax_rule, nn.LogSoftmax, F.log_softmax, torch.log_softmax, "log_softmax")
register_own(sdpa_rule, F.scaled_dot_product_attention)
register_own(mha_rule, nn.MultiheadAttention)
register_own(vjp_rule, "masked_fill", torch.masked_fill, torch.roll, "roll", "type_as", "to",
             "float", swin._patch_merging_pad, local_graph=True)
register_own(swin_attention_rule, swin.shifted_window_attention)
