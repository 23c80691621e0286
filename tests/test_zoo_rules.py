"""Conversion rules for transformer idioms, each on a small model that has it: class token and
positional embedding, fused attention, nn.MultiheadAttention, talking heads, GLU gates, LayerNorm
in its forms, window attention (Swin v1/v2), MaxViT, scalar constants, standalone tanh; and the
error for a product that is no attention."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import bcosify
from bcosify import BcosConfig, UnsupportedLayerError
from bcosify import nn as bnn
from tests.helpers import MEAN, STD, calibrate, randomize_norms, rel_err

EQUIVALENCE = BcosConfig(b=1, keep_bias=True, activation="exact", maxpool="keep")


def _normalized(x):
    return torchvision.transforms.functional.normalize(x, MEAN, STD)


def _randomize_all(model: nn.Module) -> nn.Module:
    """Random values for every parameter (zero-initialised heads, biases and tokens included)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return randomize_norms(model)


def check(model: nn.Module, x: torch.Tensor, constants: set[str] | None = None):
    """Equivalence at B=1 with biases kept, completeness with the default config."""
    model.eval()
    eq = bcosify.convert(model, EQUIVALENCE, mean=MEAN, std=STD).eval()
    with torch.no_grad():
        err = rel_err(eq(x), model(_normalized(x)))
    assert err <= 1e-5, err
    # completeness with biases kept: every bias, token and embedding must be reported
    expl = bcosify.explain(eq, x)
    assert float(expl.completeness_error.max()) <= 1e-4
    conv = bcosify.convert(model, mean=MEAN, std=STD)
    calibrate(conv, x)
    expl = bcosify.explain(conv, x)
    assert float(expl.completeness_error.max()) <= 1e-4
    logit = expl.explained_logit - expl.constant_total
    assert float(logit.abs().min()) > 1e-3
    total = expl.contributions.flatten(1).sum(1)
    assert float(((total - logit).abs() / logit.abs()).max()) <= 1e-4
    if constants is not None:
        assert set(expl.constant_contributions) == constants | {"bcosify_logit_layer.logit_bias"}
    return conv, expl


class TinyViT(nn.Module):
    """Patch embedding, class token (concatenated), positional embedding (added), fused attention
    with separate q/k/v projections, a SwiGLU MLP, functional layer norm, class-token readout."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 17, dim))
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln_w = nn.Parameter(torch.ones(dim))
        self.ln_b = nn.Parameter(torch.zeros(dim))
        self.gate, self.up, self.down = nn.Linear(dim, 32), nn.Linear(dim, 32), nn.Linear(32, dim)
        self.act = nn.SiLU()
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        n, t, d = x.shape
        y = F.layer_norm(x, (d,), self.ln_w, self.ln_b)

        def split(z):
            return z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(y)), split(self.k(y)), split(self.v(y)))
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, d))
        x = x + self.down(self.act(self.gate(x)) * self.up(x))
        return self.head(x[:, 0])


def test_class_token_pos_embed_fused_attention_and_glu():
    torch.manual_seed(0)
    model = _randomize_all(TinyViT())
    x = torch.rand(3, 3, 16, 16)
    conv, expl = check(model, x, constants={"cls_token", "pos_embed"})
    counts = conv.conversion_report.counts()
    assert counts[("replaced", "Linear -> PlainLinear (attention q/k/v projection)")] == 3
    assert counts[("replaced", "scaled_dot_product_attention -> ScaledDotProductAttention")] == 1
    assert counts[("replaced", "F.layer_norm -> DetachableLayerNorm")] == 1
    assert counts[("inserted", "DetachableGate (x * gate)")] == 1  # the SwiGLU gate
    assert type(conv.gate) is nn.Linear  # the gate branch is left as it is
    assert isinstance(conv.proj, bnn.BcosLinear) and isinstance(conv.q, bnn.PlainLinear)
    assert conv.q.bias is None and conv.v.bias is None
    # the constants really contribute: each is a sizeable share of the logit
    for name in ("cls_token", "pos_embed"):
        assert float(expl.constant_contributions[name].abs().min()) > 1e-4


def test_attention_matrix_is_detached_only_in_explanation_mode():
    torch.manual_seed(0)
    sdpa = bnn.ScaledDotProductAttention()
    q, k, v = (torch.randn(2, 2, 5, 4, requires_grad=True) for _ in range(3))
    mask = torch.randn(5, 5)
    out = sdpa(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(
        sdpa(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True)
    )
    bool_mask = torch.rand(5, 5) > 0.3
    bool_mask[:, 0] = True
    torch.testing.assert_close(
        sdpa(q, k, v, attn_mask=bool_mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask),
    )
    assert torch.autograd.grad(out.sum(), q, retain_graph=True)[0].abs().sum() > 0
    sdpa.set_explanation_mode(True)
    out = sdpa(q, k, v, attn_mask=mask)
    gq, gv = torch.autograd.grad(out.sum(), [q, v], allow_unused=True, retain_graph=True)
    assert gq is None and gv.abs().sum() > 0
    # linear in v: out = A v exactly
    (gv_row,) = torch.autograd.grad(out[0, 0, 0, 0], v)
    torch.testing.assert_close((gv_row * v).sum(), out[0, 0, 0, 0])


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_module(batch_first):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(12, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            x = self.embed(x.flatten(2))  # N x 3 x 16 tokens
            if not batch_first:
                x = x.transpose(0, 1)
            y, _ = self.attn(x, x, x, need_weights=False)
            if not batch_first:
                y = y.transpose(0, 1)
            return self.head(y.mean(1))

    torch.manual_seed(0)
    model = _randomize_all(Block())
    conv, _ = check(model, torch.rand(2, 3, 4, 3))
    assert isinstance(conv.attn, bnn.BcosMultiheadAttention)
    assert isinstance(conv.attn.out_proj, bnn.BcosLinear) and conv.attn.in_proj_bias is None
    # state-dict keys stay those of the source
    assert {k for k in conv.state_dict() if k.startswith("attn.")} == {
        "attn.in_proj_weight",
        "attn.out_proj.weight",
    }


def test_multihead_attention_weights_and_masks_match_torch():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    _randomize_all(mha)
    ours = bnn.BcosMultiheadAttention.from_mha(mha, keep_bias=True).eval()
    x = torch.randn(2, 5, 8)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[0, -1] = True  # True: ignore this key
    mask = torch.rand(5, 5) > 0.7
    mask[:, 0] = False  # every query keeps a key
    ref = mha(x, x, x, key_padding_mask=kpm, attn_mask=mask)
    out = ours(x, x, x, key_padding_mask=kpm, attn_mask=mask)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-6)


def test_unfused_timm_vit_talking_heads_and_layer_scale():
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=2,
        num_heads=2,
        num_classes=4,
        init_values=0.5,
    )
    for block in vit.blocks:
        block.attn.fused_attn = False  # the explicit softmax(q k^T) v path
    _randomize_all(vit)
    conv, _ = check(vit, torch.rand(2, 3, 16, 16), constants={"cls_token", "pos_embed"})
    counts = conv.conversion_report.counts()
    assert counts[("inserted", "DetachableGate (x * gate)")] == 2  # one attention matrix per block
    cait = timm.models.cait.Cait(
        img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=4
    )
    _randomize_all(cait)
    check(cait, torch.rand(2, 3, 16, 16))


def test_layer_norms_in_all_forms():
    class Norms(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.ln2d_tv = torchvision.models.convnext.LayerNorm2d(8)
            self.ln2d_timm = timm.layers.LayerNorm2d(8)
            self.ln_last = nn.LayerNorm(8)
            self.rms = timm.layers.RmsNorm2d(8)
            self.gn = nn.GroupNorm(2, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.ln2d_timm(self.ln2d_tv(self.conv(x)))
            x = self.ln_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # channels-last
            x = self.gn(self.rms(x))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    model = _randomize_all(Norms())
    conv, _ = check(model, torch.rand(2, 3, 8, 8))
    kinds = {type(m) for m in conv.modules()}
    assert {bnn.DetachableLayerNorm2d, bnn.DetachableLayerNorm, bnn.DetachableRmsNorm} <= kinds
    assert all(getattr(m, "bias", None) is None for m in conv.modules() if type(m) in kinds)


def test_swin_window_attention_v1_and_v2():
    from torchvision.models import swin_transformer as sw

    torch.manual_seed(0)
    for block, merge in (
        (sw.SwinTransformerBlock, sw.PatchMerging),
        (sw.SwinTransformerBlockV2, sw.PatchMergingV2),
    ):
        model = sw.SwinTransformer(
            patch_size=[2, 2],
            embed_dim=8,
            depths=[2, 2],
            num_heads=[2, 2],
            window_size=[3, 3],  # does not divide the 6x6 map: padding, shift and mask all used
            num_classes=5,
            block=block,
            downsample_layer=merge,
        )
        _randomize_all(model)
        conv, _ = check(model, torch.rand(2, 3, 12, 12))
        names = {type(m).__name__ for m in conv.modules()}
        expected = "BcosShiftedWindowAttention" + ("V2" if merge is sw.PatchMergingV2 else "")
        assert {expected, "PlainLinear"} <= names


def test_timm_swin_window_partition_and_fused_masked_attention():
    torch.manual_seed(0)
    model = timm.models.swin_transformer.SwinTransformer(
        img_size=16,
        patch_size=2,
        window_size=4,
        embed_dim=8,
        depths=(2,),
        num_heads=(2,),
        num_classes=4,
    )
    _randomize_all(model)
    check(model, torch.rand(2, 3, 16, 16))


def test_maxvit_einsum_attention_and_standalone_tanh():
    torch.manual_seed(0)
    model = torchvision.models.maxvit.MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 1],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=4,
    )
    _randomize_all(model)
    conv, _ = check(model, torch.rand(2, 3, 32, 32))
    counts = conv.conversion_report.counts()
    assert counts[("replaced", "Tanh -> GatedActivation")] == 1  # the classifier's tanh


def test_scalar_constants_and_subtraction():
    class Offsets(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.offset = nn.Parameter(torch.randn(1, 4, 1, 1))
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.conv(x)
            x = 3.0 - (x - self.offset)  # constants on either side of a subtraction
            x = torch.tanh(x + 1)
            return self.fc(x.mean((2, 3)))

    model = _randomize_all(Offsets())
    conv, expl = check(model, torch.rand(2, 3, 8, 8))
    assert "offset" in expl.constant_contributions
    assert sum(1 for k in expl.constant_contributions if k.endswith(".constant")) == 2


def test_product_of_two_activations_is_the_one_clear_error_or_a_detached_factor():
    class Bilinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(12, 4)
            self.b = nn.Linear(12, 4)

        def forward(self, x):
            x = x.flatten(2)
            return (self.a(x) @ self.b(x).transpose(1, 2)).flatten(1)

    with pytest.raises(UnsupportedLayerError) as info:
        bcosify.convert(Bilinear(), BcosConfig(products="error"), mean=MEAN, std=STD)
    assert len(info.value.nodes) == 1
    assert "neither is an attention matrix" in str(info.value)
    # the default product policy detaches the left-hand factor: exact, and reported
    conv, _ = check(_randomize_all(Bilinear()), torch.rand(2, 3, 3, 4))
    assert conv.conversion_report.counts()[("inserted", "DetachableGate (product policy)")] == 1


def test_timm_norm_act_layers_keep_their_activation():
    """timm's LayerNormAct(2d), GroupNormAct and RmsNormAct2d subclass the plain norms but apply
    an activation in forward: the conversion keeps it (a plain-norm rule would drop it)."""

    class NormActs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.ln2d = timm.layers.LayerNormAct2d(8, act_layer=nn.GELU)
            self.gn = timm.layers.GroupNormAct(8, 2, act_layer=nn.SiLU)
            self.rms = timm.layers.RmsNormAct2d(8, act_layer=nn.ReLU)
            self.ln = timm.layers.LayerNormAct(8, act_layer=nn.Hardswish)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.rms(self.gn(self.ln2d(self.conv(x))))
            x = self.ln(F.adaptive_avg_pool2d(x, 1).flatten(1))
            return self.fc(x)

    conv, _ = check(_randomize_all(NormActs()), torch.rand(2, 3, 8, 8))
    assert type(conv.ln2d) is bnn.DetachableLayerNormAct2d
    assert type(conv.gn) is bnn.DetachableGroupNormAct
    assert type(conv.rms) is bnn.DetachableRmsNormAct
    assert type(conv.ln) is bnn.DetachableLayerNormAct
    assert isinstance(conv.gn.act, bnn.GatedActivation)  # SiLU becomes a detachable gate
    assert isinstance(conv.rms.act, nn.Identity)  # ReLU removed by default
