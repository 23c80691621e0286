"""Shared helpers for the tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bcosify import nn as bnn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalized(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] normalised with ImageNet's mean and std (what the sources expect)."""
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


class Fn(nn.Module):
    """A function as a module (to put a functional spelling inside a model)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics from the batch ``x`` (already normalised, as the
    model expects it), as a trained network has them; returns the model in eval mode.

    Random BatchNorm statistics let a deep random network forget its input (two images give
    logits equal to 1e-5), so an equivalence check on it proves little. Only the BatchNorm layers
    run in training mode (a cumulative average: one batch gives its exact statistics); dropout and
    stochastic depth stay off.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for m in bns:
        if m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None
            m.train()
    try:
        model(x)
    finally:
        model.eval()
    return model


@torch.no_grad()
def input_dependence(model: nn.Module, x: torch.Tensor) -> float:
    """How much the model's output changes between the samples of ``x``: the largest
    ``max|f(x_i) - f(x_0)| / max|f(x_0)|``. Near zero, the model is blind to its input and a
    comparison of two models on it cannot see a wrong conversion."""
    y = model(x)
    return max(rel_err(y[i], y[0]) for i in range(1, len(y)))


def randomize_norms(model: nn.Module) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics and affine parameters (random weights are
    otherwise too regular to catch a wrong fold)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Rescale every B-cos unit's weight so its output has unit RMS on ``x``.

    With random weights a deep B=2 network shrinks its signal by |cos| at every layer and its
    logits underflow to zero, which would make any completeness check vacuous. A B-cos unit with
    raw weights is homogeneous of degree B in its weight scale, so a factor rms^(-1/B) on the
    weight brings the output to unit RMS. Done layer by layer in one forward pass.
    """

    def hook(module, inputs, output):
        rms = output.pow(2).mean().sqrt().clamp_min(1e-30)
        module.weight.mul_(rms ** (-1.0 / module.b))
        return output / rms

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (bnn.BcosConv2d, bnn.BcosLinear))
    ]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return model


def small_cnn(num_classes: int) -> nn.Module:
    """A seeded conv-ReLU-conv-pool-linear classifier without BatchNorm, in eval mode (its
    gradients do not depend on how a batch is split)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    ).eval()


def small_vit(num_layers: int = 3) -> nn.Module:
    """A torchvision ViT on 32 px images (4x4 patches of 8 px, width 32), in eval mode, its
    head given random weights (torchvision starts it at zero)."""
    import torchvision

    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=num_layers, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    nn.init.normal_(vit.heads.head.weight, std=0.2)
    return vit.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def pixel_completeness(expl) -> float:
    """Worst ``|sum(contributions) - (logit - constants)| / |logit - constants|``: completeness
    judged on the pixel part of the explained logit alone, which a large constant (the logit
    bias) cannot hide."""
    pixels = expl.explained_logit - expl.constant_total
    total = expl.contributions.flatten(1).sum(1)
    tiny = torch.finfo(pixels.dtype).tiny
    return float(((total - pixels).abs() / pixels.abs().clamp_min(tiny)).max())


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a gzipped unsigned-byte IDX file (the Fashion-MNIST format)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_fashion_mnist(
    folder: Path, n_train: int = 600, n_test: int = 200, classes: int = 10
) -> Path:
    """Easy classes: class c of k is a 28x28 image of grey level 20 + 210 c / (k - 1), noisy."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        step = 210.0 / max(1, classes - 1)
        images = 20.0 + step * labels[:, None, None] + rng.normal(0, 6, (n, 28, 28))
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.clip(images, 0, 255))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder
