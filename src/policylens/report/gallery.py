"""A gallery of maze levels with the shortest-path solver's route drawn on each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policylens.artifacts import write_png
from policylens.envs.maze import human_view
from policylens.studies.maze.gallery import Gallery


def render(gallery: Gallery, out: str | Path, cell_px: int = 24) -> Path:
    """Draw ``gallery``'s levels with their routes in a grid of up to six columns, as the PNG
    ``out``."""
    tiles = [
        human_view(state, cell_px=cell_px, trajectory=path)
        for state, path in zip(gallery.levels, gallery.paths, strict=True)
    ]
    n = len(tiles)
    cols = min(n, 6)
    rows = -(-n // cols)
    h, w, _ = tiles[0].shape
    gap = 4
    canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    write_png(out, canvas)
    return Path(out)
