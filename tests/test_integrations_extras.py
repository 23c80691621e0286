"""A missing optional extra gets a BcosifyError with the pip command (the module made
unimportable, as on a machine without the extra)."""

from __future__ import annotations

import sys

import pytest

import bcosify


def test_missing_gradio(monkeypatch):
    from bcosify import app

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(bcosify.BcosifyError, match=r"pip install 'bcosify\[app\]'"):
        app._gradio()


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_missing_onnx_packages(monkeypatch, module):
    from bcosify.integrations import onnx

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(
        bcosify.BcosifyError, match=rf"needs {module}: pip install 'bcosify\[onnx\]'"
    ):
        onnx._need(module)


def test_missing_ffmpeg(monkeypatch, tmp_path):
    from bcosify import video

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(bcosify.BcosifyError, match=r"pip install 'bcosify\[video\]'"):
        video.read_frames(clip)
