"""Dead latents against the agent's quality, over training runs (seeds) and their checkpoints.

DuPlessie found most latents of his SAEs dead (about 800 of 1,024 for TopK k = 20) and a relation
between the dead count and his DQNs' scores (R^2 about 0.33, a quadratic fit over 24 DQNs).
:func:`dead_vs_quality` trains one SAE per (run, checkpoint) on that agent's own play, counts
its dead latents on held-out observations, plays the agent for its success rate and return, and
:func:`relation` fits the score against the dead count by least squares: R^2 with a bootstrap
95% interval that resamples whole runs (checkpoints of one run are not independent) and a
permutation p-value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policylens.rollout import stats
from policylens.rollout.engine import EpisodeOptions, run_episodes
from policylens.runs import Run
from policylens.studies.rook_sae.data import PlaySetting, gather_activations
from policylens.studies.rook_sae.runs import SAESpec, train_agent_sae


def relation(
    x: Sequence[float],
    y: Sequence[float],
    groups: Sequence[Any] | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The linear relation of ``y`` to ``x``: slope, Pearson r, R^2 with a bootstrap 95% interval
    (resampling whole ``groups``, e.g. runs, when given; else points) and a permutation p-value
    (the share of ``resamples`` shuffles of ``y`` whose R^2 is at least the observed one)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.size < 3:
        raise ValueError(f"relation needs at least 3 (x, y) pairs of equal length, got {xs.size}.")

    def r2(a: np.ndarray, b: np.ndarray) -> float:
        if a.std() < 1e-12 or b.std() < 1e-12:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1] ** 2)

    rng = np.random.default_rng(seed)
    labels = np.asarray(groups) if groups is not None else np.arange(xs.size)
    members = [np.nonzero(labels == g)[0] for g in np.unique(labels)]
    boot = []
    for _ in range(resamples):
        pick = rng.integers(len(members), size=len(members))
        idx = np.concatenate([members[i] for i in pick])
        boot.append(r2(xs[idx], ys[idx]))
    observed = r2(xs, ys)
    perm = np.array([r2(xs, rng.permutation(ys)) for _ in range(resamples)])
    slope = float(np.polyfit(xs, ys, 1)[0]) if xs.std() > 1e-12 else 0.0
    r = float(np.corrcoef(xs, ys)[0, 1]) if xs.std() > 1e-12 and ys.std() > 1e-12 else 0.0
    return {
        "n": int(xs.size),
        "groups": len(members),
        "slope": slope,
        "r": r,
        "r2": observed,
        "r2_ci": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "p_permutation": float((1 + (perm >= observed - 1e-12).sum()) / (1 + resamples)),
    }


def pick_checkpoints(steps: Sequence[int], fractions: Sequence[float]) -> list[int]:
    """The saved checkpoint steps nearest to each fraction of the last one (no repeats)."""
    if not steps:
        raise ValueError("The run has no checkpoints; train it first.")
    last = max(steps)
    chosen: list[int] = []
    for f in fractions:
        if not 0 <= f <= 1:
            raise ValueError(f"Checkpoint fractions must lie in [0, 1], got {f}.")
        best = min(steps, key=lambda s: abs(s - f * last))
        if best not in chosen:
            chosen.append(best)
    return chosen


@dataclass(frozen=True)
class DeadLatentsOptions:
    """What ``sae dead-latents`` trains and measures per (run, checkpoint)."""

    hook: str
    """Hook the SAEs read."""
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    """Checkpoints nearest these fractions of each run's training."""
    sae: SAESpec = field(
        default_factory=lambda: SAESpec(expansion=4, k=20, objective="mse", samples=500_000)
    )
    steps: int = 20_000
    """Environment steps of play gathered per checkpoint."""
    holdout: float = 0.2
    """Fraction of them (the last) on which dead latents are counted."""
    episodes: int = 500
    """Episodes scoring each checkpoint's agent."""
    seed: int = 0
    """Seed of the rollouts and the SAEs."""
    eval_seed: int = 10_000
    """Seed of the scoring episodes (the same starts for every agent)."""


@dataclass(frozen=True)
class DeadLatents:
    """Dead latents and agent quality per (run, checkpoint), and how they relate."""

    options: DeadLatentsOptions
    rows: list[dict[str, Any]]
    """Per (run, checkpoint): dead latents (held out and in training), explained variance, L0,
    success rate and return with 95% intervals."""
    relations: dict[str, dict[str, Any]]
    """Score (success_rate, return) -> :func:`relation` to the dead count (runs as groups);
    empty with fewer than 3 rows."""

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "hook": o.hook,
            "arch": o.sae.arch,
            "expansion": o.sae.expansion,
            "k": o.sae.k,
            "objective": o.sae.objective,
            "samples": o.sae.samples,
            "steps": o.steps,
            "episodes": o.episodes,
            "seed": o.seed,
            "rows": self.rows,
            "relations": self.relations,
        }


def dead_vs_quality(
    runs: Sequence[Run],
    options: DeadLatentsOptions,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> DeadLatents:
    """Dead latents and agent quality for every run and the checkpoints nearest
    ``options.fractions`` of its training, and their relation.

    Per (run, checkpoint): ``steps`` steps of greedy (Q-network) or sampled play; an SAE trained
    on all but the last ``holdout`` of them; ``dead_latents``: latents that never fire on those
    held-out observations (and ``dead_in_training``: not in the last ``dead_window`` training
    samples); the agent's ``success_rate`` and ``return`` over ``episodes`` episodes. The
    relations fit success rate and return against the dead count. ``progress(row)`` sees each row.
    """
    o = options
    rows = []
    for run in runs:
        setting = PlaySetting.of_run(run)
        for step in pick_checkpoints([s for s, _ in run.checkpoints()], o.fractions):
            agent = run.load_agent(step)
            data = gather_activations(agent, o.hook, setting, o.steps, seed=o.seed)
            config = o.sae.config(data.site, o.seed)
            _, history, summary = train_agent_sae(data, config, o.holdout, agent=agent)
            eps = run_episodes(
                agent, o.episodes, setting.env_id, dict(setting.env_kwargs),
                EpisodeOptions(seed=o.eval_seed, policy=setting.policy),
            )  # fmt: skip
            success = stats.proportion([e.success for e in eps])
            ret = stats.mean([e.ret for e in eps])
            row = {
                "run": str(run.path),
                "seed": run.config.get("trainer", {}).get("seed"),
                "checkpoint_step": step,
                "d_sae": config.d_sae,
                "dead_latents": round(summary["dead_fraction"] * config.d_sae),
                "dead_in_training": round(history[-1]["dead_fraction"] * config.d_sae),
                "explained_variance": summary["explained_variance"],
                "l0": summary["l0"],
                "success_rate": success["rate"],
                "success_rate_ci": success["ci"],
                "return": ret["mean"],
                "return_ci": ret["ci"],
            }
            rows.append(row)
            if progress is not None:
                progress(row)
    dead = [r["dead_latents"] for r in rows]
    groups = [r["run"] for r in rows]
    relations = {}
    if len(rows) >= 3:
        relations = {
            score: relation(dead, [r[score] for r in rows], groups, seed=o.seed)
            for score in ("success_rate", "return")
        }
    return DeadLatents(o, rows, relations)


__all__ = [
    "DeadLatents",
    "DeadLatentsOptions",
    "dead_vs_quality",
    "pick_checkpoints",
    "relation",
]
