"""Training and validation data: image folders (torchvision or HF ``datasets``) and hub datasets.

Transforms stop at ``ToTensor()``: a B-cos model takes images in [0, 1] and encodes them itself.
Training augmentation is seeded per sample and epoch (:class:`SeededDataset`), so a run resumed
from a checkpoint sees exactly the images the uninterrupted run would have seen, whatever the
number of workers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from bcosify.train.recipe import DataSection, RecipeError

__all__ = [
    "SeededDataset",
    "TransformedDataset",
    "build_datasets",
    "train_transform",
    "eval_transform",
    "class_names",
]

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def train_transform(data: DataSection) -> Callable:
    """RandomResizedCrop + flip (+ RandAugment) + ToTensor, from the recipe.

    Example:
        >>> from bcosify.train.recipe import DataSection
        >>> train_transform(DataSection(image_size=32)).transforms[1].size
        (32, 32)
    """
    a = data.augment
    steps: list[Any] = [
        T.RandomResizedCrop(
            data.image_size,
            scale=tuple(a.scale),
            ratio=tuple(a.ratio),
            interpolation=_INTERPOLATION[a.interpolation],
        )
    ]
    if a.hflip > 0:
        steps.append(T.RandomHorizontalFlip(a.hflip))
    if a.randaugment:
        from timm.data.auto_augment import rand_augment_transform

        try:
            steps.append(rand_augment_transform(a.randaugment, {"img_mean": (124, 116, 104)}))
        except (AssertionError, ValueError, KeyError) as e:
            raise RecipeError(
                f"data.augment.randaugment {a.randaugment!r} is not a timm RandAugment string "
                "(e.g. 'rand-m10-n2-mstd0.5')"
            ) from e
    return T.Compose([_ToRGB(), *steps, T.ToTensor()])


def eval_transform(data: DataSection) -> Callable:
    """Resize (``eval_resize``, default ``image_size / 0.875``) + CenterCrop + ToTensor."""
    resize = data.eval_resize or int(round(data.image_size / 0.875))
    return T.Compose(
        [
            _ToRGB(),
            T.Resize(resize, interpolation=_INTERPOLATION[data.augment.interpolation]),
            T.CenterCrop(data.image_size),
            T.ToTensor(),
        ]
    )


class _ToRGB:
    """Grey-scale, palette and RGBA images become RGB (ImageFolder's loader does this already;
    HF datasets may not)."""

    def __call__(self, image):
        return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image

    def __repr__(self) -> str:
        return "ToRGB()"


@contextmanager
def _seeded(seed: int):
    """Seed python, numpy and torch (CPU) RNGs inside the block and restore them afterwards.

    The CPU generator is seeded directly: ``torch.manual_seed`` (and ``fork_rng``) also visit
    every accelerator backend, which made this the dearest part of loading a small image
    (about 0.3 ms of 0.5). The CPU stream is the same as after ``torch.manual_seed(seed)``.
    """
    gen = torch.default_generator
    torch_state, py_state, np_state = gen.get_state(), random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    gen.manual_seed(seed)
    try:
        yield
    finally:
        gen.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


class SeededDataset(Dataset):
    """``(transform(image), label)`` pairs whose random transform is seeded by (seed, epoch, index).

    The same sample in the same epoch is always augmented the same way, independent of the
    number of workers, of the sampling order and of where a resumed run restarts.

    Args:
        base: a map-style dataset of ``(PIL image, label)`` pairs (``ImageFolder``, an HF
            dataset adapter, or a list).
        transform: the augmentation, ending with ``ToTensor()``.
        seed: the run's seed.

    Example:
        >>> from PIL import Image
        >>> from torchvision import transforms as T
        >>> ds = SeededDataset([(Image.new("RGB", (8, 8)), 0)], T.ToTensor(), seed=0)
        >>> ds[0][0].shape
        torch.Size([3, 8, 8])
    """

    def __init__(self, base: Sequence, transform: Callable, seed: int = 0):
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        # A large odd multiplier mixes the three numbers into distinct seeds.
        with _seeded((self.seed * 1_000_003 + self.epoch) * 2_147_483_647 + int(index)):
            return self.transform(image), label


class _HFAdapter(Dataset):
    """An HF ``datasets.Dataset`` as ``(PIL image, label)`` pairs."""

    def __init__(self, ds, image_column: str, label_column: str):
        missing = [c for c in (image_column, label_column) if c not in ds.column_names]
        if missing:
            raise RecipeError(
                f"the dataset has no column(s) {missing}; its columns are {ds.column_names}; set "
                "data.image_column / data.label_column"
            )
        self.ds = ds
        self.image_column = image_column
        self.label_column = label_column
        feature = ds.features[label_column]
        self.classes = list(getattr(feature, "names", None) or [])

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        row = self.ds[int(index)]
        return row[self.image_column], int(row[self.label_column])


class _HFStreamingAdapter(torch.utils.data.IterableDataset):
    """A streaming HF dataset as an iterable of ``(tensor, label)`` pairs."""

    def __init__(self, ds, transform: Callable, image_column: str, label_column: str, seed: int):
        self.ds = ds
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.seed = seed
        self.epoch = 0
        feature = (ds.features or {}).get(label_column)
        self.classes = list(getattr(feature, "names", None) or [])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.ds, "set_epoch"):
            self.ds.set_epoch(epoch)

    def __iter__(self):
        for i, row in enumerate(self.ds):
            with _seeded((self.seed * 1_000_003 + self.epoch) * 2_147_483_647 + i):
                yield self.transform(row[self.image_column]), int(row[self.label_column])


def class_names(dataset: Any) -> list[str]:
    """The class names of a built dataset ([] when unknown)."""
    base = getattr(dataset, "base", dataset)
    return list(getattr(base, "classes", None) or getattr(dataset, "classes", None) or [])


def build_datasets(data: DataSection, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """The training dataset (seeded augmentation) and the validation dataset (or None).

    Raises:
        RecipeError: a folder that does not exist or holds no class sub-folders, a hub dataset
            that cannot be loaded offline, train and val with different classes.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"):
        ...     (root / "train" / c).mkdir(parents=True)
        ...     Image.new("RGB", (8, 8)).save(root / "train" / c / "a.png")
        >>> train, val = build_datasets(DataSection(root=str(root), image_size=8))
        >>> len(train), val is None, class_names(train)
        (2, True, ['cat', 'dog'])
    """
    train_tf, eval_tf = train_transform(data), eval_transform(data)
    if data.backend == "hf":
        train, val = _hub(data, train_tf, eval_tf, seed)
    else:
        train_dir, val_dir = _folders(data)
        if data.backend == "imagefolder":
            from torchvision.datasets import ImageFolder

            train_base = _image_folder(ImageFolder, train_dir)
            val_base = _image_folder(ImageFolder, val_dir) if val_dir else None
            train = SeededDataset(train_base, train_tf, seed)
            val = TransformedDataset(val_base, eval_tf) if val_base is not None else None
        else:
            train_raw = _hf_folder(train_dir, data)
            val_raw = _hf_folder(val_dir, data) if val_dir else None
            train, val = _wrap_hf(train_raw, val_raw, data, train_tf, eval_tf, seed)
    if val is not None and class_names(train) and class_names(val):
        if class_names(train) != class_names(val):
            raise RecipeError(
                f"train and val have different classes: {class_names(train)[:5]}... vs "
                f"{class_names(val)[:5]}...; both need the same class sub-folders"
            )
    return train, val


class TransformedDataset(Dataset):
    """``(transform(image), label)`` pairs of a map-style dataset (no randomness)."""

    def __init__(self, base: Sequence, transform: Callable):
        self.base = base
        self.transform = transform
        self.classes = class_names(base)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.transform(image), label


def _folders(data: DataSection) -> tuple[Path, Path | None]:
    if data.root is None and data.train is None:
        raise RecipeError(
            "data: give data.root (a folder with train/ and val/) or data.train (and "
            "optionally data.val), folders with one sub-folder per class"
        )
    if data.root is not None:
        root = Path(data.root).expanduser()
        if not root.is_dir():
            raise RecipeError(f"data.root {root} is not a directory")
        train = Path(data.train).expanduser() if data.train else root / "train"
        val = Path(data.val).expanduser() if data.val else root / "val"
        if not train.is_dir():
            raise RecipeError(f"data.root {root} has no train/ folder; set data.train")
        return train, val if val.is_dir() else None
    train = Path(data.train).expanduser()
    if not train.is_dir():
        raise RecipeError(f"data.train {train} is not a directory")
    if data.val is None:
        return train, None
    val = Path(data.val).expanduser()
    if not val.is_dir():
        raise RecipeError(f"data.val {val} is not a directory")
    return train, val


def _image_folder(cls, path: Path):
    try:
        return cls(str(path))
    except (FileNotFoundError, RuntimeError) as e:
        raise RecipeError(
            f"{path} is not an image folder ({e}); it needs one sub-folder per class with the "
            "images inside (path/cat/1.jpg, path/dog/2.jpg)"
        ) from e


def _hf_folder(path: Path, data: DataSection):
    import datasets

    try:
        return datasets.load_dataset(
            "imagefolder", data_dir=str(path), split="train", streaming=data.streaming
        )
    except Exception as e:  # datasets raises many types for a bad folder
        raise RecipeError(f"HF datasets could not read the image folder {path}: {e}") from e


def _wrap_hf(train_raw, val_raw, data: DataSection, train_tf, eval_tf, seed: int):
    """HF datasets as ``(tensor, label)`` datasets: map-style, or iterable when streaming."""
    columns = (data.image_column, data.label_column)
    if data.streaming:
        train_raw = train_raw.shuffle(seed=seed, buffer_size=1000)  # a shuffle buffer
        train = _HFStreamingAdapter(train_raw, train_tf, *columns, seed)
        val = _HFStreamingAdapter(val_raw, eval_tf, *columns, seed) if val_raw is not None else None
        return train, val
    train = SeededDataset(_HFAdapter(train_raw, *columns), train_tf, seed)
    val = (
        TransformedDataset(_HFAdapter(val_raw, *columns), eval_tf) if val_raw is not None else None
    )
    return train, val


def _hub(data: DataSection, train_tf, eval_tf, seed: int):
    import datasets

    def load(split: str):
        try:
            return datasets.load_dataset(
                data.hf_name, data.hf_config, split=split, streaming=data.streaming
            )
        except Exception as e:  # offline, unknown name or split
            raise RecipeError(
                f"could not load the hub dataset {data.hf_name!r} split {split!r}: {e}. Offline, "
                "the dataset must be in the HF cache; or use data.backend: imagefolder"
            ) from e

    train_raw = load(data.train_split)
    val_raw = load(data.val_split) if data.val_split else None
    return _wrap_hf(train_raw, val_raw, data, train_tf, eval_tf, seed)
