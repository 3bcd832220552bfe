"""The bounds on every trainer's sizes, and how a step count becomes whole units of training.

A size past its bound is refused in one sentence naming the bound, before any work: a typo such
as ``--steps 10**12`` must not start weeks of training or allocate more memory than exists.
Trainers train in whole units (a PPO rollout of ``num_envs x num_steps`` steps, a DQN vector
step of ``num_envs``): a step count that is not a multiple is rounded UP, the run's config.json
records the steps actually trained, and the commands say so.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

MAX_STEPS = 10_000_000_000
"""The most environment steps a training takes (weeks of CPU at policylens's speed)."""
MAX_ENVS = 4096
"""The most environments stepped together."""
MAX_ROLLOUT = 65_536
"""The most steps per environment in one PPO rollout."""
MAX_BATCH = 4_194_304
"""The most transitions held in one PPO rollout or sampled in one gradient step."""
MAX_BUFFER = 100_000_000
"""The most transitions a DQN replay buffer holds."""
MAX_EPOCHS = 1000
"""The most passes over a rollout, minibatches per pass, or steps summed (n-step)."""
MAX_CHECKPOINTS = 100_000
"""The most checkpoints a run saves."""


def type_problems(config: Any) -> list[str]:
    """Sentences for a config dataclass's ``int`` fields holding no integer (a bool is none) and
    its ``float`` fields holding no finite number: every trainer checks types here, first."""
    problems = []
    for f in fields(config):
        value = getattr(config, f.name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if f.type == "int" and not (number and isinstance(value, int)):
            problems.append(f"{f.name} must be an integer, got {value!r}")
        if f.type == "float" and not (number and math.isfinite(value)):
            problems.append(f"{f.name} must be a finite number, got {value!r}")
    return problems


def bound_problems(config: Any, bounds: dict[str, int]) -> list[str]:
    """Sentences for the fields of ``config`` above their bound (``{field: most}``)."""
    problems = []
    for name, most in bounds.items():
        value = getattr(config, name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > most:
            problems.append(f"{name} {value:,} is above the bound of {most:,}")
    return problems


def whole_units(total: int, unit: int) -> int:
    """``total`` steps rounded up to a multiple of ``unit`` (the steps a trainer trains)."""
    return math.ceil(total / unit) * unit


def rounding_note(requested: int, unit: int, what: str, flag: str = "--steps") -> str | None:
    """A sentence saying ``requested`` steps are trained as more (None when a whole number)."""
    trained = whole_units(requested, unit)
    if trained == requested:
        return None
    return (
        f"{flag} {requested:,} is not a whole number of {what} ({unit:,} steps each); training "
        f"{trained:,} steps (recorded in config.json); pass a multiple of {unit:,} to train "
        "exactly that many"
    )
