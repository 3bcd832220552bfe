"""procgen's games (Cobbe et al. 2020) through envpool, as the worlds ``policylens/procgen-<Game>``.

For users with procgen-layout checkpoints (the IMPALA agents of the goal-misgeneralization and
"Understanding RL Vision" work): the frames are procgen's own 64x64 RGB, uint8 ``(H, W, 3)`` like
every policylens image world, and the actions procgen's 15, so such an agent
(``load_agent("model.pth")``) plays through the rollout engine and every lens runs on real
procgen frames.

envpool is an optional extra (``pip install 'policylens[procgen]'``); its procgen also needs the
Qt 5 runtime (Debian: ``apt-get install libqt5gui5``). The worlds are registered either way, and
making one without them says what to install in one sentence.

envpool resets an ended env on the *next* step (ignoring that step's action). These worlds reset
it in the same step instead, like the other policylens vector worlds: the step returns the first
frame of the next level, with the ended episode's last frame in ``infos["final_obs"]`` and its
labels in ``infos["final_info"]``. Seeds are fixed when envpool builds its pool, so
``reset(seed=...)`` builds a new one; env ``i`` gets seed ``seed + i``.

Labels: ``level_seed`` (the level of the returned frame), ``steps`` (steps into its episode) and
``success`` (procgen's ``level_complete``: the ending step completed the level).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from policylens.errors import check_known

GAMES: dict[str, str] = {
    "BigFish": "bigfish",
    "BossFight": "bossfight",
    "CaveFlyer": "caveflyer",
    "Chaser": "chaser",
    "Climber": "climber",
    "CoinRun": "coinrun",
    "Dodgeball": "dodgeball",
    "FruitBot": "fruitbot",
    "Heist": "heist",
    "Jumper": "jumper",
    "Leaper": "leaper",
    "Maze": "maze",
    "Miner": "miner",
    "Ninja": "ninja",
    "Plunder": "plunder",
    "StarPilot": "starpilot",
}
"""The game's name in the world id -> procgen's name for it."""

DISTRIBUTION_MODES = ("easy", "hard", "extreme", "memory", "exploration")
"""procgen's ``distribution_mode`` values; each game has some of them (envpool names which)."""

OPTIONS = (
    "num_levels",
    "start_level",
    "distribution_mode",
    "use_sequential_levels",
    "center_agent",
    "use_backgrounds",
    "use_monochrome_assets",
    "restrict_themes",
    "use_generated_assets",
    "paint_vel_info",
    "use_easy_jump",
    "num_threads",
)
"""What ``make``/``make_vec`` accept: procgen's options as envpool spells them, and envpool's
number of worker threads."""

OBS_SHAPE = (64, 64, 3)
ACTIONS = (
    "left_down", "left", "left_up", "down", "noop", "up", "right_down", "right", "right_up",
    "d", "a", "w", "s", "q", "e",
)  # fmt: skip
"""procgen's 15 button combinations, in its action order (the last six are game-specific keys)."""
NUM_ACTIONS = len(ACTIONS)
_LABELS = ("level_seed", "steps", "success")
PREFIX = "policylens/procgen-"
"""Every procgen world's id is this and the game's name."""


def world_id(game: str) -> str:
    return f"{PREFIX}{game}"


def procgen_worlds() -> list[dict[str, Any]]:
    """``register_world`` arguments for every game (``policylens.envs`` registers them)."""
    return [
        {
            "env_id": world_id(game),
            "description": f"procgen {game} through envpool (extra policylens[procgen]): 64x64x3 "
            "frames, 15 actions; num_levels, start_level, distribution_mode",
            "entry_point": "policylens.envs.procgen:ProcgenEnv",
            "vector_entry_point": "policylens.envs.procgen:ProcgenVecEnv",
            "kwargs": {"game": game},
        }
        for game in GAMES
    ]


def require_envpool(env_id: str) -> ModuleType:
    """The envpool module with its procgen games loadable, or one sentence saying what to install."""
    try:
        import envpool
    except ImportError as e:
        raise ValueError(f"{env_id} needs envpool: pip install 'policylens[procgen]'") from e
    try:
        from envpool.procgen import ProcgenEnvSpec  # noqa: F401  (ImportError without Qt 5)
    except ImportError as e:
        raise ValueError(
            f"{env_id} needs the Qt 5 runtime that envpool's procgen links against: "
            "apt-get install libqt5gui5 (Debian/Ubuntu)."
        ) from e
    return envpool


def envpool_task(envpool: ModuleType, game: str, distribution_mode: str) -> str:
    """envpool's task id of ``game`` in ``distribution_mode`` (e.g. ``CoinrunEasy-v0``)."""
    prefix = GAMES[game].capitalize()
    tasks = set(envpool.list_all_envs())
    modes = [m for m in DISTRIBUTION_MODES if f"{prefix}{m.capitalize()}-v0" in tasks]
    if distribution_mode not in modes:
        raise ValueError(
            f"distribution_mode {distribution_mode!r} is not one of {world_id(game)}'s: "
            f"{', '.join(modes)}."
        )
    return f"{prefix}{distribution_mode.capitalize()}-v0"


def _labels(raw: dict[str, Any], success: np.ndarray) -> dict[str, np.ndarray]:
    """policylens labels from envpool's info, with the vector-env ``_key`` masks."""
    info = {
        "level_seed": np.asarray(raw["level_seed"], dtype=np.int64),
        "steps": np.asarray(raw["elapsed_step"], dtype=np.int64),
        "success": np.asarray(success, dtype=bool),
    }
    ones = np.ones(len(info["steps"]), dtype=bool)
    info.update({f"_{k}": ones for k in _LABELS})
    return info


class ProcgenVecEnv(VectorEnv):
    """``num_envs`` copies of one procgen game as a Gymnasium ``VectorEnv`` with same-step
    autoreset (see the module doc)."""

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, *, game: str = "Maze", **options: Any):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        check_known([game], GAMES, "procgen game")
        self.env_id = world_id(game)
        check_known(options, OPTIONS, f"{self.env_id} option")
        for key in ("num_levels", "start_level"):
            value = options.get(key, 0)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be an integer >= 0, got {value!r}.")
        self._envpool = require_envpool(self.env_id)
        self.task = envpool_task(self._envpool, game, options.pop("distribution_mode", "easy"))
        self.options = options
        self.num_envs = num_envs
        self.single_observation_space = spaces.Box(0, 255, OBS_SHAPE, np.uint8)
        self.single_action_space = spaces.Discrete(NUM_ACTIONS)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._pool: Any = None

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if seed is None and self._pool is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        if seed is not None:
            seeds = seed if isinstance(seed, list) else [seed + i for i in range(self.num_envs)]
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset got {len(seeds)} seeds for {self.num_envs} envs.")
            self._close_pool()
            self._pool = self._envpool.make_gymnasium(
                self.task,
                num_envs=self.num_envs,
                seed=[int(s) % 2**31 for s in seeds],  # envpool seeds are int32
                channel_first=False,
                **self.options,
            )
        obs, raw = self._pool.reset()
        return obs, _labels(raw, np.zeros(self.num_envs, dtype=bool))

    def step(self, actions):
        if self._pool is None:
            raise ValueError(f"{self.env_id}: call reset() before step().")
        actions = np.asarray(actions, dtype=np.int32).reshape(self.num_envs)
        obs, reward, terminated, truncated, raw = self._pool.step(actions)
        ended = np.asarray(terminated) | np.asarray(truncated)
        infos = _labels(raw, ended & (np.asarray(raw["prev_level_complete"]) == 1))
        if ended.any():
            first_obs, first_raw = self._pool.reset(env_id=np.flatnonzero(ended).astype(np.int32))
            rows = np.asarray(first_raw["env_id"])
            final_info = {k: (ended if k[0] == "_" else v) for k, v in infos.items()}
            final_obs = obs
            obs = obs.copy()
            obs[rows] = first_obs
            infos = {k: v.copy() for k, v in infos.items()}
            for key, value in _labels(first_raw, np.zeros(len(rows), dtype=bool)).items():
                infos[key][rows] = value
            infos.update(
                final_obs=final_obs, _final_obs=ended, final_info=final_info, _final_info=ended
            )
        return obs, reward, terminated, truncated, infos

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def close_extras(self, **kwargs: Any) -> None:
        self._close_pool()


class ProcgenEnv(gym.Env):
    """One procgen game (a vector of one), for ``gymnasium.make`` and ``check_env``; an ended
    episode's step returns its last frame, and the next ``reset()`` starts a new level."""

    metadata = {"render_modes": []}

    def __init__(self, game: str = "Maze", **options: Any):
        self._vec = ProcgenVecEnv(1, game=game, **options)
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, infos = self._vec.reset(seed=seed)
        return obs[0], _first(infos)

    def step(self, action):
        obs, reward, terminated, truncated, infos = self._vec.step(np.array([action]))
        if terminated[0] or truncated[0]:
            obs, infos = infos["final_obs"], infos["final_info"]
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), _first(infos)

    def close(self) -> None:
        self._vec.close()


def _first(infos: dict[str, Any]) -> dict[str, Any]:
    return {k: infos[k][0].item() for k in _LABELS}
