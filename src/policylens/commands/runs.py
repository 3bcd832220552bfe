"""General commands: the registered worlds and the runs under a folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from policylens.commands.framework import command, console, err_console, print_json


@command("envs")
def envs_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the registered worlds with a one-line description each."""
    from policylens.envs import WORLDS

    if as_json:
        print_json(WORLDS)
        return
    table = Table("world", "description", show_header=True)
    for env_id, description in WORLDS.items():
        table.add_row(env_id, description)
    console.print(table)


@command("runs")
def runs_cmd(
    root: Path = typer.Argument(Path("runs"), help="Folder to search for runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List runs with their key settings and latest metrics."""
    from policylens.runs import find_runs

    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file; give the folder that holds the runs")
    skipped: list[str] = []
    summaries = []
    for run in find_runs(root, skipped):
        try:
            summaries.append(run.summary())
        except (ValueError, OSError) as e:  # a damaged metrics.csv: one bad run, not the listing
            skipped.append(f"skipped {run.path}: {e}")
    for line in skipped:
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False)
    if as_json:
        print_json(summaries)
        return
    table = Table(
        "run", "kind", "env", "options", "arch", "seed", "steps", "ckpts", "success", "return"
    )
    for s in summaries:
        fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
        state = "" if s["done"] else " (training)" if s["writer"] else " (unfinished)"
        steps = f"{s['steps']}/{s['total_steps']}{state}"
        table.add_row(
            s["run"], s["kind"], s["env"], json.dumps(s["env_kwargs"]), s["arch"], str(s["seed"]),
            steps, str(s["checkpoints"]), fmt(s["success"]), fmt(s["return"]),
        )  # fmt: skip
    console.print(table)
