"""The maths of fine-tuning, checked against hand computations: gradient accumulation, the AGC
bound per unit, mixup targets, bf16 autocast and the EMA formula.

Plain SGD (no momentum, no weight decay, constant lr) makes one step ``w - lr * g``, so a wrong
gradient scale shows in the weights (Adam would hide it: its steps do not depend on the scale).
The source has no BatchNorm, so a batch of 8 and two micro-batches of 4 compute the same
gradient.
"""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

import bcosify
import bcosify.train.loop as loop
from bcosify import nn as bnn
from bcosify.train import finetune
from bcosify.train.losses import BCEWithOffTargets
from tests.helpers import calibrate, small_cnn

LR = 0.5


def _model() -> torch.nn.Module:
    model = bcosify.convert(small_cnn(3), mean=(0.5,) * 3, std=(0.5,) * 3)
    return calibrate(model, _tensors(_data())[0])  # gradients of a useful size


def _data(n: int = 8) -> list:
    g = torch.Generator().manual_seed(3)
    images = [(torch.rand(16, 16, 3, generator=g) * 255).byte().numpy() for _ in range(n)]
    return [(Image.fromarray(im), i % 3) for i, im in enumerate(images)]


def _tensors(data: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([to_tensor(im) for im, _ in data]), torch.tensor([y for _, y in data])


def _run(tmp_path, model, data, *, batch_size=8, epochs=1, lr=LR, train=None, augment=None, **kw):
    return finetune(
        {
            "data": {
                "image_size": 16,
                "eval_resize": 16,
                "batch_size": batch_size,
                "num_workers": 0,
                "augment": {
                    "scale": [1.0, 1.0],
                    "ratio": [1.0, 1.0],
                    "hflip": 0.0,
                    **(augment or {}),
                },
            },
            "optim": {"name": "sgd", "lr": lr, "momentum": 0.0, "schedule": "constant"},
            "train": {"epochs": epochs, "loss": "bce", "cpu": True, **(train or {})},
            "output": str(tmp_path),
            "log": {"trackers": ["csv"], "explain_images": 0},
        },
        model=model,
        train_dataset=data,
        **kw,
    )


def _gradients(model, x, y) -> list[torch.Tensor]:
    model.train()
    loss = BCEWithOffTargets(model.bcosify_num_classes)(model(x), y)
    return list(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad]))


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("batch_size, accum", [(8, 1), (4, 2), (2, 4)])
def test_gradient_accumulation_equals_one_full_batch_step(tmp_path, batch_size, accum):
    model, data = _model(), _data()
    start = _params(model)
    grads = _gradients(copy.deepcopy(model), *_tensors(data))
    result = _run(tmp_path, model, data, batch_size=batch_size, train={"grad_accum_steps": accum})
    assert result.global_step == 1
    for p0, g, p in zip(start, grads, _params(result.model)):
        scale = float((LR * g).abs().max())
        assert scale > 1e-3  # the step is visible
        torch.testing.assert_close(p - p0, -LR * g, rtol=1e-3, atol=1e-4 * scale)


def _unitwise(t: torch.Tensor) -> torch.Tensor:
    """Norm per output unit (the whole tensor for a vector), as Brock et al. 2021 define it."""
    return t.norm() if t.ndim <= 1 else t.flatten(1).norm(dim=1)


def test_agc_bound_holds_per_unit(tmp_path):
    """One SGD step with lr 1: every unit's step is its gradient, clipped to
    ``agc * max(||w_unit||, 1e-3)`` where it is larger, untouched where it is not."""
    model, data = _model(), _data()
    agc = 0.02
    start = _params(model)
    grads = _gradients(copy.deepcopy(model), *_tensors(data))
    result = _run(tmp_path, model, data, lr=1.0, train={"agc": agc})
    clipped = kept = 0
    for p0, g, p in zip(start, grads, _params(result.model)):
        step = p0 - p
        bound = _unitwise(p0).clamp_min(1e-3) * agc
        over = _unitwise(g) > bound
        assert bool((_unitwise(step) <= bound * (1 + 1e-5)).all())
        if p0.ndim > 1:
            torch.testing.assert_close(_unitwise(step)[over], bound[over], rtol=1e-4, atol=0)
            torch.testing.assert_close(step[~over], g[~over], rtol=1e-4, atol=1e-7)
        clipped += int(over.sum())
        kept += int((~over).sum())
    assert clipped and kept, (clipped, kept)  # both branches seen


class _RecordingBCE(BCEWithOffTargets):
    seen: list = []

    def forward(self, logits, target):
        _RecordingBCE.seen.append(target.detach().clone())
        return super().forward(logits, target)


def test_mixup_targets_reach_the_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "BCEWithOffTargets", _RecordingBCE)
    _RecordingBCE.seen = []
    model, data = _model(), _data()
    inputs = []
    model.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    _run(tmp_path, model, data, epochs=2, augment={"mixup": 1.0})
    assert len(_RecordingBCE.seen) == 2
    x, _ = _tensors(data)
    for target, images in zip(_RecordingBCE.seen, inputs):
        assert target.shape == (8, 3) and target.dtype.is_floating_point
        torch.testing.assert_close(target.sum(1), torch.ones(8))
        # timm mixes each sample with the batch flipped, with one lambda per batch; a row stays
        # one-hot where both samples have the same class
        top = target.max(1).values
        assert bool((top < 1).any()), "the loss saw hard labels"
        lam = float(top[top < 1][0])
        assert torch.allclose(top[top < 1], torch.tensor(lam)) and 0.5 <= lam < 1
        # the images the model saw are mixed with the same lambda as the targets
        mixed = images[0]
        pairs = [lam * x[i] + (1 - lam) * x[j] for i in range(8) for j in range(8)]
        assert min(float((mixed - p).abs().max()) for p in pairs) < 1e-5


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("no", None)])
def test_bf16_autocast_is_in_effect(tmp_path, precision, dtype):
    """The training forward runs under CPU autocast in bf16 (the B-cos units' convolutions run
    in bf16; their float32 patch norm promotes the product back to float32, as in the
    reference implementation), and without it for ``no``."""
    model, data = _model(), _data()
    seen = []

    def hook(module, args):
        if module.training:
            on = torch.is_autocast_enabled("cpu")
            seen.append(torch.get_autocast_dtype("cpu") if on else None)

    next(m for m in model.modules() if isinstance(m, bnn.BcosConv2d)).register_forward_pre_hook(
        hook
    )
    _run(tmp_path, model, data, epochs=2, train={"mixed_precision": precision})
    assert seen == [dtype, dtype]  # both training steps


class _Weights:
    """Records the student's weights after every optimiser step."""

    def __init__(self):
        self.steps: list[list[torch.Tensor]] = []

    def on_step_end(self, state, model):
        self.steps.append(_params(model))


def test_ema_follows_its_formula(tmp_path):
    """timm's ModelEmaV3 with the step given: the first update copies the weights, then
    ``e_t = d * e_(t-1) + (1 - d) * w_t``; the result is the EMA model."""
    decay = 0.6
    model, data = _model(), _data()
    record = _Weights()
    result = _run(
        tmp_path,
        model,
        data,
        batch_size=4,
        epochs=2,
        train={"ema_decay": decay},
        callbacks=[record],
    )
    assert len(record.steps) == 4
    ema = record.steps[0]
    for weights in record.steps[1:]:
        ema = [decay * e + (1 - decay) * w for e, w in zip(ema, weights)]
    for e, p in zip(ema, _params(result.model)):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-7)
    assert max(float((e - w).abs().max()) for e, w in zip(ema, record.steps[-1])) > 1e-3
