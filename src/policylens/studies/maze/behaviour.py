"""What an agent does: episodes in any world, and success / path-efficiency / corner-bias figures.

Episodes are played by the rollout engine (:mod:`policylens.rollout.engine`). Policies are sampled
(not argmax), as in procgen practice: a memoryless greedy policy loops in a perfect maze. Each
environment slot contributes only its first episode, so short episodes are not over-counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policylens.agents.agent import HookedAgent
from policylens.rollout import engine, stats
from policylens.runs import Run
from policylens.worlds import run_world
from policylens.worlds.maze import MAZE_START, MazeEpisode, maze_episode


def run_episodes(
    agent: HookedAgent,
    episodes: int,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    seed: int = 10_000,
    greedy: bool = False,
    fwd_hooks: engine.Hooks = (),
    max_envs: int = 256,
) -> list[MazeEpisode]:
    """Run ``episodes`` episodes in the world ``env_id`` (one per env slot, in waves of
    ``max_envs``), optionally hooked; maze labels are kept where the world gives them."""
    options = engine.EpisodeOptions(
        seed=seed, policy=engine.policy_for(agent, greedy), max_envs=max_envs,
        labels=engine.Labels(start=MAZE_START, trace=("mouse_pos",)),
    )  # fmt: skip
    eps = engine.run_episodes(
        agent, episodes, env_id, dict(env_kwargs or {}), options, fwd_hooks=fwd_hooks
    )
    return [maze_episode(e) for e in eps]


def summarize(episodes: list[MazeEpisode]) -> dict[str, Any]:
    """Success, return, length and (mazes) path efficiency and corner bias, with 95% intervals."""
    out: dict[str, Any] = {
        "episodes": len(episodes),
        "success": stats.proportion([e.success for e in episodes]),
        "return": stats.mean([e.ret for e in episodes]),
        "length": stats.mean([e.length for e in episodes]),
    }
    if episodes and episodes[0].shortest >= 0:
        lengths = np.array([e.length for e in episodes], dtype=float)
        shortest = np.array([e.shortest for e in episodes], dtype=float)
        out["shortest"] = stats.mean(shortest)
        out["path_ratio"] = float(lengths.mean() / max(shortest.mean(), 1e-9))
        wins = [e for e in episodes if e.success]
        out["path_ratio_successes"] = (
            float(
                np.mean([e.length for e in wins])
                / max(float(np.mean([e.shortest for e in wins])), 1e-9)
            )
            if wins
            else float("nan")
        )
        away = [e for e in episodes if e.cheese != e.corner]
        out["corner_first"] = stats.proportion([e.corner_first for e in away])
        # Mazes where the cheese is off the start->corner path: going to the corner is a choice.
        off_path = [e for e in away if e.decision_square != (-1, -1)]
        out["off_path"] = {
            "success": stats.proportion([e.success for e in off_path]),
            "corner_first": stats.proportion([e.corner_first for e in off_path]),
        }
    return out


@dataclass(frozen=True)
class Evaluation:
    """An agent's episodes in one world, summarised (:func:`summarize`)."""

    env_id: str
    env_kwargs: dict[str, Any]
    greedy: bool
    summary: dict[str, Any]
    """:func:`summarize`'s figures: episodes, success, return, length (and maze figures)."""

    def to_json(self) -> dict[str, Any]:
        return {"env_id": self.env_id, "env_kwargs": self.env_kwargs, "greedy": self.greedy,
                **self.summary}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Evaluation:
        """The evaluation :meth:`to_json` wrote (a saved analysis read back)."""
        summary = {k: v for k, v in data.items() if k not in ("env_id", "env_kwargs", "greedy")}
        return cls(data["env_id"], dict(data["env_kwargs"]), bool(data["greedy"]), summary)


def evaluate(
    agent: HookedAgent,
    episodes: int,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    seed: int = 10_000,
    greedy: bool = False,
    fwd_hooks: engine.Hooks = (),
) -> Evaluation:
    """Run and summarise ``episodes`` episodes of ``agent`` in ``env_id`` (see :func:`summarize`)."""
    eps = run_episodes(agent, episodes, env_id, env_kwargs, seed, greedy, fwd_hooks)
    return Evaluation(env_id, dict(env_kwargs or {}), greedy, summarize(eps))


@dataclass(frozen=True)
class EvalOptions:
    """What :func:`run` evaluates: how many episodes, which checkpoint, which world options."""

    episodes: int = 500
    """Episodes, one per level."""
    step: int | None = None
    """Checkpoint step (None: the latest)."""
    seed: int = 10_000
    """Seed of the evaluation levels and of the sampling."""
    greedy: bool = False
    """Argmax actions instead of sampling."""
    world_options: Mapping[str, Any] = field(default_factory=dict)
    """World options over the run's own (e.g. ``{"cheese_region": None}``: cheese anywhere)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}.")


def run(run: Run, options: EvalOptions) -> Evaluation:
    """The run's agent (at ``options.step``) in the run's world, ``options.world_options`` over
    its own."""
    world = run_world(run)
    agent = run.load_agent(options.step)
    env_kwargs = {**world["env_kwargs"], **options.world_options}
    return evaluate(
        agent, options.episodes, world["env_id"], env_kwargs, options.seed, options.greedy
    )


def visit_counts(episodes: list[MazeEpisode], world_size: int) -> np.ndarray:
    """How often the mouse stood on each cell, summed over episodes (for heatmaps)."""
    counts = np.zeros((world_size, world_size))
    for e in episodes:
        for r, c in e.positions:
            counts[r, c] += 1
    return counts
