"""Download caches (torch.hub, Hugging Face hub), offline detection and fail-fast errors."""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import torch

from bcosify.errors import ModelSourceError

_PROBE_TIMEOUT_S = 5.0


_DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


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
    if urllib.parse.urlsplit(url).scheme == "file":  # a local mirror: nothing to reach
        return
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
