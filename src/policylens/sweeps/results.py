"""A sweep's results: one row per trial (parameters, seed, metrics, seconds) in ``results.csv`` and
``results.json``, and their aggregate over seeds: per parameter combination, each metric's mean
with a Student-t 95% interval across seeds."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policylens.artifacts import read_json, write_json, write_text
from policylens.rollout import stats
from policylens.sweeps.spec import SweepSpec

TIMING = ("seconds", "train_seconds")
"""Columns that time a trial: ``seconds`` of wall time in the invocation that finished it
(training and evaluation), and ``train_seconds`` the run's own training time."""


def columns(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[str]:
    """Parameters, seed, the metrics (in the evaluation's order), then timing."""
    fixed = [*spec.grid, "seed"]
    metrics: dict[str, None] = {}
    for row in rows:
        metrics.update({k: None for k in row if k not in fixed and k not in TIMING})
    return [*fixed, *metrics, *TIMING]


def metric_names(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[str]:
    """The evaluation's metrics among the columns."""
    return [c for c in columns(spec, rows) if c not in (*spec.grid, "seed", *TIMING)]


def write_results(out: str | Path, spec: SweepSpec, rows: list[dict[str, Any]]) -> None:
    """``results.json`` and ``results.csv`` of the finished trials (each written atomically)."""
    out = Path(out)
    cols = columns(spec, rows)
    write_json(out / "results.json", rows, sort_keys=False)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_cell(row.get(c)) for c in cols})
    write_text(out / "results.csv", buf.getvalue())


def _csv_cell(value: Any) -> Any:
    if value is None:
        return "none"  # as the CLI writes it (--grid cheese_region=none)
    return f"{value:.6g}" if isinstance(value, float) else value


@dataclass(frozen=True)
class SweepResult:
    """A sweep's spec, its trials' rows, and their aggregate over seeds (:func:`aggregate`)."""

    spec: SweepSpec
    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]

    @classmethod
    def of(cls, spec: SweepSpec, rows: list[dict[str, Any]]) -> SweepResult:
        """The result of ``rows`` (from :func:`~policylens.sweeps.run_sweep`), aggregated."""
        return cls(spec, rows, aggregate(spec, rows))

    @property
    def metric_names(self) -> list[str]:
        return metric_names(self.spec, self.rows)

    def to_json(self) -> dict[str, Any]:
        """``policylens sweep --json``: the trials' rows and their aggregate."""
        return {"results": self.rows, "aggregate": self.groups}


def read_sweep(out: str | Path) -> SweepResult:
    """The sweep in ``out``: its spec, finished trials' rows and their aggregate."""
    out = Path(out)
    if not (out / "sweep.json").is_file():
        raise FileNotFoundError(f"{out} holds no sweep (no sweep.json); run `policylens sweep`.")
    spec = SweepSpec.from_dict(read_json(out / "sweep.json"))
    rows = read_json(out / "results.json") if (out / "results.json").is_file() else []
    return SweepResult.of(spec, rows)


def aggregate(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per parameter combination (in grid order): its ``params``, ``seeds``, and per metric the
    mean over seeds with a Student-t 95% interval and ``n``. NaN values (a metric a trial could
    not measure, e.g. no decided mazes) are left out of that metric's mean and ``n``.
    """
    names = metric_names(spec, rows)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(row[p] for p in spec.grid)
        groups.setdefault(key, []).append(row)
    result = []
    for key, members in groups.items():
        metrics = {}
        for name in names:
            values = [float(r[name]) for r in members if name in r and r[name] is not None]
            metrics[name] = stats.t_mean([v for v in values if not math.isnan(v)])
        result.append(
            {
                "params": dict(zip(spec.grid, key, strict=True)),
                "seeds": [r["seed"] for r in members],
                "metrics": metrics,
            }
        )
    return result
