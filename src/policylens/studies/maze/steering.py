"""The cheese vector and channel clamping over many test mazes (Mini, Turner et al. 2023), each
against its control: random vectors of the same norm, the unclamped agent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from policylens.agents.agent import HookedAgent, HookSpec
from policylens.agents.hooks import HookPointLike
from policylens.envs.maze import MazeConfig, MazeState, generate_level
from policylens.lenses.interventions import (
    activation,
    add_vector,
    check_coefficient,
    check_hook,
    random_like,
)
from policylens.rollout import stats
from policylens.studies.maze.behaviour import summarize
from policylens.worlds.maze import MazeEpisode, run_episodes_from_states


def cheese_tracking_channels(
    agent: HookedAgent, hook: str, states: list[MazeState], config: MazeConfig, top: int = 5
) -> list[tuple[int, float]]:
    """Channels whose maps best follow the cheese: correlation of each channel's activation with
    the cheese's location (resized to the layer's grid), over mazes with the cheese moved around.
    Returns [(channel, correlation)], best first.
    """
    from policylens.envs.maze import MazeBatch

    batch = MazeBatch(config, 1)
    obs = np.stack([batch.observe(s) for s in states])
    acts = activation(agent, obs, hook)
    if acts.ndim != 4:
        raise ValueError(f"{hook} has no spatial channels (shape {tuple(acts.shape)})")
    h, w = acts.shape[-2:]
    target = torch.zeros(len(states), h, w)
    world = config.world_size
    for i, s in enumerate(states):
        target[i, s.cheese[0] * h // world, s.cheese[1] * w // world] = 1.0
    a = acts.flatten(2)  # (batch, channel, positions)
    t = target.flatten(1)[:, None, :].expand_as(a)
    a = a - a.mean(dim=(0, 2), keepdim=True)
    t = t - t.mean()
    corr = (a * t).sum((0, 2)) / (a.norm(dim=(0, 2)) * t.norm(dim=(0, 2))).clamp_min(1e-12)
    order = torch.argsort(corr, descending=True)[:top]
    return [(int(c), float(corr[c])) for c in order]


# -- experiments over many mazes ----------------------------------------------------------------


def test_levels(config: MazeConfig, n: int, seed: int, off_path: bool = True) -> list[MazeState]:
    """``n`` test mazes (cheese anywhere), by default only those where the cheese is off the
    start->corner path, so going to the corner and going to the cheese are different choices.
    """
    from policylens.envs.maze import decision_square

    test_cfg = MazeConfig(**{**config.__dict__, "cheese_region": None})
    out: list[MazeState] = []
    level = seed
    while len(out) < n:
        s = generate_level(level, test_cfg)
        level += 1
        if not off_path or decision_square(s) != (-1, -1):
            out.append(s)
    return out


def without_cheese(obs: np.ndarray, config: MazeConfig) -> np.ndarray:
    """The same observations with the cheese erased (grid: channel cleared; rgb: floor painted)."""
    from policylens.envs.maze import CHEESE, CHEESE_RGB, FLOOR_RGB

    obs = obs.copy()
    if config.obs_mode == "grid":
        obs[:, CHEESE] = 0
    else:
        is_cheese = (obs == CHEESE_RGB).all(-1)
        obs[is_cheese] = FLOOR_RGB
    return obs


def maze_steering_experiment(
    agent: HookedAgent,
    config: MazeConfig,
    hook: str,
    coefs: Sequence[float | str] = (-1.0,),
    n_mazes: int = 200,
    n_random: int = 3,
    seed: int = 20_000,
) -> dict[str, Any]:
    """The cheese-vector experiment of Mini, Turner et al., over ``n_mazes`` test mazes.

    For each maze the cheese vector is act(maze) - act(maze without cheese) at ``hook`` for the
    start observation; it is added with each coefficient of ``coefs`` (numbers, or their text
    as the CLI passes them; checked with one-sentence errors) at every step. Controls: no
    intervention, and random vectors of the same per-maze norm. Reports success and how often
    the mouse reaches the corner first, with 95% intervals, on the same mazes.
    """
    from policylens.envs.maze import MazeBatch

    check_hook(agent, hook)
    checked = [check_coefficient(c) for c in coefs]
    states = test_levels(config, n_mazes, seed)
    batch = MazeBatch(config, 1)
    obs = np.stack([batch.observe(s) for s in states])
    vectors = activation(agent, obs, hook) - activation(agent, without_cheese(obs, config), hook)

    def measure(fwd_hooks: list[HookSpec]) -> list[MazeEpisode]:
        return run_episodes_from_states(agent, states, config, fwd_hooks=fwd_hooks, seed=seed)

    def report(eps: list[MazeEpisode]) -> dict[str, Any]:
        s = summarize(eps)
        return {"success": s["success"], "corner_first": s["corner_first"], "length": s["length"]}

    result: dict[str, Any] = {"hook": hook, "n_mazes": n_mazes, "baseline": report(measure([]))}
    result["vector_norm"] = stats.mean(vectors.flatten(1).norm(dim=1).numpy())
    for coef in checked:
        result[f"cheese_vector x {coef:g}"] = report(measure([(hook, add_vector(vectors, coef))]))
        randoms = [
            measure([(hook, add_vector(random_like(vectors, seed + k, per_row=True), coef))])
            for k in range(n_random)
        ]
        result[f"random x {coef:g}"] = {
            **report([e for eps in randoms for e in eps]),
            "per_vector_success": [summarize(eps)["success"]["rate"] for eps in randoms],
        }
    return result


def check_channels(
    agent: HookedAgent, config: MazeConfig, hook: str, channels: Sequence[int]
) -> None:
    """Refuse a hook without channel maps, or a channel it does not have, in one sentence."""
    from policylens.envs.maze import MazeBatch

    check_hook(agent, hook)
    obs = MazeBatch(config, 1).obs_space.sample()[None] * 0
    act = activation(agent, obs, hook)
    if act.ndim != 4:
        raise ValueError(
            f"{hook} has no channel maps (shape {tuple(act.shape)}); clamp a conv layer"
        )
    for ch in channels:
        if not 0 <= ch < act.shape[1]:
            raise ValueError(
                f"clamp_channels {ch} does not exist at {hook} (channels 0 to {act.shape[1] - 1})"
            )


def maze_clamp_experiment(
    agent: HookedAgent,
    config: MazeConfig,
    hook: str,
    channels: Sequence[int],
    value: float,
    n_mazes: int = 200,
    seed: int = 30_000,
    max_steps: int = 60,
) -> dict[str, Any]:
    """Retargeting by clamping: clamp ``channels`` at a target cell (a random free cell far from
    the cheese, mapped to the layer's grid) and measure how often the mouse visits that cell
    within ``max_steps``, against the same mazes without the clamp.
    """
    check_channels(agent, config, hook, channels)
    rng = np.random.default_rng(seed)
    states = test_levels(config, n_mazes, seed, off_path=False)
    targets = []
    for s in states:
        cells = [p for p in s.free_cells() if p not in (s.cheese, s.start)]
        far = [p for p in cells if abs(p[0] - s.cheese[0]) + abs(p[1] - s.cheese[1]) >= 4] or cells
        targets.append(far[int(rng.integers(len(far)))])
    obs = np.stack([_obs(config, s) for s in states])
    h, w = activation(agent, obs[:1], hook).shape[-2:]
    world = config.world_size
    mask = torch.zeros(len(states), h, w)
    for i, (r, c) in enumerate(targets):
        mask[i, r * h // world, c * w // world] = 1.0
    value = check_coefficient(value)

    def clamp(act: torch.Tensor, hook: HookPointLike) -> torch.Tensor:
        out = act.clone()
        for ch in channels:
            out[:, ch] = mask.to(act.dtype) * value
        return out

    limited = MazeConfig(**{**config.__dict__, "max_steps": max_steps})

    def reached(fwd_hooks: list[HookSpec]) -> list[bool]:
        eps = run_episodes_from_states(agent, states, limited, fwd_hooks=fwd_hooks, seed=seed)
        return [t in e.positions for e, t in zip(eps, targets, strict=True)]

    return {
        "hook": hook,
        "channels": list(channels),
        "value": value,
        "n_mazes": n_mazes,
        "max_steps": max_steps,
        "baseline_reaches_target": stats.proportion(reached([])),
        "clamped_reaches_target": stats.proportion(reached([(hook, clamp)])),
    }


def _obs(config: MazeConfig, state: MazeState) -> np.ndarray:
    from policylens.envs.maze import MazeBatch

    return MazeBatch(config, 1).observe(state)
