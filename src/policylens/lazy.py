"""Packages whose submodules load on first use, so ``import policylens`` stays fast and
``policylens.lenses.nmf`` (say) still works without importing it by hand (PEP 562)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from types import ModuleType


def lazy_submodules(
    package: str, path: Iterable[str]
) -> tuple[list[str], Callable[[str], ModuleType], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for the package ``package`` at ``path``."""
    names = sorted(m.name for m in pkgutil.iter_modules(path))

    def getattr_(name: str) -> ModuleType:
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return list(names)

    return names, getattr_, dir_
