"""What an agent does: episodes in any world, and success / path-efficiency / corner-bias figures.

Policies are sampled (not argmax), as in procgen practice: a memoryless greedy policy loops in a
perfect maze. Each environment slot contributes only its first episode, so short episodes are
not over-counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from policylens.envs import make_vec
from policylens.rollout import stats


@dataclass
class Episode:
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


def run_episodes(
    agent,
    episodes: int,
    env_id: str = "policylens/Maze-v0",
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 10_000,
    greedy: bool = False,
    fwd_hooks: list | None = None,
    max_envs: int = 256,
) -> list[Episode]:
    """Run ``episodes`` episodes (one per env slot, in waves of ``max_envs``), optionally hooked."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env_kwargs = dict(env_kwargs or {})
    generator = torch.Generator().manual_seed(seed)
    done_eps: list[Episode] = []
    wave = 0
    while len(done_eps) < episodes:
        n = min(max_envs, episodes - len(done_eps))
        envs = make_vec(env_id, n, **env_kwargs)
        obs, infos = envs.reset(seed=seed + wave * max_envs)
        wave += 1
        done_eps.extend(_first_episodes(agent, envs, obs, infos, greedy, generator, fwd_hooks))
        envs.close()
    return done_eps


def run_episodes_from_states(
    agent,
    states: list,
    config,
    fwd_hooks: list | None = None,
    seed: int = 10_000,
    greedy: bool = False,
) -> list[Episode]:
    """One episode from each given maze state (same mazes for every condition of an experiment).

    Batch row ``i`` of every hooked activation belongs to ``states[i]``, so per-maze
    interventions can be passed as batched tensors.
    """
    from policylens.envs.maze import MazeVecEnv

    envs = MazeVecEnv(num_envs=len(states), **config.__dict__)
    envs.reset(seed=seed)
    for i, s in enumerate(states):
        envs.set_state(i, s)
    obs, infos = envs.batch.obs.copy(), envs.batch.infos()
    generator = torch.Generator().manual_seed(seed)
    return _first_episodes(agent, envs, obs, infos, greedy, generator, fwd_hooks)


def _first_episodes(agent, envs, obs, infos, greedy, generator, fwd_hooks) -> list[Episode]:
    """Step ``envs`` until every slot has finished its first episode; return those episodes."""
    n = envs.num_envs
    greedy = greedy or getattr(agent, "output", None) == "q"  # a Q-network's policy is its argmax
    eps = [_start_episode(infos, i) for i in range(n)]
    active = np.ones(n, dtype=bool)
    with agent.hooks(fwd_hooks=fwd_hooks or []):
        while active.any():
            with torch.no_grad():
                logits, _ = agent(obs)
            if greedy:
                actions = logits.argmax(-1)
            else:
                probs = torch.softmax(logits.float().cpu(), -1)
                actions = torch.multinomial(probs, 1, generator=generator)[:, 0]
            obs, reward, terminated, truncated, infos = envs.step(actions.cpu().numpy())
            final = infos.get("final_info", infos)
            for i in np.nonzero(active)[0]:
                ep = eps[i]
                ep.ret += float(reward[i])
                ep.length += 1
                ended = terminated[i] or truncated[i]
                src = final if ended else infos
                if "mouse_pos" in src:
                    ep.positions.append(tuple(int(v) for v in src["mouse_pos"][i]))
                if ended:
                    ep.success = (
                        bool(src["success"][i]) if "success" in src else bool(terminated[i])
                    )
                    active[i] = False
    return eps


def _start_episode(infos: dict[str, Any], i: int) -> Episode:
    ep = Episode(ret=0.0, length=0, success=False)
    if "mouse_pos" in infos:
        ep.positions = [tuple(int(v) for v in infos["mouse_pos"][i])]
        ep.level_seed = int(infos["level_seed"][i])
        ep.shortest = int(infos["dist_to_cheese"][i])
        ep.cheese = tuple(int(v) for v in infos["cheese_pos"][i])
        ep.corner = tuple(int(v) for v in infos["corner_pos"][i])
        ep.decision_square = tuple(int(v) for v in infos["decision_square"][i])
    return ep


def summarize(episodes: list[Episode]) -> dict[str, Any]:
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
                np.mean([e.length for e in wins]) / max(np.mean([e.shortest for e in wins]), 1e-9)
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


def evaluate(
    agent,
    episodes: int = 500,
    env_id: str = "policylens/Maze-v0",
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 10_000,
    greedy: bool = False,
    fwd_hooks: list | None = None,
) -> dict[str, Any]:
    """Run and summarise ``episodes`` episodes of ``agent`` (see :func:`summarize`)."""
    eps = run_episodes(agent, episodes, env_id, env_kwargs, seed, greedy, fwd_hooks)
    return {"env_id": env_id, "env_kwargs": env_kwargs or {}, "greedy": greedy, **summarize(eps)}


def visit_counts(episodes: list[Episode], world_size: int) -> np.ndarray:
    """How often the mouse stood on each cell, summed over episodes (for heatmaps)."""
    counts = np.zeros((world_size, world_size))
    for e in episodes:
        for r, c in e.positions:
            counts[r, c] += 1
    return counts
