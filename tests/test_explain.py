from __future__ import annotations

import pytest
import torch
import torchvision
from PIL import Image

import bcosify
from bcosify import BcosifyError
from tests.helpers import MEAN, STD, calibrate, small_cnn


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = bcosify.convert(torchvision.models.resnet18(num_classes=10), mean=MEAN, std=STD)
    calibrate(m, torch.rand(4, 3, 32, 32))
    return m


def test_batch_equals_single_and_input_untouched(model):
    x = torch.rand(3, 3, 32, 32)
    x_copy = x.clone()
    batch = bcosify.explain(model, x, target=[1, 2, 3])
    assert torch.equal(x, x_copy) and not x.requires_grad and x.grad is None
    for i in range(3):
        single = bcosify.explain(model, x[i], target=i + 1)
        torch.testing.assert_close(
            single.contributions[0], batch.contributions[i], rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(single.logits[0], batch.logits[i], rtol=1e-4, atol=1e-5)
    assert batch.dynamic_weights.shape == (3, 6, 32, 32)
    assert batch.contribution_map.shape == (3, 32, 32)
    assert batch.target.tolist() == [1, 2, 3]
    assert float(batch.completeness_error.max()) <= 1e-4


def test_targets_and_prediction(model):
    x = torch.rand(2, 3, 32, 32)
    e = bcosify.explain(model, x)
    assert torch.equal(e.target, e.logits.argmax(1)) and torch.equal(e.prediction, e.target)
    e5 = bcosify.explain(model, x, target=5)
    assert e5.target.tolist() == [5, 5]
    et = bcosify.explain(model, x, target=torch.tensor([0, 9]))
    assert et.target.tolist() == [0, 9]
    # contributions differ per explained class
    assert not torch.allclose(et.contributions[0], e5.contributions[0])


def test_explanation_mode_restored_and_training_flag_kept(model):
    model.train()
    bcosify.explain(model, torch.rand(1, 3, 32, 32))
    assert model.training
    assert not bcosify.nn.is_explanation_mode(model)
    model.eval()


@pytest.mark.parametrize(
    "images,target,match",
    [
        (torch.rand(1, 4, 32, 32), None, "N x 3 x H x W"),
        (torch.rand(1, 3, 32, 32) * 4 - 2, None, r"\[0, 1\].*do not normalise"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), None, "floats"),
        (torch.rand(2, 3, 32, 32), 10, r"\[0, 9\]"),
        (torch.rand(2, 3, 32, 32), [1, 2, 3], "one class per sample"),
        (torch.rand(2, 3, 32, 32), [[1, 2], [3, 4], [5, 6]], r"2 x k classes"),
        (torch.rand(2, 3, 32, 32), [[1, 2], [3, 10]], r"\[0, 9\]"),
        (torch.rand(2, 3, 32, 32), "topk:0", "'topk:K'"),
        (torch.rand(2, 3, 32, 32), "top:3", "'topk:K'"),
        (torch.rand(2, 3, 32, 32), "topk:11", "only 10 classes"),
    ],
)
def test_bad_input(model, images, target, match):
    with pytest.raises(BcosifyError, match=match):
        bcosify.explain(model, images, target=target)


def test_not_a_bcos_model():
    with pytest.raises(BcosifyError, match="bcosify.convert"):
        bcosify.explain(torchvision.models.resnet18(), torch.rand(1, 3, 32, 32))


def test_rgba_and_figures(model, tmp_path):
    e = bcosify.explain(model, torch.rand(2, 3, 32, 32))
    rgba = e.to_rgba(smooth=3)
    assert rgba.shape == (2, 32, 32, 4) and float(rgba.min()) >= 0 and float(rgba.max()) <= 1
    paths = e.save_figures(tmp_path / "figs", names=["a", "b"], class_names=list("abcdefghij"))
    assert [p.name for p in paths] == ["a.png", "b.png"]
    with Image.open(paths[0]) as im:
        assert im.width > 2 * im.height


def test_pixel_completeness_error_sees_what_the_logit_bias_hides(model):
    """An error of 1 % in the contributions is 1 % of the pixel part, however large the constant
    (the logit bias) next to it; the logit-relative error hides most of it."""
    import dataclasses

    e = bcosify.explain(model, torch.rand(2, 3, 32, 32))
    pixels = e.explained_logit - e.constant_total
    assert float(pixels.abs().min()) > 1e-2 and float(e.pixel_completeness_error.max()) <= 1e-4
    wrong = dataclasses.replace(e, contributions=e.contributions * 1.01)
    torch.testing.assert_close(
        wrong.pixel_completeness_error, torch.full((2,), 0.01), atol=2e-4, rtol=0
    )
    hidden = pixels.abs() / e.explained_logit.abs()
    torch.testing.assert_close(wrong.completeness_error, 0.01 * hidden, atol=2e-4, rtol=0)


def test_kept_biases_are_constant_terms_of_each_sample():
    """With biases kept (B=2), every bias is reported as a constant term, and contributions
    plus constants equal the logit, checked where the kept biases are a large part of it."""
    source = small_cnn(4)
    with torch.no_grad():
        for m in source:
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0, 1)
    config = bcosify.BcosConfig(keep_bias=True)
    model = bcosify.convert(source, config, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.rand(3, 3, 16, 16)
    calibrate(model, x)
    e = bcosify.explain(model, x)
    biases = {k: v for k, v in e.constant_contributions.items() if k.endswith(".bias")}
    assert len(biases) == 3  # the two convolutions and the head
    kept = sum(biases.values())
    assert float((kept.abs() / e.explained_logit.abs()).min()) > 0.05  # they matter
    assert float(e.completeness_error.max()) <= 1e-5
    # a sample's constants are its own: alone it gets the same ones
    alone = bcosify.explain(model, x[1:2], e.target[1:2])
    for name, value in e.constant_contributions.items():
        torch.testing.assert_close(alone.constant_contributions[name], value[1:2])


# ---------------------------------------------------------------- several targets per sample
@pytest.fixture(scope="module")
def vit():
    """A model with a constant besides the logit bias (the position embedding), in float64."""
    torch.manual_seed(0)
    m = bcosify.build_model("bcos-v2/vitc_ti_patch1_14", weights="none", num_classes=12)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:  # norm scales: away from 1, so that the logits vary
                p.uniform_(0.5, 1.5)
    return m.double()


@pytest.mark.parametrize("name", ["model", "vit"])
def test_several_targets_equal_single_explanations(request, name):
    """k targets per sample from one forward and batched backward passes: each equals the
    single-target explanation to 1e-6, and completeness holds per target."""
    model = request.getfixturevalue(name)
    dtype = next(model.parameters()).dtype
    size = 32 if name == "model" else 112
    x = torch.rand(3, 3, size, size, dtype=dtype)
    many = bcosify.explain(model, x, target="topk:4", chunk_size=3)  # two chunks
    assert many.multi_target and many.target.shape == (3, 4)
    assert torch.equal(many.target, many.logits.topk(4, dim=1).indices)
    assert many.dynamic_weights.shape == (3, 4, 6, size, size)
    assert many.contribution_map.shape == (3, 4, size, size)
    for j in range(4):
        one = bcosify.explain(model, x, target=many.target[:, j])
        scale = one.dynamic_weights.abs().max()
        assert float(scale) > 0
        assert float((many.dynamic_weights[:, j] - one.dynamic_weights).abs().max() / scale) < 1e-6
        torch.testing.assert_close(many.contributions[:, j], one.contributions, rtol=1e-6, atol=0)
        assert set(many.constant_contributions) == set(one.constant_contributions)
        for key, value in one.constant_contributions.items():
            torch.testing.assert_close(
                many.constant_contributions[key][:, j], value, rtol=1e-6, atol=1e-12
            )
    assert many.pixel_completeness_error.shape == (3, 4)
    limit = 1e-4 if dtype == torch.float32 else 1e-8
    assert float(many.pixel_completeness_error.max()) < limit
    if name == "vit":
        assert "position_embedding" in many.constant_contributions


def test_target_tensors_lists_and_chunks_agree(model):
    x = torch.rand(2, 3, 32, 32)
    targets = [[0, 5, 9], [3, 3, 1]]
    a = bcosify.explain(model, x, target=targets)
    b = bcosify.explain(model, x, target=torch.tensor(targets), chunk_size=1)
    assert a.target.tolist() == targets
    torch.testing.assert_close(a.dynamic_weights, b.dynamic_weights, rtol=1e-6, atol=0)
    with pytest.raises(BcosifyError, match="chunk_size"):
        bcosify.explain(model, x, target=targets, chunk_size=0)


def test_figures_of_several_targets(model, tmp_path):
    e = bcosify.explain(model, torch.rand(2, 3, 32, 32), target="topk:2")
    assert e.to_rgba(smooth=3).shape == (2, 2, 32, 32, 4)
    paths = e.save_figures(tmp_path, names=["a", "b"])
    expected = [f"{n}_class{int(e.target[i, j])}.png" for i, n in enumerate("ab") for j in range(2)]
    assert [p.name for p in paths] == expected


def test_explain_under_no_grad():
    """Evaluation code often runs under torch.no_grad (Captum's sensitivity metric does):
    explain still explains, one target and several."""
    import bcosify

    torch.manual_seed(0)
    model = bcosify.convert(bcosify.build_model("resnet18", weights="none", num_classes=5))
    x = torch.rand(2, 3, 32, 32)
    want = bcosify.explain(model, x, target=[1, 2])
    with torch.no_grad():
        got = bcosify.explain(model, x, target=[1, 2])
        several = bcosify.explain(model, x, target=[[1, 3], [2, 4]])
    assert torch.equal(got.contributions, want.contributions)
    assert torch.equal(several.contributions[:, 0], want.contributions)
