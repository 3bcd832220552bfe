"""One module or package per research line, composing lenses, training and rollouts."""

from policylens.lazy import lazy_submodules

__all__, __getattr__, __dir__ = lazy_submodules(__name__, __path__)
