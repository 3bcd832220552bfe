"""Linear probes for a world's concepts in a run's agent, per layer and over training (Nanda's
open problems; McGrath et al.'s "what, when, where").

The world supplies the concepts probed by default and the options its probe data is collected
with (:attr:`~policylens.worlds.World.concepts`, :attr:`~policylens.worlds.World.probe_options`:
the maze puts the cheese anywhere, so its position varies); :mod:`policylens.lenses.probes` fits
the probes and their controls. Results are saved under ``RUN/analysis/probes/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    with artifacts.FolderLock(run.analysis_dir / "probes", "probes folder"):
        store = _run_store(run, options, None)
        return probe_checkpoints(run, store, _labels(options, store), options.hooks,
                                 options=options.probe, progress=progress)  # fmt: skip


__all__ = [
    "ConceptProbeOptions",
    "probe_over_training",
    "probe_run",
    "probe_store",
    "report_file",
]
