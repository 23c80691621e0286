"""Save and load converted B-cos models: :func:`save` and :func:`load`.

A saved model is a directory with two files:

- ``model.safetensors``: the converted model's state dict (parameters *and* buffers, so BatchNorm
  statistics, the folded first layer and the logit bias come back exactly);
- ``config.json``: what is needed to rebuild the architecture (the source model name and number
  of classes, the conversion options, the preprocessing), the library versions that wrote it and
  the sha256 of ``model.safetensors``.

Nothing is pickled: the weights are read with safetensors only, never with ``torch.load``.
Loading rebuilds the source architecture with random weights (nothing is downloaded), converts
it with the saved options and then replaces every tensor by the saved one.

Example:
    >>> import tempfile, torch, bcosify
    >>> from bcosify import io, sources
    >>> model = bcosify.convert(sources.build_model("resnet18", weights="none"))
    >>> path = io.save(model, tempfile.mkdtemp())
    >>> again = io.load(path)
    >>> x = torch.rand(1, 3, 64, 64)
    >>> torch.equal(model.eval()(x), again(x))
    True
"""

from __future__ import annotations

import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcosify import metadata
from bcosify.config import BcosConfig
from bcosify.errors import BcosifyError, ModelSourceError
from bcosify.preprocessing import Preprocessing
from bcosify.sources import compare_state_dicts
from bcosify.sources._helpers import sha256_file

__all__ = ["save", "load", "FORMAT_VERSION", "WEIGHTS_NAME", "CONFIG_NAME"]

FORMAT_VERSION = 1
"""Version of the saved-model layout written by :func:`save` (``config.json["bcosify_format"]``)."""

WEIGHTS_NAME = "model.safetensors"
"""File name of the weights inside a saved-model directory."""

CONFIG_NAME = "config.json"
"""File name of the configuration inside a saved-model directory."""

_REQUIRED_KEYS = ("bcosify_format", "source", "num_classes", "preprocessing", "config", "sha256")
_MAX_LISTED = 5


# ---------------------------------------------------------------------------- save
def save(model: nn.Module, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Save a converted model as ``model.safetensors`` + ``config.json`` in ``directory``.

    Both files are written to temporary files in ``directory`` first and then moved into place
    with ``os.replace``, so an interrupted save never leaves a half-written file under the final
    name. The directory (and its parents) is created if needed.

    Args:
        model: a converted model (from :func:`bcosify.convert` or :func:`load`); a
            ``DataParallel``/``DistributedDataParallel`` or ``torch.compile`` wrapper is
            unwrapped. Its parameters and buffers are saved, whatever their device.
        directory: the output directory.
        overwrite: replace the model files of a directory that already holds a saved model.

    Returns:
        The directory, as a :class:`pathlib.Path`.

    Raises:
        BcosifyError: if ``model`` is not a converted model, ``directory`` already holds model
            files and ``overwrite`` is False, ``directory`` is not a directory, or the state dict
            holds something other than tensors.

    Example:
        >>> import tempfile, bcosify
        >>> from bcosify import sources
        >>> model = bcosify.convert(sources.build_model("resnet18", weights="none", num_classes=10))
        >>> out = save(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in out.iterdir())
        ['config.json', 'model.safetensors']
    """
    from safetensors.torch import save_file

    model = _unwrap(model)
    config = getattr(model, "bcosify_config", None)
    if not isinstance(model, nn.Module) or not isinstance(config, BcosConfig):
        raise BcosifyError(
            f"save needs a converted B-cos model (with a bcosify_config attribute), got "
            f"{type(model).__name__}; convert it first: model = bcosify.convert(model)"
        )
    out = Path(directory).expanduser()
    if out.exists() and not out.is_dir():
        raise BcosifyError(f"cannot save into {out}: it exists and is not a directory")
    existing = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if (out / name).exists()]
    if existing and not overwrite:
        raise BcosifyError(
            f"{out} already holds a saved model ({', '.join(existing)}); pass overwrite=True "
            "to replace it, or choose another directory"
        )
    out.mkdir(parents=True, exist_ok=True)

    tensors = _state_dict_tensors(model)
    meta = {
        "bcosify_format": FORMAT_VERSION,
        "source": _source_dict(model),
        "num_classes": _num_classes(model),
        "preprocessing": _preprocessing(model).to_dict(),
        "config": config.to_dict(),
        "versions": _versions(),
    }
    node_map = getattr(model, "bcosify_node_map", None)
    if node_map is not None:
        meta["node_map"] = node_map  # source node -> converted node (bcosify.node_map)

    tag = uuid.uuid4().hex[:12]
    tmp_weights = out / f".{WEIGHTS_NAME}.{tag}.tmp"
    tmp_config = out / f".{CONFIG_NAME}.{tag}.tmp"
    try:
        save_file(tensors, str(tmp_weights), metadata={"format": "pt", "bcosify_format": "1"})
        _fsync(tmp_weights)
        meta["sha256"] = sha256_file(tmp_weights)
        with open(tmp_config, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        # Weights first: a crash between the two moves leaves a sha256 mismatch, never a
        # silently wrong model.
        os.replace(tmp_weights, out / WEIGHTS_NAME)
        os.replace(tmp_config, out / CONFIG_NAME)
    finally:
        for tmp in (tmp_weights, tmp_config):
            if tmp.exists():
                tmp.unlink()
    return out


def _unwrap(model: Any) -> Any:
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(model, nn.Module) and isinstance(
            model.__dict__.get("_modules", {}).get("_orig_mod"), nn.Module
        ):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _state_dict_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise BcosifyError(
                f"cannot save {key!r}: the state dict holds a {type(value).__name__}, only "
                "tensors can be stored in safetensors"
            )
        # A fresh contiguous CPU copy per entry: tied/shared tensors and views become
        # independent tensors, which safetensors requires.
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
    return tensors


def _source_dict(model: nn.Module) -> dict[str, Any]:
    source = getattr(model, "bcosify_source", None)
    source = dict(source) if isinstance(source, Mapping) else {}
    source.setdefault("name", None)
    try:
        json.dumps(source)
    except (TypeError, ValueError):
        source = {k: v for k, v in source.items() if _json_ok(v)}
    return source


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "bcosify_num_classes", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BcosifyError(
            f"the converted model has no valid bcosify_num_classes ({n!r}); convert it again "
            "with bcosify.convert"
        )
    return n


def _preprocessing(model: nn.Module) -> Preprocessing:
    pre = getattr(model, "bcosify_preprocessing", None)
    if isinstance(pre, Preprocessing):
        return pre
    if isinstance(pre, Mapping):
        return Preprocessing.from_dict(pre)
    raise BcosifyError(
        "the converted model has no bcosify_preprocessing; convert it again with bcosify.convert"
    )


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    import bcosify

    out: dict[str, str | None] = {"bcosify": getattr(bcosify, "__version__", None)}
    for dist in ("torch", "torchvision", "timm", "safetensors"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------- load
def load(
    directory: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> torch.fx.GraphModule:
    """Load a model saved by :func:`save`.

    The source architecture is rebuilt with random weights by
    :func:`bcosify.sources.build_model` (nothing is downloaded), or taken from ``model`` for a
    custom architecture, converted with the saved :class:`~bcosify.BcosConfig` and
    normalisation, and then every parameter and buffer is replaced by the saved one (strictly:
    the keys and shapes must match exactly). The weights are read with safetensors only; no
    pickle is ever loaded.

    Args:
        directory: a directory written by :func:`save`, or ``"hf-hub:org/name"``: a model
            pushed with :func:`bcosify.push_to_hub`, downloaded through ``huggingface_hub``
            (its cache; ``HF_HUB_OFFLINE=1`` reads the cache only). Only its ``config.json``
            and ``model.safetensors`` are read: no code from the repository runs.
        model: the *unconverted* source architecture (an ``nn.Module``, its weights are not
            used). Required when the saved model was converted from a custom model (the saved
            source name is null); otherwise it replaces the rebuilt architecture.
        map_location: the device the returned model is moved to.

    Returns:
        The converted model in eval mode, with ``bcosify_config``, ``bcosify_preprocessing``,
        ``bcosify_num_classes``, ``bcosify_source``, ``conversion_report`` and ``transform``.

    Raises:
        BcosifyError: if ``config.json`` is missing, not valid JSON, lacks keys or has an unknown
            format version; if ``model.safetensors`` is missing, corrupted or truncated (sha256
            mismatch) or does not match the architecture; if a custom model is loaded without
            ``model=``. Every message names the offending file.
        ModelSourceError: if the saved source architecture cannot be rebuilt.

    Example:
        >>> import tempfile, torch, bcosify
        >>> from bcosify import sources
        >>> path = save(bcosify.convert(sources.build_model("resnet18", weights="none")),
        ...             tempfile.mkdtemp())
        >>> load(path)(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 1000])
    """
    from bcosify import hub  # light: huggingface_hub loads only when a hub name is given

    hub_repo = None
    if isinstance(directory, str) and directory.startswith(hub.HF_PREFIX):
        root = hub.download(directory)
        hub_repo = directory[len(hub.HF_PREFIX) :]
    else:
        root = Path(directory).expanduser()
    if not root.is_dir():
        raise BcosifyError(f"cannot load a model from {root}: no such directory")
    config_path = root / CONFIG_NAME
    weights_path = root / WEIGHTS_NAME
    meta = _read_config(config_path)
    saved_config = meta["config"]
    if isinstance(saved_config, dict) and "node_map" not in meta:
        if saved_config.get("activation") == "keep":
            # saved before "keep" turned ReLU6 into ReLU: what it meant then is now "exact"
            saved_config = {**saved_config, "activation": "exact"}
    try:
        config = BcosConfig.from_dict(saved_config)
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    except (BcosifyError, TypeError) as e:
        raise BcosifyError(f"{config_path}: invalid conversion settings: {e}") from e

    _check_weights_file(weights_path, meta["sha256"])
    state_dict = _read_safetensors(weights_path)

    source = meta["source"]
    num_classes = meta["num_classes"]
    if model is None and source.get("name") is None and source.get("zoo"):
        # a published B-cos model that bcosify builds itself (not a conversion): by its name
        converted = _rebuild_zoo_model(source["zoo"], num_classes, config_path)
    else:
        converted = _convert_again(source, num_classes, model, config, preprocessing, config_path)
    if converted.bcosify_num_classes != num_classes:
        raise BcosifyError(
            f"{config_path} says num_classes={num_classes} but the rebuilt architecture has "
            f"{converted.bcosify_num_classes} outputs"
            + ("; pass the matching model= architecture" if model is not None else "")
        )
    _load_strict(converted, state_dict, weights_path)
    saved_print = source.get("architecture_sha256")
    if (
        model is None
        and saved_print
        and saved_print != metadata.architecture_fingerprint(converted)
    ):
        raise BcosifyError(
            f"{config_path}: the architecture rebuilt from the name {source.get('name')!r} is not "
            "the one that was saved (same weights' shapes, but another graph or other module "
            "settings: built with other arguments, or converted with other rules); pass the "
            "unconverted architecture: load(directory, model=...)"
        )
    saved_map = meta.get("node_map")
    if saved_map is not None and saved_map != converted.bcosify_node_map:
        import warnings

        warnings.warn(
            f"{config_path}: the node map saved with the model differs from the one this bcosify "
            "computes for it (another version converted it); node names for feature alignment "
            "are those of bcosify.node_map(model)",
            UserWarning,
            stacklevel=2,
        )

    metadata.attach(
        converted,
        bcosify_preprocessing=preprocessing,
        transform=preprocessing.transform(),
        bcosify_source={**source, "hf_hub": hub_repo} if hub_repo else dict(source),
        bcosify_num_classes=num_classes,
    )
    return converted.to(map_location).eval()


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BcosifyError(
            f"{path} not found: not a model directory written by bcosify.io.save (it needs "
            f"{CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    try:
        text = path.read_text(encoding="utf-8")
        meta = json.loads(text)
    except (OSError, UnicodeDecodeError) as e:
        raise BcosifyError(f"could not read {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise BcosifyError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise BcosifyError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    version = meta.get("bcosify_format")
    if "bcosify_format" in meta and version != FORMAT_VERSION:
        raise BcosifyError(
            f"{path} has format version {version!r}, this bcosify reads version "
            f"{FORMAT_VERSION}; upgrade bcosify or save the model again"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise BcosifyError(f"{path} is missing the key(s) {missing}")
    source = meta["source"]
    if not isinstance(source, dict) or not (
        source.get("name") is None or isinstance(source.get("name"), str)
    ):
        raise BcosifyError(
            f"{path}: 'source' must be an object with a string or null 'name', got {source!r}"
        )
    n = meta["num_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BcosifyError(f"{path}: 'num_classes' must be an int >= 1, got {n!r}")
    for key in ("config", "preprocessing"):
        if not isinstance(meta[key], dict):
            raise BcosifyError(f"{path}: {key!r} must be a JSON object, got {meta[key]!r}")
    sha = meta["sha256"]
    if not isinstance(sha, str) or len(sha) != 64:
        raise BcosifyError(f"{path}: 'sha256' must be a 64-character hex digest, got {sha!r}")
    return meta


def _check_weights_file(path: Path, sha256: str) -> None:
    if not path.is_file():
        raise BcosifyError(f"{path} not found: the saved model has no weights file")
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise BcosifyError(f"could not read {path}: {e}") from e
    if digest != sha256.lower():
        raise BcosifyError(
            f"{WEIGHTS_NAME} is corrupted or truncated: the sha256 of {path} ({digest}) differs "
            f"from the one recorded in {CONFIG_NAME} ({sha256}); save the model again"
        )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types (SafetensorError, ...)
        raise BcosifyError(
            f"{WEIGHTS_NAME} is corrupted or truncated: could not read {path} "
            f"({type(e).__name__}: {e})"
        ) from e


def _rebuild_zoo_model(name: Any, num_classes: int, config_path: Path) -> nn.Module:
    from bcosify.sources import build_model

    if not isinstance(name, str):
        raise BcosifyError(f"{config_path}: 'source.zoo' must be a model name, got {name!r}")
    try:
        return build_model(name, weights="none", num_classes=num_classes)
    except ModelSourceError as e:
        raise BcosifyError(f"{config_path}: could not rebuild {name}: {e}") from e


def _convert_again(
    source: dict[str, Any],
    num_classes: int,
    model: nn.Module | None,
    config: BcosConfig,
    preprocessing: Preprocessing,
    config_path: Path,
) -> nn.Module:
    import bcosify

    arch = _source_architecture(source, num_classes, model, config_path)
    try:
        return bcosify.convert(
            arch,
            config,
            mean=preprocessing.mean,
            std=preprocessing.std,
            input_size=preprocessing.input_size,
        )
    except BcosifyError as e:
        raise BcosifyError(
            f"{config_path}: could not convert the source architecture "
            f"{source.get('name') or type(arch).__name__} again: {e}"
        ) from e


def _source_architecture(
    source: dict[str, Any], num_classes: int, model: nn.Module | None, config_path: Path
) -> nn.Module:
    if model is not None:
        if not isinstance(model, nn.Module):
            raise BcosifyError(
                f"model= must be the unconverted torch.nn.Module architecture, got "
                f"{type(model).__name__}"
            )
        return model
    name = source.get("name")
    if name is None:
        raise BcosifyError(
            f"{config_path} describes a custom model (source name is null): pass its unconverted "
            "architecture, e.g. load(directory, model=MyNet()); its weights are not used"
        )
    from bcosify import sources

    try:
        return sources.build_model(name, weights="none", num_classes=num_classes)
    except ModelSourceError as e:
        raise ModelSourceError(
            f"{config_path}: cannot rebuild the source architecture {name!r}: {e}"
        ) from e


def _load_strict(gm: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    expected = gm.state_dict()
    missing, unexpected, mismatched = compare_state_dicts(expected, state_dict)
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                shown = ", ".join(items[:_MAX_LISTED])
                more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
                parts.append(f"{len(items)} {label}: {shown}{more}")
        raise BcosifyError(
            f"the weights in {path} do not match the architecture described in {CONFIG_NAME}: "
            + "; ".join(parts)
        )
    # Keep the module versions of the freshly built model (some modules check them on load).
    ordered: OrderedDict[str, torch.Tensor] = OrderedDict((k, state_dict[k]) for k in expected)
    metadata = getattr(expected, "_metadata", None)
    if metadata is not None:
        ordered._metadata = metadata  # type: ignore[attr-defined]
    try:
        gm.load_state_dict(ordered, strict=True)
    except RuntimeError as e:
        raise BcosifyError(f"could not load the weights in {path}: {e}") from e
    dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        (dtype,) = dtypes
        if dtype != torch.float32:
            gm.to(dtype)
