"""Worlds of policylens, registered with Gymnasium on import.

``WORLDS`` maps each registered id to a one-line description; ``policylens envs`` prints it.
"""

from __future__ import annotations

import gymnasium as gym

from policylens.envs.maze import MazeConfig, MazeEnv, MazeSolver, MazeState, MazeVecEnv
from policylens.envs.procgen import procgen_worlds
from policylens.errors import check_known

WORLDS: dict[str, str] = {}


def register_world(env_id: str, description: str, **kwargs) -> None:
    """Register a world with Gymnasium (idempotent) and list it in ``WORLDS``."""
    WORLDS[env_id] = description
    if env_id not in gym.registry:
        gym.register(env_id, **kwargs)


register_world(
    "policylens/Maze-v0",
    "procgen-style maze: perfect mazes, cheese in a top-right region or anywhere (goal misgeneralization)",
    entry_point="policylens.envs.maze:MazeEnv",
    vector_entry_point="policylens.envs.maze:MazeVecEnv",
)

register_world(
    "policylens/Hazards-v0",
    "CoinRun-like platformer: saws, patrolling enemies, lava, chasms; ground truth (positions, "
    "occlusion, masks, cause of death) in info (Understanding RL Vision)",
    entry_point="policylens.envs.hazards:HazardsEnv",
    vector_entry_point="policylens.envs.hazards:HazardsVecEnv",
)

register_world(
    "policylens/RookEndgame-v0",
    "king+rook vs king checkmate on 5x5 (DuPlessie's SAE-on-DQN study; rules='duplessie' for his "
    "encoding, actions and rules): one-hot 75-d obs, 24 actions, chess concept labels, exact "
    "tablebase",
    entry_point="policylens.envs.chess:RookEndgameEnv",
)

register_world(
    "policylens/LunarLander-v0",
    "Gymnasium LunarLander-v3 (Box2D) with its fuel term split out; reward_variant: no_fuel, fuel, "
    "only_fuel, scaled_fuel, only_scaled_fuel (isolating updates)",
    entry_point="policylens.envs.lunar:lunar_entry_point",
    max_episode_steps=1000,
    reward_threshold=200,
)

register_world(
    "policylens/MiniGrid-DynamicObstacles-8x8-v0",
    "minigrid's Dynamic-Obstacles 8x8 (Gymnasium's minigrid): 7x7x3 partial view, 3 actions, "
    "agent/goal/obstacle positions in info (decision transformers, Bloom et al.)",
    entry_point="policylens.envs.minigrid:DynamicObstaclesEnv",
)

register_world(
    "policylens/MiniGrid-MemoryS7-v0",
    "minigrid's MemoryS7: 7x7x3 partial view, 3 actions, the instruction (key or ball) and the "
    "correct side in info (decision transformers)",
    entry_point="policylens.envs.minigrid:MemoryEnv",
)

for world in procgen_worlds():  # policylens/procgen-<Game>; envpool is needed only to make one
    register_world(**world)


def make(env_id: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` with a clear error naming the registered worlds for an unknown id."""
    if env_id not in gym.registry:
        check_known([env_id], WORLDS, "world")
    return gym.make(env_id, **kwargs)


def make_vec(env_id: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    """A vector env with same-step autoreset: the world's own batched env where it has one."""
    make(env_id, **kwargs).close()  # validates the id and options with clear errors
    spec = gym.spec(env_id)
    if spec.vector_entry_point is not None:
        return gym.make_vec(env_id, num_envs, **kwargs)
    return gym.make_vec(
        env_id,
        num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        **kwargs,
    )


__all__ = [
    "WORLDS",
    "MazeConfig",
    "MazeEnv",
    "MazeSolver",
    "MazeState",
    "MazeVecEnv",
    "make",
    "make_vec",
    "register_world",
]
