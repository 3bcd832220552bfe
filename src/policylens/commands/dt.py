"""Decision-transformer commands: ``policylens dt collect`` (offline trajectories of a MiniGrid
task), ``policylens train dt`` (a DT on TransformerLens), ``policylens dt eval`` (the return at a
target RTG) and ``policylens dt calibrate`` (target RTG against achieved return)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    at several epsilons, temperatures and wandering lengths (memory: also heading for the wrong
    object)."""
    from policylens.errors import check_known
    from policylens.worlds.minigrid import collect_trajectories

    check_known([task], TASKS, "--task")
    summary = collect_trajectories(out, task, episodes, seed, overwrite=overwrite)
    print_collection(summary, as_json)


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
    rtg_headroom: float = typer.Option(
        0.0,
        min=0.0,
        max=1e6,
        help="Show the best play (exact planner, goal reached) asking for up to this much more "
        "return, so targets above the data's top ask for the best play.",
    ),
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
        rtg_headroom=rtg_headroom,
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


# -- analyses (issue 29 item 4): policylens.studies.dt_analysis --------------------------------
DATA_HELP = "Trajectory store of the histories (default: the run's training store)."


def _history_kwargs(
    data: Path | None, histories: int, seed: int, all_windows: bool, step: int | None
) -> dict:
    return {"data": None if data is None else str(data), "histories": histories, "seed": seed,
            "full_windows": not all_windows, "step": step}  # fmt: skip


def _ci(x: dict, digits: int = 3) -> str:
    return f"{x['mean']:.{digits}f} [{x['ci'][0]:.{digits}f}, {x['ci'][1]:.{digits}f}]"


@command("rtg-scan", typer_app=dt_app)
def rtg_scan_cmd(
    run: Path = typer.Argument(..., help="Decision-transformer run folder."),
    rtg: list[float] = typer.Option([], help="RTG value; repeat (default: -1 to 1 by 0.1)."),
    data: Path = typer.Option(None, help=DATA_HELP),
    histories: int = typer.Option(64, min=1, max=100_000, help="Histories (windows) averaged."),
    seed: int = typer.Option(0, min=0, help="Seed of the choice of histories."),
    all_windows: bool = typer.Option(False, "--all-windows", help="Also windows with padding."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Action probabilities at fixed histories as the RTG token varies over a grid."""
    from policylens.studies.dt_analysis import DEFAULT_SCAN, ScanOptions, rtg_scan

    options = ScanOptions(**_history_kwargs(data, histories, seed, all_windows, step),
                          rtgs=tuple(rtg) if rtg else DEFAULT_SCAN)  # fmt: skip
    result = rtg_scan(open_run(run), options)
    if as_json:
        print_json(result.to_json())
        return
    table = Table("RTG", *(f"P({a})" for a in result.actions), *(f"argmax {a}" for a in result.actions),
                  title=f"{result.histories} histories of {result.data}")  # fmt: skip
    for row in result.rows:
        table.add_row(f"{row['rtg']:g}", *(_ci(row["probability"][a], 2) for a in result.actions),
                      *(f"{row['argmax_share'][a]:.2f}" for a in result.actions))  # fmt: skip
    console.print(table)


@command("attribute", typer_app=dt_app)
def attribute_cmd(
    run: Path = typer.Argument(..., help="Decision-transformer run folder."),
    rtg: float = typer.Option(1.0, help="RTG of every token of the window."),
    contrast: str = typer.Option(
        "none", help="none (the chosen logit) or mean (minus the mean logit)."
    ),
    top: int = typer.Option(10, min=1, max=100_000, help="Neurons listed."),
    data: Path = typer.Option(None, help=DATA_HELP),
    histories: int = typer.Option(64, min=1, max=100_000, help="Histories averaged."),
    seed: int = typer.Option(0, min=0, help="Seed of the choice of histories."),
    all_windows: bool = typer.Option(False, "--all-windows", help="Also windows with padding."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Direct logit attribution of the chosen action at the last state token: embeddings, heads,
    MLP neurons, biases (they sum to the logit)."""
    from policylens.studies.dt_analysis import AttributionOptions, logit_attribution_study

    options = AttributionOptions(**_history_kwargs(data, histories, seed, all_windows, step),
                                 rtg=rtg, contrast=contrast, top=top)  # fmt: skip
    result = logit_attribution_study(open_run(run), options)
    if as_json:
        print_json(result.to_json())
        return
    table = Table("component", "mean contribution (95% CI)",
                  title=f"{result.metric} = {_ci(result.logit)} over {result.histories} histories "
                  f"(sum error {result.max_sum_error:.1e})")  # fmt: skip
    for row in result.components + result.neurons:
        table.add_row(row["component"], _ci(row))
    console.print(table)


@command("attention", typer_app=dt_app)
def attention_cmd(
    run: Path = typer.Argument(..., help="Decision-transformer run folder."),
    rtg: float = typer.Option(1.0, help="RTG of every token of the window."),
    data: Path = typer.Option(None, help=DATA_HELP),
    histories: int = typer.Option(64, min=1, max=100_000, help="Histories averaged."),
    seed: int = typer.Option(0, min=0, help="Seed of the choice of histories."),
    all_windows: bool = typer.Option(False, "--all-windows", help="Also windows with padding."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Mean attention from the last state token to the R / s / a tokens of each step, per head."""
    from policylens.studies.dt_analysis import AttentionOptions, attention_by_token_type

    options = AttentionOptions(**_history_kwargs(data, histories, seed, all_windows, step), rtg=rtg)
    result = attention_by_token_type(open_run(run), options)
    if as_json:
        print_json(result.to_json())
        return
    for head in result.heads:
        t = head["by_type"]
        table = Table("step", "R", "s", "a", title=f"{head['head']}: R {_ci(t['R'])}, "
                      f"s {_ci(t['s'])}, a {_ci(t['a'])}, pad {t['pad']['mean']:.3f}")  # fmt: skip
        for row in head["by_step"]:
            table.add_row(str(row["offset"]), *(f"{row[k]:.3f}" for k in ("R", "s", "a")))
        console.print(table)


@command("circuits", typer_app=dt_app)
def circuits_cmd(
    run: Path = typer.Argument(..., help="Decision-transformer run folder."),
    top: int = typer.Option(4, min=1, max=4096, help="Top singular directions of each span."),
    data: Path = typer.Option(None, help=DATA_HELP),
    histories: int = typer.Option(64, min=1, max=100_000, help="Histories for the state space."),
    seed: int = typer.Option(0, min=0, help="Seed of the choice of histories."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """OV and QK circuits: singular values and their alignment with the RTG and state
    embeddings."""
    from policylens.studies.dt_analysis import CircuitOptions, circuits

    options = CircuitOptions(**_history_kwargs(data, histories, seed, False, step), top=top)
    result = circuits(open_run(run), options)
    if as_json:
        print_json(result.to_json())
        return
    table = Table("head", "OV sv", "QK sv", "RTG in OV", "RTG in QK key", "states in OV",
                  "states in QK query", title=f"top {top} directions (chance {result.chance:.3f})")  # fmt: skip
    for h in result.heads:
        table.add_row(h["head"], ", ".join(f"{v:.2f}" for v in h["ov_singular_values"][:4]),
                      ", ".join(f"{v:.2f}" for v in h["qk_singular_values"][:4]),
                      *(f"{h[k]:.3f}" for k in ("rtg_in_ov", "rtg_in_qk_key", "state_in_ov",
                                                 "state_in_qk_query")))  # fmt: skip
    console.print(table)


@command("patch", typer_app=dt_app)
def patch_cmd(
    run: Path = typer.Argument(..., help="Decision-transformer run folder."),
    high: float = typer.Option(1.0, help="The high RTG (the patched-in run)."),
    low: float = typer.Option(-1.0, help="The low RTG (the run patched)."),
    bar: float = typer.Option(0.8, help="Share of the gap the fewest components must recover."),
    min_gap: float = typer.Option(0.5, min=0.0, help="Smallest high-low logit gap kept."),
    data: Path = typer.Option(None, help=DATA_HELP),
    histories: int = typer.Option(64, min=2, max=100_000, help="Histories kept."),
    seed: int = typer.Option(0, min=0, help="Seed of the choice of histories."),
    all_windows: bool = typer.Option(False, "--all-windows", help="Also windows with padding."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Activation patching between a high- and a low-RTG run of the same histories: the share of
    the logit gap each component recovers, and the fewest that recover the bar."""
    from policylens.studies.dt_analysis import PatchOptions, patching

    options = PatchOptions(**_history_kwargs(data, histories, seed, all_windows, step),
                           high=high, low=low, bar=bar, min_gap=min_gap)  # fmt: skip
    result = patching(open_run(run), options)
    if as_json:
        print_json(result.to_json())
        return
    table = Table("component", "recovered (high -> low)", "lost (low -> high)", "chooses a_high",
                  title=f"{result.histories} of {result.candidates} histories; gap {_ci(result.gap, 2)}")  # fmt: skip
    for row in result.rows:
        table.add_row(
            row["component"], _ci(row["recovered"]), _ci(row["lost"]), f"{row['chosen']:.2f}"
        )
    console.print(table)
    for name, f in (("all components", result.fewest), ("without MLPs", result.fewest_upstream)):
        state = "reach" if f["reached"] else "do not reach"
        console.print(f"fewest ({name}): {', '.join(f['components'])} {state} {bar:.0%}: "
                      f"{_ci(f['recovered'])}")  # fmt: skip


@command("instruction", typer_app=dt_app)
def instruction_cmd(
    run: Path = typer.Argument(..., help="Decision-transformer run of the memory task."),
    held_out: Path = typer.Option(
        None, help="Store of the flip test's histories (default: --data)."
    ),
    frames: int = typer.Option(4000, min=2, max=10_000_000, help="Most frames in the PCA."),
    rtg: float = typer.Option(1.0, help="RTG of the flip test's histories."),
    data: Path = typer.Option(None, help="Store of the PCA's frames (default: the run's)."),
    histories: int = typer.Option(200, min=1, max=100_000, help="Held-out histories flipped."),
    seed: int = typer.Option(0, min=0, help="Seed of the choice of frames and histories."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The memory task: PCA of the state embeddings of frames showing the instruction (key vs
    ball), and whether moving along the instruction direction flips the side the DT turns to."""
    from policylens.studies.dt_analysis import InstructionOptions, instruction_pca

    options = InstructionOptions(**_history_kwargs(data, histories, seed, False, step),
                                 held_out=None if held_out is None else str(held_out),
                                 frames=frames, rtg=rtg)  # fmt: skip
    r = instruction_pca(open_run(run), options)
    if as_json:
        print_json(r.to_json())
        return
    console.print(
        f"{r.frames['key']} key and {r.frames['ball']} ball frames: top 2 PCs explain "
        f"{r.top2:.1%} ({', '.join(f'{x:.1%}' for x in r.explained)}); a threshold separates "
        f"them {r.separation['pc1']:.1%} on PC1, {r.separation['instruction_direction']:.1%} "
        f"along the key-to-ball direction; the instruction's own embeddings (a key or a ball "
        f"at each of {r.cells} view cells): top 2 PCs {r.token_top2:.1%}; Bloom et al.'s "
        f"construct (key and ball columns at the 2 cells seen most, {r.anchor_cells}): top 2 "
        f"PCs {r.anchor_top2:.1%} (random vectors: median {r.anchor_null['median']:.1%}, 95th "
        f"percentile {r.anchor_null['p95']:.1%})"
    )

    def p(x: dict) -> str:
        return f"{x['rate']:.2f} [{x['ci'][0]:.2f}, {x['ci'][1]:.2f}]"

    console.print(
        f"{r.decisions} held-out decisions: correct side {p(r.accuracy)}; moved along the "
        f"instruction direction, the side flips in {p(r.flipped)} (random direction "
        f"{p(r.flipped_control)}), the other instruction's side {p(r.accuracy_edited)}; "
        f"with each frame's instruction token swapped for the other object's {p(r.flipped_token)} "
        f"(random {p(r.flipped_token_control)})"
    )


# -- the static report (issue 29 item 5): policylens.report.dt ------------------------------------
@command("report", typer_app=dt_app)
def report_cmd(
    run: Path = typer.Argument(..., help="Decision-transformer run folder."),
    out: Path = typer.Option(..., help="HTML file to write."),
    episodes: int = typer.Option(20, min=1, max=MAX_EPISODES, help="Episodes per target RTG."),
    target: list[float] = typer.Option(
        [], help="Calibration target RTG; repeat (default: -1 to 1 in steps of 0.1)."
    ),
    rtg: float = typer.Option(1.0, help="RTG of the attention and attribution windows."),
    high: float = typer.Option(1.0, help="Patching: the high RTG (the patched-in run)."),
    low: float = typer.Option(-1.0, help="Patching: the low RTG (the run patched)."),
    min_gap: float = typer.Option(0.5, min=0.0, help="Patching: smallest logit gap kept."),
    top: int = typer.Option(10, min=1, max=1000, help="Components and neurons listed."),
    data: Path = typer.Option(None, help=DATA_HELP),
    histories: int = typer.Option(64, min=2, max=100_000, help="Histories (windows) averaged."),
    seed: int = typer.Option(0, min=0, help="Seed of the choice of histories."),
    play_seed: int = typer.Option(10_000, min=0, help="Seed of the calibration's episodes."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """A self-contained HTML page: RTG calibration, the RTG scan, attention by token type, the
    top direct-logit-attribution components and the patching table."""
    from policylens.artifacts import check_writable
    from policylens.report.dt import DTReport, write_dt_report
    from policylens.studies.dt import DEFAULT_TARGETS, CalibrationOptions, calibrate_dt_run
    from policylens.studies.dt_analysis import (
        DEFAULT_SCAN,
        AttentionOptions,
        AttributionOptions,
        HistoryOptions,
        PatchOptions,
        PatchResult,
        ScanOptions,
        attention_by_token_type,
        load_histories,
        logit_attribution_study,
        patching,
        rtg_scan,
    )

    the_run = open_run(run)
    check_writable(out)
    common = _history_kwargs(data, histories, seed, False, step)
    calibration = calibrate_dt_run(the_run, CalibrationOptions(
        tuple(target) if target else DEFAULT_TARGETS, episodes, play_seed, False, step))  # fmt: skip
    h = load_histories(the_run, HistoryOptions(**common))
    scan = rtg_scan(h, ScanOptions(**common, rtgs=DEFAULT_SCAN))
    attention = attention_by_token_type(h, AttentionOptions(**common, rtg=rtg))
    attribution = logit_attribution_study(h, AttributionOptions(**common, rtg=rtg, top=top))
    patch_options = PatchOptions(**common, high=high, low=low, min_gap=min_gap)
    patched: PatchResult | str
    try:
        patched = patching(the_run, patch_options)
    except ValueError as e:  # no history changes its action between the two RTGs
        patched = str(e)
    report = DTReport(str(the_run.path), calibration, scan, attention, attribution, patched)
    path = write_dt_report(report, out, top)
    if as_json:
        body = {"calibration": calibration.to_json(), "scan": scan.to_json(),
                "attention": attention.to_json(), "attribution": attribution.to_json(),
                "patching": patched if isinstance(patched, str) else patched.to_json()}  # fmt: skip
        print_json({"report": str(path), **body})
        return
    console.print(f"wrote {path}")


# -- goal misgeneralization of a maze DT (issue 29 item 6): policylens.studies.maze_dt ----------
@command("maze-collect", typer_app=dt_app)
def maze_collect_cmd(
    out: Path = typer.Option(..., help="Store folder to write."),
    agent: str = typer.Option("zoo:maze-corner", help="PPO maze agent (run folder or zoo:NAME)."),
    episodes: int = typer.Option(3000, min=1, max=MAX_EPISODES, help="Episodes to play."),
    seed: int = typer.Option(0, min=0, help="Seed of the levels and the sampling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a complete store at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Maze trajectories for a DT: the PPO agent on its own training distribution at softmax
    temperatures 1 (twice the share), 2, 4, 8 and 32."""
    from policylens.studies.maze_dt import collect_maze_trajectories

    summary = collect_maze_trajectories(out, agent, episodes, seed, overwrite=overwrite)
    print_collection(summary, as_json)


@command("maze-gm", typer_app=dt_app)
def maze_gm_cmd(
    runs: list[Path] = typer.Argument(..., help="Decision-transformer runs on maze trajectories."),
    ppo: str = typer.Option("zoo:maze-corner", help="The PPO agent they learnt from."),
    episodes: int = typer.Option(200, min=1, max=MAX_EPISODES, help="Mazes per DT run."),
    seed: int = typer.Option(50_000, min=0, help="First level seed (and sampling seed)."),
    high_rtg: float = typer.Option(None, help="High target RTG (default: the store's largest)."),
    low_rtg: float = typer.Option(0.0, help="Low target RTG."),
    greedy: bool = typer.Option(False, "--greedy", help="Argmax actions instead of sampling."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    ppo_temperature: list[float] = typer.Option(
        [], help="Control: the PPO agent also at this softmax temperature; repeat for several."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Out of distribution (cheese anywhere): success and corner-first of the PPO agent and of
    each DT at a high and a low RTG on the same mazes, with DT-high minus PPO (Newcombe)."""
    from policylens.studies.maze_dt import (
        CONDITIONS,
        MazeGMOptions,
        control_name,
        measure_maze_gm,
    )

    options = MazeGMOptions(
        ppo, episodes, seed, high_rtg, low_rtg, greedy, step, tuple(ppo_temperature)
    )
    result = measure_maze_gm([open_run(r) for r in runs], options)
    if as_json:
        print_json(result.to_json())
        return

    def p(x: dict) -> str:
        return f"{x['rate']:.2f} [{x['ci'][0]:.2f}, {x['ci'][1]:.2f}]"

    def d(x: dict) -> str:
        return f"{x['diff']:+.2f} [{x['ci'][0]:+.2f}, {x['ci'][1]:+.2f}]"

    names = [*CONDITIONS, *(control_name(t) for t in options.ppo_temperatures)]
    table = Table("runs", "policy", "success", "corner first", "off-path success",
                  "off-path corner first", title=f"{ppo} vs DTs, cheese anywhere")  # fmt: skip
    blocks = [(Path(r["run"]).name, r) for r in result.runs] + [("pooled", result.pooled)]
    for name, block in blocks:
        for c in names:
            f = block[c]
            table.add_row(name, c, p(f["success"]), p(f["corner_first"]),
                          p(f["off_path"]["success"]), p(f["off_path"]["corner_first"]))  # fmt: skip
        k = block["contrasts"]["dt_high_minus_ppo"]
        table.add_row(name, "dt_high - ppo", d(k["success"]), d(k["corner_first"]),
                      d(k["off_path_success"]), d(k["off_path_corner_first"]))  # fmt: skip
    console.print(table)


def print_collection(summary: Any, as_json: bool) -> None:
    """A trajectory collection's summary: JSON, or a table of its policies (one per row)."""
    if as_json:
        print_json(summary.to_json())
        return
    table = Table("policy", "episodes", "mean return", "success", "mean length",
                  title=f"{summary.rows:,} steps of {summary.episodes:,} episodes -> {summary.path}")  # fmt: skip
    for p in summary.policies:
        table.add_row(p["label"], str(p["episodes"]), f"{p['mean_return']:.3f}",
                      f"{p['success']:.2f}", f"{p['mean_length']:.1f}")  # fmt: skip
    console.print(table)
