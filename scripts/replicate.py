"""The B-cosification claim in miniature, on Fashion-MNIST, on a CPU.

Arya et al. (B-cosification, NeurIPS 2024, arXiv 2411.00715) report that a standard network
converted to a B-cos network and fine-tuned reaches the accuracy of the same B-cos architecture
trained from scratch several times faster (4.7x for DenseNet-121, 9x for ViT-S on ImageNet), with
explanations that localise as well (grid pointing game). This script repeats the experiment at a
size that runs on two CPU cores:

1. train a standard small ResNet (28 px input) with cross-entropy;
2. B-cosify it (:func:`bcosify.convert`) and fine-tune it for ``--epochs`` epochs;
3. convert a randomly initialised copy of the same architecture and train it for
   ``--scratch-epochs`` epochs with the same recipe (binary cross-entropy, B=2): "B-cos from
   scratch";
4. report the test accuracy after every epoch, the epochs each B-cos model needs to reach the
   from-scratch final accuracy (the speed-up), and the grid pointing game (3x3 grids of test
   images) for both B-cos models and for Grad-CAM on the standard model.

Both B-cos runs use :func:`bcosify.train.finetune`. Results go to ``--out`` (``results.json``,
``results.md``, ``accuracy.png``, the runs and the grid pointing game outputs); ``--json`` and
``--plot`` copy the JSON and the plot to the published places.

Usage::

    python scripts/replicate.py --threads 1 --json benchmarks/replication.json \\
        --plot docs/replication.png --markdown docs/replication-results.md
    python scripts/replicate.py --quick --out /tmp/replicate-quick   # a one-minute smoke run

Data: the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), any
folder with the four ``*-ubyte.gz`` files (``--data-dir``), or, when the default folder is
missing, the hub dataset ``fashion_mnist`` through HF ``datasets`` (needs network).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import os
import platform
import shutil
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------- the model
class SmallResNet(nn.Module):
    """A torchvision-style ResNet for 28 px images, built from torchvision's ``BasicBlock``.

    The ImageNet stem (7x7 stride-2 convolution and max pool, 224 -> 56 px) becomes one 3x3
    stride-2 convolution (28 -> 14 px); then four stages of ``blocks`` basic blocks of ``widths``
    channels (the last three halve the resolution: 14, 7, 4, 2 px), global average pooling and a
    linear classifier: ResNet-10 at widths 16-128 by default (about 0.3 M parameters).

    Example:
        >>> SmallResNet()(torch.rand(2, 3, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        num_classes: int = 10,
    ):
        from torchvision.models.resnet import BasicBlock, conv1x1

        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 2, 1, bias=False)
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
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Everything that defines a run (written into the results)."""

    seed: int = 0
    train_size: int | None = 20000
    test_size: int | None = None
    std_epochs: int = 5
    epochs: int = 12
    scratch_epochs: int = 12
    batch_size: int = 128
    lr_std: float = 1e-3
    lr: float = 1e-3
    widths: tuple[int, ...] = (16, 32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    crop_scale: tuple[float, float] = (0.7, 1.0)
    hflip: float = 0.5
    bn_recalibration_batches: int = 20
    grids: int = 150
    grid_size: int = 3
    smooth: int = 3
    threshold: float = 0.5
    threads: int | None = None


QUICK = {
    "train_size": 500,
    "test_size": 200,
    "std_epochs": 3,
    "epochs": 2,
    "scratch_epochs": 2,
    "batch_size": 16,
    "widths": (8, 8, 16, 16),
    "bn_recalibration_batches": 2,
    "grids": 4,
    # 2x2 grids and any correctly classified image: the barely trained models of a quick run
    # are rarely confident (sigmoid > 0.5) and agree on few classes
    "grid_size": 2,
    "threshold": 0.0,
}


# ---------------------------------------------------------------------------- training
def _train_transform(s: Settings):
    from bcosify.train.data import train_transform
    from bcosify.train.recipe import AugmentSection, DataSection

    augment = AugmentSection(scale=list(s.crop_scale), ratio=[3 / 4, 4 / 3], hflip=s.hflip)
    return train_transform(DataSection(image_size=IMAGE_SIZE, augment=augment))


@torch.no_grad()
def accuracy(model: nn.Module, data: list, normalize=None, batch_size: int = 500) -> float:
    """Top-1 accuracy (%) of ``model`` on ``(tensor, label)`` pairs, in eval mode."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        x = torch.stack([d[0] for d in data[i : i + batch_size]])
        y = torch.tensor([d[1] for d in data[i : i + batch_size]])
        if normalize is not None:
            x = normalize(x)
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was)
    return 100.0 * correct / max(1, len(data))


def train_standard(
    model: nn.Module, train: list, test: list, s: Settings, normalize, log
) -> list[dict]:
    """The standard model: cross-entropy, AdamW, cosine per epoch, the B-cos runs' augmentation."""
    from torch.utils.data import DataLoader

    from bcosify.train.data import SeededDataset

    data = SeededDataset(train, _train_transform(s), s.seed)
    loader = DataLoader(
        data,
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(s.seed),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr_std, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: 0.5 * (1 + math.cos(math.pi * e / s.std_epochs))
    )
    history = []
    for epoch in range(1, s.std_epochs + 1):
        t0 = time.perf_counter()
        data.set_epoch(epoch - 1)
        model.train()
        total = 0.0
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(normalize(images)), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        sched.step()
        acc = accuracy(model, test, normalize)
        history.append(
            {
                "epoch": epoch,
                "top1": acc,
                "train_loss": total / len(loader),
                "seconds": time.perf_counter() - t0,
            }
        )
        log(f"standard epoch {epoch}/{s.std_epochs}: test top-1 {acc:.2f}%")
    return history


class _EpochTimer:
    """finetune callback: wall time of each epoch (training + validation)."""

    def __init__(self, name: str, total: int, log):
        self.name, self.total, self.log = name, total, log
        self.t0 = time.perf_counter()
        self.seconds: list[float] = []

    def on_epoch_end(self, state, metrics: dict) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self.t0)
        self.t0 = now
        self.log(
            f"{self.name} epoch {metrics['epoch']}/{self.total}: test top-1 "
            f"{metrics.get('val/top1', float('nan')):.2f}%"
        )


def train_bcos(
    name: str, model: nn.Module, epochs: int, train: list, test: list, s: Settings, out: Path, log
):
    """One B-cos run with :func:`bcosify.train.finetune` (BCE, AdamW, cosine per epoch)."""
    from bcosify.train import finetune

    recipe = {
        "description": f"replication: {name}",
        "data": {
            "image_size": IMAGE_SIZE,
            "eval_resize": IMAGE_SIZE,
            "batch_size": s.batch_size,
            "eval_batch_size": 500,
            "num_workers": 0,
            "pin_memory": False,
            "augment": {"scale": list(s.crop_scale), "hflip": s.hflip},
        },
        "optim": {"name": "adamw", "lr": s.lr, "weight_decay": 0.0, "schedule": "cosine"},
        "train": {
            "epochs": epochs,
            "seed": s.seed,
            "loss": "bce",
            "cpu": True,
            "bn_recalibration_batches": s.bn_recalibration_batches,
            "checkpoint_every_steps": None,
            "keep_checkpoints": 1,
        },
        "log": {"trackers": ["csv"], "explain_images": 0, "progress_bar": False},
        "output": str(out / name),
    }
    timer = _EpochTimer(name, epochs, log)
    result = finetune(
        recipe,
        model=model,
        train_dataset=train,
        val_dataset=test,
        overwrite=True,
        callbacks=[timer],
    )
    history = [
        {"epoch": int(m["epoch"]), "top1": float(m["val/top1"]), "val_loss": float(m["val/loss"])}
        for m in result.metrics
    ]
    for h, sec in zip(history, timer.seconds):
        h["seconds"] = sec
    return result.model, history, recipe


# ---------------------------------------------------------------------------- analysis
def epochs_to_reach(curve: Sequence[float], target: float) -> int | None:
    """The first epoch (1-based) whose accuracy is at least ``target``; None if never.

    Example:
        >>> epochs_to_reach([80.0, 85.0, 90.0], 84.0), epochs_to_reach([80.0], 90.0)
        (2, None)
    """
    for i, value in enumerate(curve):
        if value >= target - 1e-9:
            return i + 1
    return None


def speedup(bcosified: Sequence[float], scratch: Sequence[float]) -> dict:
    """Epochs each B-cos model needs to reach the from-scratch final accuracy, and their ratio.

    The target A* is the from-scratch model's accuracy after its last epoch. The from-scratch
    model needs the first epoch at which it reaches A* (at most its last one). The speed-up is
    that count divided by the B-cosified model's count (None if the latter never reaches A*);
    the standard model's training is not counted, as in the paper.

    Example:
        >>> speedup([88.0, 91.0], [80.0, 85.0, 89.0, 90.0])["speedup"]
        2.0
    """
    target = float(scratch[-1])
    e_scratch = epochs_to_reach(scratch, target)
    e_bcos = epochs_to_reach(bcosified, target)
    return {
        "target_top1": target,
        "scratch_epochs_to_target": e_scratch,
        "bcosified_epochs_to_target": e_bcos,
        "speedup": (e_scratch / e_bcos) if e_bcos else None,
        "bcosified_final_top1": float(bcosified[-1]),
        "bcosified_best_top1": float(max(bcosified)),
    }


def common_pool(models: dict, data: list, threshold: float, normalizers: dict):
    """One pool of test images for all models: correctly classified by every model with a
    confidence above ``threshold`` (sigmoid for B-cos models, softmax for the standard one),
    sorted per class by the lowest of the models' confidences, most confident first.

    Using one pool gives every method exactly the same grids.
    """
    from bcosify.evaluate import ImagePool, build_pool

    pools = {
        name: build_pool(
            m,
            data,
            threshold=threshold,
            normalize=normalizers[name],
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
    confidences = {c: [-v for v, _ in sorted(by_class[c])] for c in ordered}
    pool = ImagePool(
        by_class=ordered,
        confidences=confidences,
        n_images=len(data),
        n_correct=min(p.n_correct for p in pools.values()),
        confidence="per model (sigmoid for B-cos, softmax for standard)",
        threshold=threshold,
    )
    stats = {name: p.to_dict() for name, p in pools.items()}
    return pool, stats


def per_class_scores(result: dict) -> dict[str, dict[str, float]]:
    """Mean GridPG score of each method per explained class, from a saved ``result.json``
    (:meth:`bcosify.evaluate.GridPGResult.to_dict`).

    Example:
        >>> per_class_scores({"grids": [{"classes": [1, 3], "scores": {"m": [0.5, 1.0]}}]})
        {'m': {'Trouser': 0.5, 'Dress': 1.0}}
    """
    sums: dict[str, dict[int, list[float]]] = {}
    for grid in result["grids"]:
        for method, scores in grid["scores"].items():
            for c, v in zip(grid["classes"], scores):
                sums.setdefault(method, {}).setdefault(int(c), []).append(float(v))
    return {
        method: {CLASSES[c]: float(np.mean(v)) for c, v in sorted(per.items())}
        for method, per in sums.items()
    }


def grid_pointing_games(models: dict, original: nn.Module, data, s: Settings, normalize, out: Path):
    """GridPG of the two B-cos models (exact explanations) and of Grad-CAM on the original, on
    the same grids."""
    from bcosify.evaluate import bcos_explainer, grad_cam, grid_pointing_game

    norms = {name: None for name in models}
    norms["standard"] = normalize
    pool, stats = common_pool({**models, "standard": original}, data, s.threshold, norms)
    cells = s.grid_size**2
    usable = [c for c, v in pool.by_class.items() if v]
    if len(usable) < cells:
        return {
            "skipped": (
                f"only {len(usable)} classes have test images that all three models classify "
                f"correctly with confidence > {s.threshold}; a {s.grid_size}x{s.grid_size} grid "
                f"needs {cells}"
            ),
            "pools": stats,
        }
    common = {
        "grid_size": s.grid_size,
        "n_grids": s.grids,
        "seed": s.seed,
        "smooth": s.smooth,
        "window": None,
        "batch_size": 36,
        "progress": False,
        "pool": pool,
    }
    runs = {}
    for name, model in models.items():
        runs[name] = grid_pointing_game(
            model, data, methods=[bcos_explainer(model, f"B-cos ({name})")], **common
        )
    cam = grad_cam(original, normalize=normalize, image_size=IMAGE_SIZE)
    runs["standard"] = grid_pointing_game(
        original, data, methods=[cam], normalize=normalize, **common
    )
    summary, per_class, grids = {}, {}, None
    for name, r in runs.items():
        r.save(out / f"gridpg-{name}", overwrite=True, class_names=list(CLASSES))
        for method, means in per_class_scores(r.to_dict()).items():
            if method not in ("oracle", "uniform"):
                per_class[method] = means
        for method, stat in r.summary().items():
            if method == "oracle" or (method == "uniform" and "uniform" in summary):
                continue
            summary[method] = stat
        these = [(g.classes, g.indices) for g in r.grids]
        if grids is not None and these != grids:
            raise ReplicationError("internal: the grid pointing games drew different grids")
        grids = these
    return {
        "n_grids": len(grids or []),
        "grid_size": s.grid_size,
        "cell_px": IMAGE_SIZE,
        "smooth": s.smooth,
        "threshold": s.threshold,
        "pool_images_per_class": {CLASSES[c]: len(v) for c, v in pool.by_class.items()},
        "pools": stats,
        "summary": summary,
        "per_class": per_class,
    }


# ---------------------------------------------------------------------------- outputs
def plot(results: dict, path: Path) -> None:
    """Test accuracy vs epoch of the three models, with the from-scratch final accuracy."""
    from matplotlib.figure import Figure

    acc = results["accuracy"]
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    curves = [
        ("standard (cross-entropy)", acc["standard"], "tab:gray", "s", ":"),
        ("B-cosified (from the standard model)", acc["bcosified"], "tab:blue", "o", "-"),
        ("B-cos from scratch", acc["scratch"], "tab:orange", "^", "-"),
    ]
    for label, curve, colour, marker, ls in curves:
        ax.plot(range(1, len(curve) + 1), curve, marker=marker, ls=ls, c=colour, label=label)
    sp = results["speedup"]
    ax.axhline(sp["target_top1"], c="tab:orange", lw=0.8, ls="--", label="from-scratch final")
    ax.set_xlabel("epoch (of each model's own training)")
    ax.set_ylabel("test top-1 (%)")
    low = min(min(c) for _, c, *_ in curves)
    ax.set_ylim(max(0.0, low - 2), 100)
    text = (
        f"speed-up {sp['speedup']:.1f}x"
        if sp["speedup"]
        else "B-cosified does not reach the from-scratch accuracy"
    )
    ax.set_title(f"Fashion-MNIST, {results['settings']['train_size']} training images: {text}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict) -> str:
    """The results tables (accuracy per epoch, speed-up, grid pointing game) as markdown."""
    acc, sp, s = results["accuracy"], results["speedup"], results["settings"]
    rows = max(len(acc["standard"]), len(acc["bcosified"]), len(acc["scratch"]))

    def cell(curve: list, i: int) -> str:
        return f"{curve[i]:.2f}" if i < len(curve) else ""

    lines = [
        "| epoch | standard (CE) | B-cosified | B-cos from scratch |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for i in range(rows):
        lines.append(
            f"| {i + 1} | {cell(acc['standard'], i)} | {cell(acc['bcosified'], i)} | "
            f"{cell(acc['scratch'], i)} |"
        )
    t = results["timing"]
    e_b = sp["bcosified_epochs_to_target"]
    lines += [
        "",
        "| | standard | B-cosified | B-cos from scratch |",
        "| --- | ---: | ---: | ---: |",
        f"| epochs trained | {s['std_epochs']} | {s['epochs']} (+ {s['std_epochs']} standard) | "
        f"{s['scratch_epochs']} |",
        f"| final test top-1 (%) | {acc['standard'][-1]:.2f} | {acc['bcosified'][-1]:.2f} | "
        f"{acc['scratch'][-1]:.2f} |",
        f"| epochs to reach {sp['target_top1']:.2f}% (from-scratch final) | | "
        f"{e_b if e_b else 'not reached'} | {sp['scratch_epochs_to_target']} |",
        f"| wall time (s) | {t['standard_s']:.0f} | {t['bcosified_s']:.0f} | "
        f"{t['scratch_s']:.0f} |",
        "",
        (
            f"Speed-up (epochs of B-cos from scratch / epochs of B-cosified to reach "
            f"{sp['target_top1']:.2f}%): **{sp['speedup']:.1f}x**"
            if sp["speedup"]
            else f"The B-cosified model does not reach {sp['target_top1']:.2f}% in "
            f"{s['epochs']} epochs: no speed-up"
        )
        + f" (excluding the {s['std_epochs']} epochs of standard training).",
        "",
    ]
    g = results["gridpg"]
    if "skipped" in g:
        lines.append(f"Grid pointing game skipped: {g['skipped']}.")
    else:
        lines += [
            f"Grid pointing game: {g['n_grids']} grids of {g['grid_size']}x{g['grid_size']} test "
            f"images ({g['grid_size'] * IMAGE_SIZE} px), the same grids for every method, "
            f"smoothing {g['smooth']}x{g['smooth']}:",
            "",
            "| method | mean | q1 | median | q3 | cells |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, st in g["summary"].items():
            label = "Grad-CAM (standard model)" if name.startswith("Grad-CAM") else name
            lines.append(
                f"| {label} | {st['mean']:.3f} | {st['q1']:.3f} | {st['median']:.3f} | "
                f"{st['q3']:.3f} | {st['n']} |"
            )
        per = g.get("per_class") or {}
        if per:
            methods = list(per)
            names = ["Grad-CAM (standard)" if m.startswith("Grad-CAM") else m for m in methods]
            lines += [
                "",
                "Mean score per explained class:",
                "",
                "| class | " + " | ".join(names) + " |",
                "| --- |" + " ---: |" * len(methods),
            ]
            for c in CLASSES:
                values = [per[m].get(c) for m in methods]
                lines.append(
                    f"| {c} | " + " | ".join("" if v is None else f"{v:.3f}" for v in values) + " |"
                )
    return "\n".join(lines) + "\n"


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


# ---------------------------------------------------------------------------- main
def run(s: Settings, data_dir: str | None, out: Path, log=print) -> dict:
    """Run the whole experiment and return the results (also written to ``out``)."""
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    start = time.perf_counter()
    env_start = environment(torch.get_num_threads())
    out.mkdir(parents=True, exist_ok=True)

    data = load_fashion_mnist(data_dir)
    train_idx = stratified_subset(data.train_labels, s.train_size, s.seed)
    test_idx = stratified_subset(data.test_labels, s.test_size, s.seed + 1)
    train_x, train_y = data.train_images[train_idx], data.train_labels[train_idx]
    test_x, test_y = data.test_images[np.sort(test_idx)], data.test_labels[np.sort(test_idx)]
    mean = float(train_x.mean() / 255.0)
    std = float(train_x.std() / 255.0)
    log(
        f"data: {data.source}, {len(train_y)} training / {len(test_y)} test images, "
        f"mean {mean:.4f} std {std:.4f}, {torch.get_num_threads()} thread(s)"
    )
    train_pil = pil_pairs(train_x, train_y)
    test_pil = pil_pairs(test_x, test_y)
    test_t = tensor_pairs(test_x, test_y)
    norm_pair = ((mean,) * 3, (std,) * 3)
    m_t = torch.tensor(norm_pair[0]).view(1, 3, 1, 1)
    s_t = torch.tensor(norm_pair[1]).view(1, 3, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x - m_t) / s_t

    # 1. the standard model
    torch.manual_seed(s.seed)
    standard = SmallResNet(s.widths, s.blocks, len(CLASSES))
    t0 = time.perf_counter()
    std_hist = train_standard(standard, train_pil, test_t, s, normalize, log)
    t_std = time.perf_counter() - t0
    standard.eval()

    # 2. B-cosify and fine-tune
    converted = bcosify.convert(copy.deepcopy(standard), mean=norm_pair[0], std=norm_pair[1])
    t0 = time.perf_counter()
    bcosified, bcos_hist, recipe = train_bcos(
        "bcosified", converted, s.epochs, train_pil, test_pil, s, out, log
    )
    t_bcos = time.perf_counter() - t0

    # 3. the same B-cos architecture from a random initialisation
    torch.manual_seed(s.seed + 1)
    fresh = SmallResNet(s.widths, s.blocks, len(CLASSES))
    scratch_in = bcosify.convert(fresh, mean=norm_pair[0], std=norm_pair[1])
    t0 = time.perf_counter()
    scratch, scratch_hist, _ = train_bcos(
        "scratch", scratch_in, s.scratch_epochs, train_pil, test_pil, s, out, log
    )
    t_scratch = time.perf_counter() - t0

    # 4. grid pointing game on the same grids
    t0 = time.perf_counter()
    gridpg = grid_pointing_games(
        {"B-cosified": bcosified, "from scratch": scratch},
        standard,
        test_t,
        s,
        norm_pair,
        out,
    )
    t_grid = time.perf_counter() - t0
    if "summary" in gridpg:
        for name, st in gridpg["summary"].items():
            log(f"GridPG {name}: mean {st['mean']:.3f} (median {st['median']:.3f})")

    acc = {
        "standard": [h["top1"] for h in std_hist],
        "bcosified": [h["top1"] for h in bcos_hist],
        "scratch": [h["top1"] for h in scratch_hist],
    }
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()}
    settings["train_size"] = len(train_y)
    settings["test_size"] = len(test_y)
    results = {
        "claim": (
            f"{PAPER}: a B-cosified model reaches the accuracy of the same B-cos model trained "
            "from scratch several times faster, with explanations as good (grid pointing game)"
        ),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "data": {"source": data.source, "mean": mean, "std": std, "classes": list(CLASSES)},
        "model": {
            "architecture": (
                f"SmallResNet: 3x3 stride-2 stem, BasicBlock stages {list(s.blocks)}, widths "
                f"{list(s.widths)}"
            ),
            "parameters": sum(p.numel() for p in standard.parameters()),
            "conversion": bcosified.bcosify_config.to_dict(),
        },
        "settings": settings,
        "recipe_bcos": recipe,
        "accuracy": acc,
        "history": {"standard": std_hist, "bcosified": bcos_hist, "scratch": scratch_hist},
        "speedup": speedup(acc["bcosified"], acc["scratch"]),
        "gridpg": gridpg,
        "timing": {
            "standard_s": t_std,
            "bcosified_s": t_bcos,
            "scratch_s": t_scratch,
            "gridpg_s": t_grid,
            "total_s": time.perf_counter() - start,
        },
        "environment": {"start": env_start, "end": environment(torch.get_num_threads())},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out / "accuracy.png")
    log(markdown(results))
    log(f"total {results['timing']['total_s']:.0f} s; results in {out}")
    return results


def rerender(out: Path, log=print) -> dict:
    """Rebuild ``results.md`` and ``accuracy.png`` of a finished run in ``out`` from its
    ``results.json`` and saved grid pointing games (adding the per-class GridPG scores to runs
    made before they were computed); nothing is retrained.

    Raises:
        ReplicationError: if ``out`` holds no finished run.
    """
    path = out / "results.json"
    if not path.is_file():
        raise ReplicationError(f"--rerender: {path} not found; give the --out folder of a run")
    results = json.loads(path.read_text(encoding="utf-8"))
    g = results.get("gridpg", {})
    if "summary" in g and not g.get("per_class"):
        per: dict[str, dict[str, float]] = {}
        for name in ("B-cosified", "from scratch", "standard"):
            saved = json.loads((out / f"gridpg-{name}" / "result.json").read_text())
            for method, means in per_class_scores(saved).items():
                if method not in ("oracle", "uniform"):
                    per[method] = means
        g["per_class"] = per
        g["per_class_note"] = "added by --rerender from the saved gridpg-*/result.json"
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out / "accuracy.png")
    log(markdown(results))
    return results


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(
        description="B-cosification in miniature on Fashion-MNIST: B-cosified vs from scratch.",
    )
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test, ~1 minute)")
    p.add_argument("--epochs", type=_positive, help="fine-tuning epochs of the B-cosified model")
    p.add_argument("--scratch-epochs", type=_positive, help="epochs of B-cos from scratch")
    p.add_argument("--std-epochs", type=_positive, help="epochs of the standard model")
    p.add_argument("--train-size", type=int, help="training images (stratified; 0 = all 60k)")
    p.add_argument("--test-size", type=int, help="test images (stratified; 0 = all 10k)")
    p.add_argument("--lr", type=float, help="learning rate of both B-cos runs (1e-3)")
    p.add_argument("--grids", type=_positive, help="grid pointing game grids (150)")
    p.add_argument(
        "--threshold", type=float, help="GridPG: minimum confidence of a pool image (0.5)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive, help="torch threads (default: torch's choice)")
    p.add_argument("--data-dir", help="folder with the four Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--out", default="replication-run", help="output folder (replication-run)")
    p.add_argument("--json", help="also copy results.json here (benchmarks/replication.json)")
    p.add_argument("--plot", help="also copy the accuracy plot here (docs/replication.png)")
    p.add_argument("--markdown", help="also copy the results tables here")
    p.add_argument(
        "--rerender",
        action="store_true",
        help="only rebuild results.md / accuracy.png (and copies) of the finished run in --out",
    )
    args = p.parse_args(argv)
    values = dict(QUICK) if args.quick else {}
    for key, attr in [
        ("epochs", "epochs"),
        ("scratch_epochs", "scratch_epochs"),
        ("std_epochs", "std_epochs"),
        ("train_size", "train_size"),
        ("test_size", "test_size"),
        ("lr", "lr"),
        ("grids", "grids"),
        ("threshold", "threshold"),
        ("threads", "threads"),
    ]:
        value = getattr(args, key)
        if value is not None:
            values[attr] = value
    for key in ("train_size", "test_size"):
        if key in values and values[key] is not None:
            if values[key] < 0:
                p.error(f"--{key.replace('_', '-')} must be >= 0 (0 = all images)")
            values[key] = values[key] or None
    if "lr" in values and not values["lr"] > 0:
        p.error("--lr must be > 0")
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
    for target, source in ((args.json, "results.json"), (args.plot, "accuracy.png")):
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / source, target)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "results.md", args.markdown)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
