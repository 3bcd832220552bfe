"""Vector fields: the policy's move probabilities at every free cell of a maze.

The arrow at a cell is the expected move (right minus left, up minus down) of the policy with the
mouse placed there; the difference of two fields shows what an intervention or a second agent
changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from policylens.agents.agent import HookedAgent
from policylens.envs.maze import (
    PROCGEN_TO_MOVE,
    MazeConfig,
    MazeState,
    observations_at_all_positions,
)


@dataclass
class VectorField:
    cells: list[tuple[int, int]]
    probs: np.ndarray
    """(cells, 4): probability of moving up, down, left, right at each cell."""

    @property
    def arrows(self) -> np.ndarray:
        """(cells, 2): expected displacement (d_col, d_row_up) at each cell, for plotting."""
        p = self.probs
        return np.stack([p[:, 3] - p[:, 2], p[:, 0] - p[:, 1]], axis=1)

    def __sub__(self, other: VectorField) -> VectorField:
        if self.cells != other.cells:
            raise ValueError(
                "vector fields of different mazes cannot be subtracted; use the same state"
            )
        return VectorField(self.cells, self.probs - other.probs)


def move_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Action logits (batch, 4 or 15) to probabilities of the four moves (batch, 4)."""
    p = torch.softmax(logits.float(), -1).cpu().numpy()
    if p.shape[1] == 4:
        return p
    if p.shape[1] != 15:
        raise ValueError(f"expected 4 or 15 maze actions, got {p.shape[1]}")
    moves = np.zeros((p.shape[0], 4))
    for action, move in enumerate(PROCGEN_TO_MOVE):
        if move < 4:
            moves[:, move] += p[:, action]
    return moves  # no-op actions leave the sum below 1: the mouse stays put with that probability


def vector_field(
    agent: HookedAgent, state: MazeState, config: MazeConfig, fwd_hooks: list | None = None
) -> VectorField:
    """The policy's move probabilities with the mouse on each free cell of ``state``."""
    obs, cells = observations_at_all_positions(config, state)
    with torch.no_grad():
        logits, _ = agent.run_with_hooks(obs, fwd_hooks=fwd_hooks or [])
    return VectorField(cells, move_probabilities(logits))
