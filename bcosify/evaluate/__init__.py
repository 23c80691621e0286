"""Evaluate converted and original models: accuracy, grid pointing game, post-hoc baselines.

Example:
    >>> import torch
    >>> from bcosify.evaluate import evaluate_accuracy
    >>> data = [(torch.rand(3, 8, 8), 0) for _ in range(4)]
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    >>> evaluate_accuracy(model, data, progress=False).n
    4
"""

from typing import TYPE_CHECKING

from bcosify._lazy import lazy_exports

# names load on first use (PEP 562): `bcosify evaluate --help` needs no torch
_EXPORTS = {
    "AccuracyResult": "bcosify.evaluate.accuracy",
    "evaluate_accuracy": "bcosify.evaluate.accuracy",
    "Explainer": "bcosify.evaluate.baselines",
    "bcos_explainer": "bcosify.evaluate.baselines",
    "find_gradcam_layer": "bcosify.evaluate.baselines",
    "grad_cam": "bcosify.evaluate.baselines",
    "input_x_gradient": "bcosify.evaluate.baselines",
    "integrated_gradients": "bcosify.evaluate.baselines",
    "oracle_reference": "bcosify.evaluate.baselines",
    "uniform_reference": "bcosify.evaluate.baselines",
    "class_index_map": "bcosify.evaluate.data",
    "image_folder": "bcosify.evaluate.data",
    "model_categories": "bcosify.evaluate.data",
    "Grid": "bcosify.evaluate.gridpg",
    "GridPGResult": "bcosify.evaluate.gridpg",
    "ImagePool": "bcosify.evaluate.gridpg",
    "build_pool": "bcosify.evaluate.gridpg",
    "grid_pointing_game": "bcosify.evaluate.gridpg",
    "make_grids": "bcosify.evaluate.gridpg",
}

if TYPE_CHECKING:
    from bcosify.evaluate.accuracy import AccuracyResult, evaluate_accuracy
    from bcosify.evaluate.baselines import (
        Explainer,
        bcos_explainer,
        find_gradcam_layer,
        grad_cam,
        input_x_gradient,
        integrated_gradients,
        oracle_reference,
        uniform_reference,
    )
    from bcosify.evaluate.data import class_index_map, image_folder, model_categories
    from bcosify.evaluate.gridpg import (
        Grid,
        GridPGResult,
        ImagePool,
        build_pool,
        grid_pointing_game,
        make_grids,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "AccuracyResult",
    "Explainer",
    "Grid",
    "GridPGResult",
    "ImagePool",
    "bcos_explainer",
    "build_pool",
    "class_index_map",
    "evaluate_accuracy",
    "find_gradcam_layer",
    "grad_cam",
    "grid_pointing_game",
    "image_folder",
    "input_x_gradient",
    "integrated_gradients",
    "make_grids",
    "model_categories",
    "oracle_reference",
    "uniform_reference",
]
