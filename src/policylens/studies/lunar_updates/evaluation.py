"""Evaluation of the study's models: full lunar-lander episodes, scored under every reward variant.

Reward variants only re-weight the same two reward terms (the reward never feeds back into the
dynamics), so a model plays one set of episodes under the standard reward and each variant's
return is recomputed from the two terms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from policylens import worlds
from policylens.agents.agent import HookedAgent
from policylens.rollout import stats
from policylens.rollout.engine import EpisodeOptions, Labels, Policy, run_episodes
from policylens.runs import Run

END_FLAGS = ("landed", "landed_on_pad", "crashed")
"""World labels of an episode's last step that the evaluation counts."""


def ensure_lunar_world() -> str:
    """The lunar world's env id, checking that policylens.envs registered it."""
    from policylens.envs import WORLDS

    env_id = worlds.get("lunar").env_id
    if env_id not in WORLDS:
        raise ValueError(
            f"The world {env_id} is not registered; reinstall policylens (policylens.envs "
            "registers it on import)."
        )
    return env_id


def variant_coefficients() -> dict[str, tuple[float, float]]:
    """Reward variant -> (coefficient of the fuel-free reward, coefficient of the fuel term)."""
    from policylens.envs import lunar

    return dict(lunar._COEFFS)


def lunar_episodes(
    agent: HookedAgent, episodes: int, seed: int, greedy: bool = False
) -> dict[str, list]:
    """Play ``episodes`` full lunar-lander episodes (one per env slot) with the rollout engine.

    Returns per-episode lists of the fuel-free return ``base``, the fuel term ``fuel`` (<= 0),
    ``length``, ``landed``, ``landed_on_pad``, ``crashed`` and ``truncated`` (time limit).
    """
    options = EpisodeOptions(
        seed=seed,
        policy=Policy(greedy=greedy),
        max_envs=episodes,
        labels=Labels(sums=("reward_base", "fuel"), end=END_FLAGS),
    )
    eps = run_episodes(agent, episodes, ensure_lunar_world(), {"reward_variant": "fuel"}, options)
    return {
        "base": [e.sums["reward_base"] for e in eps],
        "fuel": [e.sums["fuel"] for e in eps],
        "length": [e.length for e in eps],
        **{k: [bool(e.end[k]) for e in eps] for k in (*END_FLAGS, "truncated")},
    }


def summarize_episodes(eps: dict[str, list]) -> dict[str, Any]:
    """Returns under every reward variant, fuel used and landing rates, with 95% intervals."""
    base, fuel = np.asarray(eps["base"]), np.asarray(eps["fuel"])
    out: dict[str, Any] = {
        "episodes": len(base),
        "return": {
            v: stats.mean(b * base + f * fuel) for v, (b, f) in variant_coefficients().items()
        },
        "fuel_used": stats.mean(-fuel),
        "length": stats.mean(eps["length"]),
    }
    for k in (*END_FLAGS, "truncated"):
        out[k] = stats.proportion(eps[k])
    return out


def evaluate_weights(
    agent: HookedAgent,
    state: dict[str, torch.Tensor],
    episodes: int,
    seed: int,
    greedy: bool = False,
) -> dict[str, Any]:
    """Load ``state`` into ``agent`` and play ``episodes`` seeded episodes: summary and lists."""
    agent.load_net_state_dict(state, source="the evaluated weights")
    eps = lunar_episodes(agent, episodes, seed, greedy)
    return {"summary": summarize_episodes(eps), "episodes": eps}


def headline_results(
    run: Run, episodes: int = 200, seed: int = 10_000
) -> dict[str, dict[str, Any]]:
    """A lunar agent's headline figures (a zoo entry's ``results.json``): landing rate, fuel used
    per episode and the returns without and with the fuel term, sampled actions, with 95%
    intervals."""
    summary = summarize_episodes(lunar_episodes(run.load_agent(), episodes, seed))
    return {
        "landed": summary["landed"],
        "fuel_used": summary["fuel_used"],
        **{f"return_{v}": summary["return"][v] for v in ("no_fuel", "scaled_fuel")},
    }


__all__ = [
    "ensure_lunar_world",
    "headline_results",
    "evaluate_weights",
    "lunar_episodes",
    "summarize_episodes",
    "variant_coefficients",
]
