"""Rook endgame commands: ``policylens train chess`` (DQN or PPO) and ``policylens chess-eval``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from policylens.commands.framework import (
    MAX_EPISODES,
    MAX_STEPS,
    command,
    console,
    note_rounding,
    open_run,
    print_json,
    train_app,
)
from policylens.errors import check_known

ALGOS = ("dqn", "ppo")
EVAL_OPPONENTS = ("random", "greedy")
"""The opponents ``chess-eval`` plays by default (the study's, named here so ``--help`` imports
no study)."""


def _print_results(title: str, results: list[dict[str, Any]]) -> None:
    table = Table(
        "opponent", "epsilon", "checkmate (95% CI)", "illegal", "blunder", "stalemate",
        "truncated", "length", title=title,
    )  # fmt: skip
    for r in results:
        s, outs = r["success"], r.get("outcomes", {})
        shares = [
            f"{outs[o]['rate']:.3f}" if o in outs else "0"
            for o in ("illegal", "blunder", "stalemate", "truncated")
        ]
        table.add_row(
            r["env_kwargs"]["opponent"], f"{r['epsilon']:g}",
            f"{s['rate']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] (n={s['n']})",
            *shares,
            f"{r['length']['mean']:.1f}",
        )  # fmt: skip
    console.print(table)


@command("chess", typer_app=train_app)
def train_chess_cmd(
    out: Path = typer.Option(..., help="Run folder to create (or continue with --resume)."),
    algo: str = typer.Option("dqn", help="Trainer: dqn or ppo."),
    opponent: str = typer.Option("random", help="Black's policy: random, greedy or chase."),
    steps: int = typer.Option(
        None, min=1, max=MAX_STEPS, help="Environment steps (default: the recipe's)."
    ),
    seed: int = typer.Option(0, min=0, help="Seed of envs, init, exploration and replay sampling."),
    mask_illegal: bool = typer.Option(
        False, "--mask-illegal", help="DQN only: act and bootstrap over legal moves only."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a killed run from its last saved state."
    ),
    eval_episodes: int = typer.Option(
        1000,
        min=0,
        max=MAX_EPISODES,
        help="Episodes of the final evaluation against each opponent (0 = none).",
    ),
    threads: int = typer.Option(
        None, min=1, max=256, help="Torch threads (default: the recipe's, 1 for these small nets)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation as JSON."),
) -> None:
    """Train a rook-endgame agent (king and rook vs king on 5x5) with DQN or PPO."""
    from policylens.runs import check_resume
    from policylens.studies.rook_sae.play import ChessEvalOptions, evaluate_chess_run
    from policylens.worlds.rook import ChessRecipe

    check_known([algo], ALGOS, "--algo")
    if mask_illegal and algo != "dqn":
        raise ValueError("--mask-illegal applies to DQN only; drop it or use --algo dqn.")
    config = ChessRecipe(
        algo=algo, opponent=opponent, total_steps=steps, seed=seed, mask_illegal=mask_illegal
    ).config()
    if threads is not None:
        config = dataclasses.replace(config, threads=threads)
    check_resume(out, resume)
    note_rounding(config)
    from policylens.train.dqn import DQNConfig, train_dqn
    from policylens.train.ppo import train_ppo

    if isinstance(config, DQNConfig):
        run = train_dqn(config, out, resume=resume, progress=not (quiet or as_json))
    else:
        run = train_ppo(config, out, resume=resume, progress=not (quiet or as_json))
    summary = run.summary()
    results = []
    if eval_episodes:
        results = evaluate_chess_run(run, ChessEvalOptions(episodes=eval_episodes)).to_json()
    if as_json:
        print_json({"run": str(run.path), "steps": summary["steps"], "evaluation": results})
        return
    console.print(f"trained {summary['steps']} steps -> {run.path}")
    if results:
        _print_results(f"{run.name}: argmax actions, {eval_episodes} episodes", results)


@command("chess-eval")
def chess_eval_cmd(
    run: Path = typer.Argument(..., help="Rook-endgame run folder."),
    episodes: int = typer.Option(
        1000, min=1, max=MAX_EPISODES, help="Episodes per opponent and epsilon."
    ),
    opponent: list[str] = typer.Option(
        list(EVAL_OPPONENTS), help="Opponent(s) to play: random, greedy; repeat for several."
    ),
    epsilon: list[float] = typer.Option(
        [0.0, 0.05], help="Exploration rate(s) of the evaluated agent; repeat for several."
    ),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    seed: int = typer.Option(
        10_000, min=0, help="Seed of the start positions, opponent and exploration."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Checkmate rate (95% Wilson CI) and outcome shares of a rook-endgame agent."""
    from policylens.studies.rook_sae.play import ChessEvalOptions, evaluate_chess_run

    for e in epsilon:
        if not 0 <= e <= 1:
            raise ValueError(f"--epsilon must lie in [0, 1], got {e}.")
    check_known(opponent, EVAL_OPPONENTS, "--opponent")
    options = ChessEvalOptions(
        episodes=episodes, opponents=tuple(opponent), epsilons=tuple(epsilon), step=step, seed=seed
    )
    r = open_run(run, "rook")
    results = evaluate_chess_run(r, options).to_json()
    if as_json:
        print_json(results)
        return
    _print_results(f"{r.name}: {episodes} episodes each", results)
