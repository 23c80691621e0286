"""The rule registry: no silent overwrite, unregistering, scoped and per-call rules, validated
rule results, user rules for gates, and subclasses that override forward()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bcosify
from bcosify import BcosConfig, BcosifyError, UnsupportedLayerError
from bcosify import nn as bnn
from bcosify.fx import registry as rules
from tests.helpers import MEAN, STD, Fn, normalized

EXACT = BcosConfig(b=1.0, keep_bias=True, activation="exact", maxpool="keep")


class Net(nn.Module):
    def __init__(self, conv: nn.Module, act: nn.Module | None = None):
        super().__init__()
        self.conv = conv
        self.act = act or nn.Identity()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


class WSConv(nn.Conv2d):
    """Weight-standardised convolution: not the function of nn.Conv2d."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_a_subclass_that_overrides_forward_is_reported_not_converted_as_its_base():
    torch.manual_seed(0)
    model = Net(WSConv(3, 4, 3, padding=1)).eval()
    with pytest.raises(
        UnsupportedLayerError, match="WSConv overrides forward\\(\\) of Conv2d"
    ) as e:
        bcosify.convert(model, EXACT, mean=MEAN, std=STD)
    assert "declare_safe_subclass" in str(e.value)
    report = bcosify.analyze(model, EXACT, mean=MEAN, std=STD)
    assert [u[0] for u in report.unsupported] == ["conv"]


def test_a_subclass_declared_safe_uses_its_base_rule_and_stays_exact():
    class FastConv(nn.Conv2d):
        def forward(self, x):
            return self._conv_forward(x, self.weight, self.bias)

    torch.manual_seed(0)
    model = Net(FastConv(3, 4, 3, padding=1)).eval()
    with rules.scoped_rules():
        bcosify.declare_safe_subclass(FastConv)
        conv = bcosify.convert(model, EXACT, mean=MEAN, std=STD)
        x = torch.rand(2, 3, 8, 8)
        ref = model(normalized(x))
        torch.testing.assert_close(conv(x), ref, rtol=1e-4, atol=1e-5)
    assert rules.get_module_rule(FastConv) is None  # the declaration was scoped


def test_registering_twice_raises_and_override_and_unregister_restore():
    class Mine(nn.Module):
        def forward(self, x):
            return x

    first, second = (lambda m, c: rules.KEEP), (lambda m, c: rules.REMOVE)
    bcosify.register_module_rule(Mine, first)
    try:
        with pytest.raises(BcosifyError, match="already exists .*override=True"):
            bcosify.register_module_rule(Mine, second)
        bcosify.register_module_rule(Mine, second, override=True)
        assert rules.get_module_rule(Mine) is second
    finally:
        assert bcosify.unregister_module_rule(Mine) is second
    assert rules.get_module_rule(Mine) is None
    with pytest.raises(BcosifyError, match="no module rule of yours"):
        bcosify.unregister_module_rule(Mine)
    # overriding a built-in rule needs override=True; unregistering brings the built-in back
    builtin = rules.get_module_rule(nn.BatchNorm2d)
    with pytest.raises(BcosifyError, match="bcosify has"):
        bcosify.register_module_rule(nn.BatchNorm2d, first)
    bcosify.register_module_rule(nn.BatchNorm2d, first, override=True)
    assert rules.get_module_rule(nn.BatchNorm2d) is first
    bcosify.unregister_module_rule(nn.BatchNorm2d)
    assert rules.get_module_rule(nn.BatchNorm2d) is builtin
    with pytest.raises(BcosifyError, match="function rule .*already exists"):
        bcosify.register_function_rule(torch.cat, lambda ctx, node: None)


def test_scoped_and_per_call_rules_leave_nothing_behind():
    model = Net(nn.Conv2d(3, 4, 3), nn.ELU()).eval()  # nn.ELU has no rule
    with pytest.raises(UnsupportedLayerError, match="ELU"):
        bcosify.convert(model, mean=MEAN, std=STD)
    keep = lambda module, config: rules.KEEP  # noqa: E731
    conv = bcosify.convert(model, mean=MEAN, std=STD, rules={nn.ELU: keep})
    assert type(conv.act) is nn.ELU
    assert rules.get_module_rule(nn.ELU) is None
    with rules.scoped_rules({nn.ELU: keep}):
        bcosify.register_module_rule(nn.CELU, keep)  # registered inside: gone afterwards too
        assert bcosify.analyze(model, mean=MEAN, std=STD).ok
    assert rules.get_module_rule(nn.ELU) is None and rules.get_module_rule(nn.CELU) is None
    with pytest.raises(RuntimeError), rules.scoped_rules({nn.ELU: keep}):
        raise RuntimeError("the block fails")
    assert rules.get_module_rule(nn.ELU) is None


@pytest.mark.parametrize("bad", [3, "KEEP", nn.Linear])
def test_a_rule_result_that_is_not_a_module_keep_remove_or_none_is_an_error(bad):
    model = Net(nn.Conv2d(3, 4, 3), nn.ELU()).eval()
    with pytest.raises(BcosifyError, match="returned .*a module rule returns a replacement"):
        bcosify.convert(model, mean=MEAN, std=STD, rules={nn.ELU: lambda m, c: bad})


def test_a_rule_that_changes_the_module_in_place_is_reported():
    def tweak(module, config):
        module.alpha = 0.5
        return module

    model = Net(nn.Conv2d(3, 4, 3), nn.ELU()).eval()
    conv = bcosify.convert(model, mean=MEAN, std=STD, rules={nn.ELU: tweak})
    entries = [e for e in conv.conversion_report.entries if e.name == "act"]
    assert entries and entries[0].action == "kept" and "in place" in entries[0].detail


def test_user_rules_for_gates_are_consulted():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.sig = nn.Sigmoid()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.sigmoid(self.sig(self.conv(x))).mean((2, 3)))

    model = Gated().eval()
    # bcosify's own rule: a sigmoid on the explained path is a gated identity plus a constant
    own = bcosify.convert(model, mean=MEAN, std=STD)
    assert isinstance(own.sig, bnn.GatedActivation) and own.sig.kind == "sigmoid"
    seen = []

    def module_rule(module, config):
        seen.append("module")
        return bnn.GatedActivation("tanh")

    def function_rule(ctx, node):
        seen.append("function")
        ctx.replace_with_module(node, nn.Identity(), "sigmoid")

    conv = bcosify.convert(
        model, mean=MEAN, std=STD, rules={nn.Sigmoid: module_rule, torch.sigmoid: function_rule}
    )
    assert seen == ["module", "function"]
    assert isinstance(conv.sig, bnn.GatedActivation) and conv.sig.kind == "tanh"


@pytest.mark.parametrize(
    "make",
    [
        lambda tl: tl.norm.LayerNorm2dFp32(4),
        lambda tl: tl.norm.LayerNormExp2d(4),
        lambda tl: tl.GroupNorm1Act(4, act_layer=nn.ReLU),
        lambda tl: tl.pool2d_same.AvgPool2dSame(3, 2),
    ],
    ids=["LayerNorm2dFp32", "LayerNormExp2d", "GroupNorm1Act", "AvgPool2dSame"],
)
def test_timm_layers_that_override_forward_convert_exactly(make):
    import timm.layers as tl

    torch.manual_seed(0)
    layer = make(tl)
    for p in layer.parameters():  # not the identity affine
        nn.init.uniform_(p, 0.5, 1.5)
    model = Net(nn.Conv2d(3, 4, 3, padding=1), layer).eval()
    conv = bcosify.convert(model, EXACT, mean=MEAN, std=STD)
    x = torch.rand(2, 3, 9, 9)
    ref = model(normalized(x))
    assert ref.std(0).max() > 1e-3  # the output depends on the input
    torch.testing.assert_close(conv(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("act", [nn.ELU, nn.Softplus])
@pytest.mark.parametrize("layer", ["BatchNormAct2d", "GroupNormAct"])
def test_a_timm_norm_act_layer_with_an_unsupported_activation_is_reported(layer, act):
    # the activation used to be kept as it was (no rule, or a gate on its own): silently wrong
    import timm.layers as tl

    norm = getattr(tl, layer)(4, act_layer=act) if layer == "BatchNormAct2d" else None
    norm = norm or tl.GroupNormAct(4, 2, act_layer=act)
    model = Net(nn.Conv2d(3, 4, 3, padding=1), norm).eval()
    with pytest.raises(UnsupportedLayerError, match="its activation has no conversion rule"):
        bcosify.convert(model, EXACT, mean=MEAN, std=STD)


def _docs_example() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text()
    blocks = text.split("```python\n")[1:]
    code = [b.split("```")[0] for b in blocks if "def convert_conv_mlp" in b]
    assert len(code) == 1
    return code[0]


def test_the_worked_example_of_docs_rules_md_converts_timm_conv_mlp_exactly():
    import timm.models.vgg as vgg

    from tests.helpers import calibrate

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.pre_logits = vgg.ConvMlp(4, 6, kernel_size=3, drop_rate=0.0)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.pre_logits(self.bn(self.stem(x))).mean((2, 3)))

    torch.manual_seed(0)
    model = Head().eval()
    x = torch.rand(4, 3, 6, 6)
    norm = normalized(x)
    # without the rule, ConvMlp is traced at one input size (it branches on the size)
    specialized = bcosify.convert(model, EXACT, mean=MEAN, std=STD, input_size=6)
    entry = next(e for e in specialized.conversion_report.entries if e.name == "pre_logits")
    assert (entry.action, entry.what.split()[0]) == ("specialized", "ConvMlp")
    torch.testing.assert_close(specialized(x), model(norm), rtol=1e-4, atol=1e-5)
    with pytest.raises(BcosifyError, match="takes 6x6 images only"):
        specialized(torch.rand(1, 3, 2, 2))
    with rules.scoped_rules():
        exec(_docs_example(), {})
        exact = bcosify.convert(model, EXACT, mean=MEAN, std=STD)
        default = bcosify.convert(model, mean=MEAN, std=STD)
    ref = model(norm)
    assert ref.std(0).max() > 1e-2  # the output depends on the input
    torch.testing.assert_close(exact(x), ref, rtol=1e-4, atol=1e-5)
    # with the rule, any size: at 2x2 ConvMlp takes its other branch (it pools first)
    small = torch.rand(2, 3, 2, 2)
    ref_small = model(normalized(small))
    torch.testing.assert_close(exact(small), ref_small, rtol=1e-4, atol=1e-5)
    assert isinstance(default.pre_logits.fc1, bnn.BcosConv2d)
    calibrate(default, x)  # random B=2 units shrink the signal: unit RMS per layer
    e = bcosify.explain(default, x)
    pixels = e.contributions.flatten(1).sum(1)
    assert (pixels.abs() > 1e-3 * e.explained_logit.abs()).all()  # not a bias-only logit
    err = (pixels + e.constant_total - e.explained_logit).abs() / pixels.abs()
    assert err.max() < 1e-4


F = nn.functional
SPELLINGS = {
    "unfold": (nn.Unfold(2, stride=2), Fn(lambda x: F.unfold(x, 2, stride=2))),
    "reflect": (nn.ReflectionPad2d(1), Fn(lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect"))),
    "replicate": (
        nn.ReplicationPad2d(1),
        Fn(lambda x: F.pad(x, (1, 1, 1, 1), mode="replicate")),
    ),
    "hardtanh": (nn.Hardtanh(0.0, 6.0), Fn(lambda x: F.hardtanh(x, 0.0, 6.0))),
    "sigmoid_": (Fn(lambda x: x * x.clone().sigmoid_()), Fn(lambda x: x * x.sigmoid())),
}


class _Flat(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op
        self.fc = nn.Linear(4 * 100, 3)

    def forward(self, x):
        y = self.op(self.conv(x)).flatten(1)
        return self.fc(nn.functional.pad(y, (0, 400 - y.shape[1])))


@pytest.mark.parametrize("name", list(SPELLINGS))
@pytest.mark.parametrize("activation", ["exact", "keep"])
def test_module_method_and_function_spellings_convert_alike(name, activation):
    spelled, reference = SPELLINGS[name]
    torch.manual_seed(0)
    a = _Flat(spelled).eval()
    b = _Flat(reference).eval()
    b.load_state_dict(a.state_dict())
    cfg = BcosConfig(b=1.0 if activation == "exact" else 2.0, keep_bias=True, activation=activation)
    ca = bcosify.convert(a, cfg, mean=MEAN, std=STD)
    cb = bcosify.convert(b, cfg, mean=MEAN, std=STD)
    x = torch.rand(3, 3, 8, 8)
    assert a(x).std(0).max() > 1e-3
    torch.testing.assert_close(ca(x), cb(x), rtol=1e-5, atol=1e-6)
    e = bcosify.explain(ca, x)
    pixels = e.contributions.flatten(1).sum(1)
    err = (pixels + e.constant_total - e.explained_logit).abs() / pixels.abs()
    assert err.max() < 1e-4


def test_hardtanh_that_is_not_a_capped_relu_is_reported():
    with pytest.raises(UnsupportedLayerError, match="not a capped ReLU"):
        bcosify.convert(_Flat(nn.Hardtanh()).eval(), mean=MEAN, std=STD)
