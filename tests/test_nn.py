import math

import pytest
import torch
from bcos.modules import BcosConv2d as RefConv
from bcos.modules import BcosLinear as RefLinear
from torch import nn

from bcosify.nn import (
    BcosConv2d,
    BcosLinear,
    ConstantRecorder,
    DetachableGroupNorm,
    DetachableLayerNorm,
    DetachableLayerNorm2d,
    EncodedNormalize,
    GatedActivation,
    InputEncoding,
    LogitLayer,
    UncenteredBatchNorm2d,
    set_explanation_mode,
)


@pytest.mark.parametrize("b", [1.0, 1.5, 2.0])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=6, out_channels=8, kernel_size=3, stride=2, padding=1),
        dict(in_channels=8, out_channels=8, kernel_size=3, stride=1, padding=1, groups=8),
        dict(in_channels=8, out_channels=16, kernel_size=5, stride=1, padding=2, groups=4),
    ],
    ids=["conv", "depthwise", "grouped"],
)
def test_conv_matches_reference(b, kwargs):
    ref = RefConv(**kwargs, b=b)
    ours = BcosConv2d(**kwargs, b=b, normalize_weights=True)
    with torch.no_grad():
        ours.weight.copy_(ref.linear.weight)
    x = torch.randn(2, kwargs["in_channels"], 9, 9)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_conv_dilated_matches_reference_slow_path():
    with pytest.warns(UserWarning):
        ref = RefConv(6, 4, 3, padding=2, dilation=2, b=2)
    ours = BcosConv2d(6, 4, 3, padding=2, dilation=2, b=2, normalize_weights=True)
    with torch.no_grad():
        ours.weight.copy_(ref.linear.weight)
    x = torch.randn(2, 6, 10, 10)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b", [1.0, 1.5, 2.0])
def test_linear_matches_reference(b):
    ref = RefLinear(16, 5, b=b)
    ours = BcosLinear(16, 5, b=b, normalize_weights=True)
    with torch.no_grad():
        ours.weight.copy_(ref.linear.weight)
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_max_out_matches_reference():
    ref = RefConv(6, 4, 3, padding=1, b=2, max_out=2)
    ours = BcosConv2d(6, 4, 3, padding=1, b=2, max_out=2, normalize_weights=True)
    with torch.no_grad():
        ours.weight.copy_(ref.linear.weight)
    x = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_b1_with_bias_equals_torch_layers():
    conv = nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect")
    lin = nn.Linear(7, 2)
    bconv = BcosConv2d.from_conv2d(conv, b=1, keep_bias=True)
    blin = BcosLinear.from_linear(lin, b=1, keep_bias=True)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(bconv(x), conv(x))
    v = torch.randn(4, 7)
    torch.testing.assert_close(blin(v), lin(v))
    assert bconv.weight is conv.weight


def test_padding_modes_and_same_padding_norms():
    for mode in ["zeros", "reflect", "circular"]:
        conv = BcosConv2d(2, 3, 3, padding=1, padding_mode=mode)
        x = torch.randn(1, 2, 5, 5)
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="constant" if mode == "zeros" else mode)
        patches = nn.functional.unfold(padded, 3)  # 1 x (2*9) x 25
        expected = (patches.pow(2).sum(1) + 1e-6).sqrt().view(1, 1, 5, 5)
        torch.testing.assert_close(conv.patch_norms(x), expected)
    conv = BcosConv2d(2, 3, 3, padding="same", dilation=2)
    assert conv(torch.randn(1, 2, 8, 8)).shape == (1, 3, 8, 8)


def _linear_check(module, x):
    """In explanation mode, the output is exactly (d out / d x) . x, per output."""
    set_explanation_mode(module, True)
    x = x.clone().requires_grad_(True)
    out = module(x)
    flat = out.reshape(out.shape[0], -1)
    for j in [0, flat.shape[1] // 2, flat.shape[1] - 1]:
        (g,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=True)
        recon = (g * x).reshape(x.shape[0], -1).sum(1)
        torch.testing.assert_close(recon, flat[:, j].detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "module,shape",
    [
        (BcosConv2d(4, 6, 3, padding=1, b=2), (2, 4, 5, 5)),
        (BcosConv2d(4, 4, 3, padding=1, groups=4, b=1.5), (2, 4, 5, 5)),
        (BcosLinear(8, 3, b=2), (2, 8)),
        (GatedActivation("gelu"), (2, 5)),
        (GatedActivation("hardswish"), (2, 5)),
    ],
)
def test_explanation_mode_is_dynamic_linear(module, shape):
    _linear_check(module, torch.randn(shape))


def test_norms_dynamic_linear_and_match_torch():
    ln = nn.LayerNorm(6).eval()
    nn.init.normal_(ln.weight)
    nn.init.normal_(ln.bias)
    x = torch.randn(3, 4, 6)
    dln = DetachableLayerNorm.from_layernorm(ln, keep_bias=True)
    torch.testing.assert_close(dln(x), ln(x), rtol=1e-5, atol=1e-5)
    _linear_check(DetachableLayerNorm.from_layernorm(ln), x)

    ln2d = nn.LayerNorm(5)
    nn.init.normal_(ln2d.weight)
    y = torch.randn(2, 5, 3, 3)
    expected = ln2d(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(
        DetachableLayerNorm2d.from_layernorm(ln2d, keep_bias=True)(y), expected
    )

    gn = nn.GroupNorm(2, 6)
    nn.init.normal_(gn.weight)
    nn.init.normal_(gn.bias)
    z = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(DetachableGroupNorm.from_groupnorm(gn, keep_bias=True)(z), gn(z))
    _linear_check(DetachableGroupNorm.from_groupnorm(gn), z)


def test_uncentered_batchnorm_fold_is_exact_in_eval():
    bn = nn.BatchNorm2d(4)
    bn.train()
    for _ in range(3):
        bn(torch.randn(8, 4, 5, 5) * 3 + 2)
    bn.eval()
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    x = torch.randn(2, 4, 5, 5)
    ubn = UncenteredBatchNorm2d.from_batchnorm(bn, keep_bias=True).eval()
    torch.testing.assert_close(ubn(x), bn(x), rtol=1e-5, atol=1e-5)
    no_bias = UncenteredBatchNorm2d.from_batchnorm(bn).eval()
    assert no_bias.bias is None
    expected = bn.weight.view(1, -1, 1, 1) * x / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
    torch.testing.assert_close(no_bias(x), expected)


def test_uncentered_batchnorm_training_uses_batch_variance():
    ubn = UncenteredBatchNorm2d.from_batchnorm(nn.BatchNorm2d(3)).train()
    x = torch.randn(16, 3, 4, 4) * 2 + 5
    out = ubn(x)
    var = x.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(out, x / (var.view(1, -1, 1, 1) + 1e-5).sqrt())
    assert not torch.allclose(ubn.running_var, torch.ones(3))
    _linear_check(ubn, x)


@pytest.mark.parametrize(
    "kind,fn",
    [
        ("silu", nn.functional.silu),
        ("gelu", nn.functional.gelu),
        ("gelu_tanh", lambda x: nn.functional.gelu(x, approximate="tanh")),
        ("hardswish", nn.functional.hardswish),
        ("mish", nn.functional.mish),
    ],
)
def test_gated_activations_equal_torch(kind, fn):
    x = torch.randn(100) * 4
    torch.testing.assert_close(GatedActivation(kind)(x), fn(x), rtol=1e-5, atol=1e-6)


def test_encoding_and_encoded_normalize():
    x = torch.rand(2, 3, 4, 4)
    x6 = InputEncoding(3)(x)
    torch.testing.assert_close(x6[:, 3:], 1 - x)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(EncodedNormalize(mean, std)(x6), expected)
    with pytest.raises(ValueError, match="3 channels"):
        InputEncoding(3)(torch.rand(1, 4, 2, 2))


def test_recorder_gives_per_sample_constant_contributions():
    conv = BcosConv2d(6, 3, 3, padding=1, bias=True, b=2)
    nn.init.normal_(conv.bias)
    head = LogitLayer(-math.log(9))
    model = nn.Sequential(conv, head)
    set_explanation_mode(model, True)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    recorder = ConstantRecorder({id(conv): "conv", id(head): "head"})
    with recorder.active():
        out = model(x)
    y = out[:, 1].sum(dim=(1, 2))
    names = [n for n, _ in recorder.leaves]
    assert names == ["conv.bias", "head.logit_bias"]
    grads = torch.autograd.grad(y.sum(), [x] + [leaf for _, leaf in recorder.leaves])
    total = (grads[0] * x).flatten(1).sum(1)
    for (_, leaf), g in zip(recorder.leaves, grads[1:]):
        total = total + (leaf * g).flatten(1).sum(1)
    torch.testing.assert_close(total, y.detach(), rtol=1e-5, atol=1e-5)
