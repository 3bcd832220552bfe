"""Isolating updates: two-phase PPO in the lunar world, the weight update, and its controls.

The protocol (one experiment folder, every seed and reward variant an independent job):

1. **Phase 1**: train on reward A (e.g. ``no_fuel``) from scratch; its last checkpoint is *pre*.
2. **Phase 2**: from *pre*, train on reward B (e.g. ``scaled_fuel``) for K steps; *post*.
   The **update** is ``post - pre`` and the **subtracted** model ``pre - update``.
3. **Controls**: ``pre -/+ noise`` with noise of the update's norm in every tensor, and a phase 2
   that keeps reward A (its own update, post and subtracted model).
4. **Evaluation** of initial, pre, post, subtracted and the controls over N full episodes, scored
   under every reward variant: total reward, fuel used and landing rate, each with a 95%
   interval. All models play the same episode seeds.
5. **Salvage**: retrain the subtracted model on reward A and record its learning curve.

Modules by job: :mod:`.protocol` (settings, training, jobs, the experiment folder),
:mod:`.evaluation` (playing and scoring episodes) and :mod:`.analysis` (one experiment's
analysis, comparisons). The study returns data; policylens.report.updates renders it.
"""

from policylens.studies.lunar_updates.analysis import (
    UpdatesAnalysis,
    UpdatesComparison,
    analyze_experiment,
    compare_experiments,
    find_experiments,
    steps_to_recover,
)
from policylens.studies.lunar_updates.evaluation import (
    ensure_lunar_world,
    evaluate_weights,
    lunar_episodes,
    summarize_episodes,
)
from policylens.studies.lunar_updates.protocol import (
    BACKENDS,
    EXPERIMENT_FILE,
    Job,
    UpdatesConfig,
    agent_for,
    final_checkpoint,
    parse_seeds,
    phase_config,
    run_experiment,
    run_job,
    train_phase,
)

__all__ = [
    "BACKENDS",
    "EXPERIMENT_FILE",
    "Job",
    "UpdatesAnalysis",
    "UpdatesComparison",
    "UpdatesConfig",
    "agent_for",
    "analyze_experiment",
    "compare_experiments",
    "ensure_lunar_world",
    "evaluate_weights",
    "final_checkpoint",
    "find_experiments",
    "lunar_episodes",
    "parse_seeds",
    "phase_config",
    "run_experiment",
    "run_job",
    "steps_to_recover",
    "summarize_episodes",
    "train_phase",
]
