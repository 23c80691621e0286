"""Public names that load on first use (PEP 562), for the package ``__init__`` files: importing
the package then costs nothing, and a name costs its module's import when it is first used."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str], *, subpackages: bool = False
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the module ``package``.

    Args:
        package: the module's ``__name__``.
        exports: public name -> the module that defines it.
        subpackages: also resolve ``package.<name>`` submodules not imported yet
            (``bcosify.nn``); a submodule that exists but fails to import raises its own error.
    """

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            if subpackages:
                try:
                    return importlib.import_module(f"{package}.{name}")
                except ModuleNotFoundError as e:
                    if e.name != f"{package}.{name}":
                        raise  # the subpackage exists but needs something missing: say what
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # resolved once
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
