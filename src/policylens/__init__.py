"""policylens: mechanistic interpretability for reinforcement-learning agents.

Importing the package registers the worlds with Gymnasium; the agent API (which imports torch)
loads on first use, so ``import policylens`` and the CLI start fast.
"""

from policylens import envs  # noqa: F401  (registers the worlds with Gymnasium)

__version__ = "0.1.0"
__all__ = ["HookedAgent", "build_agent", "load_agent", "envs"]


def __getattr__(name: str):
    if name in ("HookedAgent", "build_agent", "load_agent"):
        from policylens import agents

        return getattr(agents, name)
    raise AttributeError(f"module 'policylens' has no attribute {name!r}")
