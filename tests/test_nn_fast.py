"""The three forward paths of the B-cos units (plain, explanation mode, inference) compute the same
values, and the same input gradients where they keep a graph. The reference below is written from
the definition (patch norms from ``unfold``), independent of the module's implementation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bcosify.nn import BcosConv2d, BcosLinear, set_explanation_mode
from bcosify.nn import bcos as bcos_module

CONV_CASES = {
    "conv3x3": dict(in_channels=6, out_channels=8, kernel_size=3, padding=1),
    "strided7x7": dict(in_channels=6, out_channels=5, kernel_size=7, stride=2, padding=3),
    "pointwise": dict(in_channels=8, out_channels=6, kernel_size=1),
    "pointwise_strided": dict(in_channels=8, out_channels=6, kernel_size=1, stride=2),
    "depthwise": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),
    "grouped": dict(in_channels=8, out_channels=12, kernel_size=3, padding=1, groups=4),
    "grouped_pointwise": dict(in_channels=8, out_channels=4, kernel_size=1, groups=2),
    "dilated": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
    "reflect": dict(
        in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"
    ),
    "same": dict(in_channels=4, out_channels=6, kernel_size=3, padding="same"),
    "max_out": dict(in_channels=6, out_channels=4, kernel_size=3, padding=1, max_out=2),
}


def reference_conv(m: BcosConv2d, x: torch.Tensor, detach: bool) -> torch.Tensor:
    w = m.weight
    if m.normalize_weights:
        w = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    if m.padding_mode != "zeros":
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        padding = 0
    else:
        padding = m.padding
    out = F.conv2d(x, w, None, m.stride, padding, m.dilation, m.groups)
    if m.max_out > 1:
        out = out.unflatten(1, (-1, m.max_out)).amax(2)
    if m.b == 1:
        return out
    if padding == "same":
        ph, pw = [d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size)]
        x = F.pad(x, (pw, pw, ph, ph))
        padding = 0
    cols = F.unfold(x * x, m.kernel_size, m.dilation, padding, m.stride)  # N x C*k*k x L
    g = m.groups
    norm = (cols.unflatten(1, (g, -1)).sum(2) + 1e-6).sqrt()  # N x G x L
    norm = norm.view(out.shape[0], g, 1, *out.shape[2:])
    grouped = out.unflatten(1, (g, -1))
    cos = grouped / norm
    scale = cos.abs() if m.b == 2 else (cos.abs() + 1e-6).pow(m.b - 1)
    if detach:
        scale = scale.detach()
    return (grouped * scale).flatten(1, 2)


PATHS = [(False, "plain"), (True, "explain"), (True, "explain_frozen"), (True, "inference")]


def run_paths(module, x):
    """Outputs (and input gradients of a random projection) of every path; ``explain_frozen`` is
    explanation mode with weights that do not require grad (as inside ``bcosify.explain``)."""
    probe = torch.randn_like(reference_out_shape(module, x))
    results = {}
    for _, path in PATHS:
        set_explanation_mode(module, path.startswith("explain"))
        module.weight.requires_grad_(path != "explain_frozen")
        xi = x.clone().requires_grad_(path != "inference")
        if path == "inference":
            with torch.no_grad():
                results[path] = (module(xi), None)
        else:
            out = module(xi)
            (grad,) = torch.autograd.grad((out * probe).sum(), xi)
            results[path] = (out.detach(), grad)
    set_explanation_mode(module, False)
    module.weight.requires_grad_(True)
    return results, probe


def reference_out_shape(module, x):
    with torch.no_grad():
        return module(x)


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "unit"])
@pytest.mark.parametrize("b", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_paths_agree_with_definition(case, b, normalize):
    kwargs = dict(CONV_CASES[case])
    module = BcosConv2d(**kwargs, b=b, normalize_weights=normalize)
    nn.init.normal_(module.weight)
    x = torch.randn(3, kwargs["in_channels"], 9, 9)
    results, probe = run_paths(module, x)
    for detach, path in PATHS:
        xr = x.clone().requires_grad_(True)
        expected = reference_conv(module, xr, detach)
        out, grad = results[path]
        torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5)
        if grad is not None:
            (expected_grad,) = torch.autograd.grad((expected * probe).sum(), xr)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_conv_inference_chunks_and_channels_last(monkeypatch):
    module = BcosConv2d(6, 8, 3, padding=1, b=2, normalize_weights=True)
    grouped = BcosConv2d(8, 12, 3, padding=1, groups=4, b=1.5)
    x = torch.randn(5, 6, 10, 10)
    xg = torch.randn(5, 8, 10, 10)
    expected = reference_conv(module, x, True)
    expected_g = reference_conv(grouped, xg, True)
    monkeypatch.setattr(bcos_module, "_CHUNK_BYTES", 700)  # about one sample per chunk
    assert len(bcos_module._batch_chunks(x)) == 5
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grouped(xg), expected_g, rtol=1e-5, atol=1e-5)
        cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(module(cl), expected, rtol=1e-5, atol=1e-5)
        module_cl = module.to(memory_format=torch.channels_last)
        torch.testing.assert_close(module_cl(cl), expected, rtol=1e-5, atol=1e-5)


def test_inference_does_not_touch_input_or_weight():
    module = BcosConv2d(4, 4, 1, b=2, normalize_weights=True)
    x = torch.randn(2, 4, 5, 5)
    x0, w0 = x.clone(), module.weight.detach().clone()
    with torch.no_grad():
        module(x)
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    torch.testing.assert_close(module.weight.detach(), w0, rtol=0, atol=0)


def test_weight_updates_are_seen_by_inference():
    module = BcosConv2d(4, 5, 3, padding=1, b=2, normalize_weights=True)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        module(x)
        module.weight[0].mul_(-3.0)
        module.weight[1].add_(1.0)
        torch.testing.assert_close(module(x), reference_conv(module, x, True))


def reference_linear(m: BcosLinear, x: torch.Tensor, detach: bool) -> torch.Tensor:
    w = m.weight
    if m.normalize_weights:
        w = w / w.norm(dim=1, keepdim=True)
    out = x @ w.t()
    if m.max_out > 1:
        out = out.unflatten(-1, (-1, m.max_out)).amax(-1)
    if m.b == 1:
        return out
    cos = out / (x.norm(dim=-1, keepdim=True) + 1e-12)
    scale = cos.abs() if m.b == 2 else (cos.abs() + 1e-6).pow(m.b - 1)
    return out * (scale.detach() if detach else scale)


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 4, 7)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize(
    "kwargs",
    [dict(b=2.0), dict(b=1.5, normalize_weights=True), dict(b=2.0, max_out=2)],
    ids=["b2", "b1.5-unit", "max_out"],
)
def test_linear_paths_agree_with_definition(shape, kwargs):
    module = BcosLinear(7, 5, **kwargs)
    x = torch.randn(shape)
    results, probe = run_paths(module, x)
    for detach, path in PATHS:
        xr = x.clone().requires_grad_(True)
        expected = reference_linear(module, xr, detach)
        out, grad = results[path]
        torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5)
        if grad is not None:
            (expected_grad,) = torch.autograd.grad((expected * probe).sum(), xr)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_training_gradients_reach_the_weights():
    module = BcosConv2d(4, 6, 3, padding=1, b=2, normalize_weights=True)
    x = torch.randn(2, 4, 6, 6)
    module(x).pow(2).sum().backward()
    expected_w = module.weight.grad.clone()
    module.weight.grad = None
    w = module.weight
    reference_conv(module, x, detach=False).pow(2).sum().backward()
    torch.testing.assert_close(expected_w, w.grad, rtol=1e-4, atol=1e-6)


def test_symbolic_trace_uses_plain_ops():
    model = nn.Sequential(BcosConv2d(3, 4, 3, padding=1), nn.Flatten(), BcosLinear(4 * 25, 2))

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, name):
            return False

    gm = torch.fx.GraphModule(model, Tracer().trace(model))
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


def test_training_batchnorm_fused_equals_autograd():
    """The fused training-mode uncentered BatchNorm (one forward, three backward passes) gives
    the output, input and weight gradients and running variance of the plain formula, also
    where the mean is a thousand times the spread (its exact two-pass branch)."""
    from bcosify.nn.norms import UncenteredBatchNorm2d

    torch.manual_seed(0)
    for offset in (0.5, 2000.0):
        x0 = torch.randn(4, 6, 5, 7, dtype=torch.float64) * torch.rand(6, 1, 1, dtype=torch.float64)
        x0 = x0 + offset * torch.rand(6, 1, 1, dtype=torch.float64)
        g = torch.randn_like(x0)
        bn = UncenteredBatchNorm2d(6, momentum=0.3).double().train()
        bn.bias = None
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
        x = x0.clone().requires_grad_(True)
        y = bn(x)
        y.backward(g)
        w_grad, running = bn.weight.grad.clone(), bn.running_var.clone()
        bn.weight.grad = None
        bn.running_var.fill_(1.0)
        # the plain formula, differentiated by autograd
        xr = x0.clone().requires_grad_(True)
        var = xr.var(dim=(0, 2, 3), unbiased=False)
        yr = xr * (bn.weight / (var + bn.eps).sqrt()).view(1, -1, 1, 1)
        yr.backward(g)
        assert torch.allclose(y, yr, rtol=1e-9, atol=0)
        assert torch.allclose(x.grad, xr.grad, rtol=1e-7, atol=1e-12)
        assert torch.allclose(w_grad, bn.weight.grad, rtol=1e-9)
        n = x0.numel() / 6
        want = 0.7 * 1.0 + 0.3 * var.detach() * n / (n - 1)
        assert torch.allclose(running, want, rtol=1e-9)


@pytest.mark.parametrize(
    ("k", "stride", "pad", "size"),
    [(3, 1, 1, 9), (1, 1, 0, 8), (1, 2, 0, 9), (3, 2, 1, 9), (7, 2, 3, 11)],
)
def test_training_scale_fused_equals_autograd(k, stride, pad, size):
    """The training path's fused B=2 scale (one autograd node) has the output and the input
    and weight gradients of the formula composed from patch_norms, to float64 rounding."""
    from bcosify.nn.bcos import _dynamic_scale

    torch.manual_seed(0)
    conv = BcosConv2d(5, 4, k, stride, pad).double().train()
    x0 = torch.randn(3, 5, size, size, dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    y = conv(x)
    assert y.grad_fn.name().startswith("_CosScale2")
    g = torch.randn_like(y)
    y.backward(g)
    w_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    xr = x0.clone().requires_grad_(True)
    out = conv._conv_forward(xr, conv.weight, None)
    yr = out * _dynamic_scale(out, conv.patch_norms(xr), 2.0, False)
    yr.backward(g)
    assert torch.allclose(y, yr, rtol=1e-12, atol=0)
    assert torch.allclose(x.grad, xr.grad, rtol=1e-10, atol=1e-14)
    assert torch.allclose(w_grad, conv.weight.grad, rtol=1e-10, atol=1e-14)
