"""How well a rook-endgame agent mates: checkmate rate and outcome shares against each opponent,
at each exploration rate (the agent behind the SAEs, judged before its activations are)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policylens import worlds
from policylens.errors import check_known
from policylens.runs import Run
from policylens.train.dqn import evaluate_q_agent

OPPONENTS = ("random", "greedy")
"""Black's policies an evaluation plays against."""


@dataclass(frozen=True)
class ChessEvalOptions:
    """What a rook-endgame evaluation plays."""

    episodes: int = 1000
    """Episodes per opponent and exploration rate."""
    opponents: Sequence[str] = OPPONENTS
    epsilons: Sequence[float] = (0.0,)
    """Exploration rates: with this probability a uniformly random action instead of the argmax."""
    step: int | None = None
    """Checkpoint (None: the latest)."""
    seed: int = 10_000
    """Seed of the start positions, the opponent and the exploration."""

    def __post_init__(self) -> None:
        check_known(list(self.opponents), OPPONENTS, "opponent")
        for e in self.epsilons:
            if not 0 <= e <= 1:
                raise ValueError(f"epsilons must lie in [0, 1], got {e}.")


@dataclass(frozen=True)
class ChessEvaluation:
    """One summary per (opponent, epsilon): checkmate rate (Wilson 95% interval), return and
    length, and the share of each outcome (illegal, blunder, stalemate, truncated)."""

    rows: list[dict[str, Any]]

    def to_json(self) -> list[dict[str, Any]]:
        return self.rows


def evaluate_chess_run(run: Run, options: ChessEvalOptions) -> ChessEvaluation:
    """Play a rook-endgame run's agent against each opponent at each epsilon.

    Actions are the argmax of the agent's logits (Q-values for DQN, policy logits for PPO); a
    DQN trained with masking is evaluated with masking.
    """
    world = worlds.of_run(run)
    if world.name != "rook":
        raise ValueError(
            f"{run.path} was trained in {world.run_env_id}, not the rook endgame; evaluate it "
            "with its own world's evaluation."
        )
    agent = run.load_agent(options.step)
    rows = [
        evaluate_q_agent(
            agent,
            world.run_env_id,
            episodes=options.episodes,
            env_kwargs={**world.env_kwargs, "opponent": opponent},
            seed=options.seed,
            epsilon=epsilon,
            mask_illegal=world.policy.mask_illegal,
        )
        for opponent in options.opponents
        for epsilon in options.epsilons
    ]
    return ChessEvaluation(rows)


def headline_results(
    run: Run, episodes: int = 2000, seed: int = 10_000
) -> dict[str, dict[str, Any]]:
    """A rook-endgame agent's headline figures (a zoo entry's ``results.json``): its checkmate
    rate against each opponent, argmax actions, with Wilson 95% intervals."""
    evaluation = evaluate_chess_run(run, ChessEvalOptions(episodes=episodes, seed=seed))
    opponents = [row["env_kwargs"]["opponent"] for row in evaluation.rows]
    return {
        f"mate_rate_vs_{o}": row["success"]
        for o, row in zip(opponents, evaluation.rows, strict=True)
    }


__all__ = [
    "OPPONENTS",
    "ChessEvalOptions",
    "ChessEvaluation",
    "evaluate_chess_run",
    "headline_results",
]
