"""Decision-transformer commands: ``policylens dt collect`` (offline trajectories of a MiniGrid
task), ``policylens train dt`` (a DT on TransformerLens), ``policylens dt eval`` (the return at a
target RTG) and ``policylens dt calibrate`` (target RTG against achieved return)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from policylens.commands.framework import (
    MAX_EPISODES,
    MAX_STEPS,
    app,
    command,
    console,
    open_run,
    print_json,
    train_app,
)

dt_app = typer.Typer(
    help="Decision transformers: offline trajectories, evaluation, RTG calibration.",
    no_args_is_help=True,
)
app.add_typer(dt_app, name="dt")

TASKS = ("obstacles", "memory")
"""The MiniGrid tasks (Dynamic-Obstacles 8x8, MemoryS7), named here so ``--help`` imports no
world."""


@command("collect", typer_app=dt_app)
def collect_cmd(
    out: Path = typer.Option(..., help="Store folder to write."),
    task: str = typer.Option("obstacles", help="obstacles (Dynamic-Obstacles 8x8) or memory."),
    episodes: int = typer.Option(4000, min=1, max=MAX_EPISODES, help="Episodes to play."),
    seed: int = typer.Option(0, min=0, help="Seed of the episodes and the planners."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a complete store at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Offline trajectories of mixed quality: the breadth-first-search planner on the true grid
    at several epsilons and temperatures (memory: also heading for the wrong object)."""
    from policylens.errors import check_known
    from policylens.worlds.minigrid import collect_trajectories

    check_known([task], TASKS, "--task")
    summary = collect_trajectories(out, task, episodes, seed, overwrite=overwrite)
    if as_json:
        print_json(summary.to_json())
        return
    table = Table("policy", "episodes", "mean return", "success", "mean length",
                  title=f"{summary.rows:,} steps of {summary.episodes:,} episodes -> {summary.path}")  # fmt: skip
    for p in summary.policies:
        table.add_row(p["label"], str(p["episodes"]), f"{p['mean_return']:.3f}",
                      f"{p['success']:.2f}", f"{p['mean_length']:.1f}")  # fmt: skip
    console.print(table)


@command("dt", typer_app=train_app, flags={"total_steps": "--steps"})
def train_dt_cmd(
    data: Path = typer.Option(..., help="Trajectory store (`policylens dt collect`)."),
    out: Path = typer.Option(..., help="Run folder to create (or continue with --resume)."),
    steps: int = typer.Option(3000, min=1, max=MAX_STEPS, help="Gradient steps."),
    context: int = typer.Option(8, min=1, max=4096, help="Steps per window (3x tokens)."),
    n_layers: int = typer.Option(1, min=1, max=64, help="Transformer blocks."),
    d_model: int = typer.Option(128, min=2, max=4096, help="Residual stream width."),
    n_heads: int = typer.Option(2, min=1, max=64, help="Attention heads per block."),
    d_mlp: int = typer.Option(512, min=1, max=65536, help="MLP width."),
    attn_only: bool = typer.Option(False, "--attn-only", help="Blocks without MLPs."),
    no_layernorm: bool = typer.Option(False, "--no-layernorm", help="No LayerNorm."),
    no_direction: bool = typer.Option(
        False, "--no-direction", help="Do not give the state token the agent's direction."
    ),
    batch_size: int = typer.Option(128, min=1, max=1_000_000, help="Windows per step."),
    learning_rate: float = typer.Option(5e-4, min=1e-8, max=1.0, help="Peak AdamW rate."),
    seed: int = typer.Option(0, min=0, help="Seed of the initial weights and the sampling."),
    threads: int = typer.Option(1, min=1, max=256, help="Torch threads."),
    log_every: int = typer.Option(100, min=1, help="Gradient steps between metrics rows."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a killed run from its last saved state."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON."),
) -> None:
    """Train a decision transformer (a TransformerLens HookedTransformer) on a trajectory store."""
    from policylens.runs import check_resume
    from policylens.train.dt import DTTrainConfig, train_dt

    config = DTTrainConfig(
        data=str(data),
        context=context,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_mlp=d_mlp,
        attn_only=attn_only,
        normalization_type=None if no_layernorm else "LN",
        use_direction=not no_direction,
        total_steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        threads=threads,
        log_every=log_every,
    )
    check_resume(out, resume)
    run = train_dt(config, out, resume=resume, progress=not (quiet or as_json))
    last = run.metrics()[-1] if run.metrics() else {}
    summary = {
        "run": str(run.path),
        "steps": int(last.get("step", 0)),
        "loss": last.get("loss"),
        "accuracy": last.get("accuracy"),
        "seconds": last.get("time"),
        "done": run.done,
    }
    if as_json:
        print_json(summary)
        return
    console.print(
        f"trained {summary['steps']} steps -> {run.path} (loss {summary['loss']:.3f}, "
        f"accuracy {summary['accuracy']:.3f})"
    )


@command("eval", typer_app=dt_app, flags={"target_rtg": "--rtg"})
def eval_cmd(
    run: Path = typer.Argument(..., help="Decision-transformer run folder."),
    rtg: float = typer.Option(1.0, help="Target return-to-go."),
    episodes: int = typer.Option(100, min=1, max=MAX_EPISODES, help="Episodes."),
    seed: int = typer.Option(10_000, min=0, help="Seed of the starts and the sampling."),
    greedy: bool = typer.Option(False, "--greedy", help="Argmax actions instead of sampling."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Mean return and success rate (95% intervals) of a DT at one target RTG."""
    from policylens.studies.dt import EvalOptions, evaluate_dt_run

    result = evaluate_dt_run(open_run(run), EvalOptions(rtg, episodes, seed, greedy, step))
    if as_json:
        print_json(result.to_json())
        return
    r, s = result.ret, result.success
    console.print(
        f"{Path(run).name} step {result.step:,} at RTG {rtg:g}: return {r['mean']:.3f} "
        f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}], success {s['rate']:.2f} "
        f"[{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] over {r['n']} episodes"
    )


@command("calibrate", typer_app=dt_app)
def calibrate_cmd(
    run: Path = typer.Argument(..., help="Decision-transformer run folder."),
    episodes: int = typer.Option(20, min=1, max=MAX_EPISODES, help="Episodes per target RTG."),
    target: list[float] = typer.Option(
        [], help="Target RTG; repeat for several (default: -1 to 1 in steps of 0.1)."
    ),
    seed: int = typer.Option(10_000, min=0, help="Seed of the starts and the sampling."),
    greedy: bool = typer.Option(False, "--greedy", help="Argmax actions instead of sampling."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """RTG calibration: the mean achieved return at each target RTG and their Spearman
    correlation."""
    from policylens.studies.dt import DEFAULT_TARGETS, CalibrationOptions, calibrate_dt_run

    options = CalibrationOptions(
        tuple(target) if target else DEFAULT_TARGETS, episodes, seed, greedy, step
    )
    result = calibrate_dt_run(open_run(run), options)
    if as_json:
        print_json(result.to_json())
        return
    table = Table("target RTG", "return (95% CI)", "success", "length",
                  title=f"{Path(run).name} step {result.step:,}: {episodes} episodes per target")  # fmt: skip
    for row in result.rows:
        r = row["return"]
        table.add_row(f"{row['target']:g}", f"{r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
                      f"{row['success']['rate']:.2f}", f"{row['length']['mean']:.1f}")  # fmt: skip
    console.print(table)
    every, means = (
        "undefined (a constant)" if v is None else f"{v:.3f}"
        for v in (result.spearman, result.spearman_means)
    )
    console.print(f"Spearman (every episode) {every}; over the per-target means {means}")
