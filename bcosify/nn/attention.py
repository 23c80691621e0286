"""Attention with a detachable attention matrix, plain projections and recorded constants.

Self-attention ``softmax(q k^T / sqrt(d) + bias) v`` is linear in ``v`` once the attention matrix
is fixed. In explanation mode the matrix is detached, so the output is a dynamic linear function of
the values and the explanation is exact through ``v`` (B-cos v2, Böhle et al., TPAMI 2024,
arXiv 2306.10898; B-cosification, Arya et al., NeurIPS 2024, arXiv 2411.00715). The query and key
paths then carry no gradient; additive masks and relative position biases sit inside the softmax and
need nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mode import DetachableModule, add_constant, constant_leaf

__all__ = [
    "attention",
    "AddConstant",
    "RecordConstant",
    "PlainLinear",
    "ScaledDotProductAttention",
    "BcosMultiheadAttention",
    "shifted_window_attention",
]


def _additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return mask
    # boolean masks: True means "attend" (scaled_dot_product_attention's convention)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, float("-inf")
    )


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    training: bool = False,
    detach: bool = False,
    logits: Tensor | None = None,
) -> Tensor:
    """``softmax(q k^T * scale + bias) v`` with the attention matrix detached when ``detach``.

    Args:
        q, k, v: ``... x L x E``, ``... x S x E`` and ``... x S x Ev``.
        bias: an additive (float) or boolean (True: attend) mask broadcastable to ``... x L x S``.
        scale: the logit scale, ``1 / sqrt(E)`` by default.
        is_causal: mask out keys after each query.
        dropout_p, training: dropout on the attention matrix (only while training).
        detach: detach the attention matrix (explanation mode).
        logits: precomputed attention logits (then ``q`` and ``k`` are ignored).

    Example:
        >>> q = k = v = torch.rand(2, 4, 8)
        >>> attention(q, k, v).shape
        torch.Size([2, 4, 8])
    """
    if logits is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        logits = (q * scale) @ k.transpose(-2, -1)
    if is_causal:
        n, s = logits.shape[-2], logits.shape[-1]
        causal = torch.ones(n, s, dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    bias = _additive_mask(bias, logits.dtype)
    if bias is not None:
        logits = logits + bias
    attn = logits.softmax(-1)
    if detach:
        attn = attn.detach()
    if dropout_p > 0 and training:
        attn = F.dropout(attn, dropout_p, training=True)
    return attn @ v


class AddConstant(nn.Module):
    """``x + c`` for a constant ``c`` (a positional embedding, a scalar offset), recorded as a
    constant term of explanations under ``label``.

    Args:
        label: the name of the constant in ``Explanation.constant_contributions``.
        value: a fixed constant (for scalars in the graph); otherwise ``c`` is passed to forward.
        negate: compute ``x - c`` instead.

    Example:
        >>> AddConstant("offset", value=3.0)(torch.zeros(2, 4))[0, 0].item()
        3.0
    """

    def __init__(self, label: str, value: float | None = None, negate: bool = False):
        super().__init__()
        self.constant_label = label
        self.negate = bool(negate)
        self.value = None if value is None else float(value)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        if c is None:
            c = x.new_tensor(self.value)
        if not isinstance(c, Tensor):
            c = x.new_tensor(float(c))
        if self.negate:
            c = -c
        return add_constant(self, "", x, c)

    def extra_repr(self) -> str:
        value = "" if self.value is None else f", value={self.value:g}"
        return f"{self.constant_label!r}{value}" + (", negate=True" if self.negate else "")


class RecordConstant(nn.Module):
    """Identity on a constant tensor that enters the network linearly (a class token that is
    concatenated to the patch tokens); while explanations are computed it becomes a recorded leaf,
    so its contribution ``c * dy/dc`` is reported under ``label``.

    Example:
        >>> RecordConstant("cls_token")(torch.ones(2, 1, 4), torch.zeros(2, 3, 4)).shape
        torch.Size([2, 1, 4])
    """

    def __init__(self, label: str):
        super().__init__()
        self.constant_label = label

    def forward(self, c: Tensor, like: Tensor) -> Tensor:
        return constant_leaf(self, "", like, c)

    def extra_repr(self) -> str:
        return repr(self.constant_label)


class PlainLinear(nn.Linear):
    """A linear layer that stays linear (no B-cos scaling): the query/key/value projections of
    attention. A kept bias is added as a recorded constant.

    Example:
        >>> PlainLinear.from_linear(nn.Linear(4, 6))(torch.rand(2, 4)).shape
        torch.Size([2, 6])
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, keep_bias: bool = False) -> PlainLinear:
        new = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias if keep_bias else None
        new.train(linear.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight)
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias)
        return out


class PlainConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution kept a plain linear map (there is no B-cos unit for it): exact as
    it is, its kept bias added as a recorded constant.

    Example:
        >>> up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        >>> PlainConvTranspose2d.from_module(up)(torch.rand(1, 4, 3, 3)).shape
        torch.Size([1, 4, 6, 6])
    """

    @classmethod
    def from_module(
        cls, conv: nn.ConvTranspose2d, *, keep_bias: bool = False
    ) -> PlainConvTranspose2d:
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        new._parameters = dict(conv._parameters)
        new._buffers = dict(conv._buffers)
        new._modules = dict(conv._modules)
        if not keep_bias:
            new.bias = None
        return new

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        out = F.conv_transpose2d(
            x,
            self.weight,
            None,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
        )
        if self.bias is not None:
            out = add_constant(self, "bias", out, self.bias.view(1, -1, 1, 1))
        return out


class ScaledDotProductAttention(DetachableModule, nn.Module):
    """An unfused ``F.scaled_dot_product_attention`` whose attention matrix is detached in
    explanation mode. Same arguments as the torch function (dropout only while training).

    Example:
        >>> sdpa = ScaledDotProductAttention()
        >>> q = torch.rand(1, 2, 5, 4)
        >>> torch.allclose(sdpa(q, q, q), F.scaled_dot_product_attention(q, q, q), atol=1e-6)
        True
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            rep = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(rep, dim=-3)
            value = value.repeat_interleave(rep, dim=-3)
        return attention(
            query,
            key,
            value,
            bias=attn_mask,
            scale=scale,
            is_causal=is_causal,
            dropout_p=dropout_p,
            training=self.training,
            detach=self.explanation_mode,
        )


class BcosMultiheadAttention(DetachableModule, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with plain (linear) q/k/v projections, a B-cos output projection
    and a detachable attention matrix. State-dict keys are those of the source module.

    Example:
        >>> mha = BcosMultiheadAttention.from_mha(nn.MultiheadAttention(8, 2, batch_first=True))
        >>> x = torch.rand(2, 5, 8)
        >>> mha(x, x, x, need_weights=False)[0].shape
        torch.Size([2, 5, 8])
    """

    @classmethod
    def from_mha(
        cls,
        mha: nn.MultiheadAttention,
        out_proj: nn.Module | None = None,
        *,
        keep_bias: bool = False,
    ) -> BcosMultiheadAttention:
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported: the "
                "extra key/value rows are constants inside the values; skip the module instead"
            )
        new = cls.__new__(cls)
        new.__dict__.update(mha.__dict__)
        new._parameters = dict(mha._parameters)
        new._buffers = dict(mha._buffers)
        new._modules = dict(mha._modules)
        if out_proj is not None:
            new.out_proj = out_proj
        if not keep_bias:
            new.in_proj_bias = None
        return new

    def _projections(self, query: Tensor, key: Tensor, value: Tensor):
        e = self.embed_dim
        bias = self.in_proj_bias
        bq, bk, bv = (None, None, None) if bias is None else bias.split(e)
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.split(e)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        q = F.linear(query, wq, bq)
        k = F.linear(key, wk, bk)
        v = F.linear(value, wv)
        if bv is not None:  # recorded batch-first, so constants are attributed per sample
            v = add_constant(self, "in_proj_bias", v.transpose(0, 1), bv).transpose(0, 1)
        return q, k, v

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        # L x N x E from here on
        q, k, v = self._projections(query, key, value)
        n, h = q.shape[1], self.num_heads
        d = self.head_dim

        def heads(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], n * h, d).transpose(0, 1).reshape(n, h, t.shape[0], d)

        q, k, v = heads(q), heads(k), heads(v)
        # boolean masks of nn.MultiheadAttention: True means "do not attend"
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask
        mask = _additive_mask(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:
            mask = mask.view(n, h, mask.shape[-2], mask.shape[-1])
        if key_padding_mask is not None:
            kpm = _additive_mask(
                ~key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask,
                q.dtype,
            )
            kpm = kpm.view(n, 1, 1, -1)
            mask = kpm if mask is None else mask + kpm
        logits = (q / math.sqrt(d)) @ k.transpose(-2, -1)
        out = attention(
            q,
            k,
            v,
            bias=mask,
            is_causal=is_causal and attn_mask is None,
            dropout_p=self.dropout,
            training=self.training,
            detach=self.explanation_mode,
            logits=logits,
        )
        # N x H x L x D -> N x L x E: the output projection (and its recorded bias) runs
        # batch-first, so constants are attributed per sample
        out = self.out_proj(out.transpose(1, 2).reshape(n, out.shape[2], h * d))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            with torch.no_grad():
                full = logits if mask is None else logits + mask
                weights = full.softmax(-1)
                weights = weights.mean(1) if average_attn_weights else weights
                if not batched:
                    weights = weights.squeeze(0)
        return out, weights


def shifted_window_attention(
    x: Tensor,
    qkv: nn.Module,
    proj: nn.Module,
    relative_position_bias: Tensor,
    window_size: tuple[int, int],
    num_heads: int,
    shift_size: tuple[int, int],
    *,
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    logit_scale: Tensor | None = None,
    training: bool = False,
    detach: bool = False,
) -> Tensor:
    """(Shifted) window self-attention of Swin v1/v2 (Liu et al., ICCV 2021 / CVPR 2022) on an
    ``N x H x W x C`` map, with a detachable attention matrix.

    The map is zero-padded to a multiple of the window, cyclically shifted, split into windows,
    attended within each window (with the relative position bias and, for shifted windows, a mask
    that keeps regions that were not adjacent apart), merged, shifted back and cropped: all of it
    linear in the values. Swin v2 uses cosine attention with a learned ``logit_scale``.

    ``qkv`` and ``proj`` are modules (a plain linear layer and a B-cos linear layer).
    """
    n, h, w, c = x.shape
    wh, ww = window_size
    pad_b, pad_r = (wh - h % wh) % wh, (ww - w % ww) % ww
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    ph, pw = x.shape[1], x.shape[2]
    sh = 0 if wh >= ph else shift_size[0]
    sw = 0 if ww >= pw else shift_size[1]
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    nh, nw = ph // wh, pw // ww
    windows = (
        x.view(n, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n * nh * nw, wh * ww, c)
    )
    t = windows.shape[1]
    qkv_out = qkv(windows).reshape(windows.shape[0], t, 3, num_heads, c // num_heads)
    q, k, v = qkv_out.permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is not None:
        scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        logits = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * scale
    else:
        logits = (q * (c // num_heads) ** -0.5) @ k.transpose(-2, -1)
    logits = logits + relative_position_bias
    if sh or sw:
        region = x.new_zeros((ph, pw))
        count = 0
        for hs in ((0, ph - wh), (ph - wh, ph - sh), (ph - sh, ph)):
            for ws in ((0, pw - ww), (pw - ww, pw - sw), (pw - sw, pw)):
                region[hs[0] : hs[1], ws[0] : ws[1]] = count
                count += 1
        region = region.view(nh, wh, nw, ww).permute(0, 2, 1, 3).reshape(nh * nw, t)
        mask = region.unsqueeze(1) - region.unsqueeze(2)
        mask = torch.zeros_like(mask).masked_fill(mask != 0, -100.0)
        logits = logits.view(n, nh * nw, num_heads, t, t) + mask[None, :, None]
        logits = logits.view(-1, num_heads, t, t)
    out = attention(
        q,
        k,
        v,
        logits=logits,
        dropout_p=attention_dropout,
        training=training,
        detach=detach,
    )
    out = out.transpose(1, 2).reshape(windows.shape[0], t, c)
    out = proj(out)
    if dropout > 0 and training:
        out = F.dropout(out, dropout, training=True)
    out = out.view(n, nh, nw, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n, ph, pw, c)
    if sh or sw:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out[:, :h, :w, :].contiguous()
