"""The grid pointing game (GridPG): how well an explanation localises the class it explains.

Procedure (B-cos, Böhle et al. CVPR 2022; B-cos v2, TPAMI 2024, arXiv 2306.10898; used for the
B-cosified models of Arya et al., NeurIPS 2024, arXiv 2411.00715):

1. :func:`build_pool`: classify the images; keep the correctly classified ones whose confidence
   (sigmoid of the logit for B-cos models, which are trained with binary cross-entropy; softmax
   for standard models) exceeds a threshold; sort each class by confidence.
2. :func:`make_grids`: with a fixed seed, pick g x g distinct classes that still have an image,
   take each class's next most confident image and tile them, without rescaling, into one grid.
3. For each cell, explain that cell's class on the whole grid; sum over the channels; smooth with
   an average pool (size 15, stride 1); keep the positive part (:func:`smooth_positive`).
4. Score = positive attribution inside the correct cell / all positive attribution (0 if there is
   none) (:func:`cell_scores`). Report the mean over all cells of all grids and the quartiles.

A model with a fixed input size (a ViT at 224) explains the grid window by window: windows of
the model's input size slide over the grid (stride half a window), and each window's attribution
is added back at its place before smoothing.

:func:`grid_pointing_game` runs all of it for several methods on the same grids and returns a
:class:`GridPGResult` that writes ``result.json``, ``gridpg.md``, ``grids.png`` and
``boxplot.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bcosify.errors import BcosifyError
from bcosify.evaluate.baselines import (
    Explainer,
    bcos_explainer,
    oracle_reference,
    uniform_reference,
)
from bcosify.evaluate.data import (
    check_batch,
    label_lookup,
    make_loader,
    map_labels,
    model_device,
    resolve_normalize,
)

__all__ = [
    "Grid",
    "ImagePool",
    "GridPGResult",
    "build_pool",
    "make_grids",
    "tile_grid",
    "cell_masks",
    "smooth_positive",
    "cell_scores",
    "window_positions",
    "grid_pointing_game",
]

RESULT_FILES = ("result.json", "gridpg.md", "grids.png", "boxplot.png")
"""The files :meth:`GridPGResult.save` writes."""


# ---------------------------------------------------------------------------- pool and grids
@dataclass(frozen=True)
class Grid:
    """One g x g grid: the model class and the dataset index of each cell, row by row."""

    classes: tuple[int, ...]
    indices: tuple[int, ...]


@dataclass
class ImagePool:
    """Correctly and confidently classified images, per model class, most confident first.

    Attributes:
        by_class: model class -> dataset indices, sorted by decreasing confidence.
        confidences: model class -> the matching confidences.
        n_images: images classified.
        n_correct: images whose top-1 prediction is their label.
        confidence: ``"sigmoid"`` or ``"softmax"``.
        threshold: the confidence an image had to exceed.
    """

    by_class: dict[int, list[int]]
    confidences: dict[int, list[float]]
    n_images: int
    n_correct: int
    confidence: str
    threshold: float

    @property
    def n_confident(self) -> int:
        """Images in the pool."""
        return sum(len(v) for v in self.by_class.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.n_images,
            "correct": self.n_correct,
            "top1": self.n_correct / self.n_images if self.n_images else 0.0,
            "confident": self.n_confident,
            "classes_with_images": len(self.by_class),
            "confidence": self.confidence,
            "threshold": self.threshold,
        }


def _resolve_confidence(model: nn.Module, confidence: str) -> str:
    from bcosify.convert import is_converted

    if confidence == "auto":
        return "sigmoid" if is_converted(model) else "softmax"
    if confidence not in ("sigmoid", "softmax"):
        raise BcosifyError(f"confidence must be 'auto', 'sigmoid' or 'softmax', got {confidence!r}")
    return confidence


def build_pool(
    model: nn.Module,
    dataset: Any,
    *,
    confidence: str = "auto",
    threshold: float = 0.5,
    batch_size: int = 64,
    num_workers: int = 0,
    normalize: Any = "auto",
    class_map: Sequence[int] | Mapping[int, int] | None = None,
    progress: bool = True,
) -> ImagePool:
    """Classify a dataset and keep the correctly and confidently classified images.

    Args:
        model: the classifier whose confidence selects the images, on any device.
        dataset: an indexable dataset of ``(image C x H x W in [0, 1], label)`` pairs, in a fixed
            order (the pool stores indices into it).
        confidence: ``"sigmoid"`` (of the logit, for B-cos models trained with BCE),
            ``"softmax"`` (standard models), or ``"auto"``: sigmoid for converted models,
            softmax otherwise.
        threshold: an image is kept if its confidence in its (correct) class exceeds this.
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
        normalize: how ``[0, 1]`` images are normalised for ``model`` (see
            :func:`bcosify.evaluate.data.resolve_normalize`).
        class_map: model output index of each dataset label (default: the label itself).
        progress: show a progress bar.

    Returns:
        An :class:`ImagePool`.

    Example:
        >>> data = [(torch.full((1, 2, 2), float(i % 2)), i % 2) for i in range(4)]
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
        ...     _ = model[1].bias.copy_(torch.tensor([0.5, -0.5]))
        >>> build_pool(model, data, progress=False).by_class
        {0: [0, 2], 1: [1, 3]}
    """
    from tqdm import tqdm

    confidence = _resolve_confidence(model, confidence)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise BcosifyError(f"threshold must be a number, got {threshold!r}")
    device = model_device(model)
    norm = resolve_normalize(model, normalize)
    table = label_lookup(class_map, device)
    loader = make_loader(dataset, batch_size, num_workers)
    labels_all, preds_all, conf_all = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(
                loader, desc="pool", unit="batch", disable=None if progress else True
            ):
                images, labels = check_batch(batch)
                labels = map_labels(labels.to(device), table)
                logits = model(norm(images.to(device, non_blocking=True))).float()
                if logits.dim() != 2:
                    raise BcosifyError(
                        f"the model must return N x classes logits, got {tuple(logits.shape)}"
                    )
                if bool(((labels < 0) | (labels >= logits.shape[1])).any()):
                    raise BcosifyError(
                        f"labels must lie in [0, {logits.shape[1] - 1}] (the model's classes); "
                        "pass class_map= to map them"
                    )
                probs = logits.sigmoid() if confidence == "sigmoid" else logits.softmax(1)
                labels_all.append(labels.cpu())
                preds_all.append(logits.argmax(1).cpu())
                conf_all.append(probs.gather(1, labels[:, None]).squeeze(1).cpu())
    finally:
        model.train(was_training)
    if not labels_all:
        raise BcosifyError("the dataset is empty: the grid pointing game needs images")
    labels_t, preds_t, conf_t = torch.cat(labels_all), torch.cat(preds_all), torch.cat(conf_all)
    correct = preds_t == labels_t
    keep = correct & (conf_t > threshold)
    by_class: dict[int, list[tuple[float, int]]] = {}
    for i in torch.nonzero(keep).flatten().tolist():
        by_class.setdefault(int(labels_t[i]), []).append((-float(conf_t[i]), i))
    pool_idx, pool_conf = {}, {}
    for c in sorted(by_class):
        entries = sorted(by_class[c])  # most confident first, ties by dataset index
        pool_idx[c] = [i for _, i in entries]
        pool_conf[c] = [-v for v, _ in entries]
    return ImagePool(
        by_class=pool_idx,
        confidences=pool_conf,
        n_images=int(labels_t.numel()),
        n_correct=int(correct.sum()),
        confidence=confidence,
        threshold=float(threshold),
    )


def make_grids(
    pool: ImagePool | Mapping[int, Sequence[int]],
    grid_size: int = 3,
    n_grids: int = 500,
    seed: int = 0,
) -> list[Grid]:
    """Draw grids of distinct classes from a pool, reproducibly.

    Each grid picks ``grid_size**2`` distinct classes uniformly among those that still have an
    unused image, and takes each class's next most confident image, so no image is used twice.
    Stops early when fewer classes than cells are left.

    Args:
        pool: an :class:`ImagePool` or a mapping class -> dataset indices (best first).
        grid_size: g, the grid is g x g.
        n_grids: the number of grids wanted.
        seed: the seed of the class draws (numpy ``default_rng``).

    Returns:
        Up to ``n_grids`` :class:`Grid` objects.

    Raises:
        BcosifyError: for a grid size < 1 or a negative number of grids.

    Example:
        >>> grids = make_grids({c: [10 * c, 10 * c + 1] for c in range(5)}, 2, 3, seed=0)
        >>> len(grids), all(len(set(g.classes)) == 4 for g in grids)
        (2, True)
    """
    _check_int(grid_size, "grid_size", 1)
    _check_int(n_grids, "n_grids", 0)
    by_class = pool.by_class if isinstance(pool, ImagePool) else pool
    cells = grid_size * grid_size
    rng = np.random.default_rng(seed)
    used = {int(c): 0 for c in by_class}
    grids: list[Grid] = []
    while len(grids) < n_grids:
        usable = sorted(c for c, k in used.items() if k < len(by_class[c]))
        if len(usable) < cells:
            break
        chosen = [usable[i] for i in rng.choice(len(usable), size=cells, replace=False)]
        indices = []
        for c in chosen:
            indices.append(int(by_class[c][used[c]]))
            used[c] += 1
        grids.append(Grid(tuple(chosen), tuple(indices)))
    return grids


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BcosifyError(f"{name} must be an int >= {low}, got {value!r}")
    return value


# ---------------------------------------------------------------------------- geometry, scores
def tile_grid(images: Sequence[Tensor], grid_size: int) -> Tensor:
    """Tile ``grid_size**2`` equally sized C x H x W images, row by row, without rescaling.

    Example:
        >>> tile_grid([torch.full((1, 2, 2), float(i)) for i in range(4)], 2)[0]
        tensor([[0., 0., 1., 1.],
                [0., 0., 1., 1.],
                [2., 2., 3., 3.],
                [2., 2., 3., 3.]])
    """
    if len(images) != grid_size * grid_size:
        raise BcosifyError(f"a {grid_size}x{grid_size} grid needs {grid_size**2} images")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise BcosifyError(
            f"grid cells must be C x H x W images of one size, got shapes {sorted(shapes)}; give "
            "the dataset a transform that crops every image to the same size (model.transform)"
        )
    rows = [
        torch.cat(list(images[r * grid_size : (r + 1) * grid_size]), 2) for r in range(grid_size)
    ]
    return torch.cat(rows, 1)


def cell_masks(grid_size: int, cell_h: int, cell_w: int, device: Any = None) -> Tensor:
    """g² x (g·H) x (g·W) boolean masks of the cells, row by row.

    Example:
        >>> cell_masks(2, 1, 1).int().tolist()[1]
        [[0, 1], [0, 0]]
    """
    masks = torch.zeros(grid_size**2, grid_size * cell_h, grid_size * cell_w, dtype=torch.bool)
    for k in range(grid_size**2):
        r, c = divmod(k, grid_size)
        masks[k, r * cell_h : (r + 1) * cell_h, c * cell_w : (c + 1) * cell_w] = True
    return masks.to(device) if device is not None else masks


def smooth_positive(maps: Tensor, kernel: int = 15) -> Tensor:
    """Smooth N x H x W maps with an average pool (stride 1, size kept) and keep the positive part.

    The border is padded and the padding is left out of each average, so a constant map stays
    constant. ``kernel`` 0 or 1 skips the smoothing.

    Example:
        >>> smooth_positive(torch.tensor([[[1.0, -3.0, 1.0]]]), 3)
        tensor([[[0., 0., 0.]]])
    """
    _check_kernel(kernel)
    if kernel > 1:
        maps = F.avg_pool2d(
            maps[:, None], kernel, stride=1, padding=kernel // 2, count_include_pad=False
        )[:, 0]
    return maps.clamp_min(0)


def _check_kernel(kernel: Any) -> int:
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 0:
        raise BcosifyError(f"smooth must be an int >= 0, got {kernel!r}")
    if kernel > 1 and kernel % 2 == 0:
        raise BcosifyError(f"smooth must be odd (to keep the map's size), got {kernel}")
    return kernel


def cell_scores(positive_maps: Tensor, masks: Tensor) -> Tensor:
    """Share of the positive attribution inside each map's cell (0 where there is none).

    Args:
        positive_maps: N x H x W non-negative maps.
        masks: N x H x W boolean cell masks.

    Returns:
        N scores in [0, 1] (float64).

    Example:
        >>> m = torch.tensor([[[3.0, 1.0]]])
        >>> cell_scores(m, torch.tensor([[[True, False]]])).tolist()
        [0.75]
    """
    maps = positive_maps.flatten(1).double()
    total = maps.sum(1)
    inside = (maps * masks.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total))


def window_positions(size: int, window: int, stride: int) -> list[int]:
    """Offsets of windows of ``window`` pixels covering ``size`` pixels at ``stride``.

    The last window ends at the border (added if the stride does not reach it).

    Example:
        >>> window_positions(448, 224, 112)
        [0, 112, 224]
    """
    if window > size:
        raise BcosifyError(f"the window ({window} px) is larger than the grid ({size} px)")
    positions = list(range(0, size - window + 1, stride))
    if positions[-1] != size - window:
        positions.append(size - window)
    return positions


# ---------------------------------------------------------------------------- the game
@dataclass
class GridPGResult:
    """Scores of every method on every cell of every grid, and what is needed to draw them.

    Attributes:
        scores: method name -> array (grids x cells) of scores in [0, 1].
        grids: the grids, in the order of the score rows.
        grid_size: g.
        cell_size: (H, W) of a cell in pixels.
        settings: the parameters of the run (seed, smoothing, window, ...).
        pool: statistics of the image pool (see :meth:`ImagePool.to_dict`).
        examples: for the figure, a few ``(grid image, cell, {method: processed map})``.
    """

    scores: dict[str, np.ndarray]
    grids: list[Grid]
    grid_size: int
    cell_size: tuple[int, int]
    settings: dict[str, Any] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)
    examples: list[tuple[Tensor, int, dict[str, Tensor]]] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method: mean, q1, median, q3 (over all cells of all grids) and n (cells).

        Example:
            >>> r = GridPGResult({"m": np.array([[0.0, 1.0]])}, [Grid((0, 1), (0, 1))], 1, (2, 2))
            >>> r.summary()["m"]["mean"]
            0.5
        """
        out = {}
        for name, s in self.scores.items():
            flat = np.asarray(s, dtype=np.float64).ravel()
            if flat.size:
                q1, med, q3 = (float(v) for v in np.percentile(flat, [25, 50, 75]))
                mean = float(flat.mean())
            else:
                q1 = med = q3 = mean = float("nan")
            out[name] = {"mean": mean, "q1": q1, "median": med, "q3": q3, "n": int(flat.size)}
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything but the example images, JSON-serialisable."""
        return {
            "grid_size": self.grid_size,
            "cell_size": list(self.cell_size),
            "n_grids": len(self.grids),
            "settings": dict(self.settings),
            "pool": dict(self.pool),
            "summary": self.summary(),
            "grids": [
                {
                    "classes": list(g.classes),
                    "indices": list(g.indices),
                    "scores": {name: [float(v) for v in s[i]] for name, s in self.scores.items()},
                }
                for i, g in enumerate(self.grids)
            ],
        }

    def to_markdown(self) -> str:
        """A markdown table: method, mean, q1, median, q3, n."""
        g = self.grid_size
        h, w = self.cell_size
        lines = [
            f"Grid pointing game: {len(self.grids)} grids of {g}x{g} cells of {h}x{w} px "
            f"(chance level 1/{g * g} = {1 / (g * g):.3f}).",
            "",
            "| method | mean | q1 | median | q3 | n |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, s in self.summary().items():
            lines.append(
                f"| {name} | {s['mean']:.3f} | {s['q1']:.3f} | {s['median']:.3f} | "
                f"{s['q3']:.3f} | {s['n']} |"
            )
        return "\n".join(lines) + "\n"

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> dict[str, Path]:
        """Write ``result.json``, ``gridpg.md``, ``grids.png`` and ``boxplot.png``.

        Args:
            out_dir: the output directory (created if needed).
            overwrite: replace existing result files.
            class_names: names of the model's classes, for the figure titles.

        Returns:
            File name -> path.

        Raises:
            BcosifyError: if a result file exists and ``overwrite`` is False.
        """
        out = Path(out_dir).expanduser()
        existing = [out / n for n in RESULT_FILES if (out / n).exists()]
        if existing and not overwrite:
            raise BcosifyError(f"{existing[0]} exists; pass --overwrite (overwrite=True)")
        out.mkdir(parents=True, exist_ok=True)
        paths = {n: out / n for n in RESULT_FILES}
        paths["result.json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        paths["gridpg.md"].write_text(self.to_markdown())
        self.plot_grids(paths["grids.png"], class_names=class_names)
        self.plot_boxplot(paths["boxplot.png"])
        return paths

    def plot_grids(self, path: str | os.PathLike[str], class_names: Sequence[str] | None = None):
        """Figure: one row per example grid (see :func:`bcosify.viz.gridpg_examples_figure`)."""
        from bcosify.viz import gridpg_examples_figure

        return gridpg_examples_figure(
            path,
            self.examples,
            self.grids,
            self.scores,
            self.grid_size,
            self.cell_size,
            class_names=class_names,
        )

    def plot_boxplot(self, path: str | os.PathLike[str]):
        """Figure: box plot of the cell scores (see :func:`bcosify.viz.gridpg_boxplot`)."""
        from bcosify.viz import gridpg_boxplot

        return gridpg_boxplot(path, self.scores, self.grid_size)


def _needs_window(model: nn.Module, channels: int, size: int, norm) -> str:
    """Why ``model`` fails on a ``size`` x ``size`` input (a fixed-input-size model), or ""."""
    x = torch.zeros(1, channels, size, size, device=model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(norm(x))
    except Exception as exc:  # noqa: BLE001 - any failure: the model cannot take the whole grid
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        model.train(was_training)
    return ""


def _attribute(
    method: Explainer,
    grids: Tensor,
    targets: Tensor,
    masks: Tensor,
    window: int | None,
    stride: int | None,
    chunk: int,
) -> Tensor:
    """The maps of every cell of every grid: G grids, targets G x cells, masks (G cells) x H x W;
    returns (G cells) x H x W. A method that explains several targets at once gets each grid
    (or window) once with all its cells' classes; the others get it once per cell."""
    if method.reference:
        return _checked(method, method.fn(masks), masks.shape).to(masks.device).float()
    g, cells = targets.shape
    _, _, height, width = grids.shape
    explain_crop = _several if method.several is not None else _one_per_cell
    if window is None:
        return explain_crop(method, grids, targets, chunk).to(grids.device).float()
    total = torch.zeros(g * cells, height, width, device=grids.device)
    for y in window_positions(height, window, stride):
        for x in window_positions(width, window, stride):
            crop = grids[:, :, y : y + window, x : x + window]
            part = explain_crop(method, crop, targets, chunk)
            total[:, y : y + window, x : x + window] += part.to(total.device)
    return total


def _one_per_cell(method: Explainer, grids: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """(G cells) x H x W maps, each grid repeated once per cell, ``chunk`` images a call."""
    images = grids.repeat_interleave(targets.shape[1], 0)
    flat = targets.reshape(-1)
    n, _, height, width = images.shape
    out = []
    for i in range(0, n, chunk):
        part = method.fn(images[i : i + chunk], flat[i : i + chunk])
        out.append(_checked(method, part, (min(chunk, n - i), height, width)))
    return torch.cat(out)


def _several(method: Explainer, grids: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """(G cells) x H x W maps, each grid explained once for all its cells' classes, about
    ``chunk`` maps a call."""
    g, cells = targets.shape
    _, _, height, width = grids.shape
    per_call = max(1, chunk // cells)
    out = []
    for i in range(0, g, per_call):
        part = method.several(grids[i : i + per_call], targets[i : i + per_call])
        part = _checked(method, part, (min(per_call, g - i), cells, height, width))
        out.append(part.reshape(-1, height, width))
    return torch.cat(out)


def _checked(method: Explainer, maps: Any, shape: Sequence[int]) -> Tensor:
    if not isinstance(maps, Tensor) or tuple(maps.shape) != tuple(shape):
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        what = "N x k x H x W maps (N images, k targets)" if len(shape) == 4 else "N x H x W maps"
        raise BcosifyError(
            f"the explainer {method.name!r} must return {what}, one per image and target: "
            f"expected {tuple(shape)}, got {got}"
        )
    return maps.detach()


def grid_pointing_game(
    model: nn.Module,
    dataset: Any,
    *,
    methods: Sequence[Explainer] | None = None,
    grid_size: int = 3,
    n_grids: int = 500,
    seed: int = 0,
    confidence: str = "auto",
    threshold: float = 0.5,
    smooth: int = 15,
    window: int | str | None = "auto",
    stride: int | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    normalize: Any = "auto",
    class_map: Sequence[int] | Mapping[int, int] | None = None,
    references: bool = True,
    figure_grids: int = 3,
    progress: bool = True,
    pool: ImagePool | None = None,
) -> GridPGResult:
    """Run the grid pointing game for one or more explanation methods on the same grids.

    Args:
        model: the model whose correct, confident predictions select the images (a converted
            B-cos model, or an original model when only post-hoc baselines are compared).
        dataset: an indexable dataset of ``(image C x H x W in [0, 1], label)`` pairs, all of
            one size (e.g. :func:`bcosify.evaluate.image_folder` with ``model.transform``).
        methods: the :class:`~bcosify.evaluate.baselines.Explainer` objects to score; default:
            the exact B-cos explanation of ``model`` (which must then be converted).
        grid_size: g; grids are g x g (3 in the papers for CNNs, 2 with windows for ViTs).
        n_grids: grids wanted (500 in the papers); fewer are made if the pool runs out.
        seed: seed of the grid draws; the same seed gives the same grids.
        confidence: ``"auto"``, ``"sigmoid"`` or ``"softmax"`` (see :func:`build_pool`).
        threshold: minimum confidence of a pool image.
        smooth: size of the average-pool smoothing of each map (15 in the papers; 0 for none).
        window: ``"auto"``: windows of the cell size when ``model`` fails on a whole grid (a
            fixed-input-size model), otherwise the whole grid; ``None``: the whole grid; an int:
            windows of that many pixels.
        stride: window stride (default: half a window).
        batch_size: images per forward pass for the pool; explanations per call of a method.
        num_workers: DataLoader workers for the pool.
        normalize: normalisation of ``[0, 1]`` images for ``model`` (``"auto"``: none for a
            converted model, its recorded mean/std otherwise).
        class_map: model output index of each dataset label.
        references: add the ``uniform`` (score 1/g²) and ``oracle`` (score 1) references.
        figure_grids: how many grids to keep maps of for :meth:`GridPGResult.plot_grids`.
        progress: show progress bars.
        pool: a precomputed :class:`ImagePool` (skips the classification pass).

    Returns:
        A :class:`GridPGResult`.

    Raises:
        BcosifyError: if fewer than g² classes have a confident, correctly classified image, or
            for invalid arguments.

    Example:
        >>> import bcosify, torchvision
        >>> m = bcosify.convert(torchvision.models.resnet18(num_classes=4), mean=(0.5,) * 3,
        ...                     std=(0.5,) * 3)
        >>> data = [(torch.rand(3, 32, 32), c) for c in range(4)]
        >>> pool = ImagePool({c: [c] for c in range(4)}, {c: [1.0] for c in range(4)}, 4, 4,
        ...                  "sigmoid", 0.5)
        >>> r = grid_pointing_game(m, data, grid_size=2, n_grids=1, pool=pool, progress=False)
        >>> sorted(r.summary())
        ['B-cos', 'oracle', 'uniform']
    """
    from tqdm import tqdm

    _check_int(grid_size, "grid_size", 1)
    _check_int(n_grids, "n_grids", 1)
    _check_int(batch_size, "batch_size", 1)
    _check_int(figure_grids, "figure_grids", 0)
    _check_kernel(smooth)
    if methods is None:
        methods = [bcos_explainer(model)]
    methods = list(methods)
    if references:
        names = {m.name for m in methods}
        methods += [r for r in (uniform_reference(), oracle_reference()) if r.name not in names]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise BcosifyError(f"method names must be distinct, got {names}")
    if not all(isinstance(m, Explainer) for m in methods):
        raise BcosifyError("methods must be bcosify.evaluate.Explainer objects")

    if pool is None:
        pool = build_pool(
            model,
            dataset,
            confidence=confidence,
            threshold=threshold,
            batch_size=batch_size,
            num_workers=num_workers,
            normalize=normalize,
            class_map=class_map,
            progress=progress,
        )
    grids = make_grids(pool, grid_size, n_grids, seed)
    cells = grid_size * grid_size
    if not grids:
        raise BcosifyError(
            f"only {len(pool.by_class)} class(es) have a correctly classified image with "
            f"{pool.confidence} confidence > {pool.threshold} ({pool.n_correct} of "
            f"{pool.n_images} images are correct); a {grid_size}x{grid_size} grid needs {cells} "
            "distinct classes: use more images or classes, a smaller grid (grid_size / "
            "--grid-size) or a lower threshold (--threshold)"
        )

    device = model_device(model)
    first = dataset[grids[0].indices[0]][0]
    if not isinstance(first, Tensor) or first.dim() != 3:
        raise BcosifyError(
            "dataset images must be C x H x W tensors: give it a transform ending in ToTensor(), "
            "e.g. model.transform"
        )
    channels, cell_h, cell_w = first.shape
    height, width = grid_size * cell_h, grid_size * cell_w
    norm = resolve_normalize(model, normalize)
    if window == "auto" or window is None:
        fails = _needs_window(model, channels, height, norm)
        if fails and window is None:
            raise BcosifyError(
                f"the model cannot take a whole {height}x{width} grid ({fails}); use sliding "
                "windows: window='auto' or a size in pixels (CLI: --window auto)"
            )
        window = None
        if fails:
            if cell_h != cell_w:
                raise BcosifyError(
                    f"windows need square cells, the images are {cell_h}x{cell_w}; crop them "
                    "square (model.transform does)"
                )
            window = cell_h
    if window is not None:
        _check_int(window, "window", 1)
        stride = window // 2 if stride is None else _check_int(stride, "stride", 1)
        if window > min(height, width):
            raise BcosifyError(f"the window ({window} px) is larger than the grid ({height} px)")
    masks = cell_masks(grid_size, cell_h, cell_w, device)

    scores = {name: np.zeros((len(grids), cells)) for name in names}
    examples: list[tuple[Tensor, int, dict[str, Tensor]]] = []
    per_step = max(1, batch_size // cells)
    bar = tqdm(total=len(grids), desc="gridpg", unit="grid", disable=None if progress else True)
    with bar:
        for start in range(0, len(grids), per_step):
            chunk = grids[start : start + per_step]
            images = torch.stack(
                [tile_grid([dataset[i][0] for i in g.indices], grid_size) for g in chunk]
            ).to(device)
            targets = torch.tensor([g.classes for g in chunk], device=device)
            batch_masks = masks.repeat(len(chunk), 1, 1)
            for method in methods:
                maps = _attribute(method, images, targets, batch_masks, window, stride, batch_size)
                if not method.reference:
                    maps = smooth_positive(maps, smooth)
                s = cell_scores(maps, batch_masks).view(len(chunk), cells)
                scores[method.name][start : start + len(chunk)] = s.cpu().numpy()
                for j in range(len(chunk)):
                    gi = start + j
                    if gi < figure_grids:
                        if len(examples) <= gi:
                            examples.append((images[j].cpu(), gi % cells, {}))
                        examples[gi][2][method.name] = maps[j * cells + gi % cells].cpu()
            bar.update(len(chunk))
            bar.set_postfix({n: f"{scores[n][: start + len(chunk)].mean():.3f}" for n in names[:2]})
    settings = {
        "seed": seed,
        "n_grids_requested": n_grids,
        "smooth": smooth,
        "window": window,
        "stride": stride if window is not None else None,
        "methods": names,
        "batch_size": batch_size,
    }
    return GridPGResult(
        scores=scores,
        grids=grids,
        grid_size=grid_size,
        cell_size=(int(cell_h), int(cell_w)),
        settings=settings,
        pool=pool.to_dict(),
        examples=examples,
    )
