"""Explanations of videos (bcosify.video, `bcosify explain MODEL_DIR clip.mp4`): a generated
clip, decoded by imageio (FFmpeg for MP4, Pillow for GIF) or read from a folder of frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import bcosify
from bcosify.cli import main
from bcosify.video import explain_frames, read_frames, write_video
from tests.helpers import calibrate

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

N_FRAMES = 6


def _clip() -> np.ndarray:
    """A red square moving right over a noisy grey background, 64 x 64, 6 frames."""
    rng = np.random.RandomState(0)
    frames = []
    for i in range(N_FRAMES):
        f = (rng.rand(64, 64, 3) * 60 + 100).astype(np.uint8)
        f[20:40, 4 + 8 * i : 24 + 8 * i] = (220, 30, 30)
        frames.append(f)
    return np.stack(frames)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    source = bcosify.build_model("resnet18", weights="none", num_classes=5)
    source.bcosify_preprocessing = source.bcosify_preprocessing.__class__(
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=64, resize_size=64
    )
    model = calibrate(bcosify.convert(source), torch.rand(4, 3, 64, 64))
    return bcosify.save(model, tmp_path_factory.mktemp("m") / "r18")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    frames = _clip()
    write_video(list(frames), root / "clip.mp4", fps=4)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(root / "clip.gif", save_all=True, append_images=images[1:], duration=250)
    folder = root / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_reading_frames(clips, name):
    frames, fps = read_frames(clips / name)
    assert len(frames) == N_FRAMES and frames[0].size == (64, 64)
    assert fps == (8.0 if name == "frames" else 4.0)
    red = np.asarray(frames[2])[30, 30]  # inside the square in frame 2 (columns 20..40)
    assert red[0] > 150 and red[1] < 100


def test_cli_writes_the_explained_clip(model_dir, clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(model_dir), str(clips / "clip.mp4"), "--out", str(out)]) == 0
    gif = out / "clip_explained.gif"
    with Image.open(gif) as im:
        assert im.n_frames == N_FRAMES and im.size == (128, 64)  # input | explanation
    summary = json.loads((out / "clip_explained.json").read_text())
    frames = summary["frames"]
    assert len(frames) == N_FRAMES
    assert len({f["target"] for f in frames}) == 1  # held fixed for the clip
    assert max(f["completeness_error"] for f in frames) < 1e-2
    assert main(["explain", str(model_dir), str(clips / "clip.mp4"), "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    args = ["explain", str(model_dir), str(clips / "frames"), "--out", str(out)]
    assert main([*args, "--video-target", "per-frame", "--video-format", "mp4"]) == 0
    assert len(read_frames(out / "frames_explained.mp4")[0]) == N_FRAMES


def test_per_frame_targets_follow_each_frame(model_dir, clips):
    model = bcosify.load(model_dir)
    frames, _ = read_frames(clips / "frames")
    result = explain_frames(model, frames, target="per-frame")
    with torch.no_grad():
        want = model(torch.stack([model.transform(f) for f in frames])).argmax(1).tolist()
    assert result.targets == want
    fixed = explain_frames(model, frames, target=3)
    assert fixed.targets == [3] * N_FRAMES


def test_bad_videos(model_dir, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    assert main(["explain", str(model_dir), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "cannot decode the video" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["explain", str(model_dir), str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "has no frames" in capsys.readouterr().err
    assert main(["explain", str(model_dir), str(tmp_path / "nope.mp4"), "--out", "o"]) == 2
    assert "video not found" in capsys.readouterr().err
