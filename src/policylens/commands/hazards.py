"""Hazard-world commands: ``policylens train hazards``, ``policylens failures`` and
``policylens hazards-report``."""

from __future__ import annotations

from pathlib import Path

import typer

from policylens.commands.framework import (
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


@command("hazards", typer_app=train_app, flags={"total_steps": "--steps"})
def train_hazards_cmd(
    out: Path = typer.Option(..., help="Run folder to create (or continue with --resume)."),
    num_levels: int = typer.Option(
        None, help="Distinct training levels (0 = unlimited; default: the recipe's 1,000)."
    ),
    start_level: int = typer.Option(0, help="First training level seed."),
    distribution_mode: str = typer.Option(
        "hard", help="hard, or easy (no enemies on flat ground)."
    ),
    max_difficulty: int = typer.Option(
        2, help="Level difficulties 1..this (3: procgen's full range, much slower to learn)."
    ),
    steps: int = typer.Option(
        None, min=1, max=MAX_STEPS, help="Environment steps (default: the recipe's)."
    ),
    layout: str = typer.Option(
        "classic",
        help="Where hazards go: classic, or path (every section holds a saw, an enemy or lava "
        "the agent must pass, as in CoinRun).",
    ),
    obs_mode: str = typer.Option(
        "symbolic",
        help="What the agent sees: symbolic (one-hot tiles, the one-conv net), rgb (13x13 tiles "
        "at --tile-px pixels; trains clear_cnn) or rgb64 (64x64 frames).",
    ),
    tile_px: int = typer.Option(
        4, min=1, max=16, help="Pixels per tile for --obs-mode rgb (4: 52x52 frames)."
    ),
    first_stride: int = typer.Option(
        2, min=1, max=4, help="Stride of clear_cnn's first 7x7 conv (2 quarters the cost above it)."
    ),
    salient_saws: bool = typer.Option(
        False,
        "--salient-saws",
        help="Pixel agents: draw saws dark with a light hub, not light grey (the grey one went "
        "unseen; BENCHMARKS.md).",
    ),
    learning_rate: float = typer.Option(
        1e-3, min=1e-7, max=1.0, help="Adam learning rate (the pixel run uses 5e-4)."
    ),
    init_weights: Path = typer.Option(
        None,
        help="A .safetensors file of the same network to start from (to continue a long "
        "training, e.g. a zoo agent's model.safetensors).",
    ),
    channels: int = typer.Option(
        16, min=1, max=256, help="Conv channels (clear_cnn: its first layer; twice that above)."
    ),
    res_blocks: int = typer.Option(
        0, min=0, max=8, help="Residual blocks after the first conv (the recipe has none)."
    ),
    seed: int = typer.Option(0, min=0, help="Seed of envs, init and sampling."),
    precision: str = typer.Option(
        "auto", help="float32, bfloat16, or auto (bf16 where the CPU multiplies it natively)."
    ),
    threads: int = typer.Option(
        2, min=1, max=256, help="Torch threads (1 keeps its speed beside other busy processes)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a killed run from its last saved state."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON."),
) -> None:
    """Train a PPO agent in the hazard world (CoinRun-like; default recipe: 1,000 levels of
    difficulty 1-2)."""
    from policylens.runs import check_resume
    from policylens.train.ppo import train_ppo
    from policylens.worlds.hazards import HAZARDS_LEVELS, HazardsRecipe

    config = HazardsRecipe(
        num_levels=HAZARDS_LEVELS if num_levels is None else num_levels,
        start_level=start_level,
        distribution_mode=distribution_mode,
        max_difficulty=max_difficulty,
        total_steps=steps,
        seed=seed,
        precision=precision,
        channels=channels,
        res_blocks=res_blocks,
        layout=layout,
        obs_mode=obs_mode,
        tile_px=tile_px,
        first_stride=first_stride,
        salient_saws=salient_saws,
        learning_rate=learning_rate,
        threads=threads,
        init_weights=None if init_weights is None else str(init_weights),
    ).config()
    check_resume(out, resume)
    note_rounding(config)
    if resume and not (out / "resume.pt").exists():
        err_console.print(f"note: {out} was stopped before its first saved state; starting it over")
    run = train_ppo(config, out, resume=resume, progress=not (quiet or as_json))
    summary = run.summary()
    if as_json:
        print_json(summary)
        return
    console.print(
        f"trained {summary['steps']} steps -> {run.path} (last completion {summary['success']})"
    )


@command("failures")
def failures_cmd(
    run: Path = typer.Argument(..., help="Hazard-world run folder."),
    levels: int = typer.Option(1000, min=1, help="Levels (episodes) per split and observation."),
    invisible: list[str] = typer.Option(
        [], help="Also hide this hazard from the observation: saws or enemies; repeat for both."
    ),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    seed: int = typer.Option(10_000, min=0, help="Seed of the evaluation levels and sampling."),
    greedy: bool = typer.Option(False, "--greedy", help="Argmax actions instead of sampling."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Completion rate and the failure table by cause (95% intervals), on unseen and training
    levels, optionally with saws or enemies invisible."""
    from policylens.report.hazards import difference_rows, failure_rows, rows_table
    from policylens.studies.hazards.failures import FailureOptions, run_failures

    options = FailureOptions(levels, tuple(invisible), seed=seed, greedy=greedy, step=step)
    result = run_failures(open_run(run), options)
    if as_json:
        print_json(result.to_json())
        return
    title = f"{Path(run).name} at step {result.step:,}: share of levels"
    console.print(rows_table(failure_rows(result), title))
    if invisible:
        title = "hidden minus shown (95% CI; '(none)': holds zero)"
        console.print(rows_table(difference_rows(result), title))


@command("hazards-report")
def hazards_report_cmd(
    run: Path = typer.Argument(..., help="Hazard-world run folder."),
    out: Path = typer.Option(None, help="HTML file (default RUN/analysis/hazards_report.html)."),
    overwrite: bool = overwrite_option(),
    levels: int = typer.Option(500, min=1, help="Levels per split and observation."),
    failures: Path = typer.Option(
        None, help="Reuse failure tables saved from `policylens failures RUN --json` instead."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report's path as JSON."),
) -> None:
    """A static HTML report: level gallery, the agent's play (frames, GIF), failure tables."""
    from policylens.artifacts import check_output, read_json
    from policylens.report.hazards import render
    from policylens.studies.hazards.failures import FailureOptions, FailureStudy
    from policylens.studies.hazards.overview import OverviewOptions, run_overview

    if out is not None:
        check_output(out, overwrite)
    tables = None
    if failures is not None:
        data = read_json(failures, expect=dict)
        try:
            tables = FailureStudy.from_json(data)
        except (KeyError, TypeError, AttributeError, IndexError):
            raise ValueError(
                f"--failures {failures} is not the output of `policylens failures RUN --json`; "
                "save that command's JSON and pass it"
            ) from None
    r = open_run(run)
    options = OverviewOptions(failures=FailureOptions(levels, ("saws", "enemies")), tables=tables)
    overview = run_overview(r, options, log=lambda m: err_console.print(m))
    path = render(overview, r.analysis_dir, out)
    if as_json:
        print_json({"report": str(path)})
        return
    console.print(f"report: {path}")
