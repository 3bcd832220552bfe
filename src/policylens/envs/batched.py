"""What the NumPy-batched worlds (the maze, the hazard world) share: the batch base and the wrappers.

Each such world keeps all its levels in one :class:`LevelBatch` that steps every level at once
with array operations; :class:`BatchedEnv` and :class:`BatchedVecEnv` put Gymnasium's single-env
and vector-env APIs on it, so a world only says which config, batch, state and renderer it uses.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv


class LevelBatch(ABC):
    """What the batched worlds share: a random generator per slot drawing level seeds as procgen
    does, a cache of generated levels, action checks, and the state that resumes a run.

    A world's batch sets ``config`` (with ``num_levels``, ``start_level``, ``num_actions``),
    ``n``, ``obs`` and ``obs_space``, lists its per-slot arrays in ``ARRAYS``, and provides
    ``generate(level_seed)``, ``reset_slot(i)``, ``step(actions)`` (observations drawn; returns
    reward, terminated, truncated), ``infos()``, ``get_state(i)``, ``set_state(i, state)`` and
    ``redraw()`` (every observation from its arrays, after :meth:`load_state_dict`).
    """

    LEVEL_CACHE = 4096
    ARRAYS: ClassVar[tuple[str, ...]]
    WORLD: ClassVar[str]
    """The world's name in error messages (``"this maze"``)."""
    config: Any
    n: int

    def __init__(self) -> None:
        self.rngs = [np.random.default_rng() for _ in range(self.n)]
        self._cache: dict[int, Any] = {}

    @abstractmethod
    def generate(self, level_seed: int) -> Any:
        """The level with seed ``level_seed``, as :meth:`reset_slot` loads it."""

    @abstractmethod
    def reset_slot(self, i: int) -> None:
        """Load slot ``i`` with its next level (:meth:`draw_level_seed`) and observe it."""

    @abstractmethod
    def redraw(self) -> None:
        """Draw every slot's observation again from its arrays (after a loaded state)."""

    def seed(self, i: int, seed: int | None) -> None:
        self.rngs[i] = np.random.default_rng(seed)

    def draw_level_seed(self, i: int) -> int:
        """The next level of slot ``i``: one of ``num_levels`` from ``start_level``, or any from
        there up when ``num_levels`` is 0."""
        cfg = self.config
        if cfg.num_levels == 0:
            return cfg.start_level + int(self.rngs[i].integers(2**31 - 1 - cfg.start_level))
        return cfg.start_level + int(self.rngs[i].integers(cfg.num_levels))

    def level(self, level_seed: int) -> Any:
        """The generated level, from the cache when the world has a finite set of levels."""
        level = self._cache.get(level_seed)
        if level is None:
            level = self.generate(level_seed)
            if self.config.num_levels and len(self._cache) < self.LEVEL_CACHE:
                self._cache[level_seed] = level
        return level

    def reset_slots(self, envs: np.ndarray) -> None:
        """Start a new level in each slot of ``envs``."""
        for i in envs:
            self.reset_slot(int(i))

    def check_actions(self, actions: Any) -> np.ndarray:
        """``actions`` as int64, one whole number in range per slot, or a clear ValueError."""
        actions = np.asarray(actions)
        integral = np.issubdtype(actions.dtype, np.integer) or (
            np.issubdtype(actions.dtype, np.floating) and np.all(np.mod(actions, 1) == 0)
        )
        if actions.shape != (self.n,) or not integral:
            raise ValueError(
                f"expected {self.n} integer action(s), got shape {actions.shape} dtype {actions.dtype}"
            )
        actions = actions.astype(np.int64)
        k = self.config.num_actions
        bad = (actions < 0) | (actions >= k)
        if bad.any():
            raise ValueError(
                f"action {int(actions[bad][0])} is out of range: {self.WORLD} has {k} actions "
                f"(0..{k - 1})"
            )
        return actions

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this batch is (for resumable training)."""
        return {
            "arrays": {name: getattr(self, name).copy() for name in self.ARRAYS},
            "rngs": [json.dumps(rng.bit_generator.state) for rng in self.rngs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.ARRAYS:
            getattr(self, name)[...] = state["arrays"][name]
        for rng, rng_state in zip(self.rngs, state["rngs"], strict=True):
            rng.bit_generator.state = json.loads(rng_state)
        self.redraw()


class BatchedEnv(gym.Env):
    """One level of a batched world as a Gymnasium environment (a batch of one)."""

    config_class: ClassVar[Any]
    batch_class: ClassVar[Any]
    state_class: ClassVar[Any]
    render_state: ClassVar[Callable[..., np.ndarray]]

    def __init__(self, **options: Any):
        self.config = self.config_class.from_kwargs(options)
        self.render_mode = self.config.render_mode
        self._batch = self.batch_class(self.config, 1)
        self.observation_space = self._batch.obs_space
        self.action_space = spaces.Discrete(self.config.num_actions)
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._needs_reset:
            self._batch.seed(0, seed if seed is not None else int(self.np_random.integers(2**31)))
        self._needs_reset = False
        state = (options or {}).get("state")
        if state is not None:
            self.set_state(state)
        else:
            self._batch.reset_slots(np.array([0]))
        return self._batch.obs[0].copy(), self._info()

    def step(self, action):
        reward, terminated, truncated = self._batch.step(np.array([action]))
        return (
            self._batch.obs[0].copy(),
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            self._info(),
        )

    def _info(self) -> dict[str, Any]:
        return {
            k: self.single_info(v) for k, v in self._batch.infos().items() if not k.startswith("_")
        }

    @staticmethod
    def single_info(value: np.ndarray) -> Any:
        """The one env's entry of a batched label: a Python scalar, or its array."""
        return value[0] if value.ndim > 1 else value[0].item()

    def render(self) -> np.ndarray:
        return self.render_state(self.get_state())

    def get_state(self) -> Any:
        """The current level as a plain value (edit it, then :meth:`set_state`)."""
        return self._batch.get_state(0)

    def set_state(self, state: Any) -> None:
        if isinstance(state, dict):
            state = self.state_class.from_dict(state)
        self._batch.set_state(0, state)


class BatchedVecEnv(VectorEnv):
    """N levels of a batched world as one Gymnasium ``VectorEnv``.

    Autoreset is same-step (``metadata["autoreset_mode"]``): when a level ends, the step returns
    the first observation of the next, ``infos["final_obs"]`` (mask ``infos["_final_obs"]``) the
    last of the ended one, and ``infos["final_info"]`` its labels.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.SAME_STEP}
    config_class: ClassVar[Any]
    batch_class: ClassVar[Any]
    state_class: ClassVar[Any]
    render_state: ClassVar[Callable[..., np.ndarray]]

    def __init__(self, num_envs: int = 1, **options: Any):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.config = self.config_class.from_kwargs(options)
        self.num_envs = num_envs
        self.render_mode = self.config.render_mode
        self.batch = self.batch_class(self.config, num_envs)
        self.single_observation_space = self.batch.obs_space
        self.single_action_space = spaces.Discrete(self.config.num_actions)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._seeded = False

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if seed is None and not self._seeded:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        if seed is not None:
            seeds = seed if isinstance(seed, list) else [seed + i for i in range(self.num_envs)]
            for i, s in enumerate(seeds):
                self.batch.seed(i, s)
            self._seeded = True
        self.batch.reset_slots(np.arange(self.num_envs))
        return self.batch.obs.copy(), self.batch.infos()

    def step(self, actions):
        reward, terminated, truncated = self.batch.step(actions)
        infos = self.batch.infos()
        ended = terminated | truncated
        if ended.any():
            # infos() returns fresh arrays, so the ended episodes' labels need no copy
            final_info = {k: (ended if k[0] == "_" else v) for k, v in infos.items()}
            final_obs = self.batch.obs.copy()
            self.batch.reset_slots(np.nonzero(ended)[0])
            infos = self.batch.infos()
            infos.update(
                final_obs=final_obs, _final_obs=ended, final_info=final_info, _final_info=ended
            )
        return self.batch.obs.copy(), reward, terminated, truncated, infos

    def render(self) -> tuple[np.ndarray, ...]:
        """One frame per env, as Gymnasium's ``VectorEnv.render`` promises."""
        return tuple(self.render_state(self.batch.get_state(i)) for i in range(self.num_envs))

    def get_state(self, i: int = 0) -> Any:
        return self.batch.get_state(i)

    def set_state(self, i: int, state: Any) -> None:
        if isinstance(state, dict):
            state = self.state_class.from_dict(state)
        self.batch.set_state(i, state)

    def state_dict(self) -> dict[str, Any]:
        """The whole batch, rngs included, so a resumed run continues exactly."""
        return self.batch.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch.load_state_dict(state)
        self._seeded = True
