"""Understanding RL Vision (Hilton et al. 2020) on the hazard world: named features, editing, failures."""

import importlib
import pkgutil
from types import ModuleType

__all__ = sorted(m.name for m in pkgutil.iter_modules(__path__))


def __getattr__(name: str) -> ModuleType:
    """Submodules load on first use, so ``policylens.studies.hazards.<name>`` works after ``import policylens``."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
