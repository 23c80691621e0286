"""scripts/mutation_probe.py: its planted bugs still apply to today's source, and its runner
counts a planted bug as caught (end to end on one mutation)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutation_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("bcosify_mutation_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_every_planted_bug_applies_once(probe):
    assert probe.check(probe.MUTATIONS) == []
    assert len(probe.MUTATIONS) >= 16
    assert {m.area for m in probe.MUTATIONS} >= {"nn", "fx", "explain", "io", "train"}
    assert len({m.name for m in probe.MUTATIONS}) == len(probe.MUTATIONS)


def test_an_edit_that_no_longer_applies_is_reported(probe):
    stale = probe.Mutation("io: gone", "bcosify/io.py", (("no such text", "x"),), ("tests",))
    (problem,) = probe.check([stale])
    assert "occurs 0 times" in problem


def test_one_mutation_end_to_end(probe, tmp_path):
    out = tmp_path / "m.json"
    rc = probe.main(["--only", "explain: the model's training flag", "--json", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0 and report["caught"] == report["total"] == 1
    (result,) = report["results"]
    assert result["status"] == "caught" and "failed" in result["pytest"]
    # the planted edit was made in the scratch copy only
    assert "model.train(was_training)" in (SCRIPT.parents[1] / "bcosify/explain.py").read_text()
