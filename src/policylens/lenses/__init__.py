"""Generic, world-agnostic analyses: each takes an agent and data and returns data."""

from policylens.lazy import lazy_submodules

__all__, __getattr__, __dir__ = lazy_submodules(__name__, __path__)
