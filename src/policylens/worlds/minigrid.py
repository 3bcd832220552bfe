"""The MiniGrid worlds (decision transformers, Bloom et al.): Dynamic-Obstacles 8x8 and MemoryS7.

What lives here: the two tasks' ids under short names, the world class (action names, concepts,
outcomes, drawing the 7x7x3 view), the policy mixes of the offline datasets and
:func:`collect_trajectories`, which plays them (the env's breadth-first-search planner at several
epsilons and temperatures) into the rollout store the decision-transformer trainer reads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from policylens.envs import make
from policylens.envs.minigrid import ACTION_NAMES, GridPlanner, MiniGridWorldEnv, play_planner
from policylens.errors import check_known
from policylens.rollout import engine
from policylens.rollout.store import Store, StoreWriter
from policylens.worlds.base import World

OBSTACLES_ID = "policylens/MiniGrid-DynamicObstacles-8x8-v0"
MEMORY_ID = "policylens/MiniGrid-MemoryS7-v0"
TASKS = {"obstacles": OBSTACLES_ID, "memory": MEMORY_ID}
"""Short task name -> env id (what commands name)."""


@dataclass(frozen=True)
class PolicySpec:
    """One planner of a dataset's mix (see :class:`~policylens.envs.minigrid.GridPlanner`)."""

    epsilon: float = 0.0
    temperature: float = 0.0
    wrong_side: bool = False
    wander: tuple[int, int] = (0, 0)
    """Safe random actions before planning: their number is drawn from ``low..high``."""
    share: float = 1.0
    """Relative share of the dataset's episodes."""

    @property
    def label(self) -> str:
        side = ",wrong" if self.wrong_side else ""
        wander = f",wander={self.wander[0]}-{self.wander[1]}" if self.wander[1] else ""
        return f"eps={self.epsilon:g},temp={self.temperature:g}{side}{wander}"


MIXES: dict[str, tuple[PolicySpec, ...]] = {
    "obstacles": (
        PolicySpec(0.0, 0.0, share=6.0),
        PolicySpec(0.05),
        PolicySpec(0.2),
        PolicySpec(0.6),
        PolicySpec(1.0),
        PolicySpec(0.0, 1.0),
        PolicySpec(0.0, 3.0),
        PolicySpec(wander=(24, 96)),
        PolicySpec(wander=(96, 200)),
        PolicySpec(wander=(200, 320)),
    ),
    "memory": (
        PolicySpec(0.0, 0.0, share=3.0),
        PolicySpec(0.0, 0.0, wrong_side=True, share=2.0),
        PolicySpec(0.1),
        PolicySpec(0.3),
        PolicySpec(0.0, 1.0),
        PolicySpec(0.0, 3.0),
    ),
}
"""The datasets' policy mixes: shortest paths, epsilon-random steps (which walk into balls and
walls), softmax temperatures over path lengths, safe wandering before heading for the goal (every
return from 0 to about 0.85 without a collision: the ones a calibrated DT must reach; above, the
planners alone, so that the top returns mean the best play) and, in the
memory task, the planner heading for the wrong object, so that returns span -1 (or 0) to the
best (no uniformly random play there: its long episodes were most of the steps and no DT learnt
the task beside them)."""


@dataclass(frozen=True)
class CollectSummary:
    """What :func:`collect_trajectories` wrote."""

    path: str
    task: str
    episodes: int
    rows: int
    policies: list[dict[str, Any]]
    """Per policy: its settings, episodes, mean return, success rate, mean length."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def collect_trajectories(
    out: str | os.PathLike,
    task: str = "obstacles",
    episodes: int = 4000,
    seed: int = 0,
    mix: Sequence[PolicySpec] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> CollectSummary:
    """Play the planner mix of ``task`` for ``episodes`` episodes into a store at ``out``.

    One row per step: ``obs`` (7, 7, 3) uint8, ``direction``, ``actions``, ``rewards``, ``rtg``
    (the undiscounted return from that step on), ``timestep`` (step in the episode), ``episode``,
    ``done`` (the episode's last step), ``terminated``, ``truncated``, ``policy`` (index into
    ``meta["policies"]``), ``seed`` (the episode's reset seed: replaying its actions from that
    reset gives its observations again) and ``labels/<key>`` (the world's numeric ground truth of the
    observation). The meta names the env id and options the trainer and the player use.
    """
    check_known([task], TASKS, "task")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}.")
    mix = tuple(MIXES[task] if mix is None else mix)
    if not mix:
        raise ValueError("mix must name at least one policy.")
    env_id, kwargs = TASKS[task], dict(env_kwargs or {})
    env = make(env_id, **kwargs).unwrapped
    assert isinstance(env, MiniGridWorldEnv)
    shares = np.array([p.share for p in mix], dtype=float)
    counts = np.floor(shares / shares.sum() * episodes).astype(int)
    counts[: episodes - counts.sum()] += 1  # the remainder, one each to the first policies
    planners = [
        GridPlanner(p.epsilon, p.temperature, p.wrong_side, wander=p.wander, seed=seed * 1000 + i)
        for i, p in enumerate(mix)
    ]
    order = np.repeat(np.arange(len(mix)), counts)
    np.random.default_rng(seed).shuffle(order)
    per_policy: list[list[tuple[float, bool, int]]] = [[] for _ in mix]
    with StoreWriter(out, overwrite=overwrite) as writer:
        for ep, k in enumerate(order):
            reset_seed = seed * 1_000_003 + ep
            frames, infos, actions, rewards, terminated, truncated = play_planner(
                env, planners[k], seed=reset_seed
            )
            n = len(actions)
            r = np.asarray(rewards, dtype=np.float32)
            done = np.zeros(n, dtype=bool)
            done[-1] = True
            labels = {
                f"labels/{key}": np.stack([np.asarray(i[key]) for i in infos])
                for key in _label_keys(infos[0])
            }
            writer.append(
                {
                    "obs": np.stack(frames).astype(np.uint8),
                    "direction": np.array([i["agent_dir"] for i in infos], dtype=np.int64),
                    "actions": np.asarray(actions, dtype=np.int64),
                    "rewards": r,
                    "rtg": np.cumsum(r[::-1])[::-1].astype(np.float32),
                    "timestep": np.arange(n, dtype=np.int64),
                    "episode": np.full(n, ep, dtype=np.int64),
                    "done": done,
                    "terminated": done & terminated,
                    "truncated": done & truncated,
                    "policy": np.full(n, k, dtype=np.int64),
                    "seed": np.full(n, reset_seed, dtype=np.int64),
                    **labels,
                }
            )
            per_policy[k].append((float(r.sum()), bool(terminated and r.sum() > 0), n))
        policies = [
            {
                **asdict(p),
                "label": p.label,
                "episodes": len(rows),
                "mean_return": float(np.mean([x[0] for x in rows])) if rows else math.nan,
                "success": float(np.mean([x[1] for x in rows])) if rows else math.nan,
                "mean_length": float(np.mean([x[2] for x in rows])) if rows else math.nan,
            }
            for p, rows in zip(mix, per_policy, strict=True)
        ]
        meta = {
            "kind": "trajectories",
            "task": task,
            "env_id": env_id,
            "env_kwargs": kwargs,
            "num_actions": len(ACTION_NAMES),
            "obs_shape": [7, 7, 3],
            "max_steps": env.max_steps,
            "episodes": episodes,
            "seed": seed,
            "policies": policies,
        }
        store = writer.close(meta)
    env.close()
    return CollectSummary(str(store.path), task, episodes, len(store), policies)


def _label_keys(info: Mapping[str, Any]) -> list[str]:
    """The numeric ``info`` keys stored as labels (positions, direction, flags), not the
    per-square ``blocked`` map."""
    return [
        k
        for k, v in info.items()
        if k not in ("blocked", "outcome") and np.asarray(v).dtype.kind in "biuf"
    ]


def trajectories_of(store: Store) -> dict[str, Any]:
    """A trajectory store's meta, refused in one sentence when the store is not one."""
    meta = store.meta
    missing = [k for k in ("obs", "actions", "rtg", "timestep", "episode") if k not in store]
    if meta.get("kind") != "trajectories" or missing:
        raise ValueError(
            f"{store.path} is not a trajectory store (collect one with `policylens dt collect`)."
        )
    return meta


# -- drawing ---------------------------------------------------------------------------------------
PALETTE = np.array(
    [
        [40, 40, 40],  # unseen
        [0, 0, 0],  # empty
        [100, 100, 100],  # wall
        [60, 60, 60],  # floor
        [150, 100, 50],  # door
        [230, 200, 40],  # key
        [70, 110, 230],  # ball
        [160, 100, 40],  # box
        [40, 200, 60],  # goal
        [230, 90, 30],  # lava
        [230, 40, 40],  # agent
    ],
    dtype=np.uint8,
)


def view_image(obs: np.ndarray, cell_px: int = 8) -> np.ndarray:
    """An RGB picture of one 7x7x3 view: one colour per object kind, the agent (bottom middle of
    its own view, facing up) as a red mark. Rows of the picture are the view's rows (minigrid's
    view is indexed ``[x, y]``: transposed here)."""
    obs = np.asarray(obs)
    kinds = np.clip(obs[..., 0], 0, len(PALETTE) - 1).T  # (rows, cols)
    img = PALETTE[kinds]
    h, w = kinds.shape
    img = img.copy()
    img[h - 1, w // 2] = PALETTE[10]
    return np.kron(img, np.ones((cell_px, cell_px, 1), dtype=np.uint8))


class MiniGridWorld(World):
    """Dynamic-Obstacles 8x8 and MemoryS7 (one world, two tasks): the decision transformers'
    worlds."""

    name = "minigrid"
    env_id = OBSTACLES_ID
    concepts = ("obstacle_ahead", "agent_dir", "instruction", "correct_side", "instruction_seen")
    end_labels = ("outcome",)
    labels = ("obstacle_ahead", "instruction_seen")
    about_dataset = "offline trajectories of the planner mix, or the run's own play"

    @classmethod
    def serves(cls, env_id: str) -> bool:
        return env_id in TASKS.values()

    @classmethod
    def world_actions(cls, env_kwargs: Mapping[str, Any]) -> Sequence[str]:
        return ACTION_NAMES

    @classmethod
    def picture(cls, obs: np.ndarray, env_kwargs: Mapping[str, Any]) -> np.ndarray | None:
        return view_image(obs)

    def render(self) -> dict[str, Any]:
        return {"kind": "image"}

    def drawn(self, obs: np.ndarray) -> np.ndarray:
        return np.stack([view_image(o) for o in np.asarray(obs)])

    def outcome(self, ep: engine.Episode) -> str:
        return str(ep.end.get("outcome") or ("truncated" if ep.end.get("truncated") else "end"))


def task_of(env_id: str) -> str:
    """The short task name of a MiniGrid env id."""
    for task, eid in TASKS.items():
        if eid == env_id:
            return task
    raise ValueError(f"{env_id} is not a MiniGrid world of policylens ({', '.join(TASKS)}).")
