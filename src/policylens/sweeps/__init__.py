"""Sweeps: a grid of recipe parameters times seeds, each trial an ordinary run folder trained and
evaluated on a local process pool or on Ray, with results aggregated over seeds.

``SweepSpec``/``load_spec`` say what to run, ``run_sweep`` runs it, ``aggregate`` summarises the
rows it returns (also in ``OUT/results.csv``), ``read_sweep`` reads a sweep folder back.
"""

from policylens.sweeps.results import SweepResult, aggregate, read_sweep, write_results
from policylens.sweeps.runner import BACKENDS, TrialsFailed, run_sweep, run_trial, training_metrics
from policylens.sweeps.spec import (
    SweepSpec,
    Trial,
    function_path,
    load_spec,
    parse_seeds,
    parse_value,
    spec_settings,
)

__all__ = [
    "BACKENDS",
    "function_path",
    "SweepResult",
    "SweepSpec",
    "Trial",
    "TrialsFailed",
    "aggregate",
    "load_spec",
    "parse_seeds",
    "parse_value",
    "read_sweep",
    "run_sweep",
    "run_trial",
    "spec_settings",
    "training_metrics",
    "write_results",
]
