"""``policylens updates``: two-phase training in the lunar world and weight-update analysis."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from policylens.commands.framework import (
    MAX_EPISODES,
    MAX_STEPS,
    app,
    command,
    console,
    overwrite_option,
    print_json,
)

if TYPE_CHECKING:
    from policylens.studies.lunar_updates import UpdatesAnalysis

updates_app = typer.Typer(
    help="Isolating updates: train on reward A, then briefly on reward B; study post - pre.",
    no_args_is_help=True,
)
app.add_typer(updates_app, name="updates")


def _variants(values: list[str]) -> tuple[str, ...]:
    """Repeated and/or comma-separated variant names."""
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def _ci(m: dict[str, Any], digits: int = 1) -> str:
    lo, hi = m["ci"]
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in (m["mean"], lo, hi)):
        return "-" if not math.isfinite(m["mean"]) else f"{m['mean']:.{digits}f}"
    return f"{m['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def print_analysis(analysis: UpdatesAnalysis) -> None:
    """Tables: the models' behaviour per phase-2 variant, the updates, and their consistency."""
    from policylens.report.updates import model_rows

    e = analysis.experiment
    a = e["phase1"]
    for v in e["phase2"]:
        cols = [f"return {a}"] + ([f"return {v}"] if v != a else []) + ["fuel used", "landed"]
        table = Table("model", *cols, title=f"{a} -> {v} ({e['backend']}, seeds {e['seeds']})")
        for name, r in model_rows(analysis.record(), v).items():
            cells = [_ci(r["return"][a])] + ([_ci(r["return"][v])] if v != a else [])
            table.add_row(name, *cells, _ci(r["fuel_used"]), _ci(r["landed"], 2))
        console.print(table)
    table = Table("update", "norm", "norm/weights", "top 1% mass", "noise top 1%", "policy share")
    for lab, u in analysis.updates.items():
        policy = sum(s["mass_share"] for g, s in u["groups"].items() if g.startswith("policy"))
        table.add_row(
            lab,
            f"{u['norm']:.4g}",
            f"{u['rel_norm']:.4g}",
            f"{u['top_mass']['0.01']:.3f}",
            f"{analysis.noise[lab]['top_mass']['0.01']:.3f}",
            f"{policy:.3f}",
        )
    console.print(table)
    c = analysis.consistency
    for v, x in c["across_seeds"].items():
        console.print(f"cosine across seeds ({v}): {x['mean']:.3f} over {x['n']} pairs")
    for k, x in c["across_variants"].items():
        console.print(f"cosine within seeds ({k}): {x['mean']:.3f} over {x['n']} seeds")
    for v, r in analysis.salvage["recovery"].items():
        steps = ", ".join(f"seed {s}: {x}" for s, x in r["steps_to_recover"].items())
        console.print(f"salvage after {v}, steps to recover: {steps}")


@command("run", typer_app=updates_app)
def run_cmd(
    out: Path = typer.Option(..., help="Experiment folder to create (or to continue)."),
    phase1: str = typer.Option("no_fuel", help="Reward variant of phase 1 (A)."),
    phase2: list[str] = typer.Option(
        ["scaled_fuel"], help="Reward variant(s) of phase 2 (B); repeat or comma-separate."
    ),
    steps1: int = typer.Option(300_000, min=1, max=MAX_STEPS, help="Phase-1 environment steps."),
    steps2: int = typer.Option(
        30_000, min=1, max=MAX_STEPS, help="Phase-2 environment steps (K > 0)."
    ),
    seeds: str = typer.Option("0", help="Seeds: a range (0-9), a list (0,2,5) or both."),
    backend: str = typer.Option("builtin", help="Trainer: builtin or sb3 (SB3 PPO MlpPolicy)."),
    workers: int = typer.Option(
        1, min=1, max=256, help="Processes running jobs (seeds, variants)."
    ),
    threads: int = typer.Option(
        1, min=1, max=256, help="Torch threads per job (one suits these small networks)."
    ),
    episodes: int = typer.Option(
        50, min=1, max=MAX_EPISODES, help="Full evaluation episodes per model and seed."
    ),
    salvage_steps: int = typer.Option(
        None,
        min=1,
        max=MAX_STEPS,
        help="Steps retraining the subtracted model (default: steps1 / 4).",
    ),
    control: bool = typer.Option(
        True,
        " /--no-control",
        show_default=False,
        help="Skip the control phase 2 that keeps reward A.",
    ),
    greedy: bool = typer.Option(
        False, "--greedy", help="Evaluate with argmax actions instead of sampling."
    ),
    num_envs: int = typer.Option(
        None, min=1, max=4096, help="Recipe override: parallel environments."
    ),
    num_steps: int = typer.Option(
        None, min=1, max=65_536, help="Recipe override: steps per env per rollout."
    ),
    hidden: str = typer.Option(None, help="Recipe override: hidden sizes, e.g. 64,64."),
    report: bool = typer.Option(
        True, " /--no-report", show_default=False, help="Do not write OUT/report.html."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
) -> None:
    """Run the whole protocol (phase 1, phase 2, controls, evaluation, salvage) and analyse it."""
    from policylens.studies.lunar_updates import UpdatesConfig, parse_seeds, run_experiment

    recipe: dict[str, Any] = {}
    if num_envs is not None:
        recipe["num_envs"] = num_envs
    if num_steps is not None:
        recipe["num_steps"] = num_steps
    if hidden is not None:
        try:
            recipe["hidden"] = [int(h) for h in hidden.split(",") if h.strip()]
        except ValueError:
            raise ValueError(
                f"--hidden must be comma-separated integers, got {hidden!r}."
            ) from None
    config = UpdatesConfig(
        phase1=phase1,
        phase2=_variants(phase2),
        steps1=steps1,
        steps2=steps2,
        seeds=parse_seeds(seeds),
        backend=backend,
        salvage_steps=salvage_steps,
        episodes=episodes,
        greedy=greedy,
        control=control,
        recipe=recipe,
    )
    from policylens.studies.lunar_updates import EXPERIMENT_FILE

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder for the experiment")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPERIMENT_FILE).is_file():
        raise ValueError(
            f"--out {out} is not empty and holds no experiment; choose a new or empty folder"
        )
    log = None if as_json else (lambda m: console.print(m, highlight=False))
    run_experiment(config, out, workers=workers, log=log, threads=threads)
    analyze(out, report, as_json)


def analyze(folder: Path, report: bool, as_json: bool) -> None:
    """Analyse an experiment folder, render its ``report.html`` if asked, and print it as JSON
    or tables (with where its report is)."""
    from policylens.studies.lunar_updates import analyze_experiment

    analysis = analyze_experiment(folder)
    if report:
        from policylens.report.updates import render

        render(analysis)
    if as_json:
        print_json(analysis.to_json())
        return
    print_analysis(analysis)
    if report:
        console.print(f"report: {folder / 'report.html'}")


@command("analyze", typer_app=updates_app)
def analyze_cmd(
    path: Path = typer.Argument(..., help="Experiment folder written by `updates run`."),
    report: bool = typer.Option(
        True, " /--no-report", show_default=False, help="Do not write PATH/report.html."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
) -> None:
    """Recompute the analysis (and report) of an experiment folder from its checkpoints."""
    analyze(path, report, as_json)


@command("compare", typer_app=updates_app)
def compare_cmd(
    paths: list[Path] = typer.Argument(..., help="Experiment folders."),
    by: str = typer.Option("variant", help="Group by variant, steps or backend."),
    out: Path = typer.Option(None, help="Also write an HTML comparison page here."),
    overwrite: bool = overwrite_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
) -> None:
    """Compare experiments: per-group means over seeds with 95% intervals (and plots)."""
    from policylens.report.updates import COMPARE_KEYS, render_comparison
    from policylens.studies.lunar_updates import compare_experiments

    if out is not None:
        from policylens.artifacts import check_output

        check_output(out, overwrite)
    result = compare_experiments(paths, by=by)
    if out is not None:
        render_comparison(result, out)
    if as_json:
        print_json(result.to_json())
        return
    keys = [k for k in COMPARE_KEYS if any(k in r for r in result.rows)]
    table = Table("group", "runs", *keys, title=f"updates experiments by {by}")
    for r in result.rows:
        table.add_row(
            r["group"], str(r["experiments"]), *(_ci(r[k], 3) if k in r else "-" for k in keys)
        )
    console.print(table)
    if out is not None:
        console.print(f"report: {out}")


@command("list", typer_app=updates_app)
def list_cmd(
    root: Path = typer.Argument(Path("runs"), help="Folder to search for experiments."),
    phase1: str = typer.Option(None, help="Only experiments with this phase-1 reward."),
    phase2: str = typer.Option(None, help="Only experiments with this phase-2 reward."),
    steps1: int = typer.Option(None, help="Only this phase-1 length."),
    steps2: int = typer.Option(None, help="Only this phase-2 length."),
    backend: str = typer.Option(None, help="Only this backend (builtin or sb3)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Find experiments by reward variants, step counts and backend."""
    from policylens import artifacts
    from policylens.studies.lunar_updates import EXPERIMENT_FILE, find_experiments

    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file; give the folder that holds the experiments")
    found = find_experiments(root, phase1, phase2, steps1, steps2, backend)
    rows = []
    for p in found:
        c = artifacts.read_json(p / EXPERIMENT_FILE, expect=dict, keys={"config": dict})["config"]
        rows.append(
            {"path": str(p), **{k: c[k] for k in ("phase1", "phase2", "steps1", "steps2", "backend", "seeds")},
             "analysed": (p / "analysis" / "updates.json").is_file()}
        )  # fmt: skip
    if as_json:
        print_json(rows)
        return
    table = Table(
        "experiment", "phase1", "phase2", "steps1", "steps2", "backend", "seeds", "analysed"
    )
    for r in rows:
        table.add_row(r["path"], r["phase1"], ",".join(r["phase2"]), str(r["steps1"]),
                      str(r["steps2"]), r["backend"], str(r["seeds"]), str(r["analysed"]))  # fmt: skip
    console.print(table)
