"""Understanding RL Vision (Hilton et al. 2020) on the hazard world: named features, editing, failures."""

from policylens.lazy import lazy_submodules

__all__, __getattr__, __dir__ = lazy_submodules(__name__, __path__)
