"""The goal-misgeneralization study of a maze run, end to end: behaviour in and out of the
training distribution, decision squares, the cheese vector and channel clamping; results are
saved under ``run/analysis/`` and reused when the checkpoint has not changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from policylens.analysis.behaviour import evaluate
from policylens.analysis.decisions import decision_square_analysis
from policylens.analysis.interventions import (
    activation,
    cheese_tracking_channels,
    maze_clamp_experiment,
    maze_steering_experiment,
    test_levels,
)
from policylens.envs.maze import MazeBatch, MazeConfig
from policylens.io import read_json, write_json
from policylens.train.runs import Run


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
    return {"hook": hook, "steering": steering, "cheese_channels": channels, "clamp": clamp}


def analyse_maze_run(
    run: Run,
    episodes: int = 500,
    n_mazes: int = 200,
    hook: str | None = None,
    force: bool = False,
    log=print,
) -> dict[str, Any]:
    """Run (or reuse) every maze analysis for the run's latest checkpoint; saves analysis/maze.json."""
    step, _ = run.checkpoint()
    file = run.path / "analysis" / "maze.json"
    if file.exists() and not force:
        cached = read_json(file)
        if (
            cached.get("step") == step
            and cached.get("episodes") == episodes
            and cached.get("n_mazes") == n_mazes
        ):
            return cached
    agent = run.load_agent()
    config = maze_config(run)
    result: dict[str, Any] = {"step": step, "episodes": episodes, "n_mazes": n_mazes}
    log("behaviour in and out of distribution ...")
    result["behaviour"] = behaviour_study(agent, config, episodes)
    log("decision squares ...")
    region = config.cheese_region
    result["decisions"] = decision_square_analysis(
        agent, config, n_mazes=n_mazes, exclude_region=region
    )
    log("cheese vector and channel clamping ...")
    result["steering"] = steering_study(agent, config, hook, n_mazes)
    write_json(file, result)
    return result


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The few numbers the demo prints."""
    b, st = result["behaviour"], result["steering"]["steering"]
    return {
        "train_success": b["train"]["success"]["rate"],
        "train_path_ratio": b["train"]["path_ratio"],
        "test_success": b["test"]["success"]["rate"],
        "test_corner_first": b["test"]["corner_first"]["rate"],
        "p_cheese_at_decision_squares": result["decisions"]["p_cheese"]["rate"],
        "success_with_cheese_vector_subtracted": st["cheese_vector x -1"]["success"]["rate"],
        "success_with_random_vectors": st["random x -1"]["success"]["rate"],
        "success_without_intervention": st["baseline"]["success"]["rate"],
    }
