"""Weight files and state dicts: reading, unwrapping checkpoints, strict comparison."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcosify.errors import ModelSourceError

_TORCH_LOAD_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


_HALF = (0.5, 0.5, 0.5)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` or ``.pth``/``.pt`` file (CPU tensors).

    ``.pth`` files are read with ``torch.load(weights_only=True)``. A state dict wrapped in
    ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped, and a ``"module."``
    (DataParallel) or ``"_orig_mod."`` (torch.compile) prefix shared by all keys is removed.

    Args:
        path: the file.

    Returns:
        An ordered dict from parameter/buffer names to tensors (with torch's ``_metadata``
        module versions when the file has them).

    Raises:
        ModelSourceError: if the file is missing, unreadable or holds no state dict.

    Example:
        >>> import tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "w.pth")
        >>> torch.save({"state_dict": {"module.weight": torch.ones(2)}}, p)
        >>> dict(load_state_dict_file(p))
        {'weight': tensor([1., 1.])}
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelSourceError(f"weights file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise ModelSourceError(f"could not read the safetensors file {p}: {e}") from e
    elif suffix in _TORCH_LOAD_SUFFIXES:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
            raise ModelSourceError(
                f"could not read {p} with torch.load(weights_only=True): {e}\n"
                "Save only the tensors, e.g. torch.save(model.state_dict(), path), or use "
                "safetensors."
            ) from e
    else:
        raise ModelSourceError(
            f"unsupported weights file {p}: expected .safetensors or one of "
            f"{', '.join(_TORCH_LOAD_SUFFIXES)}"
        )
    return _unwrap_state_dict(obj, p)


def _parse_weights(weights: str | os.PathLike[str] | None) -> tuple[str, Path | None]:
    """Return (mode, path) with mode one of DEFAULT, none, packaged, file."""
    if weights is None:
        return "none", None
    if isinstance(weights, str):
        text = weights.strip()
        if text.upper() == "DEFAULT":
            return "DEFAULT", None
        if text.lower() == "none":
            return "none", None
        if text.lower() == "packaged":
            return "packaged", None
    elif not isinstance(weights, os.PathLike):
        raise ModelSourceError(
            f"weights must be 'DEFAULT', 'none', None or a path, got {type(weights).__name__}"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelSourceError(
            f"weights file not found: {path} (weights must be 'DEFAULT', 'none', or the path of "
            "a .safetensors / .pth / .pt state dict)"
        )
    return "file", path


def _file(path: Path | None) -> Path:
    if path is None:  # _parse_weights always gives a path with mode "file"
        raise ModelSourceError("internal error: no weights file for weights mode 'file'")
    return path


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(4):
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        found = (
            f"top-level keys {sorted(map(str, obj))[:8]}"
            if isinstance(obj, Mapping)
            else f"a {type(obj).__name__}"
        )
        raise ModelSourceError(
            f"{path} does not hold a state dict (names -> tensors, possibly under 'state_dict' "
            f"or 'model'); found {found}"
        )
    # keep the per-module versions that torch.save stores (some modules need them to load)
    metadata = getattr(obj, "_metadata", None)
    state_dict = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        while state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
            if isinstance(metadata, Mapping):
                metadata = {
                    ("" if k == prefix[:-1] else k[len(prefix) :]): v
                    for k, v in metadata.items()
                    if k == prefix[:-1] or k.startswith(prefix)
                }
    return _with_metadata(state_dict, metadata)


def _with_metadata(state_dict: Mapping[str, Any], metadata: Any) -> dict[str, Any]:
    """An OrderedDict of ``state_dict`` carrying ``metadata`` as ``_metadata`` when given."""
    out: Any = OrderedDict(state_dict)
    if isinstance(metadata, Mapping):
        out._metadata = OrderedDict(metadata)
    return out


def _short_list(keys: list[str], limit: int = 5) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def compare_state_dicts(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Keys missing from ``given``, keys ``given`` has in excess, and shape mismatches (as
    ``"key (file SHAPE, model SHAPE)"``)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k} (file {tuple(given[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    return missing, unexpected, mismatched


def _load_strict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, name: str
) -> None:
    """Load ``state_dict`` strictly; mismatches raise a ModelSourceError naming ``source``."""
    expected = model.state_dict()
    missing, unexpected, mismatched = compare_state_dicts(expected, state_dict)
    if not mismatched:
        # strict=False so that BatchNorm's hooks can fill in buffers that old checkpoints lack
        # (num_batches_tracked); everything else missing or unexpected is an error below.
        result = model.load_state_dict(state_dict, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if mismatched or missing or unexpected:
        lines = [f"the weights in {source} do not match the architecture of {name!r}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_short_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_short_list(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_short_list(mismatched, 3)}")
        lines.append(
            "Check that the file was saved from this architecture; pass num_classes=N when its "
            "classifier has N outputs."
        )
        raise ModelSourceError("\n".join(lines))


def _load_except_head(
    model: nn.Module, state_dict: dict[str, torch.Tensor], name: str, n_from: int, n_to: int
) -> None:
    """Load pretrained weights into ``model`` whose classifier has ``n_to`` instead of ``n_from``
    outputs; the head keeps its fresh initialisation."""
    target = model.state_dict()
    head = [k for k in target if k in state_dict and target[k].shape != state_dict[k].shape]
    bad = [
        k
        for k in head
        if not (
            state_dict[k].shape[:1] == (n_from,)
            and target[k].shape[:1] == (n_to,)
            and state_dict[k].shape[1:] == target[k].shape[1:]
        )
    ]
    if bad or set(target) != set(state_dict) or not head:
        raise ModelSourceError(
            f"cannot replace the classifier of {name!r} by one with {n_to} classes "
            f"(unexpected differences: {_short_list(bad or sorted(set(target) ^ set(state_dict)))})"
            f"; use weights='none' with num_classes={n_to}"
        )
    kept = {k: v for k, v in state_dict.items() if k not in head}
    kept = _with_metadata(kept, getattr(state_dict, "_metadata", None))
    model.load_state_dict(kept, strict=False)
