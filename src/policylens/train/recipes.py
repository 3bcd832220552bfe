"""Tested training recipes: the settings that reach the targets in BENCHMARKS.md on 2 CPU cores."""

from __future__ import annotations

from policylens.envs.maze import MazeConfig
from policylens.train.ppo import PPOConfig

MAZE_STEPS = 3_000_000
"""Default training length of the maze recipe (see BENCHMARKS.md for the learning curve)."""


def maze_recipe(
    cheese_region: int | None = 1,
    num_levels: int = 0,
    world_size: int | None = None,
    total_steps: int | None = None,
    seed: int = 0,
    arch: str | None = None,
) -> PPOConfig:
    """PPO on the maze world; defaults are the goal-misgeneralization training setting."""
    env_kwargs: dict = {"cheese_region": cheese_region, "num_levels": num_levels, "max_steps": 100}
    if world_size is not None:
        env_kwargs["world_size"] = world_size
        env_kwargs["maze_sizes"] = (min(5, world_size), world_size)
    MazeConfig.from_kwargs(env_kwargs)  # fail early, with the maze's own message
    return PPOConfig(
        env_id="policylens/Maze-v0",
        env_kwargs=env_kwargs,
        arch=arch or "maze_cnn",
        total_steps=total_steps or MAZE_STEPS,
        seed=seed,
    )
