"""Smoke test of scripts/recovery_variants.py (one epoch, two variants)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "recovery_variants.py"


def _load():
    spec = importlib.util.spec_from_file_location("recovery_variants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_variants_write_results(tmp_path):
    script = _load()
    md = tmp_path / "table.md"
    rc = script.main(
        [
            "--epochs",
            "1",
            "--only",
            "demo,relu-removed",
            "--out",
            str(tmp_path / "rv"),
            "--markdown",
            str(md),
        ]
    )
    assert rc == 0
    results = json.loads((tmp_path / "rv" / "results.json").read_text())
    assert list(results["variants"]) == ["demo", "relu-removed"]
    assert results["settings"]["steps"] == 42
    for r in results["variants"].values():
        assert 0 <= r["accuracy"] <= 100 and Path(r["runs"][0]["curves"]).is_file()
    # the conversion options reached the runs
    for name, activation in (("demo", "keep"), ("relu-removed", "remove")):
        saved = json.loads(
            (tmp_path / "rv" / f"{name}-seed0" / "model" / "config.json").read_text()
        )
        assert saved["config"]["activation"] == activation
    assert "`relu-removed`" in md.read_text()


def test_unknown_variant_is_an_error():
    with pytest.raises(SystemExit):
        _load().main(["--only", "nope"])
