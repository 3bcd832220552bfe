"""LunarLander with the fuel term split out into reward variants (isolating updates): its recipe
and action names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policylens.envs.lunar import check_variant
from policylens.train.ppo import PPOConfig
from policylens.worlds.base import World

ENV_ID = "policylens/LunarLander-v0"
ACTIONS = ("noop", "left_engine", "main_engine", "right_engine")
"""Gymnasium's LunarLander actions, in order."""

LUNAR_STEPS = 300_000
"""Default phase-1 length of the LunarLander recipe (see the updates report for its landing rate)."""


@dataclass(frozen=True)
class LunarRecipe:
    """PPO on LunarLander paying ``reward_variant`` (the "isolating updates" experiment).

    Long-horizon settings (gamma 0.999, lambda 0.98, 4 epochs of 64-sample minibatches, entropy
    0.01, as in RL Zoo's LunarLander PPO) with 64x64 tanh MLPs for policy and value, separate
    as in SB3's MlpPolicy (a shared trunk did not learn to land in 300k steps).
    ``seed`` also seeds the network's initialisation (train_ppo and SB3 both do). One torch
    thread: on a shared 2-core machine a second thread made small-MLP forwards ~10x slower.
    """

    reward_variant: str = "no_fuel"
    total_steps: int | None = None
    seed: int = 0
    hidden: tuple[int, ...] = (64, 64)
    num_envs: int = 16
    num_steps: int = 256
    learning_rate: float = 3e-4
    env_id: str = ENV_ID

    def __post_init__(self) -> None:
        self.config()  # refuse bad settings now, in the world's own words

    def config(self) -> PPOConfig:
        """The trainer config of these settings."""
        check_variant(self.reward_variant)
        batch = self.num_envs * self.num_steps
        # minibatches of 64 samples (RL Zoo's size), or the nearest division of the batch
        minibatches = next((d for d in range(max(batch // 64, 1), 0, -1) if batch % d == 0), 1)
        return PPOConfig(
            env_id=self.env_id,
            env_kwargs={"reward_variant": self.reward_variant},
            arch="mlp",
            arch_kwargs={"hidden": list(self.hidden), "activation": "tanh", "separate_value": True},
            total_steps=LUNAR_STEPS if self.total_steps is None else self.total_steps,
            num_envs=self.num_envs,
            num_steps=self.num_steps,
            learning_rate=self.learning_rate,
            anneal_lr=True,
            gamma=0.999,
            gae_lambda=0.98,
            update_epochs=4,
            num_minibatches=minibatches,
            clip_coef=0.2,
            ent_coef=0.01,
            vf_coef=0.5,
            max_grad_norm=0.5,
            seed=self.seed,
            threads=1,
        )


class LunarWorld(World):
    """LunarLander: observations are 8 numbers (drawn as bars)."""

    name = "lunar"
    env_id = ENV_ID
    headline = "policylens.studies.lunar_updates.evaluation:headline_results"
    recipe = LunarRecipe

    @classmethod
    def world_actions(cls, env_kwargs: Mapping[str, Any]) -> Sequence[str]:
        return ACTIONS
