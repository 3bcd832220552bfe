"""The goal-misgeneralization study of a maze run, end to end: behaviour in and out of the
training distribution, decision squares, the cheese vector and channel clamping; results are
saved under ``run/analysis/`` and reused when the checkpoint has not changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from policylens.artifacts import FolderLock, read_json, write_json
from policylens.envs.maze import MazeBatch, MazeConfig, MazeState
from policylens.lenses.interventions import activation, add_vector
from policylens.rollout import stats
from policylens.runs import Run
from policylens.studies.maze.behaviour import (
    Episode,
    evaluate,
    run_episodes_from_states,
    visit_counts,
)
from policylens.studies.maze.decisions import decision_square_analysis
from policylens.studies.maze.steering import (
    cheese_tracking_channels,
    maze_clamp_experiment,
    maze_steering_experiment,
    test_levels,
    without_cheese,
)
from policylens.studies.maze.vector_fields import VectorField, vector_field


def maze_config(run: Run) -> MazeConfig:
    trainer = run.config.get("trainer", {})
    if trainer.get("env_id") != "policylens/Maze-v0":
        raise ValueError(
            f"run {run.path} was not trained in the maze world (env {trainer.get('env_id')})"
        )
    return MazeConfig.from_kwargs(dict(trainer.get("env_kwargs", {})))


def steering_hook(agent, config: MazeConfig) -> str:
    """A middle residual-stream layer with spatial maps, where Mini et al. found the cheese vector."""
    obs = MazeBatch(config, 1).obs_space.sample()[None] * 0
    _, cache = agent.run_with_cache(obs)
    spatial = [n for n in agent.hook_names() if n in cache and cache[n].ndim == 4]
    if not spatial:
        raise ValueError("the agent has no spatial (conv) layers to steer; pass --hook explicitly")
    residual = [n for n in spatial if n.endswith("hook_out")] or spatial
    return residual[len(residual) // 2]


def behaviour_study(
    agent, config: MazeConfig, episodes: int = 500, seed: int = 10_000
) -> dict[str, Any]:
    """Success, path efficiency and corner bias on the training and the test distribution."""
    train_kwargs = dict(config.__dict__)
    test_kwargs = {**train_kwargs, "cheese_region": None}
    return {
        "train": evaluate(agent, episodes, env_kwargs=train_kwargs, seed=seed),
        "test": evaluate(agent, episodes, env_kwargs=test_kwargs, seed=seed),
    }


def steering_study(
    agent, config: MazeConfig, hook: str | None = None, n_mazes: int = 200, seed: int = 20_000
) -> dict[str, Any]:
    """The cheese vector (subtracted, coefficient -1) against random vectors, and clamping of the
    channel that best tracks the cheese, each over ``n_mazes`` test mazes.
    """
    hook = hook or steering_hook(agent, config)
    steering = maze_steering_experiment(
        agent, config, hook, coefs=(-1.0,), n_mazes=n_mazes, seed=seed
    )
    probe_states = test_levels(config, 300, seed + 1, off_path=False)
    channels = cheese_tracking_channels(agent, hook, probe_states, config)
    best = channels[0][0]
    obs = np.stack([MazeBatch(config, 1).observe(s) for s in probe_states])
    typical_max = float(activation(agent, obs, hook)[:, best].amax(dim=(1, 2)).mean())
    value = 2.0 * max(typical_max, 1e-3)
    clamp = maze_clamp_experiment(
        agent, config, hook, [best], value, n_mazes=n_mazes, seed=seed + 2
    )
    subtracted, random = (
        steering["cheese_vector x -1"]["success"],
        steering["random x -1"]["success"],
    )
    clamped, unclamped = clamp["clamped_reaches_target"], clamp["baseline_reaches_target"]
    return {
        "hook": hook,
        "steering": steering,
        "cheese_channels": channels,
        "clamp": clamp,
        "cheese_vector_vs_random": stats.difference(subtracted, random),
        "clamped_vs_unclamped": stats.difference(clamped, unclamped),
    }


ANALYSIS_VERSION = 2
"""Bumped when the saved analysis gains or changes fields, so older saves are recomputed."""


def analyse_maze_run(
    run: Run,
    episodes: int = 500,
    n_mazes: int = 200,
    hook: str | None = None,
    force: bool = False,
    log=print,
) -> dict[str, Any]:
    """:func:`analyse_maze_agent` on the run's latest checkpoint, saved as analysis/maze.json and
    reused while the checkpoint and the budget are unchanged."""
    config = maze_config(run)
    step, _ = run.checkpoint()
    file = run.path / "analysis" / "maze.json"
    with FolderLock(file.parent, "analysis folder"):  # one analysis of a run at a time
        if file.exists() and not force:
            cached = read_json(file)
            if (
                cached.get("step") == step
                and cached.get("version") == ANALYSIS_VERSION
                and cached.get("episodes") == episodes
                and cached.get("n_mazes") == n_mazes
            ):
                return cached
        result = {
            "step": step,
            "version": ANALYSIS_VERSION,
            **analyse_maze_agent(run.load_agent(), config, episodes, n_mazes, hook, log),
        }
        write_json(file, result)
    return result


def analyse_maze_agent(
    agent,
    config: MazeConfig,
    episodes: int = 500,
    n_mazes: int = 200,
    hook: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Every maze analysis of one agent: behaviour in and out of the training distribution,
    decision squares, the cheese vector against random vectors, and channel clamping."""
    result: dict[str, Any] = {"episodes": episodes, "n_mazes": n_mazes}
    log("behaviour in and out of distribution ...")
    result["behaviour"] = behaviour_study(agent, config, episodes)
    log("decision squares ...")
    result["decisions"] = decision_square_analysis(
        agent, config, n_mazes=n_mazes, exclude_region=config.cheese_region
    )
    log("cheese vector and channel clamping ...")
    result["steering"] = steering_study(agent, config, hook, n_mazes)
    return result


def headline(result: dict[str, Any], steered: dict[str, Any] | None = None) -> dict[str, Any]:
    """The demo's few numbers, each a proportion with its 95% interval: behaviour from ``result``,
    the interventions from ``steered`` (another agent's analysis; default ``result``), each set
    against its control (random vectors, the unclamped agent) with a difference interval.
    """
    b, steering = result["behaviour"], (steered or result)["steering"]
    st, clamp = steering["steering"], steering["clamp"]
    return {
        "train_success": b["train"]["success"],
        "test_success": b["test"]["success"],
        "test_corner_first": b["test"]["corner_first"],
        "p_cheese_at_decision_squares": result["decisions"]["p_cheese"],
        "success_without_intervention": st["baseline"]["success"],
        "success_with_cheese_vector_subtracted": st["cheese_vector x -1"]["success"],
        "success_with_random_vectors": st["random x -1"]["success"],
        "cheese_vector_vs_random": steering["cheese_vector_vs_random"],
        "clamped_reaches_target": clamp["clamped_reaches_target"],
        "clamped_vs_unclamped": steering["clamped_vs_unclamped"],
    }


@dataclass
class MazeViews:
    """The maze report's pictures as data: sample trajectories, where the agent goes, and
    vector fields with the change the cheese vector makes."""

    states: list[MazeState]
    episodes: list[Episode]
    """One sampled episode from each of ``states``."""
    visits: np.ndarray
    """Visits per cell over ``visit_mazes`` test mazes."""
    visit_mazes: int
    fields: list[tuple[MazeState, VectorField, VectorField]]
    """(maze, the policy's field, its change with the cheese vector subtracted at the hook)."""


def maze_views(agent, config: MazeConfig, hook: str, seed: int = 123) -> MazeViews:
    """Eight test mazes with trajectories, visits over 300 more, and vector fields of three."""
    states = test_levels(config, 8, seed=seed)
    episodes = run_episodes_from_states(agent, states, config, seed=seed)
    many = test_levels(config, 300, seed=seed + 198, off_path=False)
    visits = visit_counts(
        run_episodes_from_states(agent, many, config, seed=seed + 198), config.world_size
    )
    batch, fields = MazeBatch(config, 1), []
    for s in states[:3]:
        obs = batch.observe(s)[None]
        v = activation(agent, obs, hook) - activation(agent, without_cheese(obs, config), hook)
        base = vector_field(agent, s, config)
        steered = vector_field(agent, s, config, fwd_hooks=[(hook, add_vector(v[0], -1.0))])
        fields.append((s, base, steered - base))
    return MazeViews(states, episodes, visits, len(many), fields)
