"""The rook-checkmate endgame (SAEs on a DQN, DuPlessie): its recipes, action names, board
drawing and the concepts probes read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policylens.envs.chess import RookEndgameConfig, action_names, board_image, position_from_obs
from policylens.lenses.attribution import Attribution
from policylens.rollout import engine
from policylens.train.dqn import DQNConfig
from policylens.train.ppo import PPOConfig
from policylens.worlds.base import World

ENV_ID = "policylens/RookEndgame-v0"

CHESS_STEPS = 250_000
"""Default training length of the chess recipe (about 13 minutes on 2 shared cores, load ~8)."""


@dataclass(frozen=True)
class ChessRecipe:
    """DQN (tuned, see BENCHMARKS.md) or PPO (untuned baseline) on the 5x5 rook endgame.

    Returns a :class:`~policylens.train.dqn.DQNConfig` for ``algo="dqn"`` and a
    :class:`PPOConfig` for ``algo="ppo"``. ``mask_illegal`` (DQN only) restricts acting and
    bootstrapping to legal moves; without it the agent learns legality from the -100 penalty.
    """

    algo: str = "dqn"
    opponent: str = "random"
    total_steps: int | None = None
    seed: int = 0
    mask_illegal: bool = False

    def __post_init__(self) -> None:
        self.config()  # refuse bad settings now, in the world's own words

    def config(self) -> PPOConfig | DQNConfig:
        """The trainer config of these settings."""
        if self.algo not in ("dqn", "ppo"):
            raise ValueError(f"algo must be 'dqn' or 'ppo', got {self.algo!r}.")
        if self.mask_illegal and self.algo != "dqn":
            raise ValueError("mask_illegal applies to DQN only; drop it or use algo='dqn'.")
        env_kwargs: dict = {"opponent": self.opponent}
        RookEndgameConfig.from_kwargs(env_kwargs)  # fail early, with the world's own message
        if self.algo == "ppo":
            return PPOConfig(
                env_id=ENV_ID,
                env_kwargs=env_kwargs,
                arch="mlp",
                arch_kwargs={"hidden": [256, 256], "activation": "relu"},
                total_steps=CHESS_STEPS if self.total_steps is None else self.total_steps,
                num_envs=32,
                num_steps=64,
                learning_rate=5e-4,
                gamma=0.99,
                gae_lambda=0.95,
                update_epochs=4,
                ent_coef=0.01,
                seed=self.seed,
                threads=1,
            )
        return DQNConfig(
            env_id=ENV_ID,
            env_kwargs=env_kwargs,
            arch="mlp",
            arch_kwargs={"hidden": [256, 256], "activation": "relu"},
            total_steps=CHESS_STEPS if self.total_steps is None else self.total_steps,
            learning_rate=2.5e-4,
            anneal_lr=True,
            gamma=0.99,
            n_step=3,
            double_dqn=True,
            end_epsilon=0.1,
            exploration_fraction=0.1,
            learning_starts=5_000,
            train_frequency=4,
            batch_size=128,
            buffer_size=100_000,
            target_update=4_000,
            reward_scale=0.01,
            mask_illegal=self.mask_illegal,
            seed=self.seed,
        )


class RookWorld(World):
    """The rook endgame: the board drawn from the observation's three one-hot planes."""

    name = "rook"
    env_id = ENV_ID
    headline = "policylens.studies.rook_sae.play:headline_results"
    recipe = ChessRecipe
    concepts = (
        "in_check",
        "num_attacked",
        "black_king_edge_distance",
        "can_mate",
        "rook_en_prise",
    )
    end_labels = ("outcome",)
    labels = ("in_check", "can_mate", "rook_en_prise")

    def render(self) -> dict[str, Any]:
        return {"kind": "chess", "size": int(self.env_kwargs.get("board_size", 5))}

    def input_map(self, attribution: Attribution) -> np.ndarray:
        n = int(self.env_kwargs.get("board_size", 5))
        return attribution.attributions[0].detach().reshape(3, n, n).sum(0).numpy()

    def outcome(self, ep: engine.Episode) -> str:
        return str(ep.end.get("outcome") or ("truncated" if ep.end.get("truncated") else "end"))

    @classmethod
    def world_actions(cls, env_kwargs: Mapping[str, Any]) -> Sequence[str]:
        return action_names(
            int(env_kwargs.get("board_size", 5)), str(env_kwargs.get("rules", "policylens"))
        )

    @classmethod
    def picture(cls, obs: np.ndarray, env_kwargs: Mapping[str, Any]) -> np.ndarray | None:
        """The board the observation's three planes show."""
        obs = np.asarray(obs)
        pos = position_from_obs(obs, str(env_kwargs.get("rules", "policylens")))
        return board_image(pos, board_size=int(round(np.sqrt(obs.size / 3))), cell_px=24)
