"""Explanations of videos: every frame with its B-cos explanation, as a GIF or an MP4.

B-cos networks explain each frame exactly; shown side by side over a clip, the explanations follow
the object (the B-cos papers' video figures, Böhle et al. CVPR 2022 and TPAMI 2024). Frames come
from a video file (GIFs decoded by Pillow; MP4, AVI, MOV, WebM by FFmpeg through
``imageio-ffmpeg``) or from a folder of images (sorted by name).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bcosify.errors import BcosifyError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_VIDEO_EXTRA = "pip install 'bcosify[video]' (imageio-ffmpeg, which brings an FFmpeg binary)"


def is_video(path: str | os.PathLike[str]) -> bool:
    """A video file (by its suffix) or a folder of frames."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES


def read_frames(path: str | os.PathLike[str], max_frames: int | None = None) -> tuple[list, float]:
    """The frames of a video file or a folder of images, as RGB PIL images, and the frame rate
    (frames per second; 8 for a folder or when the file does not say).

    Raises:
        BcosifyError: a missing path, an empty folder, or a file that cannot be decoded (with the
            extra to install where a decoder is missing).
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise BcosifyError(f"video not found: {path}")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise BcosifyError(
                f"{p} has no frames: a folder of frames holds images ({', '.join(IMAGE_SUFFIXES)})"
            )
        frames = []
        for f in files[:max_frames]:
            try:
                with Image.open(f) as im:
                    frames.append(im.convert("RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise BcosifyError(f"{f} is not an image PIL can read ({e})") from e
        return frames, 8.0
    try:
        if p.suffix.lower() == ".gif":
            frames, fps = _read_gif(p, max_frames)
        else:
            frames, fps = _read_ffmpeg(p, max_frames)
    except BcosifyError:
        raise
    except Exception as e:  # no decoder, corrupt data, an unknown container
        hint = "" if p.suffix.lower() == ".gif" else f"; for MP4 and other formats, {_VIDEO_EXTRA}"
        raise BcosifyError(f"cannot decode the video {p} ({type(e).__name__}: {e}){hint}") from e
    if not frames:
        raise BcosifyError(f"the video {p} has no frames")
    return frames, fps


def _read_gif(p: Path, max_frames: int | None) -> tuple[list, float]:
    from PIL import Image, ImageSequence

    with Image.open(p) as im:
        duration = im.info.get("duration")  # ms per frame
        frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)][:max_frames]
    return frames, 1000.0 / float(duration) if duration else 8.0


def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise BcosifyError(f"MP4 and other video formats need FFmpeg: {_VIDEO_EXTRA}") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


def _read_ffmpeg(p: Path, max_frames: int | None) -> tuple[list, float]:
    """Decode with FFmpeg into PNG frames in a scratch folder (every pipe and process ends with
    the call), and read the frame rate from its report."""
    import re
    import subprocess
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="bcosify-frames-") as tmp:
        cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-i", str(p)]
        if max_frames is not None:
            cmd += ["-frames:v", str(max_frames)]
        done = subprocess.run(
            [*cmd, str(Path(tmp) / "%06d.png")], capture_output=True, text=True, timeout=600
        )
        files = sorted(Path(tmp).glob("*.png"))
        if done.returncode != 0 or not files:
            last = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise BcosifyError(
                f"cannot decode the video {p} (FFmpeg: {last[-1] if last else 'no frames'})"
            )
        frames = []
        for f in files:
            with Image.open(f) as im:
                frames.append(im.convert("RGB"))
    match = re.search(r"([0-9.]+) fps", done.stderr)
    return frames, float(match.group(1)) if match else 8.0


@dataclass
class VideoExplanation:
    """Per frame: the explained class, its logit and the completeness error; and the rendered
    frames (the input crop beside its B-cos colour explanation, H x 2W x 3 uint8)."""

    targets: list[int]
    logits: list[float]
    completeness: list[float]
    rendered: list[np.ndarray]

    def summary(self) -> dict:
        return {
            "frames": [
                {"index": i, "target": t, "logit": round(v, 6), "completeness_error": c}
                for i, (t, v, c) in enumerate(zip(self.targets, self.logits, self.completeness))
            ]
        }


def explain_frames(
    model: nn.Module,
    frames: list,
    target: int | str = "fixed",
    batch_size: int = 16,
    smooth: int = 15,
) -> VideoExplanation:
    """Explain every frame (PIL images) with ``model`` (a converted model).

    Args:
        target: ``"fixed"`` (default): one class for the whole clip, the top class of the mean of
            the frames' logits; ``"per-frame"``: each frame's own top class; an int: that class.
        batch_size: frames explained per batch.
        smooth: the alpha smoothing of the colour explanation (:func:`bcosify.viz.to_rgba`).
    """
    from bcosify.explain import explain
    from bcosify.viz import side_by_side

    if target not in ("fixed", "per-frame") and not isinstance(target, int):
        raise BcosifyError(f"target must be 'fixed', 'per-frame' or a class, got {target!r}")
    xs = torch.stack([model.transform(f) for f in frames])
    if target == "fixed":
        with torch.no_grad():
            logits = torch.cat(
                [model(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)]
            )
        target = int(logits.mean(0).argmax())
    out = VideoExplanation([], [], [], [])
    for i in range(0, len(xs), batch_size):
        x = xs[i : i + batch_size]
        t = None if target == "per-frame" else int(target)
        e = explain(model, x, target=t)
        rgba = e.to_rgba(smooth=smooth)
        for j in range(x.shape[0]):
            out.rendered.append(side_by_side(x[j], rgba[j]))
            out.targets.append(int(e.target[j]))
            out.logits.append(float(e.explained_logit[j]))
            out.completeness.append(float(e.pixel_completeness_error[j]))
    return out


def write_video(rendered: list[np.ndarray], path: str | os.PathLike[str], fps: float = 8.0) -> Path:
    """Write frames (H x W x 3 uint8) as a GIF (Pillow) or, for ``.mp4``, with FFmpeg."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in rendered]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
        )
        return path
    import subprocess

    h, w = rendered[0].shape[:2]
    cmd = [
        _ffmpeg(), "-nostdin", "-hide_banner", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-",
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",  # H.264 in yuv420p needs even sides
        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path),
    ]  # fmt: skip
    data = b"".join(np.ascontiguousarray(f, dtype=np.uint8).tobytes() for f in rendered)
    done = subprocess.run(cmd, input=data, capture_output=True, timeout=600)
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()
        raise BcosifyError(f"cannot write {path} (FFmpeg: {last[-1] if last else '?'})")
    return path


def explain_video(
    model: nn.Module,
    video: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    target: int | str = "fixed",
    fmt: str = "gif",
    max_frames: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Explain every frame of ``video`` (a file or a folder of frames) and write
    ``<out_dir>/<name>_explained.<fmt>`` (input beside explanation) and ``<name>_explained.json``
    (per frame: the class, its logit, the completeness error). Returns the video's path."""
    if fmt not in ("gif", "mp4"):
        raise BcosifyError(f"the output format must be gif or mp4, got {fmt!r}")
    out = Path(out_dir)
    name = Path(video).stem if not Path(video).is_dir() else Path(video).name
    path = out / f"{name}_explained.{fmt}"
    if path.exists() and not overwrite:
        raise BcosifyError(f"{path} exists; pass --overwrite to replace it")
    frames, fps = read_frames(video, max_frames)
    result = explain_frames(model, frames, target=target)
    out.mkdir(parents=True, exist_ok=True)
    write_video(result.rendered, path, fps)
    summary = {"video": str(video), "fps": fps, "target": target, **result.summary()}
    path.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return path


__all__ = ["VideoExplanation", "explain_frames", "explain_video", "is_video", "read_frames"]
