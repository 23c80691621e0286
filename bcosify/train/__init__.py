"""Fine-tuning B-cos networks with HF Accelerate (needs ``pip install "bcosify[train]"``).

Example:
    >>> from bcosify.train import load_recipe
    >>> load_recipe("recipes/tiny-cpu.yaml").train.loss  # doctest: +SKIP
    'bce'
"""

from bcosify.train.losses import BCEWithOffTargets, DistillationLoss, SoftCrossEntropy
from bcosify.train.recipe import Recipe, RecipeError, apply_overrides, load_recipe

__all__ = [
    "finetune",
    "FinetuneResult",
    "TrainState",
    "TrainingError",
    "latest_checkpoint",
    "Recipe",
    "RecipeError",
    "load_recipe",
    "apply_overrides",
    "BCEWithOffTargets",
    "SoftCrossEntropy",
    "DistillationLoss",
]


def __getattr__(name: str):
    # The loop imports accelerate; keep `import bcosify.train` light and give a clear error when
    # the extra is missing.
    if name in ("finetune", "FinetuneResult", "TrainState", "TrainingError", "latest_checkpoint"):
        try:
            from bcosify.train import loop
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"bcosify.train.{name} needs accelerate: pip install 'bcosify[train]' ({e})"
            ) from e
        return getattr(loop, name)
    raise AttributeError(f"module 'bcosify.train' has no attribute {name!r}")
