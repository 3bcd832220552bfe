"""Goal misgeneralization in the maze (Langosco et al. 2022; Mini, Turner et al. 2023)."""

from policylens.lazy import lazy_submodules

__all__, __getattr__, __dir__ = lazy_submodules(__name__, __path__)
