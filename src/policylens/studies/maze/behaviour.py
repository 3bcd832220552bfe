"""What an agent does: episodes in any world, and success / path-efficiency / corner-bias figures.

Episodes are played by the rollout engine (:mod:`policylens.rollout.engine`). Policies are sampled
(not argmax), as in procgen practice: a memoryless greedy policy loops in a perfect maze. Each
environment slot contributes only its first episode, so short episodes are not over-counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from policylens.rollout import engine, stats


@dataclass
class Episode:
    """One finished episode with its maze labels where the world gives them."""

    ret: float
    length: int
    success: bool
    positions: list[tuple[int, int]] = field(default_factory=list)
    """Mouse cells from the start to the end (maze worlds)."""
    level_seed: int = -1
    shortest: int = -1
    """Shortest-path length to the cheese from the start."""
    cheese: tuple[int, int] = (-1, -1)
    corner: tuple[int, int] = (-1, -1)
    decision_square: tuple[int, int] = (-1, -1)

    @property
    def reached_corner(self) -> bool:
        return self.corner in self.positions

    @property
    def corner_first(self) -> bool:
        """The mouse reached the top-right corner before (or instead of) the cheese."""
        return self.cheese != self.corner and self.reached_corner

    def to_dict(self) -> dict[str, Any]:
        return {
            "return": self.ret,
            "length": self.length,
            "success": self.success,
            "positions": [list(p) for p in self.positions],
            "level_seed": self.level_seed,
            "shortest": self.shortest,
            "cheese": list(self.cheese),
            "corner": list(self.corner),
        }


MAZE_START = ("level_seed", "dist_to_cheese", "cheese_pos", "corner_pos", "decision_square")


def _cell(pos: Any) -> tuple[int, int]:
    """A maze label ``(row, col)`` (an array of two integers) as a tuple of ints."""
    row, col = pos
    return (int(row), int(col))


def _maze_episode(e: engine.Episode) -> Episode:
    """The engine's record with the maze labels unpacked (other worlds leave them at -1)."""
    start = e.start
    cell = lambda key: _cell(start[key]) if key in start else (-1, -1)  # noqa: E731
    return Episode(
        ret=e.ret,
        length=e.length,
        success=e.success,
        positions=[_cell(p) for p in e.trace.get("mouse_pos", [])],
        level_seed=int(start.get("level_seed", -1)),
        shortest=int(start.get("dist_to_cheese", -1)),
        cheese=cell("cheese_pos"),
        corner=cell("corner_pos"),
        decision_square=cell("decision_square"),
    )


def run_episodes(
    agent,
    episodes: int,
    env_id: str = "policylens/Maze-v0",
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 10_000,
    greedy: bool = False,
    fwd_hooks: list | None = None,
    max_envs: int = 256,
) -> list[Episode]:
    """Run ``episodes`` episodes (one per env slot, in waves of ``max_envs``), optionally hooked."""
    eps = engine.run_episodes(
        agent, episodes, env_id, env_kwargs, seed=seed, policy=engine.policy_for(agent, greedy),
        fwd_hooks=fwd_hooks or (), max_envs=max_envs, start_labels=MAZE_START,
        trace_labels=("mouse_pos",),
    )  # fmt: skip
    return [_maze_episode(e) for e in eps]


def run_episodes_from_states(
    agent,
    states: list,
    config,
    fwd_hooks: list | None = None,
    seed: int = 10_000,
    greedy: bool = False,
) -> list[Episode]:
    """One episode from each given maze state (same mazes for every condition of an experiment).

    Batch row ``i`` of every hooked activation belongs to ``states[i]``, so per-maze
    interventions can be passed as batched tensors.
    """
    from policylens.envs.maze import MazeVecEnv

    envs = MazeVecEnv(num_envs=len(states), **config.__dict__)
    envs.reset(seed=seed)
    for i, s in enumerate(states):
        envs.set_state(i, s)
    eps = engine.first_episodes(
        agent, envs, envs.batch.obs.copy(), envs.batch.infos(), engine.policy_for(agent, greedy),
        torch.Generator().manual_seed(seed), fwd_hooks or (), start_labels=MAZE_START,
        trace_labels=("mouse_pos",),
    )  # fmt: skip
    return [_maze_episode(e) for e in eps]


def summarize(episodes: list[Episode]) -> dict[str, Any]:
    """Success, return, length and (mazes) path efficiency and corner bias, with 95% intervals."""
    out: dict[str, Any] = {
        "episodes": len(episodes),
        "success": stats.proportion([e.success for e in episodes]),
        "return": stats.mean([e.ret for e in episodes]),
        "length": stats.mean([e.length for e in episodes]),
    }
    if episodes and episodes[0].shortest >= 0:
        lengths = np.array([e.length for e in episodes], dtype=float)
        shortest = np.array([e.shortest for e in episodes], dtype=float)
        out["shortest"] = stats.mean(shortest)
        out["path_ratio"] = float(lengths.mean() / max(shortest.mean(), 1e-9))
        wins = [e for e in episodes if e.success]
        out["path_ratio_successes"] = (
            float(
                np.mean([e.length for e in wins])
                / max(float(np.mean([e.shortest for e in wins])), 1e-9)
            )
            if wins
            else float("nan")
        )
        away = [e for e in episodes if e.cheese != e.corner]
        out["corner_first"] = stats.proportion([e.corner_first for e in away])
        # Mazes where the cheese is off the start->corner path: going to the corner is a choice.
        off_path = [e for e in away if e.decision_square != (-1, -1)]
        out["off_path"] = {
            "success": stats.proportion([e.success for e in off_path]),
            "corner_first": stats.proportion([e.corner_first for e in off_path]),
        }
    return out


def evaluate(
    agent,
    episodes: int = 500,
    env_id: str = "policylens/Maze-v0",
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 10_000,
    greedy: bool = False,
    fwd_hooks: list | None = None,
) -> dict[str, Any]:
    """Run and summarise ``episodes`` episodes of ``agent`` (see :func:`summarize`)."""
    eps = run_episodes(agent, episodes, env_id, env_kwargs, seed, greedy, fwd_hooks)
    return {"env_id": env_id, "env_kwargs": env_kwargs or {}, "greedy": greedy, **summarize(eps)}


def visit_counts(episodes: list[Episode], world_size: int) -> np.ndarray:
    """How often the mouse stood on each cell, summed over episodes (for heatmaps)."""
    counts = np.zeros((world_size, world_size))
    for e in episodes:
        for r, c in e.positions:
            counts[r, c] += 1
    return counts
