"""Recognise a torchvision or timm model built outside bcosify, so that a converted model can be
rebuilt by name (``bcosify.load`` without ``model=``)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from bcosify.sources._registry import TIMM_PREFIX

__all__ = ["recognise_architecture"]


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _same_architecture(name: str, model: nn.Module, num_classes: int) -> bool:
    """Whether ``build_model(name, weights="none", num_classes=...)`` gives a model of the same
    class with the same state-dict keys and shapes (built on the meta device where it can be: no
    memory)."""
    from bcosify.sources._builder import build_model

    candidate = None
    for device in ("meta", "cpu"):  # some models compute with their tensors while built
        try:
            with warnings.catch_warnings(), torch.device(device):
                warnings.simplefilter("ignore")
                candidate = build_model(name, weights="none", num_classes=num_classes)
            break
        except Exception:  # noqa: BLE001 - a name that does not build here is no match
            continue
    if candidate is None:
        return False
    return type(candidate) is type(model) and _shapes(candidate) == _shapes(model)


def recognise_architecture(model: nn.Module, num_classes: int) -> str | None:
    """The bcosify source name (``"resnet50"``, ``"timm/convnext_tiny"``) whose architecture
    ``model`` has, or None.

    A timm model names its architecture (``pretrained_cfg["architecture"]``); a torchvision
    model is matched against the builders of its own module. Either way the name counts only if
    the model it builds has the same class, state-dict keys and shapes. Arguments that change
    no shape (a pooling type) cannot be seen here: the converter also stores a fingerprint of the
    converted graph, which ``bcosify.load`` compares.
    """
    module = type(model).__module__ or ""
    if module.startswith("timm."):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        arch = cfg.get("architecture") if isinstance(cfg, dict) else None
        if arch and _same_architecture(TIMM_PREFIX + arch, model, num_classes):
            return TIMM_PREFIX + arch
        return None
    if module.startswith("torchvision.models."):
        import torchvision

        for name in torchvision.models.list_models(module=torchvision.models):
            builder = torchvision.models.get_model_builder(name)
            if builder.__module__ == module and _same_architecture(name, model, num_classes):
                return name
    return None
