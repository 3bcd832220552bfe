"""The ``policylens`` command line: the framework's app with every area's commands registered.

Each command module registers its commands on :data:`~policylens.commands.framework.app` when
imported; the list below is the whole CLI, in the order ``policylens --help`` shows it.
"""

from __future__ import annotations

from policylens.commands import (  # noqa: F401  (imported to register their commands)
    attribution,
    chess,
    demo,
    dt,
    explore,
    hazards,
    maze,
    probes,
    rl_vision,
    runs,
    sae,
    similarity,
    sweep,
    updates,
    zoo,
)
from policylens.commands.framework import app

__all__ = ["app", "main"]


def main() -> None:
    from policylens.agents.hooks import retain_freed_memory

    retain_freed_memory()  # cached forwards stop paying page faults (see bench/bench_hooks.py)
    app()


if __name__ == "__main__":
    main()
