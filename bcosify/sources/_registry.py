"""Source model names: torchvision and timm names, close-match suggestions, checks."""

from __future__ import annotations

import difflib
import functools

from bcosify.errors import ModelSourceError
from bcosify.sources._helpers import _short_list

TIMM_PREFIX = "timm/"
"""Prefix marking a timm model name in :func:`build_model`."""


_LITE0 = "tf_efficientnet_lite0"


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
