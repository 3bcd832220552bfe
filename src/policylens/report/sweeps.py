"""The sweep report: each metric's mean over seeds with its 95% interval at every parameter
combination, the aggregate as a table, and every trial's row; written to ``OUT/report.html``.
It draws a :class:`~policylens.sweeps.SweepResult` (aggregated by the sweep) and computes nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from policylens.report import figures
from policylens.report.html import Report
from policylens.sweeps import SweepResult, SweepSpec
from policylens.sweeps.results import columns


def _label(params: dict[str, Any], single: bool) -> str:
    text = lambda v: "none" if v is None else str(v)  # noqa: E731
    if single:
        return text(next(iter(params.values())))
    return ", ".join(f"{k}={text(v)}" for k, v in params.items()) or "all trials"


def interval_text(m: dict[str, Any]) -> str:
    """A mean over seeds as ``mean [low, high] (n=...)``; without an interval (one seed), the mean."""
    if math.isnan(m["mean"]):
        return "-"
    if math.isnan(m["ci"][0]):
        return f"{m['mean']:.3f} (n={m['n']})"
    return f"{m['mean']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] (n={m['n']})"


def metrics_by_parameter(
    result: SweepResult, names: list[str] | None = None
) -> tuple[bytes | None, list[dict[str, Any]]]:
    """The metrics ``names`` (default all) at every parameter combination: a figure of the means
    over seeds with Student-t 95% intervals and the single seeds as dots, and the same as a table."""
    spec, rows, groups = result.spec, result.rows, result.groups
    names = result.metric_names if names is None else names
    single = len(spec.grid) == 1
    labels = [_label(g["params"], single) for g in groups]
    panels = []
    for name in names:
        values = [
            [r[name] for r in rows if _key(spec, r) == _key(spec, g["params"])] for g in groups
        ]
        panels.append(
            (
                name,
                [g["metrics"][name]["mean"] for g in groups],
                [g["metrics"][name]["ci"][0] for g in groups],
                [g["metrics"][name]["ci"][1] for g in groups],
                values,
            )
        )
    xlabel = next(iter(spec.grid)) if single else "parameters"
    figure = figures.interval_panels_figure(labels, panels, xlabel) if panels else None
    table = [
        {
            "parameters": label,
            "seeds": len(g["seeds"]),
            **{n: interval_text(g["metrics"][n]) for n in names},
        }
        for label, g in zip(labels, groups, strict=True)
    ]
    return figure, table


def sweep_report(result: SweepResult, title: str) -> Report:
    """The report of a sweep's result."""
    spec, rows = result.spec, result.rows
    report = Report(
        title,
        f"{len(rows)} trials in the {spec.world} world: every combination of "
        f"{', '.join(spec.grid) or 'the fixed settings'} with seeds {spec.seeds}, "
        f"{spec.steps or 'the recipe default of'} steps each, evaluated by {spec.evaluate}. "
        "Points are means over seeds with Student-t 95% intervals; grey dots are single seeds.",
    )
    figure, table = metrics_by_parameter(result)
    sec = report.section("Metrics by parameter")
    if figure:
        sec.figure(figure, "metrics by parameter")
    sec.table(table).note("n counts the seeds whose trial measured the metric (a NaN is left out).")
    cols = columns(spec, rows)
    report.section("Trials").table([{c: r.get(c) for c in cols} for r in rows])
    report.section("Spec").json(spec.to_dict())
    return report


def _key(spec: SweepSpec, row: dict[str, Any]) -> tuple:
    return tuple(row[p] for p in spec.grid)


def render(result: SweepResult, out: str | Path) -> Path:
    """Draw a sweep's result into ``out/report.html`` (``out``: the sweep's folder)."""
    out = Path(out)
    if not result.rows:
        raise ValueError(f"the sweep in {out} has no finished trials to report yet.")
    return sweep_report(result, f"policylens sweep: {out.name}").write(out / "report.html")
