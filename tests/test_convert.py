"""Converter rules, options and errors on small models that have each idiom."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import bcosify
from bcosify import BcosConfig, BcosifyError, TraceError, UnsupportedLayerError
from bcosify import nn as bnn
from tests.helpers import MEAN, STD, calibrate, calibrate_batchnorm, rel_err

EQUIVALENCE = BcosConfig(b=1, keep_bias=True, activation="exact", maxpool="keep")


class Idioms(nn.Module):
    """Shared ReLU module (two call sites), F.relu, x.relu_(), max pool, an SE gate, head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se_reduce = nn.Conv2d(8, 4, 1)
        self.se_expand = nn.Conv2d(4, 8, 1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.act = nn.SiLU()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(x)
        x = self.relu(self.conv2(x))
        s = F.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))
        x = x * torch.sigmoid(self.se_expand(s))
        x = self.act(self.conv3(x)).relu_()
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


def _normalized(x):
    return torchvision.transforms.functional.normalize(x, MEAN, STD)


def assert_equivalent(model, x):
    """The B=1 conversion with biases, ReLU and max pool kept equals the original."""
    eq = bcosify.convert(model, EQUIVALENCE, mean=MEAN, std=STD)
    with torch.no_grad():
        assert rel_err(eq(x), model(_normalized(x))) <= 1e-5
    return eq


def test_idioms_equivalence_and_completeness():
    model = Idioms().eval()
    x = torch.rand(2, 3, 16, 16)
    assert_equivalent(model, x)
    conv = bcosify.convert(model, mean=MEAN, std=STD)
    counts = conv.conversion_report.counts()
    # the shared module has two call sites, F.relu is in the SE branch (kept), relu_ is a method
    assert counts[("removed", "ReLU")] == 3
    assert counts[("replaced", "MaxPool2d -> AvgPool2d")] == 1
    assert counts[("replaced", "SiLU -> GatedActivation")] == 1
    assert counts[("moved", "Linear -> 1x1 BcosConv2d before global pooling")] == 1
    assert counts[("inserted", "DetachableGate (x * gate)")] == 1
    # the SE branch is left as it was, biases included
    assert type(conv.se_reduce) is nn.Conv2d and conv.se_reduce.bias is not None
    assert isinstance(conv.fc, bnn.BcosConv2d) and conv.fc.weight.shape == (5, 8, 1, 1)
    calibrate(conv, x)
    expl = bcosify.explain(conv, x)
    assert float(expl.completeness_error.max()) <= 1e-4


def test_gate_is_detached_only_in_explanation_mode():
    conv = bcosify.convert(Idioms().eval(), mean=MEAN, std=STD)
    gates = [m for m in conv.modules() if isinstance(m, bnn.DetachableGate)]
    assert len(gates) == 1
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    g = torch.rand(1, 8, 1, 1, requires_grad=True)
    assert gates[0](g).requires_grad
    with bcosify.explanation_mode(conv):
        assert not gates[0](g).requires_grad
    assert not gates[0].explanation_mode
    del x


def test_activation_keep_and_maxpool_keep():
    conv = bcosify.convert(
        Idioms().eval(), BcosConfig(activation="keep", maxpool="keep"), mean=MEAN, std=STD
    )
    counts = conv.conversion_report.counts()
    assert counts[("removed", "ReLU")] == 0
    assert isinstance(conv.pool, nn.MaxPool2d)
    assert not conv.relu.inplace


def test_source_model_is_untouched():
    model = Idioms().eval()
    before = copy.deepcopy(model.state_dict())
    bcosify.convert(model, mean=MEAN, std=STD)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.conv1) is nn.Conv2d and model.relu.inplace


def test_relu6_and_hardtanh():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.r6 = nn.ReLU6()

        def forward(self, x):
            return F.hardtanh(self.r6(self.c(x)), 0.0, 6.0).mean((2, 3))

    report = bcosify.analyze(M(), mean=MEAN, std=STD)
    assert report.ok
    assert report.counts()[("removed", "ReLU6")] == 1
    assert report.counts()[("removed", "ReLU")] == 1


def test_unsupported_ops_are_all_listed_in_one_error():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.elu = nn.ELU()
            self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Softplus())

        def forward(self, x):
            x = self.elu(self.conv(x))
            x = torch.exp(self.block(x))
            return x.mean((2, 3))

    with pytest.raises(UnsupportedLayerError) as info:
        bcosify.convert(Bad(), mean=MEAN, std=STD)
    err = info.value
    names = [n for n, _, _ in err.nodes]
    assert names == ["elu", "block.1", "exp"]
    text = str(err)
    assert "torch.nn.modules.activation.ELU" in text and "register_module_rule" in text
    assert "skip_modules" in text
    assert isinstance(err, BcosifyError)
    report = bcosify.analyze(Bad(), mean=MEAN, std=STD)
    assert not report.ok and len(report.unsupported) == 3


def test_skip_modules_and_custom_rule_with_mro():
    class MyBN(nn.BatchNorm2d):
        pass

    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = MyBN(4)
            self.other = nn.BatchNorm2d(4)
            self.elu = nn.ELU()

        def forward(self, x):
            return self.elu(self.other(self.bn(self.conv(x)))).mean((2, 3))

    seen = []

    def rule(module, config):
        seen.append(type(module))
        return bnn.UncenteredBatchNorm2d.from_batchnorm(module, keep_bias=config.keep_bias)

    bcosify.register_module_rule(MyBN, rule)
    try:
        conv = bcosify.convert(M().eval(), BcosConfig(skip_modules=("elu",)), mean=MEAN, std=STD)
    finally:
        assert bcosify.unregister_module_rule(MyBN) is rule
    assert seen == [MyBN]  # the subclass rule won, the base class used the default rule
    assert isinstance(conv.bn, bnn.UncenteredBatchNorm2d)
    assert isinstance(conv.other, bnn.UncenteredBatchNorm2d)
    assert type(conv.elu) is nn.ELU
    assert conv.conversion_report.counts()[("skipped", "ELU")] == 1
    with pytest.raises(BcosifyError, match="nn.Module subclass"):
        bcosify.register_module_rule(Scale(), rule)


def test_untraceable_model_suggests_leaf_modules():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.branchy = Branchy()

        def forward(self, x):
            return self.branchy(self.conv(x)).mean((2, 3))

    with pytest.raises(TraceError, match=r"(?s)in branchy.*leaf_modules=\(\"branchy\",\)"):
        bcosify.convert(M(), mean=MEAN, std=STD)
    # marking it as a leaf and skipping it converts the rest
    conv = bcosify.convert(M(), BcosConfig(skip_modules=("branchy",)), mean=MEAN, std=STD)
    assert isinstance(conv.conv, bnn.BcosConv2d)


def test_refuses_converted_and_wrapped_models():
    model = Idioms().eval()
    conv = bcosify.convert(model, mean=MEAN, std=STD)
    with pytest.raises(BcosifyError, match="already a B-cos network"):
        bcosify.convert(conv)
    with pytest.raises(BcosifyError, match="model.module"):
        bcosify.convert(nn.DataParallel(model), mean=MEAN, std=STD)
    with pytest.raises(BcosifyError, match="nn.Module"):
        bcosify.convert("resnet50")


def test_first_layer_not_foldable_uses_encoded_normalize():
    conv = assert_equivalent(_NotFoldable().eval(), torch.rand(2, 3, 8, 8))
    assert (
        conv.conversion_report.counts()[("inserted", "EncodedNormalize (first layer not foldable)")]
        == 1
    )


class _NotFoldable(nn.Module):
    """The input reaches a conv and a pool: the normalisation cannot fold into the first layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.skip = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return (self.conv(x) + self.skip(F.avg_pool2d(x, 1))).mean((2, 3))


@pytest.mark.parametrize("name", ["idioms", "not_foldable", "resnet18"])
def test_float64_model_converts_in_float64(name):
    """A float64 model converts in float64: equivalent to ~1e-12, every tensor float64. BatchNorm
    statistics, the input fold and EncodedNormalize were rounded through float32 (the float64
    ResNet-18 was off by 3e-7: a deep network with calibrated statistics amplifies that)."""
    torch.manual_seed(0)
    if name == "resnet18":
        model = torchvision.models.resnet18(num_classes=10)
    else:
        model = Idioms() if name == "idioms" else _NotFoldable()
    model = model.double()
    calibrate_batchnorm(model, _normalized(torch.rand(4, 3, 32, 32, dtype=torch.float64)))
    eq = bcosify.convert(model, EQUIVALENCE, mean=MEAN, std=STD)
    tensors = {**dict(eq.named_parameters()), **dict(eq.named_buffers())}
    assert {
        k for k, t in tensors.items() if t.is_floating_point() and t.dtype != torch.float64
    } == set()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(eq(x), model(_normalized(x))) <= 1e-12


def test_fold_is_bias_free_and_exact_at_borders():
    conv = nn.Conv2d(3, 4, 5, padding=2, bias=False)
    model = nn.Sequential(conv, nn.Flatten(1)).eval()
    out = bcosify.convert(model, EQUIVALENCE, mean=MEAN, std=STD)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(_normalized(x)), rtol=1e-5, atol=1e-5)
    folded = out.get_submodule("0")
    assert folded.in_channels == 6 and folded.bias is None


def test_logit_bias_options():
    model = Idioms().eval()
    default = bcosify.convert(model, mean=MEAN, std=STD)
    layer = [m for m in default.modules() if isinstance(m, bnn.LogitLayer)]
    assert (
        len(layer) == 1 and abs(layer[0].logit_bias.item() - (-torch.log(torch.tensor(4.0)))) < 1e-6
    )
    none = bcosify.convert(model, BcosConfig(logit_bias=None), mean=MEAN, std=STD)
    assert not any(isinstance(m, bnn.LogitLayer) for m in none.modules())
    assert bcosify.BcosConfig().resolved_logit_bias(1000) == pytest.approx(-6.9068, abs=1e-4)


def test_functional_dropout_follows_train_mode():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.dropout(self.conv(x), 0.5, training=self.training).mean((2, 3))

    model = M().eval()
    conv = bcosify.convert(model, EQUIVALENCE, mean=MEAN, std=STD)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        # eval: no dropout (training=False was baked in at trace time, so this alone proves little)
        assert rel_err(conv(x), model(_normalized(x))) <= 1e-5
        conv.train()  # train: dropout with p=0.5 follows the mode, as the source's would
        torch.manual_seed(1)
        a = conv(x)
        torch.manual_seed(1)
        b = conv(x)
        torch.manual_seed(2)
        c = conv(x)
        conv.eval()
        d = conv(x)
    torch.testing.assert_close(a, b)  # dropout draws from torch's generator
    assert not torch.allclose(a, c) and not torch.allclose(a, d)
    p = [m.p for m in conv.modules() if isinstance(m, nn.Dropout)]
    assert p == [0.5]


def test_config_validation():
    with pytest.raises(BcosifyError, match="activation"):
        BcosConfig(activation="gelu")
    with pytest.raises(BcosifyError, match="b must be"):
        BcosConfig(b=0.5)
    with pytest.raises(BcosifyError, match="unknown BcosConfig key"):
        BcosConfig.from_dict({"b": 2, "typo": 1})
    with pytest.raises(BcosifyError, match=r"\('conv',\)"):
        BcosConfig(skip_modules="conv")
    with pytest.raises(dataclasses.FrozenInstanceError):
        BcosConfig().b = 3


def test_unknown_preprocessing_warns():
    with pytest.warns(UserWarning, match="mean=..., std=..."):
        bcosify.convert(Idioms().eval())


def test_functional_layers_and_their_biases():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3) * 0.3)
            self.b = nn.Parameter(torch.randn(4))
            self.fc_w = nn.Parameter(torch.randn(5, 4) * 0.3)
            self.fc_b = nn.Parameter(torch.randn(5))

        def forward(self, x):
            x = F.conv2d(x, self.w, self.b, padding=1)
            return F.linear(x.mean((2, 3)), self.fc_w, self.fc_b)

    model = M().eval()
    x = torch.rand(2, 3, 8, 8)
    assert_equivalent(model, x)
    conv = bcosify.convert(model, mean=MEAN, std=STD)
    layers = [m for m in conv.modules() if isinstance(m, (bnn.BcosConv2d, bnn.BcosLinear))]
    assert len(layers) == 2 and all(m.bias is None for m in layers)
    counts = conv.conversion_report.counts()
    assert counts[("replaced", "F.conv2d -> BcosConv2d")] == 1
    assert counts[("moved", "Linear -> 1x1 BcosConv2d before global pooling")] == 1
    calibrate(conv, x)
    assert float(bcosify.explain(conv, x).completeness_error.max()) <= 1e-4


@pytest.mark.parametrize("arch", ["mobilenet_v2", "timm/tf_efficientnet_lite0"])
def test_activation_keep_turns_relu6_into_relu_so_explanations_stay_complete(arch):
    """ReLU6's cap at 6 is a constant that no explanation accounts for: ``activation="keep"``
    makes it a ReLU, ``"exact"`` keeps it (and the pixels then miss part of the logit)."""
    import timm
    import torchvision

    torch.manual_seed(0)
    if arch.startswith("timm/"):
        source = timm.create_model(arch[5:], num_classes=10)
    else:
        source = getattr(torchvision.models, arch)(num_classes=10)
    x = torch.rand(2, 3, 64, 64)
    # statistics from the data, so the output depends on the input
    calibrate_batchnorm(
        source, (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    )
    bns = [m for m in source.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        bns[0].weight.mul_(30.0)  # activations well above 6 from the stem on: a cap bites
    errors = {}
    for activation in ("keep", "exact"):
        model = bcosify.convert(
            source, BcosConfig(b=1, activation=activation), mean=MEAN, std=STD
        ).eval()
        relu6 = [m for m in model.modules() if isinstance(m, nn.ReLU6)]
        assert bool(relu6) == (activation == "exact")
        e = bcosify.explain(model, x)
        pixels = e.contributions.flatten(1).sum(1).double()
        assert float(pixels.abs().min()) > 1e-3  # the pixel part is not negligible
        gap = (pixels + e.constant_total.double() - e.explained_logit.double()).abs()
        errors[activation] = float((gap / pixels.abs()).max())
    assert errors["keep"] < 1e-4, errors
    assert errors["exact"] > 1e-2, errors


def test_first_layer_norm_on_the_normalised_input():
    """``first_layer_norm="normalized"`` takes the first layer's patch norm on the normalised
    encoding (the published code): its scale equals |cos|^(B-1) computed by hand on the
    normalised input, it differs from the raw convention, and explanations stay complete."""
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet18().eval()
    x = torch.rand(2, 3, 64, 64)
    raw = bcosify.convert(source, mean=MEAN, std=STD).eval()
    pub = bcosify.convert(
        source, BcosConfig(first_layer_norm="normalized"), mean=MEAN, std=STD
    ).eval()
    assert BcosConfig.from_dict(BcosConfig(first_layer_norm="normalized").to_dict()) == BcosConfig(
        first_layer_norm="normalized"
    )
    x6 = torch.cat([x, 1 - x], 1)
    m6 = torch.tensor(MEAN + tuple(1 - m for m in MEAN)).view(1, 6, 1, 1)
    s6 = torch.tensor(STD + STD).view(1, 6, 1, 1)
    conv = pub.conv1
    with torch.no_grad():
        lin = F.conv2d(x6, conv.weight, None, conv.stride, conv.padding)
        z = F.pad((x6 - m6) / s6, (3, 3, 3, 3))  # zero padding of the normalised input
        norm = F.avg_pool2d(z.pow(2).sum(1, keepdim=True), 7, 2, divisor_override=1).sqrt()
        expected = lin * (lin / norm).abs()
        torch.testing.assert_close(pub.conv1(x6), expected, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(raw.conv1(x6), expected, rtol=1e-2)
    # explanation mode: the first layer is W(x) x with the norm a constant, so the contributions
    # x * dy/dx sum to its output (the norm of the shifted input is not homogeneous in x: a
    # norm that were not detached would break this)
    x6 = x6.clone().requires_grad_(True)
    with bcosify.explanation_mode(pub):
        y = pub.conv1(x6).sum()
        (g,) = torch.autograd.grad(y, x6)
    torch.testing.assert_close((g * x6).sum(), y.detach(), rtol=1e-4, atol=1e-5)
    with pytest.raises(bcosify.BcosifyError, match="first_layer_norm"):
        BcosConfig(first_layer_norm="published")


_POOL_THEN_FLATTEN = {
    "AdaptiveAvgPool2d(1) + flatten": lambda m, x: torch.flatten(m.pool1(x), 1),
    "AdaptiveAvgPool2d((1, 1)) + nn.Flatten": lambda m, x: m.flat(m.pool11(x)),
    "adaptive_avg_pool2d + view(N, -1)": lambda m, x: nn.functional.adaptive_avg_pool2d(x, 1).view(
        x.size(0), -1
    ),
    "AdaptiveAvgPool2d((1, 1)) + squeeze": lambda m, x: m.pool11(x).squeeze(-1).squeeze(-1),
    "AdaptiveAvgPool2d(1) + reshape(N, -1)": lambda m, x: m.pool1(x).reshape(x.shape[0], -1),
    "mean over H, W": lambda m, x: x.mean((2, 3)),
}

_CHANNELS_LAST_MEAN = {
    "NHWC mean((1, 2))": (lambda x: x.permute(0, 2, 3, 1), lambda f: f.mean((1, 2)), True),
    "tokens mean(dim=1)": (lambda x: x.flatten(2).transpose(1, 2), lambda f: f.mean(dim=1), True),
    "NHWC mean((1, 2), keepdim=True)": (
        lambda x: x.permute(0, 2, 3, 1),
        lambda f: f.mean((1, 2), keepdim=True).flatten(1),
        False,  # not recognised: the head stays after the pooling, still exact
    ),
}


@pytest.mark.parametrize("idiom", list(_CHANNELS_LAST_MEAN))
def test_the_head_moves_before_a_channels_last_mean(idiom):
    """timm's NHWC heads (Swin) and token means: the head becomes a per-position BcosLinear."""
    layout, pool, moves = _CHANNELS_LAST_MEAN[idiom]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(pool(layout(self.conv(x))))

    torch.manual_seed(0)
    model = Net().eval()
    exact = BcosConfig(b=1.0, keep_bias=True, activation="exact", maxpool="keep")
    conv = bcosify.convert(model, exact, mean=MEAN, std=STD)
    moved = [e for e in conv.conversion_report.entries if e.action == "moved"]
    assert len(moved) == int(moves), conv.conversion_report
    x = torch.rand(2, 3, 10, 10)
    ref = model((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    torch.testing.assert_close(conv(x), ref, rtol=1e-4, atol=1e-5)
    if moves:  # B=2: the head is a B-cos unit per position, and the explanation stays complete
        model2 = bcosify.convert(model, mean=MEAN, std=STD)
        e = bcosify.explain(model2, x)
        pixels = e.contributions.flatten(1).sum(1)
        torch.testing.assert_close(pixels, e.explained_logit - e.constant_total, rtol=1e-4, atol=0)
        head = model2.get_submodule("fc")
        assert isinstance(head, bcosify.nn.BcosLinear)
        features = torch.rand(2, 4, 4, 8)
        with torch.no_grad():  # B=2 per position is not B=2 on the mean: it acts before it
            assert not torch.allclose(head(features).mean((1, 2)), head(features.mean((1, 2))))


@pytest.mark.parametrize("idiom", list(_POOL_THEN_FLATTEN))
def test_the_head_moves_before_every_pooling_idiom(idiom):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.pool1 = nn.AdaptiveAvgPool2d(1)
            self.pool11 = nn.AdaptiveAvgPool2d((1, 1))
            self.flat = nn.Flatten()
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(_POOL_THEN_FLATTEN[idiom](self, self.conv(x)))

    torch.manual_seed(0)
    model = Net().eval()
    exact = BcosConfig(b=1.0, keep_bias=True, activation="exact", maxpool="keep")
    conv = bcosify.convert(model, exact, mean=MEAN, std=STD)
    counts = conv.conversion_report.counts()
    assert counts[("moved", "Linear -> 1x1 BcosConv2d before global pooling")] == 1, counts
    x = torch.rand(2, 3, 10, 10)
    ref = model((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    torch.testing.assert_close(conv(x), ref, rtol=1e-4, atol=1e-5)


def test_an_optional_input_is_traced_at_its_default():
    # a masked-image model's forward(x, mask=None): the classifier is model(x); traced as a
    # tensor the mask would become a required input (and a product of two inputs)
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x, mask=None):
            if mask is not None:
                x = x * mask
            return self.fc(self.conv(x).mean((2, 3)))

    model = Masked().eval()
    x = torch.rand(2, 3, 8, 8)
    eq = assert_equivalent(model, x)
    assert [n.name for n in eq.graph.nodes if n.op == "placeholder"][0] == "x"
    conv = bcosify.convert(model, mean=MEAN, std=STD)
    assert conv(x).shape == (2, 3)
    with pytest.raises(AssertionError, match="specialized to have value None"):
        conv(x, torch.ones_like(x))


def test_timm_no_trace_modules_are_traced_into_when_they_trace():
    from timm.layers import register_notrace_module

    @register_notrace_module
    class Plain(nn.Module):  # marked for timm's feature extraction, traces all the same
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    @register_notrace_module
    class Branchy(Plain):  # data-dependent control flow: stays a leaf, reported
        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    class Net(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.stem, self.block, self.fc = nn.Conv2d(3, 4, 3), block(), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.block(self.stem(x)).mean((2, 3)))

    conv = bcosify.convert(Net(Plain), mean=MEAN, std=STD)
    assert isinstance(conv.block.conv, bnn.BcosConv2d)
    report = bcosify.analyze(Net(Branchy), mean=MEAN, std=STD)
    assert [n for n, _, _ in report.unsupported] == ["block"]


class _InPlace(nn.Module):
    """In-place operations whose effect later nodes see through the mutated tensor."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.offset = nn.Parameter(torch.linspace(-1, 1, 4).view(1, 4, 1, 1))
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)
        if self.kind == "add_":  # result unused: later nodes read h
            h.add_(self.offset)
            out = h
        elif self.kind == "iadd":  # an alias of h sees the change
            alias = h
            h += self.offset
            out = h + alias
        elif self.kind == "relu_module":
            r = self.act(h)
            out = r + h
        elif self.kind == "relu_function":
            r = F.relu(h, inplace=True)
            out = r * 2 + h
        elif self.kind == "earlier_view":  # a view taken before the change shares it
            v = h.flatten(2)
            h.add_(self.offset)
            out = v.view_as(h)
        elif self.kind == "cast_alias":  # .float() of a float tensor is the tensor itself
            z = h.float()
            z.add_(self.offset)
            out = h
        else:  # through a view of h, which is used afterwards
            h[:, :2].mul_(2.0)
            out = h
        return self.fc(out.mean((2, 3)))


@pytest.mark.parametrize("kind", ["add_", "relu_module", "relu_function"])
def test_in_place_operations_keep_their_effect_on_later_nodes(kind):
    # x.add_(c) used to become an out-of-place AddConstant whose result nothing read: the
    # converted model silently lost the offset
    torch.manual_seed(0)
    model = _InPlace(kind).eval()
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        ref = model(_normalized(x))
    converted = bcosify.convert(model, EQUIVALENCE, mean=MEAN, std=STD)
    torch.testing.assert_close(converted(x), ref, rtol=1e-4, atol=1e-5)
    explained = bcosify.convert(model, mean=MEAN, std=STD)
    calibrate(explained, x)
    e = bcosify.explain(explained, x)
    pixels = e.contributions.flatten(1).sum(1)
    err = (pixels + e.constant_total - e.explained_logit).abs() / pixels.abs().max()
    assert err.max() < 1e-4


def test_a_graph_that_torch_fx_traced_wrong_is_refused():
    # `alias = h; h += c`: torch.fx records an out-of-place add, so `alias` misses the change
    with pytest.raises(TraceError, match="computes something else than the model"):
        bcosify.convert(_InPlace("iadd").eval(), EQUIVALENCE, mean=MEAN, std=STD)


@pytest.mark.parametrize("kind", ["view", "earlier_view", "cast_alias"])
def test_an_in_place_operation_seen_through_another_name_is_reported(kind):
    with pytest.raises(UnsupportedLayerError, match="in-place operation on a tensor that a view"):
        bcosify.convert(_InPlace(kind).eval(), EQUIVALENCE, mean=MEAN, std=STD)
