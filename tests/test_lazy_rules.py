"""The library rules (torchvision, timm) load on demand: a free import, and no rule lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_bcosify_loads_neither_timm_nor_torchvision():
    out = _python(
        """
        import sys
        import bcosify
        from bcosify.nn import BcosConv2d
        import bcosify.cli
        print(sorted(m for m in ("timm", "torchvision") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_the_cli_help_needs_no_torch():
    out = _python(
        """
        import contextlib, io, runpy, sys
        for argv in (["bcosify", "--help"], ["bcosify", "evaluate", "--help"]):
            sys.argv = argv
            with contextlib.redirect_stdout(io.StringIO()) as text:
                try:
                    runpy.run_module("bcosify", run_name="__main__")
                except SystemExit:
                    pass
            assert "usage: bcosify" in text.getvalue(), text.getvalue()[:200]
        print("torch" in sys.modules)
        """
    )
    assert out.strip() == "False"


def test_public_names_resolve_lazily_and_completely():
    import bcosify

    for name in bcosify.__all__:
        assert getattr(bcosify, name) is not None, name
    assert "convert" in dir(bcosify)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bcosify.nope  # noqa: B018


def test_timm_rules_load_at_conversion_when_timm_is_imported_later():
    # BatchNormAct2d subclasses nn.BatchNorm2d and overrides forward (norm + activation): without
    # its own rule the MRO lookup would convert it as a plain BatchNorm and drop its activation
    out = _python(
        """
        import torch, bcosify
        from torch import nn
        import timm.layers as tl
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3), tl.BatchNormAct2d(8), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3)).eval()
        c = bcosify.convert(m, bcosify.BcosConfig(b=1, keep_bias=True, activation="exact"),
                            mean=(0.5,) * 3, std=(0.5,) * 3)
        x = torch.rand(2, 3, 12, 12)
        err = (c(x) - m((x - 0.5) / 0.5)).abs().max().item()
        print(type(c.get_submodule("1")).__name__, err < 1e-5)
        """
    )
    assert out.split() == ["UncenteredBatchNormAct2d", "True"]


def test_a_user_rule_for_a_library_class_is_not_replaced_by_the_built_in_one():
    out = _python(
        """
        import bcosify, timm.layers as tl
        from bcosify.fx import registry as rules

        def mine(module, config):
            return rules.KEEP

        bcosify.register_module_rule(tl.LayerNorm2d, mine)  # before the timm rules are loaded
        print(rules.load_library_rules())
        print(rules.get_module_rule(tl.LayerNorm2d) is mine,
              rules.get_module_rule(tl.BatchNormAct2d) is not None)
        print(rules.load_library_rules())
        """
    )
    lines = out.strip().splitlines()
    assert "bcosify.fx.rules_timm" in lines[0]
    assert lines[1:] == ["True True", "[]"]


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_every_library_rule_module_is_registered(library):
    from bcosify.fx import registry as rules

    assert (library, f"bcosify.fx.rules_{library}") in rules._LIBRARY_RULES


def _fx_imports() -> dict[str, set[str]]:
    """bcosify.fx module -> the bcosify.fx modules it imports anywhere (also inside functions),
    except under ``if TYPE_CHECKING``."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "bcosify" / "fx"
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        name = "bcosify.fx" if path.stem == "__init__" else f"bcosify.fx.{path.stem}"
        tree = ast.parse(path.read_text())
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            deps |= {m for m in mods if m.startswith("bcosify.fx.") or m == "bcosify.fx"}
        graph[name] = deps - {name}
    return graph


def test_the_fx_modules_have_no_import_cycles():
    graph = _fx_imports()
    modules = [m for m in graph if m != "bcosify.fx"]  # the package imports its parts

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for dep in graph.get(start, ()):
            if dep == goal:
                return True
            if dep in graph and dep not in seen and dep != "bcosify.fx":
                seen.add(dep)
                if reaches(dep, goal, seen):
                    return True
        return False

    cycles = [m for m in modules if reaches(m, m, set())]
    assert cycles == [], f"import cycles through {cycles}"
