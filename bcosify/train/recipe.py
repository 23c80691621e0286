"""Fine-tuning recipes: a typed, validated tree of settings read from YAML.

A recipe has five sections (``model``, ``data``, ``optim``, ``train``, ``log``) plus ``output``.
Every key has a default, unknown keys are an error (with the closest known key suggested), and any
key can be overridden with a dotted path (``train.epochs=3``), from Python or from the command
line (``bcosify finetune recipe.yaml --train.epochs 3``). The resolved recipe is written next to
the checkpoints, so a run can always be repeated.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from bcosify.errors import BcosifyError

__all__ = [
    "Recipe",
    "ModelSection",
    "DataSection",
    "AugmentSection",
    "OptimSection",
    "TrainSection",
    "DistillSection",
    "AlignSection",
    "LogSection",
    "RecipeError",
    "load_recipe",
    "apply_overrides",
]


MODEL_CHOICE = (
    "model: give exactly one of model.source (a model name to convert, e.g. resnet50) and "
    "model.model_dir (a directory from `bcosify convert`)"
)


class RecipeError(BcosifyError, ValueError):
    """A recipe that cannot be used: unknown key, wrong type, missing file, inconsistent values."""


@dataclass
class ModelSection:
    """What to fine-tune.

    Exactly one of ``source`` and ``model_dir``:

    - ``source``: a model name for :func:`bcosify.build_model` (``resnet50``, ``timm/vit_small_
      patch16_224``), with ``weights`` and ``num_classes`` (a new head when it differs from the
      pretrained one) and the conversion options in ``config`` (:class:`bcosify.BcosConfig`
      fields); ``mean``/``std`` override the source's normalisation.
    - ``model_dir``: a directory written by ``bcosify convert`` / :func:`bcosify.save`.
    """

    source: str | None = None
    weights: str = "DEFAULT"
    num_classes: int | None = None
    model_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class AugmentSection:
    """Training augmentation (evaluation always resizes to ``eval_resize`` and center-crops).

    No ``Normalize``: a B-cos model takes images in [0, 1] and encodes them itself.
    """

    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    randaugment: str | None = None  # a timm RandAugment string, e.g. "rand-m10-n2-mstd0.5"
    mixup: float = 0.0  # mixup alpha (0 = off)
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    interpolation: str = "bilinear"


@dataclass
class DataSection:
    """Where the images come from and how they are loaded.

    ``backend``:

    - ``imagefolder``: torchvision ``ImageFolder`` on ``train`` / ``val`` (one sub-folder per
      class; a folder with ``train/`` and ``val/`` inside may be given as ``root``);
    - ``hf-imagefolder``: HF ``datasets`` ``imagefolder`` builder on the same folders;
    - ``hf``: a dataset from the Hugging Face hub (``hf_name``, ``train_split``,
      ``val_split``; ``streaming: true`` for very large ones). Needs network or the HF cache.
    """

    backend: Literal["imagefolder", "hf-imagefolder", "hf"] = "imagefolder"
    root: str | None = None
    train: str | None = None
    val: str | None = None
    hf_name: str | None = None
    hf_config: str | None = None
    train_split: str = "train"
    val_split: str = "validation"
    image_column: str = "image"
    label_column: str = "label"
    streaming: bool = False
    image_size: int = 224
    eval_resize: int | None = None  # default: image_size / 0.875
    batch_size: int = 64  # per process
    eval_batch_size: int | None = None
    num_workers: int = 4
    pin_memory: bool = True
    augment: AugmentSection = field(default_factory=AugmentSection)


@dataclass
class OptimSection:
    """Optimiser and learning-rate schedule (``schedule: cosine`` decays to ``min_lr``)."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["cosine", "constant"] = "cosine"
    schedule_unit: Literal["epoch", "step"] = "epoch"
    warmup_steps: int = 0
    min_lr: float = 0.0


@dataclass
class DistillSection:
    """Distillation from the original (unconverted) model; needs no labels.

    ``teacher``: ``"source"`` rebuilds the model the student was converted from (by name and
    weights); or a model name for :func:`bcosify.build_model` with ``teacher_weights``.
    """

    teacher: str = "source"
    teacher_weights: str = "DEFAULT"
    temperature: float = 1.0


@dataclass
class AlignSection:
    """Label-free alignment with the frozen source at matched graph nodes (``train.loss: align``).

    The teacher is chosen as for distillation (``train.distill``) and must be the model the
    student was converted from. ``nodes``: module names (``layer3.1``) or source node names
    (``bcosify.node_map(model)``); ``null`` = every block's output and the classifier's
    features. ``weights``: per node name (default 1). ``metric``: ``cosine`` (1 - cos of the
    channel vectors per position or token) or ``nmse`` (squared distance of the L2-normalised
    features). The logit distillation ``logit_weight * T^2 KL`` (``T`` =
    ``train.distill.temperature``) counts from step ``logit_start_step`` on.
    """

    nodes: list[str] | None = None
    weights: dict[str, float] = field(default_factory=dict)
    metric: Literal["cosine", "nmse"] = "cosine"
    logit_weight: float = 1.0
    logit_start_step: int = 0


@dataclass
class TrainSection:
    """The optimisation loop."""

    epochs: int = 90
    max_steps: int | None = None  # stop after this many optimiser steps (all epochs)
    seed: int = 0
    loss: Literal["bce", "ce", "distill", "align"] = "bce"
    distill: DistillSection = field(default_factory=DistillSection)
    align: AlignSection = field(default_factory=AlignSection)
    grad_accum_steps: int = 1
    agc: float | None = None  # adaptive gradient clipping factor (0.01 in the papers)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # torch.compile the training forward: true (inductor) or a torch.compile backend name
    # ("aot_eager", ...). If compiling fails, training goes on eagerly, with a message.
    compile: bool | str = False
    cpu: bool = False  # run on the CPU even when a GPU is present
    b_ramp_steps: int = 0  # ramp B linearly from 1 to the model's B over this many steps
    # Re-estimate BatchNorm running variances on this many training batches before the first
    # step. The conversion changes every layer's output scale, so the source model's running
    # statistics are stale: eval-mode outputs collapse until momentum catches up. 0 = off
    # (the published recipes).
    bn_recalibration_batches: int = 0
    ema_decay: float | None = None
    checkpoint_every_steps: int | None = 1000
    keep_checkpoints: int = 2
    eval_every_epochs: int = 1
    eval_every_steps: int | None = None  # also validate every N optimiser steps (curves per step)


@dataclass
class LogSection:
    """What is reported while training."""

    trackers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    log_every_steps: int = 50
    explain_images: int = 4  # fixed validation images explained after each epoch (0 = off)
    progress_bar: bool = True


@dataclass
class Recipe:
    """A complete fine-tuning run. See the sections for each key.

    Example:
        >>> r = Recipe.from_dict({"model": {"source": "resnet18"}, "train": {"epochs": 1}})
        >>> r.train.epochs, r.optim.name
        (1, 'adamw')
        >>> apply_overrides(r, ["optim.lr=0.01"]).optim.lr
        0.01
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    log: LogSection = field(default_factory=LogSection)
    output: str = "bcosify-run"
    description: str = ""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Recipe:
        recipe = _build(cls, values or {}, "")
        recipe.validate()
        return recipe

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        m, d, o, t = self.model, self.data, self.optim, self.train
        if m.source is not None and m.model_dir is not None:
            raise RecipeError(MODEL_CHOICE)
        if m.model_dir is not None and (m.config or m.num_classes is not None):
            raise RecipeError(
                "model.config and model.num_classes apply when converting model.source; a "
                "model_dir is already converted (convert again from the source to change them)"
            )
        positive = {
            "data.image_size": d.image_size,
            "data.batch_size": d.batch_size,
            "train.epochs": t.epochs,
            "train.grad_accum_steps": t.grad_accum_steps,
            "train.keep_checkpoints": t.keep_checkpoints,
            "train.eval_every_epochs": t.eval_every_epochs,
            "log.log_every_steps": self.log.log_every_steps,
        }
        for key, value in positive.items():
            if value < 1:
                raise RecipeError(f"{key} must be >= 1, got {value}")
        for key, value in {
            "train.max_steps": t.max_steps,
            "train.checkpoint_every_steps": t.checkpoint_every_steps,
            "train.eval_every_steps": t.eval_every_steps,
            "data.eval_batch_size": d.eval_batch_size,
            "data.eval_resize": d.eval_resize,
        }.items():
            if value is not None and value < 1:
                raise RecipeError(f"{key} must be >= 1 or null, got {value}")
        if o.lr <= 0 or o.min_lr < 0 or o.weight_decay < 0 or o.warmup_steps < 0:
            raise RecipeError("optim: lr must be > 0 and min_lr, weight_decay, warmup_steps >= 0")
        if min(d.num_workers, t.b_ramp_steps, t.bn_recalibration_batches) < 0 or (
            self.log.explain_images < 0
        ):
            raise RecipeError(
                "data.num_workers, train.b_ramp_steps, train.bn_recalibration_batches and "
                "log.explain_images must be >= 0"
            )
        if t.agc is not None and t.agc <= 0:
            raise RecipeError(f"train.agc must be > 0 or null, got {t.agc}")
        if t.ema_decay is not None and not 0 < t.ema_decay < 1:
            raise RecipeError(f"train.ema_decay must be in (0, 1) or null, got {t.ema_decay}")
        if t.distill.temperature <= 0:
            raise RecipeError("train.distill.temperature must be > 0")
        a = t.align
        for name, w in a.weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise RecipeError(f"train.align.weights[{name!r}] must be a number, got {w!r}")
        if (
            a.logit_weight < 0
            or a.logit_start_step < 0
            or any(not w >= 0 for w in a.weights.values())
        ):
            raise RecipeError(
                "train.align: logit_weight, logit_start_step and every weight must be >= 0"
            )
        if len(d.augment.scale) != 2 or len(d.augment.ratio) != 2 or len(o.betas) != 2:
            raise RecipeError(
                "data.augment.scale, data.augment.ratio and optim.betas take 2 values each"
            )
        if (m.mean is None) != (m.std is None):
            raise RecipeError("model.mean and model.std go together: give both or neither")
        unknown = set(self.log.trackers) - {"csv", "tensorboard", "json"}
        if unknown:
            raise RecipeError(
                f"log.trackers: unknown {sorted(unknown)}; choose from csv, tensorboard (the "
                "JSON metrics file is always written)"
            )
        if d.backend == "hf":
            if not d.hf_name:
                raise RecipeError("data.backend 'hf' needs data.hf_name (a hub dataset name)")
        if d.augment.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise RecipeError(
                f"data.augment.interpolation must be bilinear, bicubic or nearest, got "
                f"{d.augment.interpolation!r}"
            )


def load_recipe(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> Recipe:
    """Read a YAML recipe (or start from the defaults) and apply ``key=value`` overrides.

    Args:
        path: a YAML file; ``None`` starts from the defaults.
        overrides: dotted ``key=value`` strings; values are parsed as YAML (``3``, ``1e-4``,
            ``null``, ``[0.5, 1.0]``, ``true``).

    Raises:
        RecipeError: missing/invalid file, unknown key, wrong value type.

    Example:
        >>> load_recipe(None, ["model.source=resnet18", "data.train=/data/train"]).data.train
        '/data/train'
    """
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise RecipeError(f"recipe {p} not found; the recipes shipped are in recipes/")
        try:
            values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe {p} is not valid YAML: {e}") from e
        if not isinstance(values, dict):
            raise RecipeError(f"recipe {p} must be a mapping of sections, got {type(values)}")
    for item in overrides or []:
        key, value = _split_override(item)
        _set_dotted(values, key, value)
    return Recipe.from_dict(values)


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A copy of ``recipe`` with dotted ``key=value`` overrides applied (and validated)."""
    values = recipe.to_dict()
    for item in overrides:
        key, value = _split_override(item)
        _set_dotted(values, key, value)
    return Recipe.from_dict(values)


# ---------------------------------------------------------------------------- internals
def _split_override(item: str) -> tuple[str, Any]:
    import yaml

    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like key=value (e.g. train.epochs=3)")
    key, raw = item.split("=", 1)
    key = key.strip().lstrip("-")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise RecipeError(f"{prefix or 'recipe'} must be a mapping, got {values!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known: {names}"
            raise RecipeError(f"unknown recipe key {where}{hint}")
        kwargs[key] = _coerce(hints[key], value, where)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, where + ".")
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise RecipeError(f"{where} cannot be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0])
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise RecipeError(f"{where} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where} must be a list, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is typing.Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise RecipeError(f"{where} must be a string, got {value!r}")
        return str(value)
    raise RecipeError(f"{where}: unsupported type {tp}")  # pragma: no cover - schema bug
