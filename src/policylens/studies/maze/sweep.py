"""The maze study's evaluation for sweeps: a trained run's goal-misgeneralization figures as a flat
dict of numbers (``policylens sweep``'s default evaluation in the maze world)."""

from __future__ import annotations

from policylens.runs import Run
from policylens.studies.maze.decisions import decision_square_analysis
from policylens.studies.maze.misgeneralization import behaviour_study, maze_config


def maze_metrics(run_path: str, episodes: int = 500, n_mazes: int = 200) -> dict[str, float]:
    """Success on the training distribution and with the cheese anywhere, the corner-first rate
    where the cheese is off the start->corner path, P(cheese) at decision squares (NaN when no
    maze was decided) and the path ratio on the training distribution, of the run's latest agent.

    ``episodes`` per distribution and ``n_mazes`` decision squares, on fixed evaluation seeds.
    """
    run = Run(run_path)
    config = maze_config(run)
    agent = run.load_agent()
    behaviour = behaviour_study(agent, config, episodes)
    decisions = decision_square_analysis(
        agent, config, n_mazes, exclude_region=config.cheese_region
    )
    train, test = behaviour["train"], behaviour["test"]
    return {
        "train_success": train["success"]["rate"],
        "test_success": test["success"]["rate"],
        "test_corner_first_off_path": test["off_path"]["corner_first"]["rate"],
        "p_cheese_at_decision_squares": decisions["p_cheese"]["rate"],
        "train_path_ratio": train["path_ratio"],
    }
