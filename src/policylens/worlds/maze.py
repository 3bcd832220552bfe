"""The maze world (goal misgeneralization): its recipe, its ground truth (object masks, position
categories, the states behind observations), episodes played from given states, and the world
the explorer, probes and sweeps look up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from policylens.agents.agent import HookedAgent
from policylens.envs.maze import (
    ACTION_NAMES,
    CHEESE,
    MOUSE,
    WALL,
    MazeBatch,
    MazeConfig,
    MazeState,
    MazeVecEnv,
    generate_level,
    human_view,
)
from policylens.lenses.masks import resize_masks
from policylens.rollout import engine
from policylens.runs import Run
from policylens.train.ppo import PPOConfig
from policylens.worlds.base import Dataset, SharedUniforms, World, on_rows

ENV_ID = "policylens/Maze-v0"
ONE_CELL = ("mouse", "cheese", "corner")
"""Masks of one-cell objects: a layer cell holds one where any part of it is covered."""

MAZE_STEPS = 1_500_000
"""Default training length of the maze recipe (see BENCHMARKS.md for the learning curve)."""


@dataclass(frozen=True)
class MazeRecipe:
    """PPO on the maze world; defaults are the goal-misgeneralization training setting.

    ``precision`` as :attr:`PPOConfig.precision` (``auto``: bf16 only where the CPU has it).
    ``num_envs`` x ``num_steps`` is one rollout; smaller ones make tiny runs (tests, benchmarks).
    """

    cheese_region: int | None = 1
    num_levels: int = 0
    world_size: int | None = None
    total_steps: int | None = None
    seed: int = 0
    arch: str | None = None
    precision: str = "auto"
    num_envs: int = 64
    num_steps: int = 64

    def __post_init__(self) -> None:
        self.config()  # refuse bad settings now, in the world's own words

    def config(self) -> PPOConfig:
        """The trainer config of these settings."""
        env_kwargs: dict = {
            "cheese_region": self.cheese_region,
            "num_levels": self.num_levels,
            "max_steps": 100,
        }
        if self.world_size is not None:
            env_kwargs["world_size"] = self.world_size
            env_kwargs["maze_sizes"] = (min(5, self.world_size), self.world_size)
        MazeConfig.from_kwargs(env_kwargs)  # fail early, with the maze's own message
        return PPOConfig(
            env_id=ENV_ID,
            env_kwargs=env_kwargs,
            arch=self.arch or "maze_cnn",
            total_steps=MAZE_STEPS if self.total_steps is None else self.total_steps,
            num_envs=self.num_envs,
            num_steps=self.num_steps,
            # A constant learning rate: annealing to zero over 1.5M steps stalled at 90% success and
            # 1.6x the shortest path, while 1e-3 met both targets by 0.7M (BENCHMARKS.md).
            anneal_lr=False,
            seed=self.seed,
            precision=self.precision,
        )


@dataclass
class MazeEpisode:
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


def maze_episode(e: engine.Episode) -> MazeEpisode:
    """The engine's record with the maze labels unpacked (other worlds leave them at -1)."""
    start = e.start
    cell = lambda key: _cell(start[key]) if key in start else (-1, -1)  # noqa: E731
    return MazeEpisode(
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


def run_episodes_from_states(
    agent: HookedAgent,
    states: list[MazeState],
    config: MazeConfig,
    fwd_hooks: list | None = None,
    seed: int = 10_000,
    greedy: bool = False,
) -> list[MazeEpisode]:
    """One episode from each given maze state (same mazes for every condition of an experiment).

    Batch row ``i`` of every hooked activation belongs to ``states[i]``, so per-maze
    interventions can be passed as batched tensors.
    """
    envs = MazeVecEnv(num_envs=len(states), **config.__dict__)
    envs.reset(seed=seed)
    for i, s in enumerate(states):
        envs.set_state(i, s)
    eps = engine.first_episodes(
        agent, envs, (envs.batch.obs.copy(), envs.batch.infos()), engine.policy_for(agent, greedy),
        torch.Generator().manual_seed(seed), fwd_hooks or (),
        engine.Labels(start=MAZE_START, trace=("mouse_pos",)),
    )  # fmt: skip
    return [maze_episode(e) for e in eps]


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


def maze_config(run: Run) -> MazeConfig:
    """The maze options a run trained with (a run of another world is refused in one sentence)."""
    trainer = run.config.get("trainer", {})
    if trainer.get("env_id") != ENV_ID:
        raise ValueError(
            f"run {run.path} was not trained in the maze world (env {trainer.get('env_id')})"
        )
    return MazeConfig.from_kwargs(dict(trainer.get("env_kwargs", {})))


def masks_at(masks: dict[str, np.ndarray], hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Maze masks at a layer's resolution: a layer cell is on where the mask covers at least half
    of it (any part, for the one-cell objects mouse, cheese and corner)."""
    return resize_masks(masks, hw, any_cover=ONE_CELL)


def categories(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Category index per position ``(N, h, w)`` (:data:`CATEGORIES`; cheese > mouse > wall > path)."""
    cat = np.full(masks["wall"].shape, CATEGORIES.index("path"), dtype=np.int64)
    for name in ("wall", "mouse", "cheese"):
        cat[masks[name]] = CATEGORIES.index(name)
    return cat


def state_from_grid(obs: np.ndarray) -> MazeState:
    """A MazeState from a grid observation ``(3, W, W)`` (wall, mouse, cheese channels)."""
    walls = obs[0] > 0.5
    world = walls.shape[0]
    free_r, free_c = np.nonzero(~walls)
    maze_size = world
    if free_r.size:
        maze_size = int(max(world - free_r.min(), free_c.max() + 1))

    def cell(channel: np.ndarray) -> tuple[int, int]:
        idx = np.argwhere(channel > 0.5)
        return (int(idx[0][0]), int(idx[0][1])) if len(idx) else (-1, -1)

    mouse, cheese = cell(obs[1]), cell(obs[2])
    if cheese == (-1, -1):  # the mouse stands on the cheese at the end of an episode
        cheese = mouse
    return MazeState(walls=walls, mouse=mouse, cheese=cheese, maze_size=maze_size)


class MazeWorld(World):
    """The maze: levels by number, state editing, vector fields and the cheese vector."""

    name = "maze"
    env_id = ENV_ID
    recipe = MazeRecipe
    sweep_metrics = "policylens.studies.maze.sweep:maze_metrics"
    headline = "policylens.studies.maze.misgeneralization:headline_results"
    concepts = ("cheese_pos", "mouse_pos", "move_to_cheese", "dist_to_corner", "at_decision_square")
    probe_options = {"cheese_region": None}
    """With the cheese always in the corner (training), its position is the corner's and there are
    no decision squares, so probe data puts it anywhere."""
    has_levels = True
    editable = True
    outside_plane = WALL
    about_dataset = "test mazes, cheese anywhere, the mouse on cells the agent itself visits"

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.config = maze_config(run)

    @classmethod
    def world_actions(cls, env_kwargs: Mapping[str, Any]) -> Sequence[str]:
        return ACTION_NAMES

    @classmethod
    def picture(cls, obs: np.ndarray, env_kwargs: Mapping[str, Any]) -> np.ndarray | None:
        """A grid observation drawn as the maze (image observations as they are)."""
        obs = np.asarray(obs)
        if obs.ndim == 3 and obs.shape[0] == 3:
            return human_view(state_from_grid(obs), cell_px=16)
        return super().picture(obs, env_kwargs)

    def render(self) -> dict[str, Any]:
        if self.config.obs_mode == "rgb":
            return {"kind": "image"}
        return {"kind": "maze", "world_size": self.config.world_size}

    def config_for(self, anywhere: bool) -> MazeConfig:
        """The run's maze options; ``anywhere`` puts the cheese on any free cell (the test
        distribution of the goal-misgeneralization study)."""
        return replace(self.config, cheese_region=None) if anywhere else self.config

    def reset(self, seed: int, level: int | None, anywhere: bool) -> tuple[Any, Any, Any]:
        config = self.config_for(anywhere)
        envs = MazeVecEnv(num_envs=1, **config.__dict__)
        obs, infos = envs.reset(seed=seed)
        if level is not None:
            envs.set_state(0, self.level_state(level, anywhere))
            obs, infos = envs.batch.obs.copy(), envs.batch.infos()
        return envs, obs, infos

    def outcome(self, ep: engine.Episode) -> str:
        if ep.success:
            return "cheese"
        return "truncated" if ep.end.get("truncated") else "failure"

    # -- editing ----------------------------------------------------------------------------------
    def level_state(self, level: int, anywhere: bool = False) -> MazeState:
        if level < 0:
            raise ValueError(f"level must be a number >= 0, got {level}")
        return generate_level(level, self.config_for(anywhere))

    def parse_state(self, data: dict[str, Any]) -> MazeState:
        """A maze state the page sent (``MazeState.to_dict`` form), checked against the rules."""
        try:
            state = MazeState.from_dict(data)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(
                f"the maze state is malformed ({type(e).__name__}); send walls, mouse, cheese, "
                "maze_size as MazeState.to_dict() writes them"
            ) from None
        world = self.config.world_size
        if state.walls.shape != (world, world):
            raise ValueError(
                f"the maze must be {world}x{world} cells like this run's world, got "
                f"{state.walls.shape[0]}x{state.walls.shape[1] if state.walls.ndim > 1 else 0}"
            )
        state.validate()
        return state

    def observe(self, state: MazeState) -> np.ndarray:
        return MazeBatch(self.config, 1).observe(state)

    def trajectories(
        self,
        agent: HookedAgent,
        state: MazeState,
        conditions: list[list],
        seed: int,
        max_steps: int,
    ) -> list[dict[str, Any]]:
        """One sampled path from ``state`` per condition (its forward hooks; ``[]``: the agent
        itself), at most ``max_steps`` long, all played as one batch through the rollout engine:
        every forward serves all conditions, each row hooked by its own condition only, and every
        row draws the same uniforms, so paths differ by the change alone (equal luck) and a
        condition's path does not depend on which others it was played with."""
        from policylens.envs.maze import MazeVecEnv

        limited = replace(self.config, max_steps=min(self.config.max_steps, max_steps))
        envs = MazeVecEnv(num_envs=len(conditions), **limited.__dict__)
        envs.reset(seed=seed)
        for i in range(len(conditions)):
            envs.set_state(i, state)
        hooks = [h for i, hs in enumerate(conditions) for h in on_rows(hs, slice(i, i + 1))]
        policy = SharedUniforms(
            greedy=engine.policy_for(agent).greedy, uniforms=torch.Generator().manual_seed(seed)
        )
        eps = engine.first_episodes(
            agent, envs, (envs.batch.obs.copy(), envs.batch.infos()), policy,
            torch.Generator().manual_seed(seed), hooks, engine.Labels(trace=("mouse_pos",)),
        )  # fmt: skip
        return [
            {"positions": [[int(r), int(c)] for r, c in ep.trace["mouse_pos"]],
             "success": ep.success, "length": ep.length}
            for ep in eps
        ]  # fmt: skip

    # -- ground truth -------------------------------------------------------------------------------
    def dataset(self, agent: HookedAgent, n: int, seed: int) -> Dataset:
        """Test mazes (cheese anywhere) with the mouse on cells the agent itself visits."""
        data = maze_dataset(self.config, n, seed=seed, agent=agent)
        return Dataset(data.obs, data.states)

    def masks(self, data: Dataset, hw: tuple[int, int]) -> dict[str, np.ndarray]:
        return masks_at(object_masks(data.truth), hw)

    def categories(
        self, data: Dataset, hw: tuple[int, int]
    ) -> tuple[np.ndarray, tuple[str, ...]] | None:
        return categories(self.masks(data, hw)), CATEGORIES
