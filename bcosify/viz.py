"""Pictures of B-cos explanations.

A B-cos network is dynamic linear: its output for class ``k`` is ``W_k(x)^T x`` (plus recorded
constants), with ``x`` the 6-channel encoding ``[r, g, b, 1-r, 1-g, 1-b]`` of the image. The dynamic
weight ``W_k(x)`` has the shape of the input, and its direction at a pixel can be shown as a colour:
:func:`to_rgba` turns it into an RGBA image whose colour is the colour the model "looks for" at that
pixel and whose opacity is how strongly it looks (only where the pixel's contribution is
positive). :func:`contribution_map_image` renders the per-pixel contributions ``W_k(x) * x`` summed
over channels with a diverging colormap, and :func:`save_figure` / :func:`make_grid_figure` write
both next to the input image.

Only :func:`to_rgba` is pure torch; the figure functions import matplotlib lazily and render
off-screen through the object-oriented ``Figure`` API, so they never need a display, never switch
the global pyplot backend, and never leave figures open in ``pyplot``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import BcosifyError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "to_rgba",
    "contribution_map_image",
    "save_figure",
    "make_grid_figure",
    "gridpg_examples_figure",
    "gridpg_boxplot",
]

_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _check_percentile(percentile: float) -> float:
    percentile = float(percentile)
    if not 0.0 <= percentile <= 100.0:
        raise BcosifyError(f"percentile must lie in [0, 100], got {percentile}.")
    return percentile


def _percentile_rows(x: Tensor, percentile: float) -> Tensor:
    """Per-row percentile of a ``(B, N)`` tensor, with numpy's default ("linear") interpolation.

    Uses two :func:`torch.kthvalue` calls instead of :func:`torch.quantile`, which refuses inputs
    with more than 2**24 elements.
    """
    n = x.shape[1]
    pos = percentile / 100.0 * (n - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    v_lo = x.kthvalue(lo + 1, dim=1).values
    if frac == 0.0 or hi == lo:
        return v_lo
    v_hi = x.kthvalue(hi + 1, dim=1).values
    return v_lo + frac * (v_hi - v_lo)


def _to_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _symmetric_limit(contribution_map: np.ndarray, percentile: float) -> float:
    """The ``percentile`` of ``|map|``, falling back to the max and then 1 when it is 0."""
    a = np.abs(contribution_map[np.isfinite(contribution_map)])
    if a.size == 0:
        return 1.0
    v = float(np.percentile(a, percentile))
    if not v > 0.0:
        v = float(a.max())
    return v if v > 0.0 else 1.0


def _image_hwc(image: Tensor | np.ndarray, what: str = "image") -> np.ndarray:
    """A ``C×H×W`` (or ``1×C×H×W``) image in [0, 1] as an ``H×W×3`` float array.

    Six channels are taken to be the B-cos encoding ``[x, 1-x]``; the first three are shown.
    """
    img = _to_numpy(image)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 3 or img.shape[0] not in (1, 3, 6):
        raise BcosifyError(
            f"{what} must have shape 3×H×W (or 1×H×W, 6×H×W, 1×3×H×W), got {tuple(img.shape)}."
        )
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    return np.clip(img[:3].transpose(1, 2, 0), 0.0, 1.0)


def _map_hw(contribution_map: Tensor | np.ndarray) -> np.ndarray:
    """A contribution map as an ``H×W`` array; a ``C×H×W`` (or ``1×C×H×W``) one is summed over C."""
    m = _to_numpy(contribution_map)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 3:
        m = m.sum(axis=0)
    if m.ndim != 2:
        raise BcosifyError(
            f"contribution map must have shape H×W (or C×H×W, summed over C), got {tuple(m.shape)}."
        )
    return m


def _composite(rgba: Tensor | np.ndarray, background: Any) -> np.ndarray:
    """Alpha-composite an ``H×W×4`` image over a solid background colour."""
    from matplotlib.colors import to_rgb

    a = _to_numpy(rgba)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[-1] != 4:
        raise BcosifyError(f"rgba must have shape H×W×4, got {tuple(a.shape)}.")
    bg = np.asarray(to_rgb(background), dtype=np.float32)
    alpha = a[..., 3:4]
    return np.clip(a[..., :3] * alpha + bg * (1.0 - alpha), 0.0, 1.0)


def _new_figure(nrows: int, aspect: float, title: str | None) -> tuple[Figure, np.ndarray]:
    """A pyplot-free figure with ``nrows × 3`` axes sized for panels of width/height ``aspect``."""
    from matplotlib.figure import Figure

    panel_h = 3.0
    panel_w = panel_h * aspect
    extra_h = 0.4 if title else 0.0
    # Three panels plus room for the colorbar next to the third.
    fig = Figure(figsize=(3 * panel_w + 0.7, nrows * (panel_h + 0.3) + extra_h))
    axes = np.asarray(fig.subplots(nrows, 3, squeeze=False))
    if title:
        fig.suptitle(title)
    return fig, axes


def _draw_row(
    fig: Figure,
    axes: Sequence[Axes],
    image: np.ndarray,
    explanation: np.ndarray,
    contribution_map: np.ndarray,
    *,
    percentile: float,
    cmap: str,
    headers: bool,
    row_title: str | None = None,
) -> None:
    ax_img, ax_expl, ax_map = axes
    ax_img.imshow(image, interpolation="nearest")
    ax_expl.imshow(explanation, interpolation="nearest")
    v = _symmetric_limit(contribution_map, percentile)
    im = ax_map.imshow(contribution_map, cmap=cmap, vmin=-v, vmax=v, interpolation="nearest")
    fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.04)
    if headers:
        ax_img.set_title("input" if row_title is None else row_title, fontsize=10)
        ax_expl.set_title("explanation", fontsize=10)
        ax_map.set_title("contributions", fontsize=10)
    elif row_title is not None:
        ax_img.set_title(row_title, fontsize=10)
    for ax in axes:
        ax.set_axis_off()


def _save(fig: Figure, path: str | os.PathLike[str], dpi: float) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def to_rgba(
    dynamic_weights: Tensor,
    contributions: Tensor | None = None,
    *,
    smooth: int = 15,
    percentile: float = 99.5,
) -> Tensor:
    """The B-cos colour image of a dynamic weight ``W(x)``.

    For each pixel ``p`` with 6-vector ``w_p`` (channels ``[r, g, b, 1-r, 1-g, 1-b]``):

    1. ``r = clamp(w_p / (max_c |w_p,c| + 1e-12), min=0)``: direction kept, negative channels
       dropped;
    2. ``rgb_c = r_c / (r_c + r_{c+3} + 1e-12)`` for ``c`` in R, G, B;
    3. ``alpha_p = ||w_p||_2``, set to 0 where the pixel's contribution ``s_p < 0`` (only positive
       evidence is shown);
    4. if ``smooth > 1``, alpha is averaged over a ``smooth × smooth`` window (padding not counted;
       the output keeps ``H×W``, an even window is cropped by one pixel at the bottom/right);
    5. ``alpha = clip(alpha / q, 0, 1)`` with ``q`` the ``percentile`` of alpha over each image
       (linear interpolation, as :func:`numpy.percentile`). Where ``q`` is 0 the image's maximum
       is used instead, and where that is 0 too alpha stays 0.

    The computation is vectorised over the batch, runs on the inputs' device in float32, and
    neither modifies its inputs nor records autograd history.

    Args:
        dynamic_weights: ``B×6×H×W`` (or ``6×H×W``) dynamic weights, e.g. the input gradient of
            one logit in explanation mode.
        contributions: per-pixel contributions ``W(x) * x``, either with the shape of
            ``dynamic_weights`` (summed over the 6 channels here) or already summed
            (``B×H×W``, or ``H×W`` for a single image). ``None`` treats every pixel as positive.
        smooth: side of the square window used to smooth alpha; ``<= 1`` disables smoothing.
        percentile: alpha is divided by this per-image percentile in [0, 100] and clipped to 1.

    Returns:
        A float32 ``B×H×W×4`` tensor in [0, 1] (``H×W×4`` for a ``6×H×W`` input) on the device of
        ``dynamic_weights``.

    Raises:
        BcosifyError: on shapes that do not fit or a percentile outside [0, 100].

    Example:
        >>> import torch
        >>> from bcosify.viz import to_rgba
        >>> w = torch.randn(2, 6, 32, 32)
        >>> to_rgba(w).shape
        torch.Size([2, 32, 32, 4])
        >>> to_rgba(w[0], (w[0] * torch.rand(6, 32, 32)), smooth=1).shape
        torch.Size([32, 32, 4])
    """
    percentile = _check_percentile(percentile)
    if not isinstance(dynamic_weights, Tensor):
        raise BcosifyError(f"dynamic_weights must be a torch.Tensor, got {type(dynamic_weights)}.")
    single = dynamic_weights.dim() == 3
    if dynamic_weights.dim() not in (3, 4) or dynamic_weights.shape[-3] != 6:
        raise BcosifyError(
            "dynamic_weights must have shape B×6×H×W or 6×H×W (the 6-channel B-cos encoding), "
            f"got {tuple(dynamic_weights.shape)}."
        )
    smooth = int(smooth)

    with torch.no_grad():
        # .to() may return the input itself; every op below is out of place.
        w = dynamic_weights.detach().to(torch.float32)
        if single:
            w = w.unsqueeze(0)
        b, _, h, wd = w.shape

        # Contribution sign per pixel, B×H×W.
        if contributions is None:
            positive = torch.ones(b, h, wd, dtype=torch.bool, device=w.device)
        else:
            if not isinstance(contributions, Tensor):
                raise BcosifyError(
                    f"contributions must be a torch.Tensor or None, got {type(contributions)}."
                )
            s = contributions.detach().to(device=w.device, dtype=torch.float32)
            if s.shape == dynamic_weights.shape:
                s = s.sum(dim=-3)
            elif s.shape != dynamic_weights.shape[:-3] + dynamic_weights.shape[-2:]:
                raise BcosifyError(
                    f"contributions of shape {tuple(contributions.shape)} fit neither the dynamic "
                    f"weights {tuple(dynamic_weights.shape)} nor their channel sum."
                )
            if single:
                s = s.unsqueeze(0)
            positive = s >= 0

        # 1. direction, negative channels dropped.
        r = (w / (w.abs().amax(dim=1, keepdim=True) + _EPS)).clamp(min=0)
        # 2. colour: positive weight on x_c against positive weight on 1 - x_c.
        rgb = r[:, :3] / (r[:, :3] + r[:, 3:] + _EPS)
        # 3. opacity: weight norm, positive evidence only.
        alpha = torch.linalg.vector_norm(w, dim=1, keepdim=True)
        alpha = torch.where(positive.unsqueeze(1), alpha, torch.zeros_like(alpha))
        # 4. smoothing.
        if smooth > 1:
            alpha = F.avg_pool2d(
                alpha, smooth, stride=1, padding=smooth // 2, count_include_pad=False
            )[..., :h, :wd]
        # 5. per-image percentile normalisation.
        flat = alpha.reshape(b, -1)
        q = _percentile_rows(flat, percentile)
        q = torch.where(q > 0, q, flat.amax(dim=1))
        q = torch.where(q > 0, q, torch.ones_like(q))
        alpha = (alpha / q.view(b, 1, 1, 1)).clamp(0.0, 1.0)

        out = torch.cat([rgb, alpha], dim=1).permute(0, 2, 3, 1).contiguous()
    return out[0] if single else out


def contribution_map_image(
    contribution_map: Tensor | np.ndarray,
    *,
    percentile: float = 99.5,
    cmap: str = "bwr",
) -> np.ndarray:
    """Render a contribution map with a diverging colormap centred on 0.

    The colour range is symmetric, ``[-v, v]`` with ``v`` the ``percentile`` of ``|map|`` (the
    maximum when that is 0, and 1 for an all-zero map); values beyond it are clipped. With the
    default ``"bwr"`` colormap positive contributions are red, negative ones blue, zero white.

    Args:
        contribution_map: ``H×W`` map (a tensor on any device, or an array). A ``C×H×W`` map is
            summed over ``C`` first.
        percentile: percentile of ``|map|`` in [0, 100] that sets the colour range.
        cmap: name of a matplotlib colormap, preferably a diverging one.

    Returns:
        An ``H×W×4`` float32 RGBA array in [0, 1].

    Raises:
        BcosifyError: on a map that is not 2-D (or 3-D) or a percentile outside [0, 100].

    Example:
        >>> import torch
        >>> from bcosify.viz import contribution_map_image
        >>> img = contribution_map_image(torch.randn(32, 32))
        >>> img.shape, img.dtype
        ((32, 32, 4), dtype('float32'))
    """
    import matplotlib

    percentile = _check_percentile(percentile)
    m = _map_hw(contribution_map)
    v = _symmetric_limit(m, percentile)
    normed = np.clip(np.nan_to_num(m) / v, -1.0, 1.0) * 0.5 + 0.5
    return np.asarray(matplotlib.colormaps[cmap](normed), dtype=np.float32)


def side_by_side(
    image: Tensor | np.ndarray,
    rgba: Tensor | np.ndarray,
    contribution_map: Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """One ``H×kW×3`` uint8 strip: the image, its colour explanation composited over black, and
    (if given) the contribution map in :func:`contribution_map_image`'s colours.

    Example:
        >>> import torch
        >>> from bcosify.viz import side_by_side
        >>> side_by_side(torch.rand(3, 8, 8), torch.rand(8, 8, 4), torch.randn(8, 8)).shape
        (8, 24, 3)
    """
    panels = [_image_hwc(image), _composite(rgba, "black")]
    if contribution_map is not None:
        panels.append(contribution_map_image(contribution_map)[..., :3])
    return (np.concatenate(panels, axis=1) * 255).astype(np.uint8)


def save_figure(
    path: str | os.PathLike[str],
    image: Tensor | np.ndarray,
    dynamic_weights: Tensor,
    contributions: Tensor,
    *,
    title: str | None = None,
    dpi: float = 100,
    smooth: int = 15,
    percentile: float = 99.5,
    background: Any = "black",
    cmap: str = "bwr",
) -> Path:
    """Write a three-panel figure: input image | colour explanation | contribution map.

    The middle panel is :func:`to_rgba` of ``dynamic_weights`` composited over ``background``; the
    right one is ``contributions`` summed over channels, drawn with a diverging colormap on a
    symmetric range and a colorbar. The format follows the extension of ``path`` (``.png``,
    ``.pdf``, ``.svg``, ...). Parent directories are created. Rendering is off-screen and no
    figure is left open.

    Args:
        path: output file.
        image: the input image, ``3×H×W`` in [0, 1] (``1×3×H×W``, grey ``1×H×W`` and the 6-channel
            encoding, whose first 3 channels are shown, are accepted too).
        dynamic_weights: ``6×H×W`` (or ``1×6×H×W``) dynamic weights of the explained logit.
        contributions: ``6×H×W`` contributions ``W(x) * x`` (or their ``H×W`` channel sum).
        title: optional figure title.
        dpi: resolution of raster outputs.
        smooth: alpha smoothing window, see :func:`to_rgba`.
        percentile: normalisation percentile for alpha and for the contribution colour range.
        background: matplotlib colour drawn behind the explanation, e.g. ``"black"``/``"white"``.
        cmap: diverging colormap of the contribution map.

    Returns:
        The path written.

    Raises:
        BcosifyError: on shapes that do not fit.

    Example:
        >>> import torch
        >>> from bcosify.viz import save_figure
        >>> x = torch.rand(3, 32, 32)
        >>> w = torch.randn(6, 32, 32)
        >>> enc = torch.cat([x, 1 - x])
        >>> save_figure("/tmp/bcosify_example.png", x, w, w * enc, title="class 0")
        PosixPath('/tmp/bcosify_example.png')
    """
    w = dynamic_weights
    if isinstance(w, Tensor) and w.dim() == 4 and w.shape[0] == 1:
        w = w[0]
    if not isinstance(w, Tensor) or w.dim() != 3:
        raise BcosifyError(
            "save_figure explains one image: dynamic_weights must have shape 6×H×W or 1×6×H×W, "
            f"got {tuple(getattr(dynamic_weights, 'shape', ()))}."
        )
    c = contributions
    if isinstance(c, Tensor) and c.dim() == w.dim() + 1 and c.shape[0] == 1:
        c = c[0]
    rgba = to_rgba(w, c, smooth=smooth, percentile=percentile)
    return make_grid_figure(
        path,
        [image],
        rgba.unsqueeze(0),
        [c],
        titles=None,
        title=title,
        dpi=dpi,
        percentile=percentile,
        background=background,
        cmap=cmap,
    )


def make_grid_figure(
    path: str | os.PathLike[str],
    images: Tensor | Sequence[Tensor | np.ndarray],
    rgba: Tensor | Sequence[Tensor | np.ndarray],
    contribution_maps: Tensor | Sequence[Tensor | np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    title: str | None = None,
    dpi: float = 100,
    percentile: float = 99.5,
    background: Any = "black",
    cmap: str = "bwr",
) -> Path:
    """Write several samples as rows of input image | colour explanation | contribution map.

    Args:
        path: output file; the format follows its extension. Parent directories are created.
        images: ``B×3×H×W`` tensor in [0, 1], or a sequence of ``3×H×W`` images.
        rgba: ``B×H×W×4`` output of :func:`to_rgba`, or a sequence of ``H×W×4`` images.
        contribution_maps: ``B×H×W`` maps (``B×C×H×W`` are summed over ``C``), or a sequence.
        titles: optional per-row titles, shown above the input image.
        title: optional figure title.
        dpi: resolution of raster outputs.
        percentile: percentile of ``|map|`` that sets each row's contribution colour range.
        background: matplotlib colour drawn behind the explanations.
        cmap: diverging colormap of the contribution maps.

    Returns:
        The path written.

    Raises:
        BcosifyError: when the numbers of images, explanations, maps and titles differ, or on bad
            shapes.

    Example:
        >>> import torch
        >>> from bcosify.viz import make_grid_figure, to_rgba
        >>> x = torch.rand(2, 3, 32, 32)
        >>> w = torch.randn(2, 6, 32, 32)
        >>> contrib = w * torch.cat([x, 1 - x], dim=1)
        >>> make_grid_figure("/tmp/bcosify_grid.png", x, to_rgba(w, contrib), contrib, ["a", "b"])
        PosixPath('/tmp/bcosify_grid.png')
    """
    percentile = _check_percentile(percentile)
    n = len(images)
    if n == 0:
        raise BcosifyError("make_grid_figure needs at least one sample.")
    if len(rgba) != n or len(contribution_maps) != n:
        raise BcosifyError(
            f"got {n} images, {len(rgba)} explanations and {len(contribution_maps)} contribution "
            "maps; pass one of each per sample."
        )
    if titles is not None and len(titles) != n:
        raise BcosifyError(f"got {len(titles)} titles for {n} samples.")

    rows = []
    for i in range(n):
        img = _image_hwc(images[i], what=f"images[{i}]")
        expl = _composite(rgba[i], background)
        cmap_ = _map_hw(contribution_maps[i])
        if not img.shape[:2] == expl.shape[:2] == cmap_.shape:
            raise BcosifyError(
                f"sample {i}: image {img.shape[:2]}, explanation {expl.shape[:2]} and contribution "
                f"map {cmap_.shape} differ in size."
            )
        rows.append((img, expl, cmap_))

    h, w = rows[0][0].shape[:2]
    fig, axes = _new_figure(n, w / h, title)
    try:
        for i, (img, expl, m) in enumerate(rows):
            _draw_row(
                fig,
                axes[i],
                img,
                expl,
                m,
                percentile=percentile,
                cmap=cmap,
                headers=i == 0,
                row_title=None if titles is None else str(titles[i]),
            )
        return _save(fig, path, dpi)
    finally:
        fig.clear()


def gridpg_examples_figure(
    path: str | os.PathLike[str],
    examples: Sequence[tuple[Tensor, int, dict[str, Tensor]]],
    grids: Sequence[Any],
    scores: dict[str, np.ndarray],
    grid_size: int,
    cell_size: tuple[int, int],
    class_names: Sequence[str] | None = None,
) -> Path:
    """Grid pointing game figure: one row per example grid; the grid with the explained cell
    outlined, then each method's smoothed positive attribution for that cell's class, with its
    score (``examples``: (grid image, cell, method -> map) as in
    :class:`bcosify.evaluate.GridPGResult`)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    methods = list(scores)
    rows = max(1, len(examples))
    cols = 1 + len(methods)
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    h, w = cell_size
    for r, (image, cell, maps) in enumerate(examples):
        cls = grids[r].classes[cell]
        label = class_names[cls] if class_names is not None and cls < len(class_names) else cls
        y, x = divmod(cell, grid_size)
        axes[r, 0].imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        axes[r, 0].set_title(f"grid {r}: class {label}", fontsize=8)
        for c, name in enumerate(methods, start=1):
            m = maps[name].cpu().numpy()
            axes[r, c].imshow(m / m.max() if m.max() > 0 else m, cmap="inferno", vmin=0, vmax=1)
            axes[r, c].set_title(f"{name}: {scores[name][r, cell]:.2f}", fontsize=8)
        for ax in axes[r]:
            ax.add_patch(Rectangle((x * w - 0.5, y * h - 0.5), w, h, fill=False, ec="cyan", lw=1.5))
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def gridpg_boxplot(
    path: str | os.PathLike[str], scores: dict[str, np.ndarray], grid_size: int
) -> Path:
    """Grid pointing game figure: box plot of each method's cell scores (``scores``: method ->
    grids x cells), with the chance level 1/g²."""
    from matplotlib.figure import Figure

    names = list(scores)
    n_grids = len(next(iter(scores.values()))) if scores else 0
    fig = Figure(figsize=(1.2 + 1.3 * len(names), 3.6))
    ax = fig.subplots()
    ax.boxplot([np.asarray(scores[n]).ravel() for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize=8)
    ax.axhline(1 / grid_size**2, ls="--", c="gray", lw=1, label="uniform (1/g²)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("localisation score")
    ax.set_title(f"grid pointing game, {n_grids} grids of {grid_size}²", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
