"""Interventions on activations: patching, steering vectors and channel clamping.

Each returns hook functions for ``agent.hooks(fwd_hooks=...)`` / ``run_with_hooks``, so any
intervention composes with any rollout or analysis. Effects on behaviour are measured over many
mazes with confidence intervals (see :func:`maze_steering_experiment`), never from one example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from policylens.envs.maze import MazeConfig, MazeState, generate_level
from policylens.rollout import stats
from policylens.studies.maze.behaviour import run_episodes_from_states, summarize

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


def _check_hook(agent, name: str) -> None:
    names = agent.hook_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
        raise ValueError(
            f"unknown hook {name!r}; closest: {', '.join(close) or 'none'} (see agent.hook_names())"
        )


def _check_coefficient(coef: Any) -> float:
    try:
        value = float(coef)
    except (TypeError, ValueError):
        raise ValueError(f"coefficient must be a number, got {coef!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"coefficient must be finite, got {coef!r}")
    return value


# -- patching ---------------------------------------------------------------------------------


def patch_activations(
    agent,
    target_obs,
    source_obs,
    hooks: Sequence[str],
    positions: Sequence[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``target_obs`` with activations at ``hooks`` (optionally only at spatial ``positions``)
    taken from a run on ``source_obs``; returns (logits, value).
    """
    for name in hooks:
        _check_hook(agent, name)
    _, cache = agent.run_with_cache(source_obs, names=list(hooks))

    def make(name: str) -> HookFn:
        src = cache[name]

        def fn(act: torch.Tensor, hook) -> torch.Tensor:
            if src.shape != act.shape:
                raise ValueError(
                    f"cannot patch {name}: source activations {tuple(src.shape)} vs target {tuple(act.shape)}; "
                    "use batches of the same size"
                )
            if positions is None:
                return src.to(act.dtype)
            out = act.clone()
            for r, c in positions:
                _check_position(act, r, c, name)
                out[..., r, c] = src[..., r, c]
            return out

        return fn

    return agent.run_with_hooks(target_obs, fwd_hooks=[(n, make(n)) for n in hooks])


def _check_position(act: torch.Tensor, r: int, c: int, name: str) -> None:
    if act.ndim < 3:
        raise ValueError(
            f"{name} has no spatial dimensions (shape {tuple(act.shape)}); positions need a conv layer"
        )
    h, w = act.shape[-2:]
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"position {(r, c)} is outside {name}'s {h}x{w} grid")


# -- steering vectors -------------------------------------------------------------------------


def activation(agent, obs, hook: str) -> torch.Tensor:
    """Activations at one hook for a batch of observations (detached)."""
    _check_hook(agent, hook)
    _, cache = agent.run_with_cache(obs, names=[hook])
    return cache[hook]


def contrast_vector(agent, obs_a, obs_b, hook: str) -> torch.Tensor:
    """Mean activation of ``obs_a`` minus mean activation of ``obs_b`` at ``hook``."""
    return activation(agent, obs_a, hook).mean(0) - activation(agent, obs_b, hook).mean(0)


def add_vector(vector: torch.Tensor, coef: float = 1.0) -> HookFn:
    """A hook adding ``coef * vector`` (broadcast over the batch, or one vector per batch row)."""
    coef = _check_coefficient(coef)

    def fn(act: torch.Tensor, hook) -> torch.Tensor:
        v = vector.to(act.device, act.dtype)
        if v.shape != act.shape and v.shape != act.shape[1:]:
            raise ValueError(
                f"steering vector of shape {tuple(v.shape)} does not fit activations {tuple(act.shape)} at {hook.name}"
            )
        return act + coef * v

    return fn


def random_like(vector: torch.Tensor, seed: int, per_row: bool = False) -> torch.Tensor:
    """A random Gaussian direction with the norm of ``vector`` (of each batch row if ``per_row``)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(vector.shape, generator=g, dtype=vector.dtype)
    if per_row:
        shape = (-1,) + (1,) * (vector.ndim - 1)
        norm_v = vector.flatten(1).norm(dim=1).view(shape)
        return r * (norm_v / r.flatten(1).norm(dim=1).view(shape).clamp_min(1e-12))
    return r * (vector.norm() / r.norm().clamp_min(1e-12))


# -- channel clamping -------------------------------------------------------------------------


def clamp_channels(
    channels: Sequence[int],
    value: float,
    positions: Sequence[tuple[int, int]] | None = None,
    zero_elsewhere: bool = True,
) -> HookFn:
    """A hook fixing ``channels`` to ``value`` at ``positions`` (all positions when None).

    With ``zero_elsewhere`` the rest of each clamped channel is set to 0, so the channel encodes
    only the chosen place (Mini, Turner et al. retarget the mouse this way).
    """
    value = _check_coefficient(value)

    def fn(act: torch.Tensor, hook) -> torch.Tensor:
        if act.ndim != 4:
            raise ValueError(f"{hook.name} has no channels x positions (shape {tuple(act.shape)})")
        out = act.clone()
        for ch in channels:
            if not 0 <= ch < act.shape[1]:
                raise ValueError(
                    f"channel {ch} does not exist at {hook.name} ({act.shape[1]} channels)"
                )
            if positions is None:
                out[:, ch] = value
                continue
            if zero_elsewhere:
                out[:, ch] = 0
            for r, c in positions:
                _check_position(act, r, c, hook.name)
                out[:, ch, r, c] = value
        return out

    return fn


def cheese_tracking_channels(
    agent, hook: str, states: list[MazeState], config: MazeConfig, top: int = 5
):
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
    out, level = [], seed
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
    agent,
    config: MazeConfig,
    hook: str,
    coefs: Sequence[float] = (-1.0,),
    n_mazes: int = 200,
    n_random: int = 3,
    seed: int = 20_000,
) -> dict[str, Any]:
    """The cheese-vector experiment of Mini, Turner et al., over ``n_mazes`` test mazes.

    For each maze the cheese vector is act(maze) - act(maze without cheese) at ``hook`` for the
    start observation; it is added with each coefficient at every step. Controls: no
    intervention, and random vectors of the same per-maze norm. Reports success and how often
    the mouse reaches the corner first, with 95% intervals, on the same mazes.
    """
    from policylens.envs.maze import MazeBatch

    _check_hook(agent, hook)
    coefs = [_check_coefficient(c) for c in coefs]
    states = test_levels(config, n_mazes, seed)
    batch = MazeBatch(config, 1)
    obs = np.stack([batch.observe(s) for s in states])
    vectors = activation(agent, obs, hook) - activation(agent, without_cheese(obs, config), hook)

    def measure(fwd_hooks) -> list:
        return run_episodes_from_states(agent, states, config, fwd_hooks=fwd_hooks, seed=seed)

    def report(eps: list) -> dict[str, Any]:
        s = summarize(eps)
        return {"success": s["success"], "corner_first": s["corner_first"], "length": s["length"]}

    result: dict[str, Any] = {"hook": hook, "n_mazes": n_mazes, "baseline": report(measure([]))}
    result["vector_norm"] = stats.mean(vectors.flatten(1).norm(dim=1).numpy())
    for coef in coefs:
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


def maze_clamp_experiment(
    agent,
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
    _check_hook(agent, hook)
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
    value = _check_coefficient(value)

    def clamp(act: torch.Tensor, hook) -> torch.Tensor:
        out = act.clone()
        for ch in channels:
            if not 0 <= ch < act.shape[1]:
                raise ValueError(
                    f"channel {ch} does not exist at {hook.name} ({act.shape[1]} channels)"
                )
            out[:, ch] = mask.to(act.dtype) * value
        return out

    limited = MazeConfig(**{**config.__dict__, "max_steps": max_steps})

    def reached(fwd_hooks) -> list[bool]:
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
