"""The diversity hypothesis (Hilton et al. 2020): agents trained on more distinct levels generalise
better and have cleaner features. Its sweep trains the hazards recipe at several ``num_levels``
over seeds (``policylens sweep --world hazards``); this is the evaluation each trial gets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policylens.rollout import stats
from policylens.runs import Run
from policylens.studies.hazards.failures import failure_table
from policylens.studies.rl_vision.features import FeatureOptions, fit_features
from policylens.sweeps import SweepResult, SweepSpec, read_sweep
from policylens.worlds.hazards import HAZARDS, OBJECTS, hazard_env_kwargs, level_splits


def diversity_metrics(
    run_path: str, levels: int = 1000, frames: int = 512, k: int = 8, seed: int = 0
) -> dict[str, float]:
    """Completion on the run's training levels and on unseen ones (``levels`` each, sampled
    actions, fixed evaluation seeds), and the automatic interpretability score of its latest agent:
    the mean best alignment of ``k`` NMF features of the value to an object mask, with each
    object's best alignment, on ``frames`` frames from unseen levels."""
    run = Run(run_path)
    unseen = hazard_env_kwargs(run)  # refuses a run from another world with its own sentence
    agent = run.load_agent()
    features = fit_features(agent, unseen, FeatureOptions(n_obs=frames, nmf=k, seed=seed)).result()
    out: dict[str, float] = {}
    splits = level_splits(run.config["trainer"].get("env_kwargs", {}))
    for name in ("training", "unseen"):
        table = failure_table(agent, levels, splits[name], seed=10_000 + seed)
        out[f"{name}_completion"] = table.completion["rate"]
    out["interpretability_score"] = features.interpretability_score
    for name in (*HAZARDS, *(o for o in OBJECTS if o not in HAZARDS)):
        out[f"alignment_{name}"] = features.best_alignment[name]
    return out


def diversity_effects(rows: list[dict[str, Any]], metrics: Sequence[str]) -> list[str]:
    """One sentence per metric: the most-levels agents minus the fewest-levels ones, over seeds,
    with Welch's 95% interval, saying "no effect" where it includes zero."""
    levels = sorted({r["num_levels"] for r in rows})
    if len(levels) < 2:
        return []
    few, many = levels[0], levels[-1]
    out = []
    for m in metrics:
        # over seeds at each end; a trial that did not measure the metric is left out
        at = {
            n: [r[m] for r in rows if r["num_levels"] == n and math.isfinite(r.get(m, math.nan))]
            for n in (few, many)
        }
        d = stats.welch_difference(at[many], at[few])
        verdict = "" if d["effect"] else ": no effect"
        out.append(
            f"{m}, {many:,} vs {few:,} training levels: {d['diff']:+.3f} "
            f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]{verdict}"
        )
    return out


DIVERSITY_METRICS = ("training_completion", "unseen_completion", "interpretability_score",
                     "alignment_saw", "alignment_enemy")  # fmt: skip
"""The diversity sweep's metrics its report shows (of those :func:`diversity_metrics` gives)."""


@dataclass(frozen=True)
class DiversityResult:
    """A diversity sweep's trials, and each metric's most-levels minus fewest-levels effect."""

    sweep: str
    result: SweepResult
    """The sweep's spec, one row per finished trial, and their aggregate over seeds."""
    metrics: tuple[str, ...]
    effects: list[str]
    """:func:`diversity_effects` of the metrics, one sentence each."""

    @property
    def spec(self) -> SweepSpec:
        return self.result.spec

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.result.rows

    def to_json(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "metrics": list(self.metrics), "rows": self.rows,
                "effects": self.effects}  # fmt: skip


def diversity_result(sweep: Path) -> DiversityResult:
    """The diversity sweep in folder ``sweep`` (refused in one sentence unless it is one with
    finished trials)."""
    result = read_sweep(sweep)
    spec, rows = result.spec, result.rows
    if not rows:
        raise ValueError(f"the sweep in {sweep} has no finished trials to report yet.")
    missing = [m for m in DIVERSITY_METRICS if m not in rows[0]]
    if missing or "num_levels" not in spec.grid:
        raise ValueError(
            f"{sweep} is not a diversity sweep (`policylens sweep --world hazards --grid "
            f"num_levels=100,1000,10000`); it lacks {', '.join(missing) or 'a num_levels grid'}."
        )
    effects = diversity_effects(rows, DIVERSITY_METRICS)
    return DiversityResult(str(sweep), result, DIVERSITY_METRICS, effects)
