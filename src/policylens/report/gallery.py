"""A gallery of maze levels with the shortest-path solver's route drawn on each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policylens.artifacts import write_png
from policylens.envs.maze import MazeConfig, MazeSolver, generate_level, human_view


def maze_gallery(
    out: str | Path, config: MazeConfig | None = None, n: int = 12, seed: int = 0, cell_px: int = 24
) -> dict:
    """Render ``n`` levels (seeds ``seed..seed+n-1``) in a grid PNG with solver paths; return stats."""
    config = config or MazeConfig()
    solver = MazeSolver()
    tiles, lengths, sizes = [], [], []
    for level_seed in range(seed, seed + n):
        state = generate_level(level_seed, config)
        path = solver.solve(state)
        lengths.append(len(path) - 1)
        sizes.append(state.maze_size)
        tiles.append(human_view(state, cell_px=cell_px, trajectory=path))
    cols = min(n, 6)
    rows = -(-n // cols)
    h, w, _ = tiles[0].shape
    gap = 4
    canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    write_png(out, canvas)
    return {
        "path": str(out),
        "levels": n,
        "maze_sizes": sizes,
        "shortest_path_lengths": lengths,
        "mean_shortest_path": float(np.mean(lengths)),
    }
