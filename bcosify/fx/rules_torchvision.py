"""Rules for layers defined by torchvision; loaded when torchvision is imported and a model is
converted (:func:`bcosify.fx.registry.load_library_rules`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import swin_transformer as _tv_swin
from torchvision.models.convnext import LayerNorm2d as _TvLayerNorm2d
from torchvision.ops import StochasticDepth

from bcosify import nn as bnn
from bcosify.config import BcosConfig
from bcosify.fx import ops, registry
from bcosify.fx.registry import add_op, extend_op, register_module_rule
from bcosify.fx.rules_libs import _bcos, _layernorm2d, _plain, _retype
from bcosify.fx.rules_torch import _pass

registry.begin_builtin_rules(__name__)

register_module_rule(_TvLayerNorm2d, _layernorm2d)
# the window-attention rule builds the v2 module for ShiftedWindowAttentionV2 itself
registry.declare_safe_subclass(_tv_swin.ShiftedWindowAttentionV2)
extend_op("dropout", modules=[StochasticDepth])
# zero padding to an even size, four strided slices, a concatenation: linear
add_op(
    ops.Op(
        "torchvision_patch_merging_pad",
        ops.Kind.STRUCTURAL,
        functions=(_tv_swin._patch_merging_pad,),
        library="torchvision",
    ),
    function_rule=_pass,
)


class BcosShiftedWindowAttention(bnn.DetachableModule, _tv_swin.ShiftedWindowAttention):
    """torchvision's Swin (v1) window attention with plain q/k/v, a B-cos output projection and a
    detachable attention matrix (see :func:`bcosify.nn.shifted_window_attention`)."""

    def _logit_scale(self):
        return None

    def forward(self, x: Tensor) -> Tensor:
        return bnn.shifted_window_attention(
            x,
            self.qkv,
            self.proj,
            self.get_relative_position_bias(),
            tuple(self.window_size),
            self.num_heads,
            tuple(self.shift_size),
            attention_dropout=self.attention_dropout,
            dropout=self.dropout,
            logit_scale=self._logit_scale(),
            training=self.training,
            detach=self.explanation_mode,
        )


class BcosShiftedWindowAttentionV2(BcosShiftedWindowAttention, _tv_swin.ShiftedWindowAttentionV2):
    """Swin v2 window attention (cosine attention with a learned logit scale)."""

    def _logit_scale(self):
        return self.logit_scale


@register_module_rule(_tv_swin.ShiftedWindowAttention)
def _tv_window_attention(module, config: BcosConfig):
    cls = (
        BcosShiftedWindowAttentionV2
        if isinstance(module, _tv_swin.ShiftedWindowAttentionV2)
        else BcosShiftedWindowAttention
    )
    new = _retype(module, cls)
    new.qkv = _plain(module.qkv, config)
    new.proj = _bcos(module.proj, config)
    if cls is BcosShiftedWindowAttentionV2 and new.qkv.bias is not None:
        # Swin v2 has no key bias (torchvision zeroes that part of the bias on every call)
        with torch.no_grad():
            bias = new.qkv.bias.detach().clone()
            n = bias.numel() // 3
            bias[n : 2 * n] = 0
        new.qkv.bias = nn.Parameter(bias, requires_grad=module.qkv.bias.requires_grad)
    return new


registry.end_builtin_rules(__name__)
