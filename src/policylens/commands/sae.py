"""``policylens sae train|eval|dashboard``: sparse autoencoders on an agent's hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from policylens.cli import app, command, console, print_json

sae_app = typer.Typer(
    help="Sparse autoencoders on an agent's activations: train, evaluate spliced in, dashboards.",
    no_args_is_help=True,
)
app.add_typer(sae_app, name="sae")


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


def _ci(entry: dict[str, Any]) -> str:
    if "rate" in entry:
        lo, hi = entry["ci"]
        return f"{entry['rate']:.3f} [{lo:.3f}, {hi:.3f}]"
    lo, hi = entry["ci"]
    return f"{entry['mean']:.2f} [{lo:.2f}, {hi:.2f}]"


@command("train", typer_app=sae_app)
def sae_train_cmd(
    source: Path = typer.Argument(..., help="Run folder, or a store from `policylens collect`."),
    hook: str = typer.Option(..., help="Hook name (see the agent's hook_names())."),
    out: Path = typer.Option(
        None, help="SAE folder to write (default RUN/analysis/sae/<hook>-<arch>-x<expansion>)."
    ),
    arch: str = typer.Option("topk", help="relu, topk, batchtopk or jumprelu."),
    k: int = typer.Option(None, help="Active latents (topk/batchtopk); default min(32, d_in/2)."),
    expansion: int = typer.Option(8, min=1, help="Latents per input dimension (d_sae / d_in)."),
    l1_coeff: float = typer.Option(None, help="L1 penalty weight (relu)."),
    samples: int = typer.Option(1_000_000, min=1, help="Training samples (vectors) in total."),
    steps: int = typer.Option(
        20_000, min=2, help="Environment steps to gather (a store: most rows read)."
    ),
    layout: str = typer.Option("auto", help="vector, channels (per-position), flat, or auto."),
    step: int = typer.Option(None, help="Checkpoint step of the run (default: latest)."),
    seed: int = typer.Option(0, help="Seed of the rollouts, SAE init and data order."),
    batch_size: int = typer.Option(1024, min=1, help="Vectors per optimisation step."),
    lr: float = typer.Option(3e-3, help="Adam learning rate."),
    saelens: bool = typer.Option(False, "--saelens", help="Also export in SAELens's layout."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Train an SAE on a hook of a run's agent (its own rollouts) or of a collect store."""
    from policylens.studies.rook_sae.runs import train_run_sae

    folder, info = train_run_sae(
        source,
        hook,
        out,
        arch=arch,
        expansion=expansion,
        k=k,
        l1_coeff=l1_coeff,
        samples=samples,
        steps=steps,
        step=step,
        layout=layout,
        seed=seed,
        saelens=saelens,
        progress=not (quiet or as_json),
        config_overrides={"batch_size": batch_size, "lr": lr},
    )
    if as_json:
        print_json(info)
        return
    m = info["metrics"]
    console.print(
        f"SAE ({arch}, {info['d_sae']} latents) on {info['layout']} activations of {hook!r} -> "
        f"{folder}\nheld out: explained variance {m['explained_variance']:.4f}, mse "
        f"{m['mse']:.4g}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%} "
        f"({m['samples']} samples at {m['samples_per_s']:.0f}/s)"
    )


@command("eval", typer_app=sae_app)
def sae_eval_cmd(
    run: Path = typer.Argument(..., help="Run folder whose agent the SAE is spliced into."),
    sae_dir: Path = typer.Argument(..., help="SAE folder (ours or SAELens's layout)."),
    episodes: int = typer.Option(100, min=1, help="Episodes per condition."),
    steps: int = typer.Option(4096, min=2, help="Fresh steps for offline metrics and the mean."),
    hook: str = typer.Option(
        None, help="Hook to splice into (default: the one it was trained on)."
    ),
    step: int = typer.Option(None, help="Checkpoint step (default: the SAE's, else latest)."),
    seed: int = typer.Option(10_000, help="Seed of the evaluation rollouts and episodes."),
    ablation_top: int = typer.Option(10, min=0, help="Latents listed by ablation effect."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Reconstruction, and the agent with the SAE spliced in vs zero/mean ablation of the hook."""
    from policylens.studies.rook_sae.runs import eval_run_sae

    result = eval_run_sae(
        run, sae_dir, episodes, steps, step=step, hook=hook, seed=seed, ablation_top=ablation_top
    )
    if as_json:
        print_json(result)
        return
    rec = result["reconstruction"]
    console.print(
        f"{result['arch']} SAE on {result['hook']!r}: explained variance "
        f"{rec['explained_variance']:.4f}, mse {rec['mse']:.4g}, L0 {rec['l0']:.1f}, "
        f"dead {rec['dead_fraction']:.1%}"
    )
    table = Table(
        "at hook", "return (95% CI)", "success (95% CI)", "agree", "|dV|", "offline agree",
        "offline KL", title=f"{result['env_id']}, {episodes} episodes each; agree = action "
        "agreement with the original agent on the same observations",
    )  # fmt: skip
    for cond, w in result["in_world"].items():
        off = result["offline"].get(cond, {})
        table.add_row(
            cond,
            _ci(w["return"]),
            _ci(w["success"]),
            f"{w['action_agreement']:.3f}",
            f"{w['value_error']:.4g}",
            f"{off['action_agreement']:.3f}" if off else "",
            f"{off['kl']:.4g}" if off else "",
        )
    console.print(table)
    if "return_recovered" in result:
        console.print(f"return recovered (sae vs zero ablation): {result['return_recovered']:.3f}")
    if result.get("latent_ablation"):
        t = Table(
            "latent", "frequency", "KL when firing", "flips when firing", "dV",
            title="removing one latent (the largest effects)",
        )  # fmt: skip
        for e in result["latent_ablation"]:
            t.add_row(
                str(e["latent"]), f"{e['frequency']:.3f}", f"{e['kl']:.4g}", f"{e['flip']:.3f}",
                f"{e['value_change']:+.4g}",
            )  # fmt: skip
        console.print(t)


@command("dashboard", typer_app=sae_app)
def sae_dashboard_cmd(
    run: Path = typer.Argument(..., help="Run folder whose agent the SAE reads."),
    sae_dir: Path = typer.Argument(..., help="SAE folder."),
    latents: str = typer.Option(None, help="Comma-separated latents, e.g. 0,5,12."),
    top: int = typer.Option(8, min=1, help="Without --latents: this many, by ablation effect."),
    steps: int = typer.Option(4096, min=2, help="Fresh steps to find top-activating observations."),
    out: Path = typer.Option(None, help="Dashboard folder (default SAE_DIR/dashboard)."),
    hook: str = typer.Option(None, help="Hook (default: the one the SAE was trained on)."),
    step: int = typer.Option(None, help="Checkpoint step (default: the SAE's, else latest)."),
    seed: int = typer.Option(10_000, help="Seed of the rollouts."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Feature dashboards: top observations, activation histogram and action effects per latent."""
    from policylens.report.sae import dashboard_run_sae

    html, summaries = dashboard_run_sae(
        run, sae_dir, parse_latents(latents), top, steps, step=step, hook=hook, out=out, seed=seed
    )
    if as_json:
        print_json({"html": str(html), "latents": summaries})
        return
    console.print(f"wrote {html} ({len(summaries)} latents, a PNG each beside it)")
