"""policylens: mechanistic interpretability for reinforcement-learning agents."""

from policylens import envs  # noqa: F401  (registers the worlds with Gymnasium)

__version__ = "0.1.0"
