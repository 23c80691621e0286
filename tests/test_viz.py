"""Tests of bcosify.viz: the B-cos colour image and the explanation figures."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from bcosify.errors import BcosifyError
from bcosify.viz import contribution_map_image, make_grid_figure, save_figure, to_rgba


@pytest.fixture(autouse=True)
def _no_open_figures():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """A 1×6×2×2 dynamic weight and contributions with pixel (0, 1) negative."""
    w = torch.zeros(1, 6, 2, 2)
    w[0, :, 0, 0] = torch.tensor([2.0, 0.0, 0.0, 0.0, 1.0, 2.0])  # norm 3
    w[0, :, 0, 1] = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # norm 1
    w[0, :, 1, 0] = torch.tensor([2.0, -1.0, 0.0, 2.0, 0.0, -4.0])  # norm 5
    # pixel (1, 1) stays all zero: norm 0
    c = torch.ones(1, 6, 2, 2)
    c[0, :, 0, 1] = -1.0  # negative contribution at (0, 1)
    c[0, 0, 1, 0] = -2.0  # channel sum at (1, 0) still positive: -2 + 5 = 3
    return w, c


# Hand-computed colours of the tiny example.
# (0,0): max|w| = 2 -> r = [1, 0, 0, 0, .5, 1]  -> rgb = [1/(1+0), 0/(0+.5), 0/(0+1)] = [1, 0, 0]
# (0,1): max|w| = 1 -> r = [0, 1, 0, 0, 0, 0]   -> rgb = [0, 1, 0]
# (1,0): max|w| = 4 -> r = [.5, 0, 0, .5, 0, 0] -> rgb = [.5/(.5+.5), 0, 0] = [.5, 0, 0]
# (1,1): all zero                               -> rgb = [0, 0, 0]
_RGB = torch.tensor(
    [
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ]
)


def test_to_rgba_hand_computed_percentile_100():
    w, c = _tiny()
    out = to_rgba(w, c, smooth=1, percentile=100)
    assert out.shape == (1, 2, 2, 4)
    torch.testing.assert_close(out[0, ..., :3], _RGB)
    # alpha = norms [3, 1 -> 0 (negative), 5, 0] / max 5
    alpha = torch.tensor([[3 / 5, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(out[0, ..., 3], alpha)


def test_to_rgba_hand_computed_default_percentile():
    w, c = _tiny()
    out = to_rgba(w, c, smooth=1)
    # sorted alphas [0, 0, 3, 5]; 99.5th percentile at position .995 * 3 = 2.985
    q = 3 + 0.985 * (5 - 3)
    alpha = torch.tensor([[3 / q, 0.0], [1.0, 0.0]])  # 5 / q > 1 is clipped
    torch.testing.assert_close(out[0, ..., 3], alpha)
    torch.testing.assert_close(out[0, ..., :3], _RGB)


def test_to_rgba_without_contributions_treats_all_as_positive():
    w, _ = _tiny()
    out = to_rgba(w, smooth=1, percentile=50)
    # sorted alphas [0, 1, 3, 5]; median = 2
    alpha = torch.tensor([[1.0, 1 / 2], [1.0, 0.0]])
    torch.testing.assert_close(out[0, ..., 3], alpha)


def test_to_rgba_accepts_summed_contributions():
    w, c = _tiny()
    a = to_rgba(w, c, smooth=1)
    b = to_rgba(w, c.sum(dim=1), smooth=1)
    torch.testing.assert_close(a, b)


def test_negative_contribution_pixels_are_transparent():
    w = torch.randn(2, 6, 16, 16)
    c = torch.randn(2, 6, 16, 16)
    out = to_rgba(w, c, smooth=1)
    negative = c.sum(dim=1) < 0
    assert negative.any() and (~negative).any()
    assert (out[..., 3][negative] == 0).all()
    assert (out[..., 3][~negative] > 0).all()


def test_shapes_dtype_range_and_smoothing_keeps_size():
    w = torch.randn(3, 6, 17, 20, dtype=torch.float64)
    for smooth in (1, 4, 15, 40):
        out = to_rgba(w, w * torch.rand_like(w), smooth=smooth)
        assert out.shape == (3, 17, 20, 4)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1
    single = to_rgba(w[0])
    assert single.shape == (17, 20, 4)


def test_smoothing_is_a_mean_over_the_window():
    w = torch.zeros(1, 6, 3, 3)
    w[0, 0, 1, 1] = 9.0  # one bright pixel: alpha 9 there, 0 elsewhere
    out = to_rgba(w, smooth=3, percentile=100)
    # every 3×3 window (padding not counted) contains the centre: mean = 9 / (window size)
    sizes = torch.tensor([[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]])
    raw = 9.0 / sizes
    torch.testing.assert_close(out[0, ..., 3], raw / raw.max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_low_and_high_precision_inputs(dtype):
    w = torch.randn(1, 6, 8, 8)
    ref = to_rgba(w, w, smooth=1)
    out = to_rgba(w.to(dtype), w.to(dtype), smooth=1)
    assert out.dtype == torch.float32
    tol = 0.05 if dtype in (torch.float16, torch.bfloat16) else 1e-6
    torch.testing.assert_close(out, ref, atol=tol, rtol=0)


def test_all_zero_weights_give_zero_alpha():
    out = to_rgba(torch.zeros(2, 6, 5, 5))
    assert torch.isfinite(out).all()
    assert (out == 0).all()


def test_sparse_alpha_with_zero_percentile_falls_back_to_max():
    w = torch.zeros(1, 6, 20, 20)
    w[0, 0, 3, 4] = 2.0  # 1 of 400 pixels: the 99.5th percentile is 0
    out = to_rgba(w, smooth=1)
    assert out[0, 3, 4, 3] == 1.0
    assert out[..., 3].sum() == 1.0


def test_inputs_unchanged_and_no_grad_recorded():
    w = torch.randn(2, 6, 9, 9, requires_grad=True)
    c = torch.randn(2, 6, 9, 9)
    w0, c0 = w.detach().clone(), c.clone()
    out = to_rgba(w, c)
    torch.testing.assert_close(w.detach(), w0, rtol=0, atol=0)
    torch.testing.assert_close(c, c0, rtol=0, atol=0)
    assert not out.requires_grad


def test_batch_equals_each_sample_alone():
    w = torch.randn(2, 6, 12, 10)
    c = torch.randn(2, 6, 12, 10)
    batch = to_rgba(w, c)
    for i in range(2):
        torch.testing.assert_close(batch[i], to_rgba(w[i], c[i]))
        torch.testing.assert_close(batch[i : i + 1], to_rgba(w[i : i + 1], c[i : i + 1]))


def test_bad_shapes_raise():
    with pytest.raises(BcosifyError, match="6"):
        to_rgba(torch.randn(1, 3, 4, 4))
    with pytest.raises(BcosifyError, match="contributions"):
        to_rgba(torch.randn(1, 6, 4, 4), torch.randn(1, 6, 4, 5))
    with pytest.raises(BcosifyError, match="percentile"):
        to_rgba(torch.randn(1, 6, 4, 4), percentile=101)


def test_contribution_map_image():
    m = torch.tensor([[-2.0, 0.0], [1.0, 2.0]])
    img = contribution_map_image(m, percentile=100)
    assert img.shape == (2, 2, 4) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    bwr = plt.get_cmap("bwr")
    np.testing.assert_allclose(img[0, 0], bwr(0.0), atol=1e-6)  # -v: blue
    np.testing.assert_allclose(img[0, 1], bwr(0.5), atol=1e-6)  # 0: centre (white)
    np.testing.assert_allclose(img[1, 0], bwr(0.75), atol=1e-6)  # v / 2
    np.testing.assert_allclose(img[1, 1], bwr(1.0), atol=1e-6)  # +v: red
    # the range is clipped: with the median of |m| (1.5) as v, -2 and 2 saturate
    img = contribution_map_image(m.numpy(), percentile=50)
    np.testing.assert_allclose(img[0, 0], bwr(0.0), atol=1e-6)
    np.testing.assert_allclose(img[1, 1], bwr(1.0), atol=1e-6)
    # an all-zero map is all centre colour, without dividing by zero
    img = contribution_map_image(torch.zeros(3, 3))
    np.testing.assert_allclose(img, np.broadcast_to(bwr(0.5), (3, 3, 4)), atol=1e-6)


def _sample(h: int = 32, w: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.rand(3, h, w)
    weights = torch.randn(6, h, w)
    return x, weights, weights * torch.cat([x, 1 - x])


def test_save_figure_writes_png_with_three_panels(tmp_path):
    x, w, c = _sample()
    path = save_figure(tmp_path / "sub" / "dir" / "fig.png", x, w, c)
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        width, height = im.size
        im.load()
    assert 2.5 < width / height < 3.6


def test_save_figure_title_background_batch_of_one_and_wide_image(tmp_path):
    x, w, c = _sample(16, 48)
    path = save_figure(
        str(tmp_path / "wide.png"),
        x[None],
        w[None],
        c.sum(0),
        title="class 3",
        background="white",
        dpi=50,
    )
    with Image.open(path) as im:
        width, height = im.size
    assert width / height > 5  # three panels of aspect 3
    x, w, c = _sample()
    save_figure(tmp_path / "fig.pdf", x, w, c)
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")


def test_save_figure_rejects_batches(tmp_path):
    x, w, c = _sample()
    with pytest.raises(BcosifyError, match="one image"):
        save_figure(tmp_path / "x.png", x, torch.stack([w, w]), torch.stack([c, c]))
    assert not (tmp_path / "x.png").exists()


def test_make_grid_figure(tmp_path):
    x = torch.rand(3, 3, 20, 20)
    w = torch.randn(3, 6, 20, 20)
    c = w * torch.cat([x, 1 - x], dim=1)
    path = make_grid_figure(tmp_path / "grid.png", x, to_rgba(w, c), c, ["a", "b", "c"])
    with Image.open(path) as im:
        width, height = im.size
    assert 0.7 < width / height < 1.3  # three rows of three panels
    with pytest.raises(BcosifyError, match="titles"):
        make_grid_figure(tmp_path / "bad.png", x, to_rgba(w, c), c, ["a"])
    with pytest.raises(BcosifyError, match="explanations"):
        make_grid_figure(tmp_path / "bad.png", x, to_rgba(w[:2], c[:2]), c)


def test_to_rgba_matches_a_naive_per_pixel_loop():
    w = torch.randn(1, 6, 4, 5)
    c = torch.randn(1, 6, 4, 5)
    out = to_rgba(w, c, smooth=1, percentile=100)
    alphas, rgbs = [], []
    for i in range(4):
        for j in range(5):
            v = w[0, :, i, j].tolist()
            m = max(abs(t) for t in v)
            r = [max(t / m, 0.0) for t in v]
            rgbs.append([r[k] / (r[k] + r[k + 3] + 1e-12) for k in range(3)])
            a = math.sqrt(sum(t * t for t in v))
            alphas.append(a if c[0, :, i, j].sum() >= 0 else 0.0)
    top = max(alphas)
    torch.testing.assert_close(out[0, ..., :3].reshape(-1, 3), torch.tensor(rgbs))
    torch.testing.assert_close(out[0, ..., 3].reshape(-1), torch.tensor(alphas) / top)
