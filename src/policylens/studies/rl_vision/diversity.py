"""The diversity hypothesis (Hilton et al. 2020): agents trained on more distinct levels generalise
better and have cleaner features. Its sweep trains the hazards recipe at several ``num_levels``
over seeds (``policylens sweep --world hazards``); this is the evaluation each trial gets.
"""

from __future__ import annotations

import math
from typing import Any

from policylens.rollout import stats
from policylens.runs import Run
from policylens.studies.hazards.failures import failure_table, level_splits
from policylens.studies.rl_vision.features import HAZARDS, OBJECTS, hazard_env_kwargs, run_features


def diversity_metrics(
    run_path: str, levels: int = 1000, frames: int = 512, k: int = 8, seed: int = 0
) -> dict[str, float]:
    """Completion on the run's training levels and on unseen ones (``levels`` each, sampled
    actions, fixed evaluation seeds), and the automatic interpretability score of its latest agent:
    the mean best alignment of ``k`` NMF features of the value to an object mask, with each
    object's best alignment, on ``frames`` frames from unseen levels."""
    run = Run(run_path)
    hazard_env_kwargs(run)  # refuses a run from another world with its own sentence
    agent, hf = run_features(run, n_frames=frames, k=k, seed=seed)
    out: dict[str, float] = {}
    splits = level_splits(run.config["trainer"].get("env_kwargs", {}))
    for name in ("training", "unseen"):
        table = failure_table(agent, levels, splits[name], seed=10_000 + seed)
        out[f"{name}_completion"] = table["completion"]["rate"]
    summary = hf.summary()
    out["interpretability_score"] = summary["interpretability_score"]
    for name in (*HAZARDS, *(o for o in OBJECTS if o not in HAZARDS)):
        out[f"alignment_{name}"] = summary["best_alignment"][name]
    return out


def diversity_effects(rows: list[dict[str, Any]], metrics: list[str]) -> list[str]:
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
