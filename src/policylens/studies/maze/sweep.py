"""The maze study's evaluation for sweeps: a trained run's goal-misgeneralization figures as a flat
dict of numbers (``policylens sweep``'s default evaluation in the maze world)."""

from __future__ import annotations

from policylens.runs import Run
from policylens.studies.maze.misgeneralization import BehaviourOptions, behaviour, steering_study
from policylens.worlds.maze import maze_config


def maze_metrics(run_path: str, episodes: int = 500, n_mazes: int = 200) -> dict[str, float]:
    """Success on the training distribution and with the cheese anywhere, the corner-first rate
    where the cheese is off the start->corner path, P(cheese) at decision squares (NaN when no
    maze was decided) and the path ratio on the training distribution, of the run's latest agent.

    ``episodes`` per distribution and ``n_mazes`` decision squares, on fixed evaluation seeds.
    """
    result = behaviour(Run(run_path), BehaviourOptions(episodes, n_mazes))
    train, test = result.behaviour.train.summary, result.behaviour.test.summary
    decisions = result.decisions
    return {
        "train_success": train["success"]["rate"],
        "test_success": test["success"]["rate"],
        "test_corner_first_off_path": test["off_path"]["corner_first"]["rate"],
        "p_cheese_at_decision_squares": decisions["p_cheese"]["rate"],
        "train_path_ratio": train["path_ratio"],
    }


def maze_steering_metrics(run_path: str, n_mazes: int = 200) -> dict[str, float]:
    """The cheese vector and channel clamping on the run's latest agent, each against its
    control (random vectors of the same norm; the unclamped agent): the rates, the differences
    with their 95% intervals, whether each interval excludes zero (1.0) or not (0.0), and how
    well the clamped channel tracks the cheese (its correlation)."""
    run = Run(run_path)
    st = steering_study(run.load_agent(), maze_config(run), n_mazes=n_mazes)
    steer, clamp = st["steering"], st["clamp"]
    out = {
        "baseline_success": steer["baseline"]["success"]["rate"],
        "cheese_vector_success": steer["cheese_vector x -1"]["success"]["rate"],
        "random_vector_success": steer["random x -1"]["success"]["rate"],
        "clamp_unclamped_reach": clamp["baseline_reaches_target"]["rate"],
        "clamp_clamped_reach": clamp["clamped_reaches_target"]["rate"],
        "clamped_channel_correlation": st["cheese_channels"][0][1],
    }
    for name, key in (
        ("cheese_vector", "cheese_vector_vs_random"),
        ("clamp", "clamped_vs_unclamped"),
    ):
        d = st[key]
        out |= {f"{name}_diff": d["diff"], f"{name}_diff_lo": d["ci"][0],
                f"{name}_diff_hi": d["ci"][1], f"{name}_effect": float(d["effect"])}  # fmt: skip
    return out
