"""The explorer's maze views that call the maze study: the vector field and the cheese vector.

Everything else the explorer knows about a world comes from :mod:`policylens.worlds`
(``worlds.of_run(run)``); these two compose the maze study's functions, which a world may not
import.
"""

from __future__ import annotations

import torch

from policylens.agents.agent import HookedAgent
from policylens.envs.maze import MazeState
from policylens.lenses.interventions import activation
from policylens.studies.maze.steering import without_cheese
from policylens.studies.maze.vector_fields import VectorField
from policylens.studies.maze.vector_fields import vector_field as maze_vector_field
from policylens.worlds.maze import MazeWorld


def vector_field(
    world: MazeWorld, agent: HookedAgent, state: MazeState, fwd_hooks: list | None = None
) -> VectorField:
    """The agent's action distribution on every free cell of ``state`` in the run's maze."""
    return maze_vector_field(agent, state, world.config, fwd_hooks)


def cheese_vector(
    world: MazeWorld, agent: HookedAgent, state: MazeState, hook: str
) -> torch.Tensor:
    """The cheese vector of this maze at ``hook`` (Mini, Turner et al.): the activation with
    the cheese minus without it, as the maze study computes it."""
    obs = world.observe(state)[None]
    return (
        activation(agent, obs, hook) - activation(agent, without_cheese(obs, world.config), hook)
    )[0]
