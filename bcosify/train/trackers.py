"""A CSV tracker for Accelerate (TensorBoard comes with Accelerate itself)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process

__all__ = ["CSVTracker"]


class CSVTracker(GeneralTracker):
    """Appends every ``accelerator.log`` call as a row of ``<logging_dir>/metrics.csv``.

    Columns are the union of all logged keys (the file is rewritten when a new key appears), plus
    ``step``. Written by the main process only.
    """

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike[str]):
        # No @on_main_process here: it would set up Accelerate's process state before the
        # Accelerator that uses this tracker, with the wrong options.
        super().__init__()
        self.path = Path(logging_dir) / "metrics.csv"
        self.rows: list[dict] = []

    @on_main_process
    def start(self):
        # Called by init_trackers, after the output directory was checked.
        if self.path.exists():  # a resumed run keeps its history
            with open(self.path, newline="", encoding="utf-8") as f:
                self.rows = list(csv.DictReader(f))

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict):
        pass

    @on_main_process
    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run logs those steps again)."""
        self.rows = [r for r in self.rows if r.get("step") in (None, "") or int(r["step"]) <= step]
        self._write()

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        row = {"step": step, **{k: v for k, v in values.items() if isinstance(v, (int, float))}}
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)
