"""Rollout datasets: run an agent in any registered world and stream what it sees and does to disk.

One row per environment step, in a :class:`~policylens.rollout.store.Store`:

``obs``                  the observation the agent acted on
``actions``, ``logits``, ``values``  what the agent did and thought
``rewards``, ``terminated``, ``truncated``  what the step returned
``episode``, ``step``, ``env``  episode id (0, 1, ... in order of starting), step in the episode,
                         env slot
``labels/<key>``         every numeric ``info`` label of the world for that observation
                         (maze: ``mouse_pos``, ``cheese_pos``, ``dist_to_cheese``, ...)
``activations/<hook>``   activations at the chosen hooks for that observation

Labels describe the observation in the same row: with same-step autoreset, the ``info`` a step
returns belongs to the observation it returns (the first of a new episode after a reset).

How much and what is stored is a :class:`CollectOptions`. With ``episodes=K`` exactly K whole
episodes are stored: slots keep playing until K episodes have
started and every started episode has ended (taking the first K to *finish* would over-sample
short episodes). With ``steps=S`` exactly S rows are stored; the last episodes may be cut off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from policylens.envs import make_vec
from policylens.rollout.engine import Policy, check_world
from policylens.rollout.engine import steps as engine_steps
from policylens.rollout.store import DEFAULT_CHUNK_ROWS, Store, StoreWriter, unknown_message

if TYPE_CHECKING:
    import gymnasium as gym

    from policylens.agents.agent import HookedAgent
    from policylens.runs import Run

_BOOKKEEPING = {"final_obs", "final_info"}


def numeric_labels(infos: Mapping[str, Any], n: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """Split a vector env's ``infos`` into numeric label arrays ``(n, ...)`` and skipped keys.

    Object arrays of equal-length number tuples (e.g. chess piece positions) become integer
    arrays; strings and ragged values are skipped (their keys are returned).
    """
    labels: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    for key, value in infos.items():
        if key.startswith("_") or key in _BOOKKEEPING:
            continue
        arr = np.asarray(value)
        if arr.dtype == object:
            try:
                arr = np.asarray(arr.tolist())
            except ValueError:
                skipped.append(key)
                continue
        if (
            arr.ndim == 0
            or arr.shape[0] != n
            or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool)
        ):
            skipped.append(key)
            continue
        mask = infos.get(f"_{key}")
        if mask is not None and not np.all(mask):  # envs that did not report it this step
            arr = arr.copy()
            arr[~np.asarray(mask, dtype=bool)] = -1 if arr.dtype != bool else False
        labels[key] = arr
    return labels, sorted(skipped)


@dataclass(frozen=True)
class CollectOptions:
    """What :func:`collect` stores and how it plays (checked when made)."""

    episodes: int | None = None
    """Whole episodes to store (exactly one of ``episodes`` and ``steps``)."""
    steps: int | None = None
    """Rows to store; the last episodes may be cut off."""
    hooks: Sequence[str] = ()
    """Hook names whose activations are stored (``agent.hook_names()`` lists them)."""
    seed: int = 0
    """Seeds the environments and the action sampling; same seed, same store."""
    num_envs: int = 64
    """Environments stepped together (the agent runs on one batch per step)."""
    greedy: bool = False
    """Argmax actions instead of sampling (a memoryless greedy maze policy loops)."""
    activation_dtype: str = "float32"
    """``"float32"`` or ``"float16"`` (halves the disk for big collections)."""
    chunk_size: int = DEFAULT_CHUNK_ROWS
    """Rows per chunk file (the writer holds at most one chunk in memory)."""

    def __post_init__(self) -> None:
        if (self.episodes is None) == (self.steps is None):
            raise ValueError(
                "CollectOptions needs exactly one of episodes and steps to say how much to collect."
            )
        for name in ("episodes", "steps", "num_envs", "chunk_size"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"CollectOptions.{name} must be an integer >= 1, got {value!r}.")
        if self.activation_dtype not in ("float32", "float16"):
            raise ValueError(
                f"CollectOptions.activation_dtype must be 'float32' or 'float16', got "
                f"{self.activation_dtype!r}."
            )


def collect(
    agent: HookedAgent,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    out: str | os.PathLike,
    options: CollectOptions,
    *,
    overwrite: bool = False,
    meta: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Store:
    """Run ``agent`` in ``env_id`` and write a complete store at ``out``; returns it opened.

    Args:
        agent: observations of the world's shape, its number of actions.
        options: how much to collect, which activations, seeds and policy.
        overwrite: replace a complete store already at ``out``.
        meta: extra JSON-able metadata for the manifest (e.g. run path and checkpoint step).
        progress: ``progress(rows_done, rows_expected_or_0)`` after every step.
    """
    episodes, steps, seed = options.episodes, options.steps, options.seed
    target = episodes if episodes is not None else steps
    assert target is not None  # CollectOptions holds exactly one of them
    hooks = list(dict.fromkeys(options.hooks))
    valid = agent.hook_names()
    for h in hooks:
        if h not in valid:
            raise ValueError(unknown_message("hook", h, valid))
    env_kwargs = dict(env_kwargs or {})
    n = min(options.num_envs, target)  # target is episodes or steps, whichever was given
    envs = make_vec(env_id, n, **env_kwargs)
    space_shape = envs.single_observation_space.shape
    assert space_shape is not None  # observation spaces of worlds are Boxes
    obs_shape = tuple(space_shape)
    check_world(agent, envs, env_id)

    generator = torch.Generator().manual_seed(seed)
    obs, infos = envs.reset(seed=seed)
    _, skipped = numeric_labels(infos, n)
    episode = np.arange(n, dtype=np.int64)
    next_episode = n
    ep_step = np.zeros(n, dtype=np.int64)
    recording = np.ones(n, dtype=bool)
    act_dtype = np.float16 if options.activation_dtype == "float16" else np.float32
    expected = steps or 0
    stored_episodes = 0  # episode ids run 0, 1, ... in order of starting
    t0 = time.perf_counter()
    writer = StoreWriter(out, chunk_size=options.chunk_size, overwrite=overwrite)
    with writer:
        try:
            policy = Policy(greedy=options.greedy)
            for step in engine_steps(agent, envs, (obs, infos), policy, generator, cache=hooks):
                labels, _ = numeric_labels(step.infos, n)
                rows = np.nonzero(recording)[0]
                if steps is not None:
                    rows = rows[: steps - writer.rows]
                batch = {
                    "obs": step.obs[rows],
                    "actions": step.actions[rows].astype(np.int64),
                    "logits": step.logits.numpy()[rows],
                    "values": step.values.numpy()[rows],
                    "rewards": step.reward.astype(np.float32)[rows],
                    "terminated": step.terminated.astype(bool)[rows],
                    "truncated": step.truncated.astype(bool)[rows],
                    "episode": episode[rows],
                    "step": ep_step[rows],
                    "env": rows.astype(np.int64),
                }
                for key, value in labels.items():
                    batch[f"labels/{key}"] = value[rows]
                for h in hooks:
                    act = step.cache[h].detach().float().cpu().contiguous().numpy()
                    batch[f"activations/{h}"] = act[rows].astype(act_dtype, copy=False)
                writer.append(batch)
                if len(rows):
                    stored_episodes = max(stored_episodes, int(episode[rows].max()) + 1)

                done = step.done
                for i in np.nonzero(done)[0]:
                    if episodes is not None and next_episode >= episodes:
                        recording[i] = False
                    else:
                        episode[i] = next_episode
                        next_episode += 1
                ep_step = np.where(done, 0, ep_step + 1)
                if progress is not None:
                    progress(writer.rows, expected)
                if (steps is not None and writer.rows >= steps) or not recording.any():
                    break
        finally:
            envs.close()
        seconds = time.perf_counter() - t0
        manifest_meta = {
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "agent": dict(agent.config),
            "hooks": hooks,
            "seed": seed,
            "greedy": options.greedy,
            "episodes_requested": episodes,
            "steps_requested": steps,
            "episodes": stored_episodes,
            "num_envs": n,
            "obs_shape": list(obs_shape),
            "grid_size": _grid_size(envs, obs_shape),
            "skipped_labels": skipped,
            "seconds": round(seconds, 3),
            **dict(meta or {}),
        }
        return writer.close(manifest_meta)


def _grid_size(envs: gym.vector.VectorEnv, obs_shape: tuple[int, ...]) -> int | None:
    """Side of the world's cell grid, for mapping ``*_pos`` labels onto conv activations."""
    config = getattr(envs, "config", None)
    for attr in ("world_size", "board_size", "size"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    if len(obs_shape) == 3 and obs_shape[1] == obs_shape[2]:
        return int(obs_shape[1])
    return None


def collect_run(
    run: Run | str | os.PathLike,
    options: CollectOptions,
    out: str | os.PathLike | None = None,
    step: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    meta: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Store:
    """Collect with a run's agent (checkpoint ``step``, latest by default) in its training world.

    ``env_kwargs`` override the run's own world options (e.g. ``{"cheese_region": None}``).
    ``out`` defaults to ``RUN/analysis/rollouts/step_<N>``; the rest as :func:`collect`.
    """
    from policylens.runs import Run

    run = run if isinstance(run, Run) else Run(run)
    step, _ = run.checkpoint(step)
    agent = run.load_agent(step)
    trainer = run.config.get("trainer", {})
    if "env_id" not in trainer:
        raise ValueError(f"Run {run.path} does not name its world (trainer.env_id in config.json).")
    world = {**trainer.get("env_kwargs", {}), **dict(env_kwargs or {})}
    out = Path(out) if out is not None else run.analysis_dir / "rollouts" / f"step_{step}"
    about = {"run": str(run.path), "checkpoint_step": step, **dict(meta or {})}
    return collect(
        agent, trainer["env_id"], world, out, options,
        overwrite=overwrite, meta=about, progress=progress,
    )  # fmt: skip
