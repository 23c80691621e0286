"""Image folders, class mappings and input normalisation shared by the evaluations.

An evaluation reads an ImageNet-style folder (one sub-folder per class, or such a folder under
``DIR/val``) with :func:`image_folder`, maps its folder order to the model's output indices with
:func:`class_index_map`, and feeds a model either raw ``[0, 1]`` images (a converted B-cos model
encodes its input itself) or normalised ones (an original model, see :func:`resolve_normalize`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bcosify.errors import BcosifyError
from bcosify.preprocessing import Preprocessing

__all__ = [
    "image_folder",
    "class_index_map",
    "model_categories",
    "resolve_normalize",
    "model_device",
]

_IMAGENET_CLASSES = 1000


def image_folder(root: str | os.PathLike[str], transform: Callable | None = None) -> Any:
    """An ImageNet-style image folder as a ``torchvision.datasets.ImageFolder``.

    Args:
        root: a directory with one sub-folder of images per class, or a directory whose ``val``
            sub-folder is such a directory (the layout of an extracted ImageNet).
        transform: applied to each PIL image (RGB), e.g. ``model.transform``.

    Returns:
        The dataset; ``dataset.classes`` lists the class folders in sorted order and the label
        of an image is its folder's position in that list.

    Raises:
        BcosifyError: if ``root`` does not exist or holds no class folder with images.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"):
        ...     (root / c).mkdir()
        ...     Image.new("RGB", (8, 8)).save(root / c / "0.png")
        >>> image_folder(root).classes
        ['cat', 'dog']
    """
    from torchvision.datasets import ImageFolder

    path = Path(root).expanduser()
    if not path.is_dir():
        raise BcosifyError(f"--data {path}: no such directory")
    if (path / "val").is_dir():
        path = path / "val"
    try:
        return ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise BcosifyError(
            f"{path} is not an image folder: it needs one sub-folder per class holding the images "
            f"of that class (ImageNet layout: {path}/n01440764/*.JPEG, ...) ({exc})"
        ) from exc


def _norm_name(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def imagenet_names(num_classes: int) -> list[str] | None:
    """The ImageNet-1k class names (torchvision's, as its weights' ``meta["categories"]``) for a
    model with 1000 outputs; None for any other number of outputs."""
    if num_classes != _IMAGENET_CLASSES:
        return None
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.DEFAULT.meta["categories"])


def model_categories(model: nn.Module, num_classes: int) -> dict[str, list[str]]:
    """Known names of a model's output classes, by kind.

    Looks at the source recorded on the model (``model.bcosify_source["name"]``): a torchvision
    model has the category names of its weights (``weights.meta["categories"]``); any model with
    1000 outputs is taken to follow the ImageNet-1k order, whose WordNet ids (``n01440764``, the
    folder names of ImageNet) and names come from timm.

    Args:
        model: a converted or source model.
        num_classes: its number of outputs.

    Returns:
        ``{"categories": [...], "synsets": [...], "descriptions": [...]}``, only the kinds that
        are known and have ``num_classes`` entries.

    Example:
        >>> from bcosify.sources import build_model
        >>> model_categories(build_model("resnet18", weights="none"), 1000)["synsets"][0]
        'n01440764'
    """
    found: dict[str, list[str]] = {}
    name = (getattr(model, "bcosify_source", None) or {}).get("name")
    if isinstance(name, str) and not name.startswith("timm/"):
        try:
            from torchvision.models import get_model_weights

            cats = list(get_model_weights(name).DEFAULT.meta["categories"])
        except (ValueError, KeyError, AttributeError):
            cats = []
        if len(cats) == num_classes:
            found["categories"] = cats
    if num_classes == _IMAGENET_CLASSES:
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        found["synsets"] = list(info.label_names())
        found["descriptions"] = [info.index_to_description(i) for i in range(num_classes)]
    return found


def class_index_map(
    folder_classes: Sequence[str],
    num_classes: int,
    categories: Mapping[str, Sequence[str]] | None = None,
) -> list[int]:
    """Map the class folders of a dataset to the model's output indices.

    Two ways, tried in this order:

    1. by name, when every folder name is a known class name of the model (a category name such
       as ``tench``, a WordNet id such as ``n01440764``, or a timm description; compared
       ignoring case and ``_``/space differences). This also works for a subset of the classes;
    2. by position, when there are exactly as many folders as model outputs: the sorted folder
       order is the model's index order (true for the WordNet-id folders of ImageNet).

    Args:
        folder_classes: the sorted class folder names (``dataset.classes``).
        num_classes: the number of model outputs.
        categories: known class names by kind, e.g. from :func:`model_categories`.

    Returns:
        ``index[label]``: the model output index of each folder.

    Raises:
        BcosifyError: if neither way applies; the message explains both.

    Example:
        >>> class_index_map(["dog", "cat"], 3, {"categories": ["cat", "cow", "dog"]})
        [2, 0]
        >>> class_index_map(["a", "b", "c"], 3)
        [0, 1, 2]
    """
    folders = list(folder_classes)
    for names in (categories or {}).values():
        if len(names) != num_classes:
            continue
        lookup: dict[str, int] = {}
        for i, n in enumerate(names):
            lookup.setdefault(_norm_name(n), i)
        mapped = [lookup.get(_norm_name(f)) for f in folders]
        if all(m is not None for m in mapped) and len(set(mapped)) == len(mapped):
            return [int(m) for m in mapped]  # type: ignore[arg-type]
    if len(folders) == num_classes:
        return list(range(num_classes))
    known = ", ".join(sorted(categories or {})) or "none known for this model"
    example = ", ".join(folders[:3])
    raise BcosifyError(
        f"cannot map the {len(folders)} class folders ({example}, ...) to the model's "
        f"{num_classes} outputs. Either give the data one folder per model class "
        f"({num_classes} folders, whose sorted order is the model's class order, as the WordNet "
        f"ids of ImageNet are), or name every folder after one of the model's classes (class "
        f"names known: {known})"
    )


def resolve_normalize(model: nn.Module, normalize: Any = "auto") -> Callable[[Tensor], Tensor]:
    """The function applied to ``[0, 1]`` image batches before they enter ``model``.

    Args:
        model: the model to be fed.
        normalize: ``"auto"``: none for a converted B-cos model (it encodes ``[0, 1]`` input
            itself), else the mean/std normalisation of ``model.bcosify_preprocessing`` (set by
            :func:`bcosify.build_model`), else none; ``None``: none; a
            :class:`~bcosify.preprocessing.Preprocessing`: its :meth:`normalize`; a
            ``(mean, std)`` pair; or any callable on batches.

    Returns:
        A callable from N x C x H x W batches to batches.

    Raises:
        BcosifyError: for a value of another kind.

    Example:
        >>> f = resolve_normalize(torch.nn.Identity(), ((0.5,) * 3, (0.5,) * 3))
        >>> f(torch.ones(1, 3, 1, 1)).flatten().tolist()
        [1.0, 1.0, 1.0]
    """
    from bcosify.convert import is_converted

    if isinstance(normalize, str) and normalize == "auto":
        if is_converted(model):
            return _identity
        pre = Preprocessing.from_model(model)
        return pre.normalize if pre is not None else _identity
    if normalize is None:
        return _identity
    if isinstance(normalize, Preprocessing):
        return normalize.normalize
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        mean, std = normalize
        pre = Preprocessing(tuple(mean), tuple(std), 1, 1)
        return pre.normalize
    if callable(normalize):
        return normalize
    raise BcosifyError(
        f"normalize must be 'auto', None, a Preprocessing, a (mean, std) pair or a callable, "
        f"got {normalize!r}"
    )


def _identity(x: Tensor) -> Tensor:
    return x


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither.

    Example:
        >>> model_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def make_loader(data: Any, batch_size: int, num_workers: int) -> Any:
    """``data`` itself if it is a DataLoader (or any iterable of batches), else a DataLoader."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BcosifyError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise BcosifyError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        if len(data) > 0:
            first = data[0]
            if not isinstance(first, (tuple, list)) or len(first) < 2:
                raise BcosifyError(
                    f"the dataset must yield (image, label) pairs, got {type(first).__name__}"
                )
            if not isinstance(first[0], Tensor) or first[0].dim() != 3:
                raise BcosifyError(
                    "dataset images must be C x H x W tensors: give the dataset a transform "
                    f"ending in ToTensor(), e.g. model.transform; got {type(first[0]).__name__}"
                )
        return DataLoader(
            data,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
        )
    if hasattr(data, "__iter__"):
        return data
    raise BcosifyError(
        f"data must be a dataset of (image, label) pairs or a DataLoader, got {type(data).__name__}"
    )


def label_lookup(class_map: Any, device: torch.device) -> Tensor | None:
    """``class_map`` (sequence or mapping label -> model index) as a lookup tensor, or None."""
    if class_map is None:
        return None
    if isinstance(class_map, Mapping):
        size = max(class_map) + 1 if class_map else 0
        table = torch.full((size,), -1, dtype=torch.long)
        for k, v in class_map.items():
            table[int(k)] = int(v)
    else:
        table = torch.as_tensor(list(class_map), dtype=torch.long)
    return table.to(device)


def map_labels(labels: Tensor, table: Tensor | None) -> Tensor:
    """Dataset labels -> model indices through ``table`` (from :func:`label_lookup`)."""
    if table is None:
        return labels
    if bool(((labels < 0) | (labels >= table.numel())).any()):
        raise BcosifyError(
            f"class_map covers labels 0..{table.numel() - 1}, the data has labels "
            f"{sorted(set(labels.tolist()))[:10]}"
        )
    return table[labels]


def check_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """Split a batch into images and integer labels, with a clear error for other shapes."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise BcosifyError(
            "each batch must be an (images, labels) pair, as an image folder dataset yields; got "
            f"{type(batch).__name__}"
        )
    images, labels = batch[0], batch[1]
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise BcosifyError(
            "images must be N x C x H x W tensors: give the dataset a transform ending in "
            f"ToTensor(), e.g. model.transform; got {type(images).__name__}"
            + (f" of shape {tuple(images.shape)}" if isinstance(images, Tensor) else "")
        )
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point:
        raise BcosifyError(f"labels must be one integer class per image, got {labels!r}")
    return images, labels.long()
