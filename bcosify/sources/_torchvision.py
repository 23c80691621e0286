"""torchvision classifiers: constructor arguments, key quirks, pretrained weights."""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcosify.errors import ModelSourceError
from bcosify.preprocessing import Preprocessing
from bcosify.sources._helpers import (
    _HALF,
    _file,
    _load_except_head,
    _load_strict,
    _with_metadata,
    load_state_dict_file,
)
from bcosify.sources._hub import (
    _DOWNLOAD_SOCKET_TIMEOUT_S,
    _download_error,
    _ensure_downloadable,
    _socket_timeout,
    _torch_hub_cache_path,
)

# torchvision models whose pretrained weights expect ``transform_input=True`` and whose
# pretrained checkpoints contain auxiliary (training-only) classifier heads.
_AUX_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision_arch_kwargs(name: str, default: Any, pretrained: bool) -> dict[str, Any]:
    """Builder arguments giving the architecture torchvision uses for its DEFAULT weights."""
    kwargs: dict[str, Any] = {}
    if name in _AUX_PREFIXES:
        # pretrained: transform_input=True as torchvision sets it (folded away afterwards);
        # init_weights must be given to avoid a FutureWarning.
        kwargs.update(aux_logits=False, transform_input=pretrained, init_weights=not pretrained)
    min_size = default.meta.get("min_size")
    if name.startswith("vit_") and min_size:
        kwargs["image_size"] = int(min_size[0])
    if name.startswith("maxvit_") and min_size:
        kwargs["input_size"] = tuple(min_size)
    return kwargs


def _torchvision_fix_keys(name: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Adapt torchvision's published checkpoints as its own builders do."""
    metadata = getattr(state_dict, "_metadata", None)
    aux = _AUX_PREFIXES.get(name)
    if aux:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(aux)}
    if name.startswith("densenet"):
        fixed = {}
        for k, v in state_dict.items():
            match = _DENSENET_OLD_KEY.match(k)
            fixed[match.group(1) + match.group(2) if match else k] = v
        state_dict = fixed
    if name.startswith("mnasnet"):
        # MNASNet needs its layout version; files without one (safetensors) get the current one
        metadata = OrderedDict(metadata or {})
        metadata.setdefault("", {"version": 2})
    return _with_metadata(state_dict, metadata)


def _torchvision_pretrained(name: str, default: Any) -> nn.Module:
    from torchvision.models import get_model

    url = default.url
    cached = _torch_hub_cache_path(url)
    hint = f" (or put it in the torch.hub cache as {cached})"
    if not cached.is_file():
        _ensure_downloadable(name, url, hint)
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            model = get_model(name, weights=default)
    except OSError as e:  # URLError, HTTPError, timeouts, connection errors
        raise _download_error(name, url, str(e), hint) from e
    except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
        if cached.is_file():
            raise ModelSourceError(
                f"could not load the cached weights {cached} of {name!r}: {e}\n"
                "Delete the file to download it again, or pass a local file with --weights PATH."
            ) from e
        raise
    if name in _AUX_PREFIXES and getattr(model, "aux_logits", False):
        # drop the training-only auxiliary classifiers, as torchvision does for aux_logits=False
        model.aux_logits = False
        for prefix in _AUX_PREFIXES[name]:
            setattr(model, prefix[:-1], None)
    return model


def _build_torchvision(
    name: str, mode: str, path: Path | None, num_classes: int | None
) -> tuple[nn.Module, Preprocessing, int]:
    from torchvision.models import get_model, get_model_weights

    default = get_model_weights(name).DEFAULT
    pre = Preprocessing.from_torchvision_weights(default)
    n_default = len(default.meta["categories"])
    n_classes = n_default if num_classes is None else num_classes

    if mode == "none":
        kwargs = _torchvision_arch_kwargs(name, default, pretrained=False)
        model = get_model(name, weights=None, num_classes=n_classes, **kwargs)
    elif mode == "file":
        kwargs = _torchvision_arch_kwargs(name, default, pretrained=True)
        model = get_model(name, weights=None, num_classes=n_classes, **kwargs)
        state_dict = _torchvision_fix_keys(name, load_state_dict_file(_file(path)))
        _load_strict(model, state_dict, source=str(path), name=name)
    else:
        model = _torchvision_pretrained(name, default)
        if n_classes != n_default:
            pretrained_state = model.state_dict()
            kwargs = _torchvision_arch_kwargs(name, default, pretrained=True)
            model = get_model(name, weights=None, num_classes=n_classes, **kwargs)
            _load_except_head(model, pretrained_state, name, n_default, n_classes)

    if getattr(model, "transform_input", False) is True:
        # ``transform_input`` maps ImageNet-normalised input x to (pixel - 0.5) / 0.5, so
        # normalising with mean = std = 0.5 and switching it off is exactly equivalent.
        model.transform_input = False
        pre = dataclasses.replace(pre, mean=_HALF, std=_HALF)
    return model, pre, n_classes
