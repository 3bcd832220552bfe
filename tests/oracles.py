"""The suite's one rule for optional oracles (peer libraries, browsers, envpool): a test that needs
one it cannot find is skipped on a laptop, and fails in CI (``CI`` set to anything) with the line
that installs it, so no oracle can silently drop out of CI."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

INSTALL = {
    "captum": "pip install -e '.[dev]'",
    "stable_baselines3": "pip install -e '.[sb3]'",
    "ray": "pip install -e '.[dev]'",
    "sae_lens": "pip install -e '.[dev]'",
    "transformer_lens": "pip install -e '.[dev]'",
    "tdhook": "pip install -e '.[dev]'",
    "huggingface_hub": "pip install -e '.[dev]'",
    "playwright": "pip install -e '.[dev]'",
    "envpool": "pip install -e '.[procgen]' and apt-get install -y libqt5gui5",
}
"""Top-level module -> how to install it (every oracle the suite uses)."""


def missing(message: str) -> None:
    """Skip the calling test, or fail it when running in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must have every oracle: {message}")
    pytest.skip(message)


def require(module: str) -> ModuleType:
    """Import ``module`` (e.g. ``"captum.attr"``), or :func:`missing` with its install line."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing(f"{module} is not importable ({e}); install it with: {INSTALL[top]}")
        raise  # unreachable: missing() raises
