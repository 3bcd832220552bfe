"""Whole episodes of an agent in the hazard world, kept step by step for galleries and GIFs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from policylens.agents.agent import HookedAgent
from policylens.envs.hazards import HazardsConfig, HazardsState, generate_level
from policylens.rollout.engine import EpisodeOptions, Labels, policy_for, run_episodes
from policylens.worlds.hazards import ENV_ID

TRACE = ("agent_pos", "enemy_pos", "enemy_dir", "enemy_valid", "level_seed")


@dataclass
class HazardsEpisode:
    """One played level: its start, where the agent and enemies were at every step, how it ended."""

    start: HazardsState
    agent: np.ndarray
    """(steps + 1, 2) agent centres, the start included."""
    enemies: np.ndarray
    """(steps + 1, E, 2) enemy centres."""
    enemy_dirs: np.ndarray
    """(steps + 1, E) enemy directions."""
    success: bool
    death_cause: str

    def state_at(self, t: int) -> HazardsState:
        """The level as it stood after ``t`` steps."""
        return self.start.copy(
            agent=tuple(self.agent[t]), enemies=self.enemies[t], enemy_dirs=self.enemy_dirs[t]
        )


def play_levels(
    agent: HookedAgent,
    env_kwargs: dict[str, Any],
    n: int,
    *,
    seed: int = 30_000,
    greedy: bool = False,
) -> list[HazardsEpisode]:
    """``n`` episodes of ``agent`` (one per env slot, levels drawn as ``env_kwargs`` say)."""
    options = EpisodeOptions(
        seed=seed, policy=policy_for(agent, greedy),
        labels=Labels(trace=TRACE, end=("death_cause",)),
    )  # fmt: skip
    eps = run_episodes(agent, n, ENV_ID, {**env_kwargs, "masks": False}, options)
    config = HazardsConfig.from_kwargs({**env_kwargs, "masks": False})
    out = []
    for e in eps:
        valid = np.asarray(e.trace["enemy_valid"][0], dtype=bool)
        out.append(
            HazardsEpisode(
                start=generate_level(int(e.trace["level_seed"][0]), config),
                agent=np.array(e.trace["agent_pos"], dtype=float),
                enemies=np.array(e.trace["enemy_pos"], dtype=float)[:, valid],
                enemy_dirs=np.array(e.trace["enemy_dir"])[:, valid],
                success=e.success,
                death_cause=str(e.end["death_cause"]),
            )
        )
    return out
