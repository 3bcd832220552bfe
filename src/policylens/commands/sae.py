"""``policylens sae train|eval|dashboard``: sparse autoencoders on an agent's hook."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from policylens.commands.framework import (
    app,
    command,
    console,
    open_run,
    overwrite_option,
    print_json,
)

if TYPE_CHECKING:
    from policylens.studies.rook_sae.runs import SAEEvaluation

sae_app = typer.Typer(
    help="Sparse autoencoders on an agent's activations: train, evaluate spliced in, dashboards.",
    no_args_is_help=True,
)
app.add_typer(sae_app, name="sae")


def threads_option() -> Any:
    return typer.Option(
        None,
        min=1,
        max=256,
        help="Torch threads (default: torch's; 1 is fastest on a shared machine).",
    )


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU threads when asked (before any work)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


MAX_SAMPLES = 10_000_000_000
"""The most vectors an SAE trains on."""
MAX_GATHER = 10_000_000
"""The most environment steps whose activations are gathered (held in memory) for an SAE."""
MAX_EXPANSION = 256
"""The most latents per input dimension."""


def sae_files() -> tuple[str, ...]:
    """The files ``sae train`` writes into its SAE folder."""
    from policylens.agents.sae import CONFIG_FILE, SITE_FILE, WEIGHTS_FILE
    from policylens.studies.rook_sae.runs import HISTORY_FILE

    return (CONFIG_FILE, WEIGHTS_FILE, SITE_FILE, HISTORY_FILE, "saelens")


def sae_out(source: Path, hook: str, out: Path | None, spec: Any, overwrite: bool) -> None:
    """Refuse an SAE folder that would replace a run's files or, without --overwrite, an SAE
    already there; checked before any activation is gathered."""
    from policylens.artifacts import check_output_folder

    if out is None:
        if not ((source / "config.json").is_file() and (source / "checkpoints").is_dir()):
            return  # a store: its run decides the default folder, checked when it is written
        from policylens.runs import Run
        from policylens.studies.rook_sae.runs import default_sae_dir

        out = default_sae_dir(Run(source), hook, spec)
    check_output_folder(out, sae_files(), overwrite, "SAE folder")
    from policylens.artifacts import locked_by

    holder = locked_by(out)
    if holder is not None:
        raise ValueError(
            f"{out} is being written by another process ({holder}); wait for it to finish, stop "
            "it, or choose another --out."
        )


def parse_latents(value: str | None) -> list[int] | None:
    """'0,5,12' -> [0, 5, 12]; None stays None."""
    if value is None or not value.strip():
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--latents must be comma-separated latent numbers like 0,5,12, got {value!r}."
        ) from None


@command("train", typer_app=sae_app)
def sae_train_cmd(
    source: Path = typer.Argument(..., help="Run folder, or a store from `policylens collect`."),
    hook: str = typer.Option(..., help="Hook name (see the agent's hook_names())."),
    out: Path = typer.Option(
        None, help="SAE folder to write (default RUN/analysis/sae/<hook>-<arch>-x<expansion>)."
    ),
    arch: str = typer.Option("topk", help="relu, topk, batchtopk or jumprelu."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an SAE already in the output folder."
    ),
    k: int = typer.Option(
        None, min=1, help="Active latents (topk/batchtopk); default min(32, d_in/2)."
    ),
    expansion: int = typer.Option(
        8, min=1, max=MAX_EXPANSION, help="Latents per input dimension (d_sae / d_in)."
    ),
    l1_coeff: float = typer.Option(1.0, min=0.0, max=1e6, help="L1 penalty weight (relu)."),
    objective: str = typer.Option(
        "kl",
        help="What training keeps: mse (reconstruction only), kl (+ KL between the original and "
        "spliced action distributions) or logits (+ error of the spliced logits/Q-values).",
    ),
    behaviour_coeff: float = typer.Option(
        1.0,
        min=0.0,
        max=1e6,
        help="Weight of the behaviour term (kl, logits), in units of the activations' variance.",
    ),
    temperature: float = typer.Option(
        None,
        min=1e-6,
        max=1e6,
        help="kl: temperature of the action distributions (default: 1 for a policy, the "
        "median best-minus-second-best Q gap for a Q-network).",
    ),
    samples: int = typer.Option(
        3_000_000, min=1, max=MAX_SAMPLES, help="Training samples (vectors) in total."
    ),
    steps: int = typer.Option(
        60_000, min=2, max=MAX_GATHER, help="Environment steps to gather (a store: most rows read)."
    ),
    layout: str = typer.Option("auto", help="vector, channels (per-position), flat, or auto."),
    step: int = typer.Option(None, help="Checkpoint step of the run (default: latest)."),
    seed: int = typer.Option(0, min=0, help="Seed of the rollouts, SAE init and data order."),
    batch_size: int = typer.Option(
        1024, min=1, max=1_048_576, help="Vectors per optimisation step."
    ),
    lr: float = typer.Option(3e-3, min=1e-9, max=1.0, help="Adam learning rate."),
    saelens: bool = typer.Option(False, "--saelens", help="Also export in SAELens's layout."),
    threads: int = threads_option(),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Train an SAE on a hook of a run's agent (its own rollouts) or of a collect store.

    By default it keeps the agent's behaviour (--objective kl): plain reconstruction can explain
    97% of a Q-network's variance and still change its greedy actions.
    """
    from policylens.studies.rook_sae.runs import SAESpec, SAETrainOptions, train_run_sae

    set_threads(threads)
    spec = SAESpec(
        arch=arch, expansion=expansion, k=k, objective=objective, samples=samples,
        batch_size=batch_size, lr=lr, l1_coeff=l1_coeff, behaviour_coeff=behaviour_coeff,
        temperature=temperature,
    )  # fmt: skip
    options = SAETrainOptions(
        hook=hook, sae=spec, steps=steps, step=step, layout=layout, seed=seed, out=out,
        saelens=saelens, progress=not (quiet or as_json),
    )  # fmt: skip
    sae_out(source, hook, out, spec, overwrite)
    trained = train_run_sae(source, options)
    if as_json:
        print_json(trained.to_json())
        return
    m = trained.metrics
    console.print(
        f"SAE ({trained.arch}, {trained.d_sae} latents, objective {trained.objective}) on "
        f"{trained.site.layout} activations of {hook!r} -> {trained.folder}\n"
        f"held out: explained variance {m['explained_variance']:.4f}, mse "
        f"{m['mse']:.4g}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%} "
        f"({m['samples']} samples at {m['samples_per_s']:.0f}/s)\n"
        f"judge it by behaviour: policylens sae eval {trained.run or 'RUN'} {trained.folder}"
    )


@command("eval", typer_app=sae_app)
def sae_eval_cmd(
    run: Path = typer.Argument(..., help="Run folder whose agent the SAE is spliced into."),
    sae_dir: Path = typer.Argument(..., help="SAE folder (ours or SAELens's layout)."),
    episodes: int = typer.Option(100, min=1, max=1_000_000, help="Episodes per condition."),
    steps: int = typer.Option(
        4096, min=2, max=MAX_GATHER, help="Fresh steps for offline metrics and the mean."
    ),
    hook: str = typer.Option(
        None, help="Hook to splice into (default: the one it was trained on)."
    ),
    step: int = typer.Option(None, help="Checkpoint step (default: the SAE's, else latest)."),
    seed: int = typer.Option(10_000, min=0, help="Seed of the evaluation rollouts and episodes."),
    ablation_top: int = typer.Option(10, min=0, help="Latents listed by ablation effect."),
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The agent with the SAE spliced in vs the original and zero/mean ablation of the hook
    (success, return, action agreement, KL), then reconstruction and sparsity.

    --json keys: spliced.success_rate, spliced.success_kept, spliced.action_agreement,
    spliced.offline_action_agreement, spliced.kl, original.success_rate,
    zero_ablation.success_rate, mean_ablation.success_rate, reconstruction.explained_variance,
    reconstruction.dead_latents, ... (each rate with a *_ci interval).
    """
    from policylens.studies.rook_sae.runs import SAEEvalOptions, eval_run_sae

    set_threads(threads)
    options = SAEEvalOptions(
        episodes=episodes, steps=steps, step=step, hook=hook, seed=seed, ablation_top=ablation_top
    )
    result = eval_run_sae(open_run(run), sae_dir, options)
    if as_json:
        print_json(result.to_json())
        return
    print_evaluation(result)


def _ci(value: float, interval: tuple[float, float]) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def print_evaluation(result: SAEEvaluation) -> None:
    """Behaviour with the SAE spliced in (against the original and the ablation floor) first,
    then reconstruction and sparsity."""
    b = result.behaviour
    rec = b.reconstruction
    table = Table(
        "at hook", "success (95% CI)", "kept", "return (95% CI)", "agree in world (95% CI)",
        "agree held-out", "KL", "regret / gap",
        title=f"Behaviour: {b.setting.env_id}, {b.episodes} episodes per condition from "
        "the same starts; agree = same action as the original agent on the same observation",
    )  # fmt: skip
    for cond, e in b.conditions.items():
        off = e.held_out
        table.add_row(
            cond.replace("_", " "),
            _ci(e.success_rate, e.success_rate_ci),
            f"{e.success_kept:.3f}" if off is not None and e.success_kept is not None else "",
            f"{e.mean_return:.2f} [{e.return_ci[0]:.2f}, {e.return_ci[1]:.2f}]",
            _ci(e.action_agreement, e.action_agreement_ci) if off is not None else "",
            f"{off.action_agreement:.3f}" if off is not None else "",
            f"{off.kl:.3g}" if off is not None else "",
            f"{off.regret:.3g} / {off.gap:.3g}" if off is not None else "",
        )
    console.print(table)
    if b.return_recovered is not None:
        console.print(f"return recovered (spliced vs zero ablation): {b.return_recovered:.3f}")
    console.print(
        f"Reconstruction ({b.arch} SAE, {b.d_sae} latents, objective {b.objective}, on "
        f"{b.observations} held-out observations of {b.hook!r}): explained variance "
        f"{rec['explained_variance']:.4f}, mse {rec['mse']:.4g}, L0 {rec['l0']:.1f}, dead "
        f"latents {rec['dead_latents']} ({rec['dead_fraction']:.1%})"
    )
    if result.latent_ablation:
        t = Table(
            "latent", "frequency", "KL when firing", "flips when firing", "dV",
            title="removing one latent (the largest effects)",
        )  # fmt: skip
        for a in result.latent_ablation:
            t.add_row(
                str(a["latent"]), f"{a['frequency']:.3f}", f"{a['kl']:.4g}", f"{a['flip']:.3f}",
                f"{a['value_change']:+.4g}",
            )  # fmt: skip
        console.print(t)


@command("dashboard", typer_app=sae_app)
def sae_dashboard_cmd(
    run: Path = typer.Argument(..., help="Run folder whose agent the SAE reads."),
    sae_dir: Path = typer.Argument(..., help="SAE folder."),
    latents: str = typer.Option(None, help="Comma-separated latents, e.g. 0,5,12."),
    top: int = typer.Option(8, min=1, help="Without --latents: this many, by ablation effect."),
    steps: int = typer.Option(
        4096, min=2, max=MAX_GATHER, help="Fresh steps to find top-activating observations."
    ),
    out: Path = typer.Option(None, help="Dashboard folder (default SAE_DIR/dashboard)."),
    overwrite: bool = overwrite_option(),
    hook: str = typer.Option(None, help="Hook (default: the one the SAE was trained on)."),
    step: int = typer.Option(None, help="Checkpoint step (default: the SAE's, else latest)."),
    seed: int = typer.Option(10_000, min=0, help="Seed of the rollouts."),
    episodes: int = typer.Option(
        100, min=0, max=1_000_000, help="Episodes per condition for the behaviour table (0: none)."
    ),
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Feature dashboards: behaviour with the SAE spliced in, each live latent's best ground-truth
    concept, and per latent its top observations, activation histogram and action effects."""
    from policylens.report.sae import render
    from policylens.studies.rook_sae.runs import DashboardOptions, dashboard_data

    set_threads(threads)
    if out is not None:
        from policylens.artifacts import check_output_folder

        check_output_folder(out, ("index.html", "latents.json"), overwrite, "dashboard folder")
    options = DashboardOptions(
        latents=parse_latents(latents), top=top, steps=steps, step=step, hook=hook, seed=seed,
        episodes=episodes,
    )  # fmt: skip
    dashboard = dashboard_data(open_run(run), sae_dir, options)
    html = render(dashboard, out if out is not None else sae_dir / "dashboard")
    if as_json:
        print_json({"html": str(html), **dashboard.to_json()})
        return
    console.print(f"wrote {html} ({len(dashboard.cards)} latents, a PNG each beside it)")


@command("dead-latents", typer_app=sae_app)
def sae_dead_latents_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders (e.g. one per seed)."),
    hook: str = typer.Option(..., help="Hook name the SAEs read."),
    fractions: str = typer.Option(
        "0.1,0.25,0.5,1", help="Checkpoints nearest these fractions of each run's training."
    ),
    arch: str = typer.Option("topk", help="relu, topk, batchtopk or jumprelu."),
    k: int = typer.Option(20, help="Active latents (topk/batchtopk)."),
    expansion: int = typer.Option(4, min=1, max=MAX_EXPANSION, help="Latents per input dimension."),
    objective: str = typer.Option("mse", help="SAE objective: mse, kl or logits."),
    samples: int = typer.Option(500_000, min=1, max=MAX_SAMPLES, help="Training samples per SAE."),
    steps: int = typer.Option(
        20_000, min=10, max=MAX_GATHER, help="Environment steps gathered per checkpoint."
    ),
    episodes: int = typer.Option(
        500, min=1, max=1_000_000, help="Episodes to score each checkpoint's agent."
    ),
    seed: int = typer.Option(0, min=0, help="Seed of the rollouts and SAEs."),
    out: Path = typer.Option(None, help="Also write the result as JSON here."),
    overwrite: bool = overwrite_option(),
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Dead SAE latents against the agent's quality over runs and checkpoints (R^2, permutation p)."""
    from policylens.artifacts import check_output, write_json
    from policylens.studies.rook_sae.quality import DeadLatentsOptions, dead_vs_quality
    from policylens.studies.rook_sae.runs import SAESpec

    set_threads(threads)
    if out is not None:
        check_output(out, overwrite)
    try:
        fracs = tuple(float(f) for f in fractions.split(",") if f.strip())
    except ValueError:
        raise ValueError(
            f"--fractions must be numbers like 0.1,0.5,1, got {fractions!r}."
        ) from None
    spec = SAESpec(arch=arch, expansion=expansion, k=k, objective=objective, samples=samples)
    options = DeadLatentsOptions(
        hook=hook, fractions=fracs, sae=spec, steps=steps, episodes=episodes, seed=seed
    )

    def show(row: dict[str, Any]) -> None:
        if not as_json:
            console.print(
                f"{row['run']} @ {row['checkpoint_step']}: dead {row['dead_latents']}/"
                f"{row['d_sae']}, success {row['success_rate']:.3f}, return {row['return']:.1f}"
            )

    result = dead_vs_quality([open_run(r) for r in runs], options, progress=show)
    if out is not None:
        write_json(out, result.to_json())
    if as_json:
        print_json(result.to_json())
        return
    for score, rel in result.relations.items():
        lo, hi = rel["r2_ci"]
        console.print(
            f"{score} vs dead latents over {rel['n']} SAEs ({rel['groups']} runs): slope "
            f"{rel['slope']:+.4g} per latent, r {rel['r']:+.3f}, R^2 {rel['r2']:.3f} "
            f"[{lo:.3f}, {hi:.3f}] (runs resampled), permutation p {rel['p_permutation']:.4f}"
        )
