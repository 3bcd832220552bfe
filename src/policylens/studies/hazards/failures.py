"""The failure table: how often an agent completes hazard levels, and what ends those it fails.

Hilton et al. (2020) dissect a CoinRun agent's failures by cause, and show that hiding buzzsaws
from its observation turns many more levels into buzzsaw deaths. Here every episode's cause is
the world's ground truth (``info["death_cause"]``: saw, enemy, lava, fell, timeout, or multiple
when several hazards struck in the same step), each rate with a 95% Wilson interval, on the levels
the agent trained on and on levels it never saw. A hidden hazard is set against the same levels,
played with the same random numbers, with it shown (Newcombe interval of the difference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policylens.errors import check_known
from policylens.rollout import stats
from policylens.rollout.engine import policy_for, run_episodes
from policylens.runs import Run

ENV_ID = "policylens/Hazards-v0"
FAILURE_CAUSES = ("saw", "enemy", "lava", "fell", "timeout", "multiple")
INVISIBLE = {"saws": "invisible_saws", "enemies": "invisible_enemies"}
"""``--invisible`` choices and the world option each sets."""


def failure_table(
    agent: Any,
    episodes: int,
    env_kwargs: dict[str, Any],
    *,
    seed: int = 10_000,
    greedy: bool = False,
) -> dict[str, Any]:
    """Completion and the failure table of ``agent`` over ``episodes`` levels of the hazard world.

    Each cause is given as a share of all levels (``of_levels``) and of the failed ones
    (``of_failures``); enemy deaths are split by the side the agent met the enemy on.
    """
    eps = run_episodes(
        agent, episodes, ENV_ID, {**env_kwargs, "masks": False}, seed=seed,
        policy=policy_for(agent, greedy), end_labels=("death_cause", "enemy_side"),
    )  # fmt: skip
    causes = np.array([e.end["death_cause"] for e in eps])
    success = np.array([e.success for e in eps])
    failed = ~success
    table = {
        cause: {
            "of_levels": stats.proportion(causes == cause),
            "of_failures": stats.proportion(causes[failed] == cause),
        }
        for cause in FAILURE_CAUSES
    }
    sides = [e.end["enemy_side"] for e in eps if e.end["death_cause"] == "enemy"]
    return {
        "env_kwargs": dict(env_kwargs),
        "episodes": len(eps),
        "completion": stats.proportion(success),
        "failures": table,
        "enemy_sides": {side: sides.count(side) for side in ("front", "back", "above")},
        "length": stats.mean([e.length for e in eps]),
    }


def hidden_vs_shown(hidden: dict[str, Any], shown: dict[str, Any]) -> dict[str, Any]:
    """Differences (hidden - shown) of completion and of each cause's share of levels."""
    out = {"completion": stats.difference(hidden["completion"], shown["completion"])}
    for cause in FAILURE_CAUSES:
        out[cause] = stats.difference(
            hidden["failures"][cause]["of_levels"], shown["failures"][cause]["of_levels"]
        )
    return out


def level_splits(env_kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The training levels, and unseen ones (seeds from the first after them upward).

    A run trained on unlimited levels (``num_levels=0``) has no unseen levels: only its
    training distribution is returned.
    """
    num = int(env_kwargs.get("num_levels", 0))
    start = int(env_kwargs.get("start_level", 0))
    splits = {"training": dict(env_kwargs)}
    if num:
        splits = {"unseen": {**env_kwargs, "num_levels": 0, "start_level": start + num}, **splits}
    return splits


def failure_study(
    run: Run,
    episodes: int,
    invisible: Sequence[str] = (),
    *,
    seed: int = 10_000,
    greedy: bool = False,
    step: int | None = None,
) -> dict[str, Any]:
    """The failure tables of a hazard run's agent on unseen and on training levels.

    Each hazard in ``invisible`` ("saws", "enemies") adds, per split, the table with it hidden
    from the observation (``hidden[hazard]``) and the differences from the table with everything
    shown (``hidden_vs_shown[hazard]``).
    """
    trainer = run.config.get("trainer", {})
    if trainer.get("env_id") != ENV_ID:
        raise ValueError(
            f"{run.path} was trained in {trainer.get('env_id')}, not {ENV_ID}; the failure table "
            "needs a hazard-world run (`policylens train hazards`)."
        )
    for hazard in invisible:
        check_known([hazard], INVISIBLE, "--invisible choice")
    if episodes < 1:
        raise ValueError(f"--levels must be >= 1, got {episodes}.")
    agent_step, _ = run.checkpoint(step)
    agent = run.load_agent(agent_step)
    splits: dict[str, Any] = {}
    for name, env_kwargs in level_splits(trainer.get("env_kwargs", {})).items():
        shown = failure_table(agent, episodes, env_kwargs, seed=seed, greedy=greedy)
        hidden = {
            hazard: failure_table(
                agent, episodes, {**env_kwargs, INVISIBLE[hazard]: True}, seed=seed, greedy=greedy
            )
            for hazard in invisible
        }
        splits[name] = {
            "shown": shown,
            "hidden": hidden,
            "hidden_vs_shown": {h: hidden_vs_shown(t, shown) for h, t in hidden.items()},
        }
    return {
        "run": str(run.path),
        "step": agent_step,
        "episodes": episodes,
        "policy": "greedy" if greedy else "sampled",
        "invisible": list(invisible),
        "splits": splits,
    }
