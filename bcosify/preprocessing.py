"""Image preprocessing of a source model: :class:`Preprocessing`.

A converted B-cos model takes images in ``[0, 1]`` (its first layer works on the raw pixels), so
:meth:`Preprocessing.transform` resizes, crops and converts to a tensor but does *not* normalise;
:meth:`Preprocessing.normalize` applies the mean/std normalisation the *original* model expects.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bcosify.errors import BcosifyError

__all__ = ["Preprocessing", "IMAGENET_DEFAULT"]

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _float_tuple(value: Any, field_name: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise BcosifyError(
            f"Preprocessing.{field_name} must be a sequence of numbers, got {value!r}"
        )
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BcosifyError(
                f"Preprocessing.{field_name} must contain finite numbers, got {value!r}"
            )
        out.append(float(v))
    if not out:
        raise BcosifyError(f"Preprocessing.{field_name} must not be empty")
    return tuple(out)


def _positive_int(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BcosifyError(f"Preprocessing.{field_name} must be an int >= 1, got {value!r}")
    return int(value)


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dict-like or attribute-style config."""
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a model: resize, center crop and per-channel normalisation.

    Args:
        mean: per-channel mean subtracted by :meth:`normalize` (images in ``[0, 1]``).
        std: per-channel standard deviation divided by in :meth:`normalize`.
        input_size: side of the square center crop fed to the model (e.g. 224).
        resize_size: the shorter image side is resized to this before cropping (e.g. 256).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.

    Raises:
        BcosifyError: if a field has an invalid value.

    Example:
        >>> p = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224, 256, "bicubic")
        >>> Preprocessing.from_dict(p.to_dict()) == p
        True
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    resize_size: int
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        mean = _float_tuple(self.mean, "mean")
        std = _float_tuple(self.std, "std")
        if len(mean) != len(std):
            raise BcosifyError(
                f"Preprocessing.mean and std must have the same length, got {len(mean)} and "
                f"{len(std)}"
            )
        if any(s <= 0 for s in std):
            raise BcosifyError(f"Preprocessing.std must be positive, got {std!r}")
        input_size = _positive_int(self.input_size, "input_size")
        resize_size = _positive_int(self.resize_size, "resize_size")
        if resize_size < input_size:
            raise BcosifyError(
                f"Preprocessing.resize_size ({resize_size}) must be >= input_size ({input_size})"
            )
        interpolation = self.interpolation
        if not isinstance(interpolation, str) or interpolation.lower() not in _INTERPOLATIONS:
            raise BcosifyError(
                f"Preprocessing.interpolation must be one of {_INTERPOLATIONS}, "
                f"got {interpolation!r}"
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "input_size", input_size)
        object.__setattr__(self, "resize_size", resize_size)
        object.__setattr__(self, "interpolation", interpolation.lower())

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all fields.

        Returns:
            ``{"mean": [...], "std": [...], "input_size": int, "resize_size": int,
            "interpolation": str}``.

        Example:
            >>> IMAGENET_DEFAULT.to_dict()["input_size"]
            224
        """
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "resize_size": self.resize_size,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`.

        Args:
            d: a mapping with the fields of :class:`Preprocessing`.

        Returns:
            The preprocessing.

        Raises:
            BcosifyError: on unknown or missing keys, or invalid values.

        Example:
            >>> Preprocessing.from_dict(IMAGENET_DEFAULT.to_dict()) == IMAGENET_DEFAULT
            True
        """
        if not isinstance(d, Mapping):
            raise BcosifyError(f"Preprocessing.from_dict needs a mapping, got {type(d).__name__}")
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BcosifyError(
                f"unknown Preprocessing key(s) {unknown}; known keys are {sorted(known)}"
            )
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise BcosifyError(f"missing Preprocessing key(s) {missing}")
        return cls(**d)

    # ------------------------------------------------------------------ application
    def transform(self) -> Any:
        """The image transform for the *converted* model (no normalisation).

        Resizes the shorter side to :attr:`resize_size`, center-crops :attr:`input_size` and
        converts to a float tensor in ``[0, 1]`` of shape ``(C, H, W)``. It accepts PIL images
        (convert them to RGB first for 3-channel models).

        Returns:
            A ``torchvision.transforms.Compose``.

        Example:
            >>> from PIL import Image
            >>> IMAGENET_DEFAULT.transform()(Image.new("RGB", (320, 240))).shape
            torch.Size([3, 224, 224])
        """
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        return transforms.Compose(
            [
                transforms.Resize(
                    self.resize_size,
                    interpolation=InterpolationMode(self.interpolation),
                    antialias=True,
                ),
                transforms.CenterCrop(self.input_size),
                transforms.ToTensor(),
            ]
        )

    def normalize(self, x: Tensor) -> Tensor:
        """Apply ``(x - mean) / std`` per channel, as the original model expects.

        Args:
            x: images in ``[0, 1]`` of shape ``(C, H, W)`` or ``(N, C, H, W)``.

        Returns:
            The normalised tensor (same shape, dtype and device).

        Raises:
            BcosifyError: if ``x`` is not a floating tensor with ``len(mean)`` channels.

        Example:
            >>> IMAGENET_DEFAULT.normalize(torch.zeros(1, 3, 2, 2))[0, :, 0, 0]
            tensor([-2.1179, -2.0357, -1.8044])
        """
        if not isinstance(x, Tensor):
            raise BcosifyError(f"normalize needs a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise BcosifyError(
                f"normalize needs a floating tensor in [0, 1], got dtype {x.dtype}; "
                "use transform() or divide uint8 images by 255"
            )
        channels = len(self.mean)
        if x.dim() < 3 or x.shape[-3] != channels:
            raise BcosifyError(
                f"normalize needs images of shape (C, H, W) or (N, C, H, W) with C={channels}, "
                f"got shape {tuple(x.shape)}"
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(channels, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(channels, 1, 1)
        return (x - mean) / std

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_torchvision_weights(cls, weights: Any) -> Preprocessing:
        """Read the preprocessing of a torchvision weights enum member (downloads nothing).

        Args:
            weights: a member of a torchvision weights enum, e.g.
                ``torchvision.models.ResNet50_Weights.DEFAULT``.

        Returns:
            Mean, std, crop size, resize size and interpolation of ``weights.transforms()``.

        Raises:
            BcosifyError: if the weights have no image-classification transforms.

        Example:
            >>> import torchvision
            >>> p = Preprocessing.from_torchvision_weights(
            ...     torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
            >>> (p.input_size, p.resize_size, p.interpolation)
            (224, 232, 'bilinear')
        """
        make = getattr(weights, "transforms", None)
        if not callable(make):
            raise BcosifyError(
                f"expected a torchvision weights enum member, got {type(weights).__name__}"
            )
        t = make()
        attrs = ("mean", "std", "crop_size", "resize_size", "interpolation")
        if not all(hasattr(t, a) for a in attrs):
            raise BcosifyError(
                f"{weights} has no image-classification transforms ({type(t).__name__})"
            )
        crop = t.crop_size
        crop = int(crop[0] if isinstance(crop, Sequence) else crop)
        resize = t.resize_size
        if resize is None:
            resize = crop
        resize = int(resize[0] if isinstance(resize, Sequence) else resize)
        interpolation = getattr(t.interpolation, "value", t.interpolation)
        return cls(
            mean=tuple(t.mean),
            std=tuple(t.std),
            input_size=crop,
            resize_size=resize,
            interpolation=str(interpolation),
        )

    @classmethod
    def from_timm_cfg(cls, pretrained_cfg: Any) -> Preprocessing:
        """Read the preprocessing of a timm pretrained config.

        The resize size is ``floor(input_size / crop_pct)`` as in timm's eval transform
        (timm's ``"squash"``/``"border"`` crop modes are approximated by resize + center crop).

        Args:
            pretrained_cfg: a dict (e.g. ``model.pretrained_cfg``) or a
                ``timm.models.PretrainedCfg`` with ``mean``, ``std``, ``input_size`` ``(C, H, W)``,
                ``crop_pct`` and ``interpolation``; missing values take timm's defaults
                (224, 0.875, bicubic).

        Returns:
            The preprocessing.

        Raises:
            BcosifyError: if mean/std are missing or the input size is not square.

        Example:
            >>> p = Preprocessing.from_timm_cfg({"mean": (0.5,) * 3, "std": (0.5,) * 3,
            ...     "input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic"})
            >>> (p.input_size, p.resize_size, p.interpolation)
            (224, 256, 'bicubic')
        """
        mean = _cfg_get(pretrained_cfg, "mean")
        std = _cfg_get(pretrained_cfg, "std")
        if mean is None or std is None:
            raise BcosifyError("the timm pretrained config has no mean/std")
        input_size = _cfg_get(pretrained_cfg, "input_size", (3, 224, 224))
        if isinstance(input_size, int):
            height = width = input_size
        else:
            height, width = (int(s) for s in tuple(input_size)[-2:])
        if height != width:
            raise BcosifyError(
                f"only square inputs are supported, the timm config has input_size {input_size}"
            )
        crop_pct = float(_cfg_get(pretrained_cfg, "crop_pct", 0.875))
        if not 0 < crop_pct <= 1:
            raise BcosifyError(f"crop_pct must be in (0, 1], got {crop_pct}")
        interpolation = str(_cfg_get(pretrained_cfg, "interpolation", "bicubic")).lower()
        if interpolation not in _INTERPOLATIONS:  # e.g. "random" (train-time) or ""
            interpolation = "bilinear"
        return cls(
            mean=tuple(mean),
            std=tuple(std),
            input_size=height,
            resize_size=math.floor(height / crop_pct),
            interpolation=interpolation,
        )

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> Preprocessing | None:
        """The preprocessing recorded on a model, if any.

        Args:
            model: a model, typically from :func:`bcosify.sources.build_model` (which sets
                ``model.bcosify_preprocessing``) or ``timm.create_model`` (``pretrained_cfg``).

        Returns:
            ``model.bcosify_preprocessing`` if set, else the preprocessing of a timm
            ``model.pretrained_cfg`` with mean/std, else ``None``.

        Example:
            >>> Preprocessing.from_model(torch.nn.Identity()) is None
            True
        """
        pre = getattr(model, "bcosify_preprocessing", None)
        if isinstance(pre, Preprocessing):
            return pre
        if isinstance(pre, Mapping):
            return cls.from_dict(pre)
        cfg = getattr(model, "pretrained_cfg", None)
        if cfg is not None and _cfg_get(cfg, "mean") is not None and _cfg_get(cfg, "std"):
            return cls.from_timm_cfg(cfg)
        return None


IMAGENET_DEFAULT = Preprocessing(
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    input_size=224,
    resize_size=256,
    interpolation="bilinear",
)
"""torchvision's classic ImageNet evaluation preprocessing (resize 256, crop 224)."""
