"""Maze observations with their ground truth: the states behind them, object masks (wall, path,
mouse, cheese, corner) and position categories, for attribution, NMF labels and clustering."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from policylens.envs.maze import (
    CHEESE,
    MOUSE,
    WALL,
    MazeBatch,
    MazeConfig,
    MazeState,
    generate_level,
)

CATEGORIES = ("wall", "path", "mouse", "cheese")
"""Ground-truth categories of a maze position, in label order."""


@dataclass
class MazeDataset:
    """Maze observations with the states they show (the ground truth for labels and masks)."""

    obs: np.ndarray  # (N, *obs_shape) uint8
    states: list[MazeState]
    config: MazeConfig

    def __len__(self) -> int:
        return len(self.states)


def maze_dataset(
    config: MazeConfig, n: int, seed: int = 0, agent: Any = None, cheese_anywhere: bool = True
) -> MazeDataset:
    """``n`` maze observations: mouse positions along the agent's own (sampled) trajectories when
    ``agent`` is given, else uniformly random free cells; cheese anywhere by default."""
    if n < 1:
        raise ValueError(f"n must be >= 1 observations, got {n}.")
    cfg = MazeConfig(**{**config.__dict__, "cheese_region": None}) if cheese_anywhere else config
    rng = np.random.default_rng(seed)
    levels = [generate_level(seed * 7919 + i, cfg) for i in range(max(1, -(-n // 6)))]
    states: list[MazeState] = []
    if agent is not None:
        from policylens.studies.maze.behaviour import run_episodes_from_states

        limited = MazeConfig(**{**cfg.__dict__, "max_steps": min(cfg.max_steps, 60)})
        for level, ep in zip(
            levels, run_episodes_from_states(agent, levels, limited, seed=seed), strict=True
        ):
            cells = [p for p in dict.fromkeys(ep.positions) if p != level.cheese]
            for j in rng.permutation(len(cells))[:6]:
                states.append(level.copy(mouse=cells[j]))
    while len(states) < n:
        level = levels[len(states) % len(levels)]
        cells = [p for p in level.free_cells() if p != level.cheese]
        states.append(level.copy(mouse=cells[int(rng.integers(len(cells)))]))
    states = [states[i] for i in rng.permutation(len(states))[:n]]
    batch = MazeBatch(config, 1)
    return MazeDataset(np.stack([batch.observe(s) for s in states]), states, config)


def object_masks(
    states: Sequence[MazeState] | None = None, obs: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Ground-truth masks ``name -> bool (N, world, world)``: wall, path, mouse, cheese, corner.

    From maze states, or from grid observations ``(N, 3, W, W)`` (the corner is then the top-right
    cell of the maze, found from the first row with a free cell).
    """
    if states is not None:
        walls = np.stack([s.walls for s in states])
        n, w = walls.shape[0], walls.shape[1]
        mouse, cheese, corner = (np.zeros_like(walls) for _ in range(3))
        for i, s in enumerate(states):
            mouse[i][s.mouse] = cheese[i][s.cheese] = corner[i][s.corner] = True
    elif obs is not None and obs.ndim == 4 and obs.shape[1] == 3 and obs.shape[2] == obs.shape[3]:
        walls, mouse, cheese = obs[:, WALL] > 0, obs[:, MOUSE] > 0, obs[:, CHEESE] > 0
        n, w = walls.shape[0], walls.shape[1]
        corner = np.zeros_like(walls)
        for i in range(n):
            free_rows = np.nonzero((~walls[i]).any(1))[0]
            if len(free_rows):
                size = w - int(free_rows[0])
                corner[i, w - size, size - 1] = True
    else:
        raise ValueError(
            "object_masks needs maze states or grid observations (N, 3, W, W); pass the states "
            "of image observations."
        )
    path = ~walls & ~mouse & ~cheese
    return {"wall": walls, "path": path, "mouse": mouse, "cheese": cheese, "corner": corner}


def resize_masks(masks: dict[str, np.ndarray], hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Masks at a layer's resolution: a layer cell is on if the mask covers at least half of it
    (any part, for the one-cell objects mouse, cheese and corner)."""
    out = {}
    for name, m in masks.items():
        if m.shape[1:] == tuple(hw):
            out[name] = m
            continue
        frac = F.adaptive_avg_pool2d(torch.as_tensor(m, dtype=torch.float32)[:, None], hw)[:, 0]
        small = name in ("mouse", "cheese", "corner")
        out[name] = (frac > 0).numpy() if small else (frac >= 0.5).numpy()
    return out


def categories(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Category index per position ``(N, h, w)`` (:data:`CATEGORIES`; cheese > mouse > wall > path)."""
    cat = np.full(masks["wall"].shape, CATEGORIES.index("path"), dtype=np.int64)
    for name in ("wall", "mouse", "cheese"):
        cat[masks[name]] = CATEGORIES.index(name)
    return cat
