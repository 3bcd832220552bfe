"""Linear probes for a world's concepts in a run's agent, per layer and over training (Nanda's
open problems; McGrath et al.'s "what, when, where").

The world supplies the concepts probed by default and the options its probe data is collected
with (:attr:`~policylens.worlds.World.concepts`, :attr:`~policylens.worlds.World.probe_options`:
the maze puts the cheese anywhere, so its position varies); :mod:`policylens.lenses.probes` fits
the probes and their controls. Results are saved under ``RUN/analysis/probes/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policylens import artifacts, worlds
from policylens.errors import check_known
from policylens.lenses.probes import (
    ProbeCurves,
    ProbeOptions,
    ProbeReport,
    default_concepts,
    probe,
    probe_checkpoints,
    probe_store_for_run,
)
from policylens.rollout.stats import t_mean
from policylens.rollout.store import Store, open_store
from policylens.runs import Run

Say = Callable[[str], None]
"""A progress callback: one short message per stage."""


@dataclass(frozen=True)
class ConceptProbeOptions:
    """Which concepts are probed at which layers, on what data, fit how."""

    labels: Sequence[str] | None = None
    """Labels to probe (``key[i]`` for one component); None: the world's concepts."""
    hooks: Sequence[str] | None = None
    """Hooks to probe; None: a few layers from input to output."""
    step: int | None = None
    """Checkpoint probed (None: the latest); over training, every checkpoint is."""
    episodes: int = 200
    """Episodes collected for a run's probe data."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """World options of a run's probe data, over the world's probe options."""
    probe: ProbeOptions = ProbeOptions()
    """How the probes are fit and checked (controls, samples, split, seed)."""
    checkpoints: int = 0
    """Over training: this many checkpoints, spread by index over the run's (log-spaced ones
    stay log-spaced), first and last included; 0: every checkpoint."""


def _labels(options: ConceptProbeOptions, store: Store) -> list[str]:
    """The labels asked for, else the store's world's concepts that it has."""
    if options.labels:
        return list(options.labels)
    world = worlds.for_env(str(store.meta.get("env_id") or ""))
    return default_concepts(store, world.concepts)


def _run_store(run: Run, options: ConceptProbeOptions, step: int | None) -> Store:
    """The run's probe data: collected with its world's probe options under the asked ones."""
    world = worlds.of_run(run)
    env_kwargs = {**world.probe_options, **options.env_kwargs}
    return probe_store_for_run(
        run, episodes=options.episodes, seed=options.probe.seed, step=step, env_kwargs=env_kwargs
    )


def probe_store(
    store: str | Path, options: ConceptProbeOptions, progress: Say | None = None
) -> ProbeReport:
    """Probe the activations a ``collect`` store holds."""
    opened = open_store(store)
    return probe(opened, _labels(options, opened), options.hooks, options=options.probe,
                 progress=progress)  # fmt: skip


def report_file(run: Run, step: int) -> Path:
    """Where :func:`probe_run` saves the probes of checkpoint ``step``."""
    return run.analysis_dir / "probes" / f"probes_step_{step}.json"


def probe_run(run: Run, options: ConceptProbeOptions, progress: Say | None = None) -> ProbeReport:
    """Probe one checkpoint of ``run`` on probe data collected with it; saved in
    :func:`report_file`."""
    step, _ = run.checkpoint(options.step)
    agent = run.load_agent(step)
    check_known(list(options.hooks or []), agent.hook_names(), "hook")  # before collecting
    file = report_file(run, step)
    with artifacts.FolderLock(file.parent, "probes folder"):
        store = _run_store(run, options, step)
        report = probe(store, _labels(options, store), options.hooks, agent=agent,
                       options=options.probe, progress=progress)  # fmt: skip
        report.meta["checkpoint_step"] = step
        artifacts.write_json(file, report.to_json())
    return report


def probe_over_training(
    run: Run, options: ConceptProbeOptions, progress: Say | None = None
) -> ProbeCurves:
    """Probe every checkpoint of ``run`` on one set of observations (collected with the final
    agent); saved as ``analysis/probes/probes_over_training.json``."""
    check_known(list(options.hooks or []), run.load_agent().hook_names(), "hook")
    steps = _spread([s for s, _ in run.checkpoints()], options.checkpoints)
    with artifacts.FolderLock(run.analysis_dir / "probes", "probes folder"):
        store = _run_store(run, options, None)
        return probe_checkpoints(run, store, _labels(options, store), options.hooks, steps,
                                 options=options.probe, progress=progress)  # fmt: skip


def _spread(steps: Sequence[int], count: int) -> list[int] | None:
    """``count`` of ``steps`` evenly by index, first and last included (None: all of them)."""
    if count < 0:
        raise ValueError(f"checkpoints must be >= 0, got {count}.")
    if count == 0 or count >= len(steps):
        return None
    if count == 1:
        return [steps[-1]]
    picked = np.unique(np.round(np.linspace(0, len(steps) - 1, count)).astype(int))
    return [steps[i] for i in picked]


# ---------------------------------------------------------------------------------- what, when, where
EMERGENCE = 0.9
"""A concept has emerged at the first checkpoint whose score reaches this share of the final."""


def _curve_summary(curves: ProbeCurves, label: str, scores: dict[str, list[float]]) -> dict:
    """One run's what-when-where of ``label``: best layer (highest final score), emergence step
    (first checkpoint at 90% of the final score of that layer; also at 90% of the final gain over
    the constant guess), and the largest single jump between consecutive checkpoints."""
    hooks = list(scores)
    final = {h: scores[h][-1] for h in hooks}
    best = max(hooks, key=lambda h: final[h])
    curve = np.array(scores[best], dtype=float)
    steps = curves.steps
    top = curve[-1]
    reached = np.nonzero(curve >= EMERGENCE * top)[0] if top > 0 else np.array([len(curve) - 1])
    base = curves.baselines[label]
    gain = base + EMERGENCE * (top - base)
    above = np.nonzero(curve >= gain)[0] if top > base else np.array([len(curve) - 1])
    jumps = np.diff(curve)
    j = int(np.argmax(jumps)) if len(jumps) else 0
    return {
        "best_layer": best,
        "final_score": float(top),
        "emergence_step": int(steps[int(reached[0])]),
        "emergence_step_above_chance": int(steps[int(above[0])]),
        "change_point": {
            "step": int(steps[j + 1]) if len(jumps) else int(steps[0]),
            "from_step": int(steps[j]),
            "jump": float(jumps[j]) if len(jumps) else 0.0,
        },
        "final_by_layer": final,
    }


def _log_interval(steps: Sequence[int]) -> dict[str, Any]:
    """Median, range and the geometric mean with a Student-t 95% interval (on log10 of step+1)
    of steps over seeds (checkpoints are log-spaced)."""
    logs = np.log10(np.asarray(steps, dtype=float) + 1)
    t = t_mean(logs)
    back = [float(10**v - 1) if math.isfinite(v) else math.nan for v in t["ci"]]
    return {
        "per_seed": [int(s) for s in steps],
        "median": float(np.median(steps)),
        "range": [int(min(steps)), int(max(steps))],
        "geometric_mean": float(10 ** t["mean"] - 1),
        "ci": back,
    }


@dataclass(frozen=True)
class ConceptTimeline:
    """What-when-where of a world's concepts over training, over several runs (seeds).

    ``summary[penalty][label]``: per seed and across seeds, the best layer (votes), final score
    (mean with a Student-t 95% interval), emergence step (first checkpoint at 90% of the final
    score: median, range, geometric mean with interval) and the change point: the largest single
    jump of the best layer's score between consecutive checkpoints -- an addition beyond McGrath
    et al., who report emergence only.
    """

    runs: list[str]
    curves: list[ProbeCurves]
    summary: dict[str, dict[str, dict[str, Any]]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "summary": self.summary, "meta": self.meta,
                "curves": [asdict(c) for c in self.curves]}  # fmt: skip


def concept_timeline(curves: Sequence[ProbeCurves], runs: Sequence[str]) -> ConceptTimeline:
    """Summarise probe curves of several runs (same labels and hooks) into a timeline."""
    if not curves:
        raise ValueError("concept_timeline needs the probe curves of at least one run.")
    labels, hooks = curves[0].labels, curves[0].hooks
    for c in curves[1:]:
        if c.labels != labels or c.hooks != hooks:
            raise ValueError("The runs' probe curves must cover the same labels and layers.")
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    penalties = ["l2"] + (["l1"] if all(c.l1_scores for c in curves) else [])
    for pen in penalties:
        summary[pen] = {}
        for label in labels:
            per = [_curve_summary(c, label, (c.l1_scores if pen == "l1" else c.scores)[label])
                   for c in curves]  # fmt: skip
            votes: dict[str, int] = {}
            for p in per:
                votes[p["best_layer"]] = votes.get(p["best_layer"], 0) + 1
            controls = {}
            for name in ("random_init", "shuffled", "raw_input"):
                vals = [
                    (c.l1_controls if pen == "l1" else c.controls)[label][p["best_layer"]].get(name)
                    for c, p in zip(curves, per, strict=True)
                ]
                present = [float(v) for v in vals if v is not None]
                if len(present) == len(vals):
                    controls[name] = t_mean(present)
            summary[pen][label] = {
                "metric": curves[0].metrics[label],
                "best_layer": max(votes, key=lambda h: (votes[h], -hooks.index(h))),
                "best_layer_votes": votes,
                "final_score": t_mean([p["final_score"] for p in per]),
                "constant_guess": float(np.mean([c.baselines[label] for c in curves])),
                "controls_at_best_layer": controls,
                "emergence_step": _log_interval([p["emergence_step"] for p in per]),
                "emergence_step_above_chance": _log_interval(
                    [p["emergence_step_above_chance"] for p in per]
                ),
                "change_point_beyond_paper": {
                    "step": _log_interval([p["change_point"]["step"] for p in per]),
                    "jump": t_mean([p["change_point"]["jump"] for p in per]),
                },
                "per_seed": per,
            }
    meta = {
        "emergence": f"first checkpoint at {EMERGENCE:.0%} of the final score of the best layer",
        "change_point": "largest single jump between consecutive checkpoints (beyond the paper)",
        "seeds": len(curves),
        "steps": curves[0].steps,
    }
    return ConceptTimeline(list(runs), list(curves), summary, meta)


def timeline_file(run: Run) -> Path:
    """Where :func:`concepts_over_training` saves its timeline (in the first run's folder)."""
    return run.analysis_dir / "probes" / "concepts_over_training.json"


def concepts_over_training(
    runs: Sequence[Run], options: ConceptProbeOptions, progress: Say | None = None
) -> ConceptTimeline:
    """:func:`probe_over_training` for each run (seeds of one recipe), summarised into a
    what-when-where timeline; saved in :func:`timeline_file` of the first run."""
    if not runs:
        raise ValueError("concepts_over_training needs at least one run.")
    say = progress or (lambda message: None)
    curves = []
    for i, run in enumerate(runs):
        say(f"run {i + 1} of {len(runs)}: {run.path}")
        curves.append(probe_over_training(run, options, progress))
    timeline = concept_timeline(curves, [str(r.path) for r in runs])
    artifacts.write_json(timeline_file(runs[0]), timeline.to_json())
    return timeline


__all__ = [
    "ConceptProbeOptions",
    "ConceptTimeline",
    "concept_timeline",
    "concepts_over_training",
    "timeline_file",
    "probe_over_training",
    "probe_run",
    "probe_store",
    "report_file",
]
