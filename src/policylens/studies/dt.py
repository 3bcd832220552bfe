"""Decision transformers played in their world: the return at a target RTG, and RTG calibration.

- :func:`evaluate_dt_run`: episodes at one target return-to-go; the mean return and success rate
  with 95% intervals (Bloom et al.'s headline: a 1-layer DT on Dynamic-Obstacles 8x8 reaching
  about 0.955 at RTG 1.0).
- :func:`calibrate_dt_run`: many target RTGs (21 by default, -1 to 1) x episodes each; the mean
  achieved return per target and the Spearman rank correlation between target and achieved
  return (over every episode, and over the per-target means). A DT that reads its RTG token
  achieves more when asked for more.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from policylens.rollout import stats
from policylens.rollout.dt import DTEpisode, PlayOptions, play_dt
from policylens.runs import Run
from policylens.train.dt import load_run_dt
from policylens.worlds.maze import ENV_ID as MAZE_ENV_ID

DEFAULT_TARGETS = tuple(float(round(x, 2)) for x in np.linspace(-1.0, 1.0, 21))
"""The calibration's target RTGs: -1 to 1 in steps of 0.1 (the worlds' reward range)."""


def _checked(run: Run) -> None:
    if run.config.get("kind") != "dt":
        raise ValueError(
            f"{run.path} is not a decision-transformer run; train one with `policylens train dt`."
        )


def check_playable(run: Run) -> None:
    """Refuse a maze DT in one sentence: :func:`play_dt` plays the MiniGrid worlds."""
    _checked(run)
    if run.config.get("trainer", {}).get("env_id") == MAZE_ENV_ID:
        raise ValueError(
            f"{run.path} is a maze decision transformer; play it with `policylens dt maze-gm`."
        )


@dataclass(frozen=True)
class EvalOptions:
    """What :func:`evaluate_dt_run` plays."""

    target_rtg: float = 1.0
    episodes: int = 100
    seed: int = 10_000
    greedy: bool = False
    """Argmax actions instead of sampling the DT's softmax."""
    step: int | None = None
    """Checkpoint (default: the latest)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.target_rtg):
            raise ValueError(f"target_rtg must be finite, got {self.target_rtg}.")
        PlayOptions(self.episodes, self.seed, self.greedy)  # checks episodes and seed


@dataclass(frozen=True)
class EvalResult:
    """A DT's play at one target RTG."""

    run: str
    step: int
    target_rtg: float
    greedy: bool
    ret: dict[str, Any]
    """Mean return with its 95% interval."""
    success: dict[str, Any]
    """Share reaching the goal with its Wilson interval."""
    length: dict[str, Any]
    outcomes: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["return"] = out.pop("ret")
        return out


def _summary(episodes: Sequence[DTEpisode]) -> dict[str, Any]:
    return {
        "ret": stats.mean([e.ret for e in episodes]),
        "success": stats.proportion([e.success for e in episodes]),
        "length": stats.mean([e.length for e in episodes]),
        "outcomes": dict(Counter(e.outcome for e in episodes)),
    }


def evaluate_dt_run(run: Run, options: EvalOptions | None = None) -> EvalResult:
    """Play the run's DT ``options.episodes`` times at ``options.target_rtg``."""
    options = options or EvalOptions()
    check_playable(run)
    step, _ = run.checkpoint(options.step)
    model = load_run_dt(run, step)
    trainer = run.config["trainer"]
    episodes = play_dt(
        model,
        trainer["env_id"],
        [options.target_rtg],
        PlayOptions(options.episodes, options.seed, options.greedy),
        trainer.get("env_kwargs", {}),
    )
    return EvalResult(str(run.path), step, options.target_rtg, options.greedy, **_summary(episodes))


@dataclass(frozen=True)
class CalibrationOptions:
    """What :func:`calibrate_dt_run` plays."""

    targets: tuple[float, ...] = DEFAULT_TARGETS
    episodes: int = 20
    """Episodes per target (each target plays the same starts)."""
    seed: int = 10_000
    greedy: bool = False
    step: int | None = None

    def __post_init__(self) -> None:
        if len(self.targets) < 2 or not all(math.isfinite(t) for t in self.targets):
            raise ValueError("targets must hold at least two finite RTGs.")
        PlayOptions(self.episodes, self.seed, self.greedy)


@dataclass(frozen=True)
class CalibrationResult:
    """Target RTG against achieved return."""

    run: str
    step: int
    episodes: int
    greedy: bool
    rows: list[dict[str, Any]]
    """Per target: ``target``, ``return`` (mean, 95% interval), ``success``, ``length``."""
    spearman: float | None
    """Rank correlation of target and achieved return over every episode (None: a constant)."""
    spearman_p: float | None
    spearman_means: float | None
    """Rank correlation of target and the mean achieved return per target."""
    spearman_means_p: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def calibrate_dt_run(run: Run, options: CalibrationOptions | None = None) -> CalibrationResult:
    """Play the run's DT at every target RTG and measure how the return follows the target."""
    options = options or CalibrationOptions()
    check_playable(run)
    step, _ = run.checkpoint(options.step)
    model = load_run_dt(run, step)
    trainer = run.config["trainer"]
    episodes = play_dt(
        model,
        trainer["env_id"],
        options.targets,
        PlayOptions(options.episodes, options.seed, options.greedy),
        trainer.get("env_kwargs", {}),
    )
    rows = []
    for target in options.targets:
        mine = [e for e in episodes if e.target == float(target)]
        s = _summary(mine)
        rows.append({"target": float(target), "return": s["ret"], "success": s["success"],
                     "length": s["length"], "outcomes": s["outcomes"]})  # fmt: skip
    every = _spearman([e.target for e in episodes], [e.ret for e in episodes])
    means = _spearman([r["target"] for r in rows], [r["return"]["mean"] for r in rows])
    return CalibrationResult(
        str(run.path), step, options.episodes, options.greedy, rows, *every, *means
    )


def _spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman's rho and its p-value; None for both when either side is constant."""
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def headline_results(
    run: Run,
    episodes: int = 200,
    target_rtg: float = 1.0,
    also_rtg: float | None = None,
    seed: int = 10_000,
) -> dict[str, dict[str, Any]]:
    """A DT's headline figures (a zoo entry's ``results.json``): the return and success rate of
    its argmax play at ``target_rtg`` (Bloom et al.'s figure is the return at RTG 1.0) and, if
    given, at ``also_rtg`` (e.g. the best return in its data), with 95% intervals."""
    out: dict[str, dict[str, Any]] = {}
    for rtg in (target_rtg,) if also_rtg is None else (target_rtg, also_rtg):
        result = evaluate_dt_run(run, EvalOptions(rtg, episodes, seed, greedy=True))
        out[f"return_at_rtg_{rtg:g}"] = result.ret
        out[f"success_at_rtg_{rtg:g}"] = result.success
    return out
