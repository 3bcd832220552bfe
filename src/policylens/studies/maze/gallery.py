"""Maze levels solved by the shortest-path solver: the gallery's levels and routes, and a check
that the solver, stepping through the batched env, is optimal on every level it plays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from policylens.envs.maze import MazeConfig, MazeSolver, MazeState, MazeVecEnv, generate_level


@dataclass(frozen=True)
class GalleryOptions:
    """Which levels :func:`run` solves."""

    n: int = 12
    """Number of levels (seeds ``seed`` to ``seed + n - 1``)."""
    seed: int = 0
    """First level seed."""
    world_size: int = 9
    """World side in cells (odd); mazes of 5 cells up to the world's side."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1 levels, got {self.n}.")

    @property
    def config(self) -> MazeConfig:
        return MazeConfig(world_size=self.world_size, maze_sizes=(5, self.world_size))


@dataclass(frozen=True)
class Gallery:
    """Levels with the solver's route on each (from the start to the cheese)."""

    levels: list[MazeState]
    paths: list[list[tuple[int, int]]]

    def to_json(self) -> dict[str, Any]:
        lengths = [len(p) - 1 for p in self.paths]
        return {
            "levels": len(self.levels),
            "maze_sizes": [s.maze_size for s in self.levels],
            "shortest_path_lengths": lengths,
            "mean_shortest_path": float(np.mean(lengths)),
        }


def run(options: GalleryOptions) -> Gallery:
    """The levels of ``options`` and the solver's shortest route through each."""
    config, solver = options.config, MazeSolver()
    levels = [generate_level(s, config) for s in range(options.seed, options.seed + options.n)]
    return Gallery(levels, [solver.solve(s) for s in levels])


@dataclass(frozen=True)
class SolverCheck:
    """How the solver did playing levels through the batched env."""

    episodes: int
    mean_length: float
    optimal: bool
    """Every level ended at the cheese in exactly its shortest-path length."""

    def to_json(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "solved": self.episodes,
                "mean_length": self.mean_length, "optimal": self.optimal}  # fmt: skip


def solve_levels(config: MazeConfig, episodes: int, seed: int) -> SolverCheck:
    """Run the BFS solver through the batched env for ``episodes`` levels and check it is
    optimal on every one."""
    env = MazeVecEnv(num_envs=1, **config.__dict__)
    env.reset(seed=seed)
    solver = MazeSolver(config.procgen_actions)
    lengths, optimal = [], True
    for _ in range(episodes):
        shortest = len(solver.solve(env.get_state(0))) - 1
        steps = 0
        while True:
            _, _, terminated, truncated, _ = env.step([solver.act(env.get_state(0))])
            steps += 1
            if terminated[0] or truncated[0]:
                break
        lengths.append(steps)
        optimal &= bool(terminated[0]) and steps == shortest
    return SolverCheck(episodes, sum(lengths) / len(lengths), optimal)
