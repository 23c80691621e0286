"""Run directories and checkpoints of :func:`bcosify.train.finetune`.

A checkpoint is Accelerate's ``save_state`` (model, optimiser, scheduler, EMA, RNG streams,
sampler) plus the loop's :class:`TrainState`, written to a temporary directory and renamed, so a
run killed at any moment leaves only complete checkpoints; :func:`latest_checkpoint` finds the
newest. The output directory is never deleted unless it holds a bcosify run and ``overwrite`` is
given.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bcosify.errors import BcosifyError

__all__ = [
    "CHECKPOINTS",
    "RECIPE_NAME",
    "STATE_NAME",
    "TrainState",
    "TrainingError",
    "check_output_dir",
    "keep_rng",
    "latest_checkpoint",
    "load_checkpoint",
    "prepare_output_dir",
    "rng_state",
    "save_checkpoint",
    "write_json",
]

RECIPE_NAME = "recipe.yaml"
STATE_NAME = "trainer_state.json"
CHECKPOINTS = "checkpoints"


class TrainingError(BcosifyError):
    """The run cannot go on (non-finite loss, nothing to resume, output directory in the way)."""


@dataclass
class TrainState:
    """Where a run is: the epoch, batches done in it, optimiser steps done in all."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "history": self.history,
        }


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run (one with its trainer state written), or None."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith("step_") and (p / STATE_NAME).exists()]
    return max(done, key=lambda p: int(p.name[5:]), default=None)


def check_output_dir(out: Path, resume: bool, overwrite: bool) -> tuple[Path | None, bool]:
    """Refuse an output directory in the way (nothing is written yet).

    Returns:
        (the checkpoint to resume from or None, whether ``out`` exists with content).
    """
    exists = out.exists() and (not out.is_dir() or any(out.iterdir()))
    checkpoint = None
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise TrainingError(
                f"--resume: {out} holds no complete checkpoint to resume from; start the run "
                "without --resume"
            )
    elif exists:
        if not overwrite:
            raise TrainingError(
                f"the output directory {out} already exists and is not empty; pass --overwrite "
                "to replace it, --resume to continue its run, or choose another output "
                "(--output DIR)"
            )
        if not out.is_dir() or not (out / RECIPE_NAME).exists():
            raise TrainingError(
                f"--overwrite: {out} does not look like a bcosify run (no {RECIPE_NAME}); "
                "refusing to delete it, choose another output"
            )
    return checkpoint, exists


def prepare_output_dir(
    acc, out: Path, recipe_yaml: str, checkpoint: Path | None, existed: bool, overwrite: bool
) -> None:
    """Write the output directory and its recipe, once the recipe, the data and the model are
    known good (the main process writes, every process waits)."""
    acc.wait_for_everyone()
    if acc.is_main_process:
        if existed and overwrite:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if checkpoint is not None and (out / RECIPE_NAME).exists():
            previous = (out / RECIPE_NAME).read_text(encoding="utf-8")
            if previous != recipe_yaml:
                (out / "recipe.previous.yaml").write_text(previous, encoding="utf-8")
                acc.print(
                    "note: the recipe differs from the one the run started with; the old one is "
                    "kept as recipe.previous.yaml"
                )
        (out / RECIPE_NAME).write_text(recipe_yaml, encoding="utf-8")
    acc.wait_for_everyone()


def save_checkpoint(acc, out: Path, state: TrainState, keep: int) -> Path:
    """Accelerate's state and ``state`` as ``out/checkpoints/step_<global step>``, written to a
    temporary directory and renamed; only the newest ``keep`` checkpoints are kept."""
    root = out / CHECKPOINTS
    final = root / f"step_{state.global_step:08d}"
    tmp = root / f".tmp-{final.name}"
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json(tmp / STATE_NAME, state.to_dict())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        done = sorted(
            (p for p in root.iterdir() if p.name.startswith("step_")),
            key=lambda p: int(p.name[5:]),
        )
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_checkpoint(acc, checkpoint: Path) -> TrainState:
    """Restore Accelerate's state from ``checkpoint``; the loop's state saved with it."""
    acc.load_state(str(checkpoint))
    saved = json.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8"))
    return TrainState(**saved)


def rng_state() -> tuple:
    """The global RNG streams (Python, NumPy, torch CPU and CUDA)."""
    import numpy as np

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    import numpy as np

    py, np_state, cpu, cuda = state
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def keep_rng(loader, state: tuple):
    """Iterate ``loader`` but undo the global-RNG draws of starting it.

    Starting a DataLoader iterator draws its worker base seed from the global RNG. The
    uninterrupted run made that draw at the start of the epoch, before the checkpoint that a
    resumed run restores, so the resumed run must not make it again, or dropout and mixup would
    draw different numbers from then on.
    """
    it = iter(loader)
    first = next(it, None)
    _set_rng_state(state)
    if first is None:
        return
    yield first
    yield from it


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON through a temporary file and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
