"""Maze commands (goal misgeneralization): gallery, train maze, eval, behaviour, steer, report,
table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.table import Table

from policylens.commands.framework import (
    MAX_EPISODES,
    MAX_STEPS,
    command,
    console,
    err_console,
    note_rounding,
    open_run,
    overwrite_option,
    print_json,
    train_app,
)

GALLERY_FILE = Path("maze_gallery.png")
"""Where ``gallery`` writes without --out (its own file: rewritten by each run of it)."""


@command("gallery")
def gallery_cmd(
    out: Path = typer.Option(None, help=f"PNG file to write (default {GALLERY_FILE})."),
    overwrite: bool = overwrite_option(),
    n: int = typer.Option(12, min=1, max=1000, help="Number of levels."),
    seed: int = typer.Option(0, min=0, help="First level seed."),
    world_size: int = typer.Option(9, help="World side in cells (odd)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Render a gallery of maze levels with their shortest paths."""
    from policylens.artifacts import check_output
    from policylens.report.gallery import render
    from policylens.studies.maze import gallery

    if out is None:
        out, overwrite = GALLERY_FILE, True
    check_output(out, overwrite)
    options = gallery.GalleryOptions(n=n, seed=seed, world_size=world_size)
    result = gallery.run(options)
    path = render(result, out)
    data = {"path": str(path), **result.to_json()}
    if as_json:
        print_json(data)
        return
    console.print(f"wrote {path} ({n} levels, mean shortest path {data['mean_shortest_path']:.1f})")


def parse_region(value: str | None) -> int | None:
    """'none' (cheese anywhere) or a positive integer region side."""
    if value is None or value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"--cheese-region must be a positive integer or 'none', got {value!r}"
        ) from None


@command("maze", typer_app=train_app)
def train_maze_cmd(
    out: Path = typer.Option(..., help="Run folder to create (or continue with --resume)."),
    cheese_region: str = typer.Option("1", help="Top-right region side for the cheese, or 'none'."),
    num_levels: int = typer.Option(0, help="Distinct training levels (0 = unlimited)."),
    world_size: int = typer.Option(
        None, help="World side in cells (odd); default of the maze world."
    ),
    steps: int = typer.Option(
        None, min=1, max=MAX_STEPS, help="Environment steps (default: the recipe's)."
    ),
    seed: int = typer.Option(0, min=0, help="Seed of envs, init and sampling."),
    arch: str = typer.Option(None, help="Network: maze_cnn (default), mlp, impala."),
    precision: str = typer.Option(
        "auto", help="float32, bfloat16, or auto (bf16 where the CPU multiplies it natively)."
    ),
    threads: int = typer.Option(
        None,
        min=1,
        max=256,
        help="Torch threads (default: the cores other processes leave free, up to 2; pin a count "
        "to reproduce a run bit for bit).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a killed run from its last saved state."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON."),
) -> None:
    """Train a PPO maze agent (default recipe: cheese in the top-right corner)."""
    from policylens.runs import check_resume
    from policylens.train.ppo import train_ppo
    from policylens.worlds.maze import MazeRecipe

    config = MazeRecipe(
        cheese_region=parse_region(cheese_region),
        num_levels=num_levels,
        world_size=world_size,
        total_steps=steps,
        seed=seed,
        arch=arch,
        precision=precision,
    ).config()
    if threads is not None:
        config = dataclasses.replace(config, threads=threads)
    check_resume(out, resume)
    note_rounding(config)
    if resume and not (out / "resume.pt").exists():
        err_console.print(f"note: {out} was stopped before its first saved state; starting it over")
    run = train_ppo(config, out, resume=resume, progress=not quiet)
    summary = run.summary()
    if as_json:
        print_json(summary)
        return
    console.print(
        f"trained {summary['steps']} steps -> {run.path} (last success {summary['success']})"
    )


@command("eval")
def eval_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    cheese_region: str = typer.Option(None, help="Override the cheese region ('none' = anywhere)."),
    episodes: int = typer.Option(500, min=1, max=MAX_EPISODES, help="Episodes (one per maze)."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    seed: int = typer.Option(10_000, min=0, help="Seed of the evaluation mazes and sampling."),
    greedy: bool = typer.Option(False, "--greedy", help="Argmax actions instead of sampling."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Success rate, return, episode length and path efficiency of a run's agent."""
    from policylens.report.maze import evaluation_rows
    from policylens.studies.maze import behaviour

    r = open_run(run)
    overrides = {} if cheese_region is None else {"cheese_region": parse_region(cheese_region)}
    options = behaviour.EvalOptions(
        episodes=episodes, step=step, seed=seed, greedy=greedy, world_options=overrides
    )
    result = behaviour.run(r, options)
    if as_json:
        print_json(result.to_json())
        return
    table = Table("metric", "value", "95% CI", title=f"{r.name} on {result.env_kwargs}")
    for row in evaluation_rows(result):
        table.add_row(*row.values())
    console.print(table)


@command("behaviour")
def behaviour_cmd(
    run: Path = typer.Argument(..., help="Maze run folder."),
    episodes: int = typer.Option(500, min=1, max=MAX_EPISODES, help="Episodes per distribution."),
    n_mazes: int = typer.Option(
        200, min=20, max=MAX_EPISODES, help="Mazes for the decision-square analysis."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Behaviour in and out of the training distribution, and decision squares."""
    from policylens.report.maze import behaviour_rows, decision_lines
    from policylens.studies.maze import misgeneralization as study

    r = open_run(run, world="maze")
    result = study.behaviour(r, study.BehaviourOptions(episodes, n_mazes))
    if as_json:
        print_json(result.to_json())
        return
    rows = behaviour_rows(result.behaviour)
    table = Table(*rows[0].keys(), title=f"{r.name}: behaviour ({episodes} episodes each)")
    for row in rows:
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    for line in decision_lines(result.decisions):
        console.print(line)


@command("steer", flags={"clamp_channels": "--clamp-channel"})
def steer_cmd(
    run: Path = typer.Argument(..., help="Maze run folder."),
    hook: str = typer.Option(None, help="Hook to steer at (default: a middle residual layer)."),
    coef: list[str] = typer.Option(
        ["-1"], help="Coefficient(s) of the cheese vector; repeat for several."
    ),
    n_mazes: int = typer.Option(200, min=100, max=MAX_EPISODES, help="Test mazes (>= 100)."),
    random_vectors: int = typer.Option(
        3, min=1, max=1000, help="Random equal-norm control vectors."
    ),
    clamp_channel: list[int] = typer.Option(
        None, help="Also clamp these channels at a target square."
    ),
    clamp_value: float = typer.Option(
        None, help="Value for --clamp-channel (default: 2x the typical max)."
    ),
    seed: int = typer.Option(20_000, min=0, help="Seed of the test mazes and sampling."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The cheese vector vs random vectors (and optionally channel clamping), over many mazes."""
    from policylens.report.maze import clamp_line, steering_rows
    from policylens.studies.maze import misgeneralization as study

    r = open_run(run, world="maze")
    options = study.SteerOptions(
        hook=hook,
        coefs=tuple(coef),
        n_mazes=n_mazes,
        random_vectors=random_vectors,
        clamp_channels=tuple(clamp_channel or ()),
        clamp_value=clamp_value,
        seed=seed,
    )
    result = study.steer(r, options)
    if as_json:
        print_json(result.to_json())
        return
    table = Table(
        "condition",
        "success",
        "corner first",
        title=f"{r.name}: steering at {result.hook}, {n_mazes} mazes",
    )
    for row in steering_rows(result):
        table.add_row(*row.values())
    console.print(table)
    if result.clamp is not None:
        console.print(clamp_line(result.clamp))


@command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Path = typer.Option(None, help="HTML file (default RUN/analysis/report.html)."),
    overwrite: bool = overwrite_option(),
    episodes: int = typer.Option(500, min=1, max=MAX_EPISODES, help="Episodes per distribution."),
    n_mazes: int = typer.Option(200, min=100, max=MAX_EPISODES, help="Mazes per intervention."),
    as_json: bool = typer.Option(False, "--json", help="Print the report's path as JSON."),
) -> None:
    """Write a self-contained static HTML report of a run (analyses are computed once and reused)."""
    from policylens.artifacts import check_output
    from policylens.report.maze import render
    from policylens.studies.maze import misgeneralization as study

    r = open_run(run, world="maze")
    if out is not None:
        check_output(out, overwrite)
    options = study.StudyOptions(study.AnalysisOptions(episodes, n_mazes))
    result = study.study(r, options, log=lambda m: err_console.print(m))
    path = render(result).write(out or r.analysis_dir / "report.html")
    if as_json:
        print_json({"report": str(path)})
        return
    console.print(f"report: {path}")


@command("table")
def table_cmd(
    runs: list[Path] = typer.Argument(
        ..., help="Maze run folders (e.g. trained with regions 1, 3, none)."
    ),
    episodes: int = typer.Option(500, min=1, max=MAX_EPISODES, help="Episodes per distribution."),
    n_mazes: int = typer.Option(200, min=100, max=MAX_EPISODES, help="Mazes per intervention."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The goal-misgeneralization table: success in and out of distribution and corner bias per run."""
    from policylens.report.maze import table_rows
    from policylens.studies.maze import misgeneralization as study

    opened = [open_run(r, world="maze") for r in runs]  # every run checked before any is evaluated
    result = study.table(opened, study.AnalysisOptions(episodes, n_mazes), log=lambda m: None)
    if as_json:
        print_json(result.to_json())
        return
    rows = table_rows(result)
    table = Table(*rows[0].keys(), title="goal misgeneralization by training cheese region")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
