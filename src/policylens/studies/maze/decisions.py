"""Decision squares (Mini, Turner et al. 2023): where the paths to the cheese and to the
top-right corner part, does the agent go to the cheese, and which maze features predict it?
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from policylens.agents.agent import HookedAgent
from policylens.envs.maze import (
    MazeBatch,
    MazeConfig,
    MazeState,
    bfs_distances,
    bfs_field,
    decision_square,
)
from policylens.rollout import stats
from policylens.studies.maze.steering import test_levels
from policylens.studies.maze.vector_fields import move_probabilities
from policylens.worlds.maze import run_episodes_from_states

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

FEATURES = (
    "path_ds_cheese",
    "euclid_ds_cheese",
    "path_cheese_corner",
    "euclid_cheese_corner",
    "path_ds_corner",
    "euclid_ds_corner",
)


def maze_features(state: MazeState, ds: tuple[int, int]) -> dict[str, float]:
    """Path and Euclidean distances between decision square, cheese and top-right corner."""
    d_cheese = bfs_distances(state.walls, state.cheese)
    d_corner = bfs_distances(state.walls, state.corner)
    euclid = lambda a, b: float(np.hypot(a[0] - b[0], a[1] - b[1]))  # noqa: E731
    return {
        "path_ds_cheese": float(d_cheese[ds]),
        "euclid_ds_cheese": euclid(ds, state.cheese),
        "path_cheese_corner": float(d_corner[state.cheese]),
        "euclid_cheese_corner": euclid(state.cheese, state.corner),
        "path_ds_corner": float(d_corner[ds]),
        "euclid_ds_corner": euclid(ds, state.corner),
    }


def decision_square_analysis(
    agent: HookedAgent,
    config: MazeConfig,
    n_mazes: int = 500,
    seed: int = 40_000,
    exclude_region: int | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """P(goes to cheese) at decision squares, and a logistic regression of the choice on maze features.

    Each test maze (cheese off the start->corner path, and outside the top-right
    ``exclude_region`` square when given) starts the mouse on its decision square; the outcome is
    whichever of cheese and corner it reaches first. The regression (:func:`choice_regression`)
    is fit on a stratified 70% of the mazes and scored on the rest against always predicting the
    training majority.
    """
    candidates = test_levels(config, n_mazes * 3, seed)
    states, squares = [], []
    for s in candidates:
        if exclude_region is not None:
            top = s.world_size - s.maze_size
            r, c = s.cheese
            if r < top + exclude_region and c >= s.maze_size - exclude_region:
                continue
        ds = decision_square(s)
        states.append(s.copy(mouse=ds))
        squares.append(ds)
        if len(states) == n_mazes:
            break
    limit = max_steps or 4 * config.world_size
    limited = MazeConfig(**{**config.__dict__, "max_steps": limit})
    eps = run_episodes_from_states(agent, states, limited, seed=seed)

    # Probability mass on the first step toward the cheese vs toward the corner, at the square.
    batch = MazeBatch(config, 1)
    obs = np.stack([batch.observe(s) for s in states])
    with torch.no_grad():
        probs = move_probabilities(agent(obs)[0])
    p_cheese_step = []
    for s, ds, p in zip(states, squares, probs, strict=True):
        to_cheese = bfs_field(s.walls, s.cheese)[1][ds]
        to_corner = bfs_field(s.walls, s.corner)[1][ds]
        p_cheese_step.append(p[to_cheese] / max(p[to_cheese] + p[to_corner], 1e-12))

    outcomes: list[int] = []
    rows = []
    for s, ds, e in zip(states, squares, eps, strict=True):
        first_corner = e.positions.index(s.corner) if s.corner in e.positions else None
        if e.success and (first_corner is None):
            outcomes.append(1)
        elif first_corner is not None:
            outcomes.append(0)
        else:
            outcomes.append(-1)  # reached neither within the step limit
        rows.append([maze_features(s, ds)[f] for f in FEATURES])
    outcome = np.array(outcomes)
    X = np.array(rows)
    decided = outcome >= 0
    result: dict[str, Any] = {
        "n_mazes": len(states),
        "p_cheese": stats.proportion(outcome[decided] == 1),
        "undecided": int((~decided).sum()),
        "p_cheese_first_step": stats.mean(p_cheese_step),
    }
    result["regression"] = choice_regression(outcome[decided], X[decided], seed)
    return result


MIN_PER_CLASS = 5
"""Fewest decided mazes of each choice (cheese, corner) for the regression to be fit at all."""


def choice_regression(y: np.ndarray, X: np.ndarray, seed: int) -> dict[str, Any]:
    """Logistic regression of the choice (1 = cheese) on maze features, scored on held-out mazes.

    The 70/30 split is stratified, so both sets hold both choices in the data's proportion. When
    one choice is rarer than ``MIN_PER_CLASS`` there is nothing to regress: the result says so in
    a sentence and gives the majority baseline alone.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n, cheese = len(y), int((y == 1).sum())
    majority = 1 if 2 * cheese >= n else 0
    baseline = float((y == majority).mean()) if n else float("nan")
    if min(cheese, n - cheese) < MIN_PER_CLASS:
        return {
            "skipped": f"the agent went for the cheese in {cheese} of {n} decided decision squares: "
            f"no regression (it needs at least {MIN_PER_CLASS} of each choice)",
            "majority_baseline": baseline,
            "n_cheese": cheese,
            "n_decided": n,
        }
    # One sample per maze, so splitting samples splits levels.
    train, test = train_test_split(np.arange(n), test_size=0.3, stratify=y, random_state=seed)

    def fit(columns: list[int]) -> Pipeline:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        return model.fit(X[train][:, columns], y[train])

    everything = fit(list(range(len(FEATURES))))
    train_majority = int(2 * y[train].sum() >= len(train))
    return {
        "features": list(FEATURES),
        "test_accuracy": float(everything.score(X[test], y[test])),
        "majority_baseline": float((y[test] == train_majority).mean()),
        "coefficients": dict(zip(FEATURES, everything[-1].coef_[0].round(4).tolist(), strict=True)),
        "single_feature_accuracy": {
            name: float(fit([j]).score(X[test][:, [j]], y[test])) for j, name in enumerate(FEATURES)
        },
        "n_cheese": cheese,
        "n_decided": n,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
    }
