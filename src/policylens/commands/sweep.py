"""``policylens sweep``: train and evaluate every combination of a recipe's settings with every
seed, on a local process pool or on Ray; results, their aggregate over seeds and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from policylens.commands.framework import (
    MAX_STEPS,
    command,
    console,
    err_console,
    note_rounding,
    print_json,
)


def _assignments(items: list[str] | None, option: str, many: bool) -> dict[str, Any] | None:
    """``NAME=VALUE`` flags as a dict; with ``many`` the value is a comma-separated list."""
    if not items:
        return None
    found: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            form = "NAME=V1,V2,..." if many else "NAME=VALUE"
            raise ValueError(f"{option} takes {form}, got {item!r}.")
        if name.strip() in found:
            raise ValueError(
                f"{option} names {name.strip()!r} twice; give each name once"
                + (" with all its values (NAME=V1,V2,...)." if many else ".")
            )
        found[name.strip()] = [v for v in value.split(",") if v.strip()] if many else value
    return found


@command("sweep")
def sweep_cmd(
    spec: Path = typer.Argument(
        None, help="TOML spec (optional); the flags below complete or override it."
    ),
    world: str = typer.Option(None, help="World whose recipe is swept (default maze)."),
    grid: list[str] = typer.Option(
        None, help="NAME=V1,V2,...: a recipe parameter and its values ('none' = None); repeat."
    ),
    fixed: list[str] = typer.Option(
        None, help="NAME=VALUE: a recipe parameter shared by every trial; repeat."
    ),
    seeds: str = typer.Option(None, help="Seeds: a range 0-4, a list 0,2,5, or one (default 0)."),
    steps: int = typer.Option(
        None, min=1, max=MAX_STEPS, help="Environment steps per trial (default: the recipe's)."
    ),
    evaluate: str = typer.Option(
        None, help="module:function called on each finished run (default: the world's)."
    ),
    eval_arg: list[str] = typer.Option(
        None, "--eval-arg", help="NAME=VALUE passed to the evaluation (e.g. episodes=200); repeat."
    ),
    workers: int = typer.Option(
        1, min=1, max=256, help="Trials at once; each trains on CPUs // workers torch threads."
    ),
    threads: int = typer.Option(
        None, min=1, max=256, help="Torch threads per trial (default: CPUs // workers)."
    ),
    backend: str = typer.Option("local", help="local (a process pool) or ray."),
    address: str = typer.Option(
        None, help="Address of a running Ray cluster (default: start Ray on this machine)."
    ),
    out: Path = typer.Option(..., help="Sweep folder; rerun into it to finish a killed sweep."),
    quiet: bool = typer.Option(False, "--quiet", help="No live table of the trials."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the result rows and their aggregate as JSON."
    ),
) -> None:
    """Sweep a recipe's parameters times seeds; each trial is a run folder under OUT/trials/."""
    from policylens import worlds
    from policylens.report.sweeps import interval_text, render
    from policylens.sweeps import (
        SweepResult,
        SweepSpec,
        TrialsFailed,
        function_path,
        run_sweep,
        spec_settings,
    )

    settings = spec_settings(
        spec,
        world=world,
        grid=_assignments(grid, "--grid", many=True),
        fixed=_assignments(fixed, "--fixed", many=False),
        seeds=seeds,
        steps=steps,
        evaluate=evaluate,
        evaluate_kwargs=_assignments(eval_arg, "--eval-arg", many=False),
    )
    world_of_spec = worlds.get(settings.setdefault("world", "maze"))
    settings.setdefault("recipe", function_path(worlds.recipe(world_of_spec.name)))
    settings.setdefault("evaluate", world_of_spec.sweep_metrics or "")
    sweep = SweepSpec.from_dict(settings)
    note_rounding(sweep.config(sweep.trials()[0], 1))
    try:
        rows = run_sweep(
            sweep, out, workers, backend, address, quiet=quiet or as_json, threads=threads
        )
    except TrialsFailed as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    result = SweepResult.of(sweep, rows)
    summary = result.groups
    report = render(result, out)
    if as_json:
        print_json({**result.to_json(), "report": str(report)})
        return
    names = list(summary[0]["metrics"]) if summary else []
    table = Table(*sweep.grid, "seeds", *names, title=f"sweep {out}: mean [95% interval]")
    for group in summary:
        cells = [interval_text(group["metrics"][n]) for n in names]
        params = ["none" if v is None else str(v) for v in group["params"].values()]
        table.add_row(*params, str(len(group["seeds"])), *cells)
    console.print(table)
    console.print(f"results: {out / 'results.csv'}  report: {report}")
