"""The published B-cos v2 ImageNet models (the ``bcos-v2/`` names of :func:`build_model`).

B-cos v2 (Böhle et al., "B-cos Alignment for Inherently Interpretable CNNs and Vision
Transformers", TPAMI 2024; https://github.com/B-cos/B-cos-v2, Apache-2.0) publishes 26 B-cos
ImageNet classifiers and 8 standard (non-B-cos) ViTs as release assets, loaded there through
``torch.hub``. The entries below use the names of that hub (``bcos-v2/resnet50``,
``bcos-v2/densenet121_long``, ...), its weight files and the top-1 accuracies its model cards
report.

A B-cos v2 ResNet, ResNeXt or DenseNet is, layer for layer, what bcosify's conversion makes of
the torchvision model of the same name with B-cos v2 units (``normalize_weights=True``, B=2, no
bias, no ReLU, uncentered BatchNorm, max pooling as average pooling, the classifier as a 1x1
B-cos convolution before the global pooling, a logit bias of ``-log(C - 1)``, the input
``[x, 1 - x]`` with no normalisation). Such an entry is built by converting that torchvision
architecture and loading the published weights under bcosify's key names (``conv1.linear.weight``
-> ``conv1.weight``). The other B-cos families (VGG-BNU, the ConvNeXts, the SimpleViTs and
ViT-Cs) differ from any torchvision model (a convolutional classifier, no GELU, other norms, no
counterpart at all); bcosify builds them from its own B-cos layers
(:mod:`bcosify.sources._bcos_v2_arch`). The 8 standard ViTs are source models, which bcosify
converts like any other.

B-cosification (Arya et al., NeurIPS 2024; https://github.com/shrebox/B-cosification,
Apache-2.0) publishes checkpoints of B-cosified models (``bcosification/`` names): its CNNs are
bcosify conversions of torchvision models with its options; its ViTs, B-cosified from the
standard ViTs above, are built by bcosify
(:class:`~bcosify.sources._bcos_v2_arch.BcosifiedSimpleViT`). ``scripts/zoo.py`` checks every
entry against the ``bcos`` package.
"""

from __future__ import annotations

import difflib
import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bcosify.config import BcosConfig
from bcosify.errors import ModelSourceError
from bcosify.preprocessing import Preprocessing
from bcosify.sources._helpers import (
    _file,
    _load_except_head,
    _load_strict,
    load_state_dict_file,
    sha256_file,
)
from bcosify.sources._hub import (
    _DOWNLOAD_SOCKET_TIMEOUT_S,
    _download_error,
    _ensure_downloadable,
    _socket_timeout,
    _torch_hub_cache_path,
)

ZOO_PREFIX = "bcos-v2/"
"""Prefix of the published B-cos v2 models in :func:`bcosify.build_model`."""

BCOSIFICATION_PREFIX = "bcosification/"
"""Prefix of the published B-cosified CNNs and ViTs (Arya et al., NeurIPS 2024) in
:func:`bcosify.build_model`."""

_BCOSIFICATION_RELEASE = "https://github.com/shrebox/B-cosification/releases/tag/v0.0.1-checkpoints"

_RELEASE = "https://github.com/B-cos/B-cos-v2/releases/download/v0.0.1-weights"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_CONVERTIBLE = ("resnet", "densenet")
_VIT_FAMILIES = ("simple_vit", "vitc")
"""Families whose B-cos v2 models are conversions of the torchvision model of the same name;
the others are built by bcosify directly (:mod:`bcosify.sources._bcos_v2_arch`)."""


@dataclass(frozen=True)
class ZooEntry:
    """One published B-cos v2 model.

    Attributes:
        name: the bcosify name, ``"bcos-v2/<hub name>"``.
        family: ``"resnet"`` (ResNets and ResNeXt), ``"densenet"``, ``"vgg"``, ``"convnext"``,
            ``"simple_vit"`` or ``"vitc"``.
        architecture: the torchvision architecture it converts (``None`` for the entries bcosify
            builds itself and for the standard ViTs).
        file: the name of the published weight file (its name ends in the first 10 hex digits
            of its sha256, which torch.hub checks).
        top1: the ImageNet top-1 accuracy (%) published with it.
        bcos: False for the standard (non-B-cos) ViTs, the sources of the published ViT
            B-cosification.
        resize_size, input_size: its evaluation preprocessing (resize the shorter side, center
            crop); images in [0, 1] with no normalisation.
    """

    name: str
    family: str
    architecture: str | None
    file: str | None
    top1: float | None
    bcos: bool = True
    resize_size: int = 256
    input_size: int = 224

    @property
    def release(self) -> str:
        """``"bcos-v2"`` or ``"bcosification"``."""
        return self.name.split("/", 1)[0]

    @property
    def url(self) -> str | None:
        """Where the published file is (None: no file bcosify knows of)."""
        return None if self.file is None else f"{_RELEASE}/{self.file}"

    @property
    def hash_prefix(self) -> str:
        """The sha256 prefix in the file name (what ``torch.hub`` checks with check_hash)."""
        match = re.search(r"-([0-9a-f]{8,})\.", self.file or "")
        if match is None:  # every published file name carries one
            raise ModelSourceError(f"internal error: no hash in the file name {self.file!r}")
        return match.group(1)

    @property
    def hub_name(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def converted(self) -> bool:
        """A B-cos entry made by converting the torchvision model ``architecture``; the other
        B-cos entries are built directly."""
        return self.bcos and self.family in _CONVERTIBLE

    @property
    def config(self) -> BcosConfig:
        """The conversion options of a converted entry. B-cos v2 units have unit-norm weights
        and take the raw ``[x, 1 - x]``; B-cosification keeps the raw weights, keeps ReLU and
        takes the patch norm of the first layer on the normalised encoding."""
        if self.release == "bcosification":
            if self.family in _VIT_FAMILIES:  # GELU is kept as a gate whatever the option
                return BcosConfig(first_layer_norm="normalized")
            return BcosConfig(activation="keep", first_layer_norm="normalized")
        return BcosConfig(normalize_weights=True)

    @property
    def preprocessing(self) -> Preprocessing:
        """B-cos v2's B-cos models take ``[0, 1]`` images (no normalisation); the standard ViTs
        and the B-cosified models take ImageNet-normalised ones (in bcosify, the normalisation
        is folded into the first layer: the converted model takes ``[0, 1]`` images too)."""
        raw = self.bcos and self.release == "bcos-v2"
        mean, std = ((0.0,) * 3, (1.0,) * 3) if raw else (_IMAGENET_MEAN, _IMAGENET_STD)
        return Preprocessing(
            mean=mean,
            std=std,
            input_size=self.input_size,
            resize_size=self.resize_size,
            interpolation="bilinear",
        )


def _entries() -> dict[str, ZooEntry]:
    rows: list[tuple[str, str, str | None, str, float]] = [
        # hub name, family, torchvision architecture, weight file, published top-1
        ("resnet18", "resnet", "resnet18", "resnet_18-68b4160fff.pth", 68.736),
        ("resnet34", "resnet", "resnet34", "resnet_34-a63425a03e.pth", 72.284),
        ("resnet50", "resnet", "resnet50", "resnet_50-ead259efe4.pth", 75.882),
        ("resnet101", "resnet", "resnet101", "resnet_101-84c3658278.pth", 76.532),
        ("resnet152", "resnet", "resnet152", "resnet_152-42051a77c1.pth", 76.484),
        ("resnext50_32x4d", "resnet", "resnext50_32x4d", "resnext_50_32x4d-57af241ab9.pth", 75.820),
        ("densenet121", "densenet", "densenet121", "densenet_121-b8daf96afb.pth", 73.612),
        ("densenet161", "densenet", "densenet161", "densenet_161-9e9ea51353.pth", 76.622),
        ("densenet169", "densenet", "densenet169", "densenet_169-7037ee0604.pth", 75.186),
        ("densenet201", "densenet", "densenet201", "densenet_201-00ac87066f.pth", 75.480),
        ("vgg11_bnu", "vgg", None, "vgg_11_bnu-34036029f0.pth", 69.310),
        ("convnext_tiny", "convnext", None, "convnext_tiny_pn-539b1bfb37.pth", 77.488),
        ("convnext_base", "convnext", None, "convnext_base_pn-b0495852c6.pth", 79.650),
        ("convnext_tiny_bnu", "convnext", None, "convnext_tiny_bnu-dbd7f5ef9d.pth", 76.826),
        ("convnext_base_bnu", "convnext", None, "convnext_base_bnu-7c32a704b3.pth", 80.142),
        ("densenet121_long", "densenet", "densenet121", "densenet_121_long-5175461597.pth", 77.302),
        ("resnet50_long", "resnet", "resnet50", "resnet_50_long-ef38a88533.pth", 79.468),
        ("resnet152_long", "resnet", "resnet152", "resnet_152_long-0b4b434939.pth", 80.144),
    ]
    for size, acc in (("ti", 59.960), ("s", 69.246), ("b", 74.408), ("l", 75.060)):
        name = f"simple_vit_{size}_patch16_224"
        rows.append((name, "simple_vit", None, f"bcos_{name}-{_VIT_HASHES[name]}.pth", acc))
    for size, acc in (("ti", 67.260), ("s", 74.504), ("b", 77.152), ("l", 77.782)):
        name = f"vitc_{size}_patch1_14"
        rows.append((name, "vitc", None, f"bcos_{name}-{_VIT_HASHES[name]}.pth", acc))
    out = {}
    for hub, family, arch, file, acc in rows:
        # the "long" schedule (600 epochs) evaluates at resize 232, as torchvision's V2 weights
        resize = 232 if hub.endswith("_long") or family == "convnext" else 256
        out[ZOO_PREFIX + hub] = ZooEntry(ZOO_PREFIX + hub, family, arch, file, acc, True, resize)
    standard = (
        ("simple_vit_ti_patch16_224", "simple_vit", 70.230),
        ("simple_vit_s_patch16_224", "simple_vit", 74.470),
        ("simple_vit_b_patch16_224", "simple_vit", 75.300),
        ("simple_vit_l_patch16_224", "simple_vit", 75.710),
        ("vitc_ti_patch1_14", "vitc", 72.590),
        ("vitc_s_patch1_14", "vitc", 75.756),
        ("vitc_b_patch1_14", "vitc", 76.790),
        ("vitc_l_patch1_14", "vitc", 77.866),
    )
    for hub, family, acc in standard:
        file = f"standard_{hub}-{_VIT_HASHES['standard_' + hub]}.pth"
        name = ZOO_PREFIX + "standard_" + hub
        out[name] = ZooEntry(name, family, None, file, acc, bcos=False)
    # B-cosification (Arya et al., NeurIPS 2024): the CNN configs of its ImageNet experiments,
    # converted from torchvision's weights (resnet50: V2; resnet50_v1: V1), and its ViTs,
    # B-cosified from B-cos v2's standard ViTs (built by bcosify). Its release lists no file
    # names or hashes bcosify could check: weights come from a local file.
    bcosified = [
        ("resnet18", "resnet", "resnet18"),
        ("resnet50", "resnet", "resnet50"),
        ("resnet50_v1", "resnet", "resnet50"),
        ("densenet121", "densenet", "densenet121"),
    ]
    for hub, family, _ in standard:
        bcosified.append((hub, family, None))
    for name, family, arch in bcosified:
        key = BCOSIFICATION_PREFIX + name
        out[key] = ZooEntry(key, family, arch, None, None)
    return out


_VIT_HASHES = {
    "simple_vit_ti_patch16_224": "4b0824b1c1",
    "simple_vit_s_patch16_224": "75e99d1f73",
    "simple_vit_b_patch16_224": "1fc4750806",
    "simple_vit_l_patch16_224": "9613b2ad0a",
    "vitc_ti_patch1_14": "ddd6193a77",
    "vitc_s_patch1_14": "cf55c88f0c",
    "vitc_b_patch1_14": "a13c46397b",
    "vitc_l_patch1_14": "8739e18b8d",
    "standard_simple_vit_ti_patch16_224": "2ae8c65a39",
    "standard_simple_vit_s_patch16_224": "f2934fcdcf",
    "standard_simple_vit_b_patch16_224": "87074200ed",
    "standard_simple_vit_l_patch16_224": "62dc536e03",
    "standard_vitc_ti_patch1_14": "a5d6bded37",
    "standard_vitc_s_patch1_14": "34ecd7288e",
    "standard_vitc_b_patch1_14": "4d374b0220",
    "standard_vitc_l_patch1_14": "560e48f246",
}

ENTRIES: dict[str, ZooEntry] = _entries()
"""Every published B-cos v2 ImageNet model, by bcosify name."""


def zoo_entry(name: str) -> ZooEntry:
    """The entry called ``name`` (``"bcos-v2/resnet50"``, ``"bcosification/resnet50"``; the
    ``bcos-v2/`` prefix may be left out).

    Raises:
        ModelSourceError: for an unknown name, with the closest names.

    Example:
        >>> zoo_entry("bcos-v2/resnet50").top1
        75.882
    """
    prefixed = name.startswith((ZOO_PREFIX, BCOSIFICATION_PREFIX))
    key = name if prefixed else ZOO_PREFIX + name
    if key in ENTRIES:
        return ENTRIES[key]
    close = difflib.get_close_matches(key, list(ENTRIES), n=4, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ModelSourceError(
        f"unknown published B-cos model {name!r}.{hint} `bcosify models --zoo` lists them all."
    )


# ---------------------------------------------------------------------------- weights
def _hash_mismatch(entry: ZooEntry, path: Path, digest: str, where: str) -> ModelSourceError:
    return ModelSourceError(
        f"the weight file {path} of {entry.name!r} does not have the published hash: its sha256 "
        f"is {digest}, the published file's starts with {entry.hash_prefix} ({where}). Run the "
        f"command again to download it anew, or pass a verified copy with weights=PATH."
    )


def _published_file(entry: ZooEntry) -> Path:
    """The published weight file in the torch.hub cache, downloaded if needed, hash checked.

    A cached file whose sha256 does not start with the published prefix is removed from the
    cache; a download is written to a temporary file and only moved into the cache when its
    hash matches (``torch.hub.download_url_to_file``), so a bad file is never kept.
    """
    if entry.url is None:
        raise ModelSourceError(
            f"bcosify knows no published file name and hash for {entry.name!r} (the release "
            f"{_BCOSIFICATION_RELEASE} lists none it could check): download its checkpoint "
            f"and pass it as a local file, build_model({entry.name!r}, weights='path/to/file')"
        )
    cached = _torch_hub_cache_path(entry.url)
    if cached.is_file():
        digest = sha256_file(cached)
        if not digest.startswith(entry.hash_prefix):
            cached.unlink()
            raise _hash_mismatch(entry, cached, digest, "the corrupted file was removed")
        return cached
    hint = f" (or put it in the torch.hub cache as {cached})"
    _ensure_downloadable(entry.name, entry.url, hint)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            torch.hub.download_url_to_file(entry.url, str(cached), hash_prefix=entry.hash_prefix)
    except (OSError, urllib.error.URLError) as e:
        raise _download_error(entry.name, entry.url, str(e), hint) from e
    except RuntimeError as e:
        match = re.search(r'got "([0-9a-f]+)"', str(e))
        digest = match.group(1) if match else "unknown"
        raise _hash_mismatch(entry, cached, digest, "the download was discarded") from e
    return cached


def _strip_wrappers(state_dict: dict[str, torch.Tensor], own: dict) -> dict[str, torch.Tensor]:
    """Remove the wrapper prefixes of published files: B-cos v2 wraps its ViTs with their logit
    layer (``0.``); B-cosification's checkpoints hold a Lightning module's ``model.`` around a
    wrapper's ``model.``. A prefix is removed only when every key has it and ``target`` none."""
    for prefix in ("0.", "model.", "model."):
        if all(k.startswith(prefix) for k in state_dict) and not any(
            k.startswith(prefix) for k in own
        ):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _fold_first_layer(weight: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """B-cosification's first layer sees ``([x, 1 - x] - [m, 1 - m]) / [s, s]``, whose second
    half is minus the first: only ``D = W[:, :3] - W[:, 3:]`` matters, applied to ``(x - m) /
    s``. bcosify's first layer sees ``[x, 1 - x]``: the same map is ``[D (1 - m) / s, -D m /
    s]``, the fold of :func:`bcosify.fx.passes.encode_input` (exact, bias-free)."""
    w = weight.double()
    d = w[:, :3] - w[:, 3:]
    shape = (1, 3) + (1,) * (w.dim() - 2)
    mean = torch.tensor(pre.mean, dtype=torch.float64).reshape(shape)
    std = torch.tensor(pre.std, dtype=torch.float64).reshape(shape)
    return torch.cat([d * (1 - mean) / std, -d * mean / std], 1).to(weight.dtype)


def to_bcosify_keys(
    state_dict: dict[str, torch.Tensor], target: nn.Module, entry: ZooEntry | None = None
) -> dict[str, object]:
    """Rename a published state dict to the keys of bcosify's model ``target``.

    B-cos v2 and B-cosification units keep their weight in a ``linear`` submodule
    (``layer1.0.conv1.linear.weight``, ``ff.net.linear1.linear.weight``); bcosify's units are
    convolutions or linear layers themselves (``layer1.0.conv1.weight``). Wrapper prefixes are
    removed (:func:`_strip_wrappers`). A tensor whose shape differs from the target's only by
    size-1 dimensions (a classifier stored as a 1x1 convolution) is reshaped. The logit bias, a
    constant of the architecture in both, is taken from ``target``. For a B-cosification
    ``entry`` the 6-channel first layer is folded onto bcosify's input (:func:`_fold_first_layer`).
    A file already in bcosify's layout passes unchanged.
    """
    own = target.state_dict()
    state_dict = _strip_wrappers(state_dict, own)
    out: dict[str, object] = {}
    for key, value in state_dict.items():
        new = key
        if key.endswith(".linear.weight") and key not in own:
            new = key[: -len(".linear.weight")] + ".weight"
        want = own.get(new)
        if (
            want is not None
            and value.shape != want.shape
            and [s for s in value.shape if s != 1] == [s for s in want.shape if s != 1]
        ):
            value = value.reshape(want.shape)
        if (
            entry is not None
            and entry.release == "bcosification"
            and entry.converted  # the built ViTs keep the published first layer
            and new != key  # a published unit, not a file in bcosify's layout
            and want is not None
            and want.dim() == 4
            and want.shape[1] == 6
        ):
            value = _fold_first_layer(value, entry.preprocessing)
        out[new] = value
    for key, value in own.items():
        if key.endswith("logit_layer.logit_bias") and key not in out:
            out[key] = value
    return out


# ---------------------------------------------------------------------------- build
def _convert_architecture(entry: ZooEntry, num_classes: int) -> torch.fx.GraphModule:
    import bcosify
    from bcosify.sources._builder import build_model

    if entry.architecture is None:  # converted entries all name one
        raise ModelSourceError(f"internal error: {entry.name} has no architecture")
    source = build_model(entry.architecture, weights="none", num_classes=num_classes)
    source.bcosify_preprocessing = entry.preprocessing
    pre = entry.preprocessing
    model = bcosify.convert(source, entry.config, mean=pre.mean, std=pre.std)
    # the source (the torchvision architecture) has no weights of its own: the published
    # weights are the zoo entry's ("zoo_weights"), so nothing takes torchvision's for them
    model.bcosify_source = {**model.bcosify_source, "weights": "none", "zoo": entry.name}
    return model


def _build_native(entry: ZooEntry, num_classes: int) -> torch.fx.GraphModule:
    """A B-cos entry that is not a torchvision conversion, built from bcosify's B-cos layers
    and given a converted model's metadata (no node map: it has no source graph)."""
    from bcosify import metadata
    from bcosify.report import ConversionReport
    from bcosify.sources._bcos_v2_arch import bcos_architecture, trace_native

    bcosified = entry.release == "bcosification"
    gm = trace_native(bcos_architecture(entry.hub_name, num_classes, bcosified))
    config = entry.config
    pre = entry.preprocessing
    report = ConversionReport(
        model=type(gm).__name__, config=config.to_dict(), mean=pre.mean, std=pre.std
    )
    report.num_classes = num_classes
    made = "B-cosification" if bcosified else "B-cos v2"
    report.add("built", f"the {made} {entry.family} architecture, built by bcosify", "")
    source = {"name": None, "num_classes": num_classes, "weights": "none", "zoo": entry.name}
    source["architecture_sha256"] = metadata.architecture_fingerprint(gm)
    metadata.attach(
        gm,
        bcosify_config=config,
        bcosify_preprocessing=pre,
        bcosify_num_classes=num_classes,
        bcosify_source=source,
        conversion_report=report,
        transform=pre.transform(),
    )
    return gm


def _build_standard(entry: ZooEntry, num_classes: int) -> nn.Module:
    """A standard (non-B-cos) ViT of B-cos v2: a source model for :func:`bcosify.convert`."""
    from bcosify.sources._bcos_v2_arch import VIT_CONFIGS, SimpleViT

    model = SimpleViT(VIT_CONFIGS[entry.hub_name[len("standard_") :]], num_classes)
    model.bcosify_preprocessing = entry.preprocessing
    model.bcosify_source = {"name": entry.name, "num_classes": num_classes, "weights": "none"}
    return model


def build_zoo_model(
    name: str, weights: str | os.PathLike[str] | None, num_classes: int | None
) -> nn.Module:
    """A published model (see :func:`build_model`): a B-cos entry as a converted bcosify model,
    a standard ViT of B-cos v2 as a source model."""
    from bcosify.sources._helpers import _parse_weights

    entry = zoo_entry(name)
    mode, path = _parse_weights(weights)
    if mode == "packaged":
        raise ModelSourceError(f"weights='packaged' is not available for {entry.name!r}")
    n_classes = 1000 if num_classes is None else num_classes
    if not entry.bcos:
        model = _build_standard(entry, n_classes)
    elif entry.converted:
        model = _convert_architecture(entry, n_classes)
    else:
        model = _build_native(entry, n_classes)
    if mode == "none":
        return model.eval()
    file = _file(path) if mode == "file" else _published_file(entry)
    state_dict = to_bcosify_keys(load_state_dict_file(file), model, entry)
    if n_classes != 1000 and mode == "DEFAULT":
        _load_except_head(model, state_dict, entry.name, 1000, n_classes)
    else:
        _load_strict(model, state_dict, source=str(file), name=entry.name)
    # a standard ViT is a source: its weights are its own; a B-cos entry's are the zoo's
    key = "zoo_weights" if entry.bcos else "weights"
    model.bcosify_source = {**model.bcosify_source, key: mode}
    return model.eval()


def _verification() -> dict[str, dict[str, object]]:
    """The results of ``scripts/zoo.py`` (package data ``bcosify/zoo.json``), by name."""
    import json
    from importlib import resources

    data = resources.files("bcosify").joinpath("zoo.json")
    if not data.is_file():
        return {}
    return dict(json.loads(data.read_text(encoding="utf-8")).get("results", {}))


def list_zoo() -> list[dict[str, object]]:
    """One row per published model (B-cos v2, B-cosification): name, family, kind (``"B-cos"``
    or ``"standard"``), published top-1 (%, None when not published with the weights), how
    bcosify makes it (``"converted from torchvision NAME"``, ``"built by bcosify"`` or
    ``"source model"``), and ``verified``: True/False when ``scripts/zoo.py`` compared it with
    the published code, None when not compared.

    Example:
        >>> rows = list_zoo()
        >>> len(rows), sum(r["kind"] == "B-cos" for r in rows)
        (46, 38)
    """
    checked = _verification()
    return [
        {
            "name": e.name,
            "family": e.family,
            "kind": "B-cos" if e.bcos else "standard",
            "top1": e.top1,
            "how": _how(e),
            "verified": checked[e.name].get("passed") if e.name in checked else None,
        }
        for e in ENTRIES.values()
    ]


def _how(entry: ZooEntry) -> str:
    if not entry.bcos:
        return "source model"
    return (
        f"converted from torchvision {entry.architecture}"
        if entry.converted
        else "built by bcosify"
    )


__all__ = [
    "ENTRIES",
    "ZOO_PREFIX",
    "ZooEntry",
    "build_zoo_model",
    "list_zoo",
    "to_bcosify_keys",
    "zoo_entry",
]
