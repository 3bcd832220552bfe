"""policylens: mechanistic interpretability for reinforcement-learning agents.

The names a researcher needs are here: ``load_agent``, ``load_decision_transformer``,
``HookedAgent``, ``build_agent``, ``Run``, ``make``/``make_vec`` (the worlds) and the subpackages
``rollout``, ``lenses``, ``studies``, ``report``, ``train`` and ``agents``. Importing the package registers the worlds with Gymnasium;
everything that imports torch loads on first use, so ``import policylens`` and the CLI start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from policylens import envs
from policylens.envs import make, make_vec

__version__ = "0.1.0"

_LAZY_NAMES = {
    "HookedAgent": "policylens.agents",
    "build_agent": "policylens.agents",
    "load_agent": "policylens.agents",
    "load_decision_transformer": "policylens.train.dt",
    "Run": "policylens.runs",
}
"""Name -> the module it is read from on first use."""
_LAZY_PACKAGES = ("agents", "lenses", "report", "rollout", "studies", "train")
"""Subpackages imported on first attribute access."""

__all__ = [
    "HookedAgent",
    "Run",
    "__version__",
    "build_agent",
    "envs",
    "load_agent",
    "load_decision_transformer",
    "make",
    "make_vec",
    *_LAZY_PACKAGES,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    elif name in _LAZY_PACKAGES:
        value = importlib.import_module(f"policylens.{name}")
    else:
        raise AttributeError(f"module 'policylens' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
