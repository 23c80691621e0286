"""Grid pointing game: known answers on a synthetic task, grid building, baselines, windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import bcosify
from bcosify.errors import BcosifyError
from bcosify.evaluate import (
    Explainer,
    ImagePool,
    bcos_explainer,
    build_pool,
    find_gradcam_layer,
    grad_cam,
    grid_pointing_game,
    input_x_gradient,
    integrated_gradients,
    make_grids,
)
from bcosify.evaluate.gridpg import cell_masks, cell_scores, smooth_positive, window_positions
from tests.helpers import calibrate

K, P, CELL = 10, 5, 32  # classes, pattern side, cell side
HALF = ((0.5,) * 3, (0.5,) * 3)


def _patterns() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 2, (K, 3, P, P), generator=g).float() * 2 - 1


class PatternNet(nn.Module):
    """Class c fires only where its ±1 pattern appears: a matched filter, a threshold, max pool.

    It takes normalised input (mean = std = 0.5). On the images of :func:`_dataset` a pattern
    gives a response of 0.8 * 75 = 60 to its own filter and < 35 to any other, so the
    threshold at 40 leaves exactly one active position: the centre of the class's pattern.
    """

    def __init__(self, fixed_size: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, K, P)
        with torch.no_grad():
            self.conv.weight.copy_(_patterns())
            self.conv.bias.fill_(-40.0)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fixed_size = fixed_size

    def forward(self, x):
        if self.fixed_size is not None and x.shape[-1] != self.fixed_size:
            raise ValueError(f"input size must be {self.fixed_size}")
        return self.pool(self.relu(self.conv(x))).flatten(1)


def _dataset(per_class: int = 2) -> list[tuple[torch.Tensor, int]]:
    """Noisy grey cells with the class's pattern in the middle (pixels 13..17)."""
    g = torch.Generator().manual_seed(5)
    pats = _patterns()
    data = []
    for i in range(per_class):
        for c in range(K):
            img = 0.5 + 0.05 * (2 * torch.rand(3, CELL, CELL, generator=g) - 1)
            lo = (CELL - P) // 2 + i % 2  # two positions, still far from the cell border
            img[:, lo : lo + P, lo : lo + P] = 0.5 + 0.4 * pats[c]
            data.append((img, c))
    return data


@pytest.fixture(scope="module")
def data():
    return _dataset()


def test_synthetic_model_fires_only_on_its_pattern(data):
    model = PatternNet().eval()
    x = torch.stack([im for im, _ in data])
    with torch.no_grad():
        logits = model(x * 2 - 1)
    labels = torch.tensor([c for _, c in data])
    assert torch.equal(logits.argmax(1), labels)
    off = logits.clone()
    off[torch.arange(len(data)), labels] = 0
    assert float(off.abs().max()) == 0 and float(logits.max(1).values.min()) > 10


@pytest.mark.parametrize("g", [2, 3])
def test_exact_explainer_scores_one_and_uniform_chance(data, g):
    model = PatternNet().eval()
    ixg = input_x_gradient(model, HALF)

    def wrong_fn(images, targets):  # explains the class of the next cell instead
        return ixg.fn(images, targets.view(-1, g * g).roll(1, 1).flatten())

    methods = [ixg, Explainer("wrong cell", wrong_fn)]
    r = grid_pointing_game(
        model, data, methods=methods, grid_size=g, n_grids=2, normalize=HALF, progress=False
    )
    assert len(r.grids) == 2 and r.scores["Input×Gradient"].shape == (2, g * g)
    np.testing.assert_array_equal(r.scores["Input×Gradient"], 1.0)
    np.testing.assert_array_equal(r.scores["oracle"], 1.0)
    np.testing.assert_allclose(r.scores["uniform"], 1 / g**2, rtol=1e-12)
    np.testing.assert_array_equal(r.scores["wrong cell"], 0.0)
    s = r.summary()
    assert s["uniform"]["median"] == pytest.approx(1 / g**2)
    assert s["Input×Gradient"]["n"] == 2 * g * g
    assert r.pool["correct"] == r.pool["images"] == len(data)
    assert r.settings["window"] is None


def test_posthoc_baselines_localise_the_synthetic_pattern(data):
    model = PatternNet().eval()
    assert find_gradcam_layer(model, CELL) == "relu"
    methods = [
        integrated_gradients(model, HALF, n_steps=16),
        grad_cam(model, HALF, image_size=CELL),
    ]
    r = grid_pointing_game(
        model, data, methods=methods, grid_size=2, n_grids=2, normalize=HALF, progress=False
    )
    s = r.summary()
    assert s["Integrated Gradients"]["q1"] > 0.99
    assert s["Grad-CAM"]["q1"] > 0.95


def test_sliding_windows_for_a_fixed_input_size(data):
    model = PatternNet(fixed_size=CELL).eval()
    r = grid_pointing_game(
        model,
        data,
        methods=[input_x_gradient(model, HALF)],
        grid_size=2,
        n_grids=2,
        normalize=HALF,
        progress=False,
    )
    assert r.settings["window"] == CELL and r.settings["stride"] == CELL // 2
    np.testing.assert_array_equal(r.scores["Input×Gradient"], 1.0)
    np.testing.assert_allclose(r.scores["uniform"], 0.25, rtol=1e-12)
    # without windows the model cannot run: a clear error, not the model's own
    with pytest.raises(BcosifyError, match="window"):
        grid_pointing_game(
            model, data, methods=[input_x_gradient(model, HALF)], grid_size=2, n_grids=1,
            normalize=HALF, window=None, progress=False,
        )  # fmt: skip
    assert window_positions(4 * CELL, CELL, CELL // 2)[-1] == 3 * CELL
    assert window_positions(100, 30, 40) == [0, 40, 70]


def test_make_grids_is_deterministic_and_never_repeats_a_class():
    rng = np.random.default_rng(0)
    pool = {c: [100 * c + i for i in range(int(rng.integers(1, 6)))] for c in range(14)}
    a = make_grids(pool, 3, 50, seed=0)
    assert a == make_grids(pool, 3, 50, seed=0)
    assert a != make_grids(pool, 3, 50, seed=1)
    assert 0 < len(a) < 50  # the pool runs out before 50 grids
    used = []
    for grid in a:
        assert len(set(grid.classes)) == 9 and len(grid.indices) == 9
        for c, i in zip(grid.classes, grid.indices):
            assert i in pool[c]
        used += grid.indices
    assert len(used) == len(set(used))  # no image twice
    # each class's images are used most confident first
    for c, images in pool.items():
        taken = [i for grid in a for cc, i in zip(grid.classes, grid.indices) if cc == c]
        assert taken == images[: len(taken)]
    # stopping rule: once fewer than 9 classes have images left, no further grid
    left = sum(1 for c in pool if len(pool[c]) > sum(g.classes.count(c) for g in a))
    assert left < 9
    with pytest.raises(BcosifyError, match="grid_size"):
        make_grids(pool, 0)


def test_build_pool_keeps_correct_confident_images_sorted():
    # logits chosen per image: image i has features [i] only, the model is a lookup table
    logits = torch.tensor([[3.0, 0.0], [0.5, 0.0], [2.0, 1.9], [0.0, 1.0], [4.0, 0.0], [0.0, 0.1]])
    labels = [0, 0, 0, 1, 1, 1]

    class Lookup(nn.Module):
        def forward(self, x):
            return logits[x[:, 0, 0, 0].round().long()]

    data = [(torch.full((1, 1, 1), float(i)), c) for i, c in enumerate(labels)]
    pool = build_pool(Lookup(), data, confidence="softmax", threshold=0.6, progress=False)
    # softmax: image 1 (0.62) kept, 2 (0.52) dropped, 4 wrong, 5 correct but 0.52
    assert pool.by_class == {0: [0, 1], 1: [3]}
    assert pool.n_images == 6 and pool.n_correct == 5 and pool.n_confident == 3
    pool = build_pool(Lookup(), data, confidence="sigmoid", threshold=0.6, progress=False)
    assert pool.by_class == {0: [0, 2, 1], 1: [3]}  # sigmoid: 0.95, 0.88, 0.62; 0.73
    assert pool.confidences[0] == sorted(pool.confidences[0], reverse=True)
    with pytest.raises(BcosifyError, match="confidence"):
        build_pool(Lookup(), data, confidence="max", progress=False)


def test_too_few_classes_is_a_clear_error(data):
    model = PatternNet().eval()
    few = [d for d in data if d[1] < 3]
    with pytest.raises(BcosifyError, match="grid needs 4 distinct classes"):
        grid_pointing_game(
            model, few, methods=[input_x_gradient(model, HALF)], grid_size=2, normalize=HALF,
            progress=False,
        )  # fmt: skip


def test_bad_explainer_output_is_named(data):
    model = PatternNet().eval()
    bad = Explainer("flat", lambda x, t: x.flatten(1))
    with pytest.raises(BcosifyError, match="'flat' must return"):
        grid_pointing_game(
            model, data, methods=[bad], grid_size=2, n_grids=1, normalize=HALF, progress=False
        )
    with pytest.raises(BcosifyError, match="odd"):
        grid_pointing_game(model, data, methods=[bad], smooth=4, progress=False)
    with pytest.raises(BcosifyError, match="converted"):
        bcos_explainer(model)


def test_scores_and_smoothing_primitives():
    masks = cell_masks(3, 4, 4)
    assert masks.shape == (9, 12, 12) and bool((masks.sum(0) == 1).all())
    ones = torch.ones(1, 12, 12)
    assert torch.equal(smooth_positive(ones, 5), ones)  # padding left out of the average
    m = torch.zeros(2, 12, 12)
    m[0, 0, 0] = 2.0  # in cell 0
    m[0, 11, 11] = 1.0  # in cell 8
    m[1] = -1.0  # nothing positive: score 0
    s = cell_scores(m.clamp_min(0), masks[[0, 0]])
    assert s.tolist() == [pytest.approx(2 / 3), 0.0]


def test_converted_model_end_to_end_scores_in_unit_interval(tmp_path):
    source = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 6),
    )
    model = bcosify.convert(source, mean=(0.5,) * 3, std=(0.5,) * 3).eval()
    x = torch.rand(48, 3, 16, 16)
    calibrate(model, x)
    with torch.no_grad():
        pred = model(x).argmax(1)
    data = [(im, int(c)) for im, c in zip(x, pred)]  # labelled by the model: all correct
    assert len(set(pred.tolist())) >= 4
    r = grid_pointing_game(
        model, data, grid_size=2, n_grids=3, threshold=0.0, batch_size=8, progress=False
    )
    b = r.scores["B-cos"]
    assert b.shape == (len(r.grids), 4) and len(r.grids) >= 1
    assert np.all((b >= 0) & (b <= 1)) and b.std() > 0
    paths = r.save(tmp_path)
    assert all(p.stat().st_size > 0 for p in paths.values())
    saved = json.loads(paths["result.json"].read_text())
    assert saved["summary"] == r.summary()
    assert saved["grids"][0]["scores"]["B-cos"] == r.scores["B-cos"][0].tolist()
    assert f"| B-cos | {r.summary()['B-cos']['mean']:.3f} |" in paths["gridpg.md"].read_text()
    with pytest.raises(BcosifyError, match="overwrite"):
        r.save(tmp_path)
    # a precomputed pool skips the classification pass and gives the same grids
    first = {c: [pred.tolist().index(c)] for c in set(pred.tolist())}
    pool = ImagePool(first, {}, len(data), len(data), "sigmoid", 0.0)
    again = grid_pointing_game(model, data, grid_size=2, n_grids=1, pool=pool, progress=False)
    assert again.grids == make_grids(pool, 2, 1, 0)


@pytest.mark.parametrize("window", [None, 16])
def test_all_cells_of_a_grid_from_one_explanation_equal_one_per_cell(window):
    """bcos_explainer explains every cell of a grid (or of a window) from one forward pass with
    the cells' classes as targets; the scores equal explaining each cell on its own."""
    torch.manual_seed(0)
    source = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 6),
    )  # fmt: skip
    model = bcosify.convert(source, mean=(0.5,) * 3, std=(0.5,) * 3).eval()
    x = torch.rand(48, 3, 16, 16)
    calibrate(model, x)
    with torch.no_grad():
        pred = model(x).argmax(1)
    data = [(im, int(c)) for im, c in zip(x, pred)]
    grouped = bcos_explainer(model)
    assert grouped.several is not None
    single = Explainer("one per cell", grouped.fn)
    kwargs = dict(grid_size=2, n_grids=3, threshold=0.0, batch_size=8, window=window, stride=8)
    r = grid_pointing_game(model, data, methods=[grouped, single], progress=False, **kwargs)
    assert r.scores["B-cos"].std() > 0
    np.testing.assert_allclose(r.scores["B-cos"], r.scores["one per cell"], rtol=1e-5, atol=1e-7)


def test_vit_posthoc_baseline_uses_windows_and_gradcam_asks_for_a_layer():
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=CELL, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4
    ).eval()
    data = [(torch.rand(3, CELL, CELL), c % 4) for c in range(8)]
    pool = ImagePool({c: [c, c + 4] for c in range(4)}, {}, 8, 8, "softmax", 0.5)
    r = grid_pointing_game(
        vit,
        data,
        methods=[input_x_gradient(vit, HALF)],
        normalize=HALF,
        grid_size=2,
        n_grids=2,
        pool=pool,
        progress=False,
    )
    assert r.settings["window"] == CELL and r.settings["stride"] == CELL // 2
    s = r.scores["Input×Gradient"]
    assert s.shape == (2, 4) and np.all((s >= 0) & (s <= 1))
    with pytest.raises(BcosifyError, match="--gradcam-layer"):
        find_gradcam_layer(vit, CELL)
    assert find_gradcam_layer(PatternNet(), CELL) == "relu"
