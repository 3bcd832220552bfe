"""Feature dashboards for SAE latents: behaviour first, then what each latent means and does.

The ``index.html`` (a :class:`~policylens.report.html.Report`) opens with the agent's behaviour
with the SAE spliced in against the original and zero/mean ablation of the hook, then every live
latent's best-matching ground-truth concept with the chance level, then one card per chosen
latent: top-activating observations, activation histogram, effect on the actions (also written
as ``latent_<j>.png``). Observations are drawn the way their world draws them
(:meth:`~policylens.worlds.World.picture`: maze grids as mazes, rook-endgame positions as boards,
images as images; the strongest position of a per-position latent framed in red), other vectors
as bar plots. :func:`render` draws a :class:`~policylens.studies.rook_sae.runs.SAEDashboard`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from policylens.report.figures import plt, to_png
from policylens.worlds import for_env

if TYPE_CHECKING:
    from policylens.studies.rook_sae.evaluation import SpliceEval
    from policylens.studies.rook_sae.latents import LatentCard
    from policylens.studies.rook_sae.runs import SAEDashboard


def _draw_obs(
    ax: Any,
    obs: np.ndarray,
    env_id: str | None,
    env_kwargs: Mapping[str, Any],
    position: tuple[int, int] | None,
    title: str,
) -> None:
    img = for_env(env_id or "").picture(obs, env_kwargs)
    ax.set_title(title, fontsize=8)
    if img is None:
        flat = np.asarray(obs, dtype=float).ravel()
        ax.bar(np.arange(flat.size), flat, width=1.0, color="#4a7bb7")
        ax.set_xticks([])
        ax.tick_params(labelsize=6)
        return
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    if position is not None:
        # A per-position latent: frame the cell of its strongest position (conv grid -> picture).
        grid_h = grid_w = None
        if np.asarray(obs).ndim == 3 and np.asarray(obs).shape[0] == 3:
            grid_h, grid_w = np.asarray(obs).shape[1:]
        if grid_h is not None:
            r, c = position
            ch, cw = img.shape[0] / grid_h, img.shape[1] / grid_w
            ax.add_patch(
                plt.Rectangle((c * cw, r * ch), cw, ch, fill=False, edgecolor="red", linewidth=2.0)
            )


def latent_figure(
    card: LatentCard,
    env_id: str | None,
    actions: Sequence[str],
    hook: str,
    env_kwargs: Mapping[str, Any] | None = None,
) -> bytes:
    """One latent's dashboard: top observations (drawn as ``env_id``'s world draws them),
    activation histogram, effect on ``actions``, and its best-matching ground-truth concept in
    the title."""
    n_top = max(1, len(card.top_rows))
    fig = plt.figure(figsize=(max(9.0, 1.9 * n_top), 6.2))
    top_row, bottom_row = fig.subfigures(2, 1, squeeze=False, height_ratios=[1.0, 1.15])[:, 0]
    axes = top_row.subplots(1, n_top, squeeze=False)[0]
    top_row.suptitle("top-activating observations (activation @ strongest position)", fontsize=9)
    for i, ax in enumerate(axes):
        if i < len(card.top_rows):
            pos = card.top_positions[i]
            where = f" @ {pos}" if pos is not None else ""
            title = f"{card.top_values[i]:.2f}{where}"
            _draw_obs(ax, card.top_obs[i], env_id, env_kwargs or {}, pos, title)
        else:
            ax.axis("off")
            ax.set_title("never fires", fontsize=8)
    ax_hist, ax_act = bottom_row.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.4]})
    if card.activations.size:
        ax_hist.hist(card.activations, bins=40, color="#4a7bb7")
        ax_hist.set_yscale("log")
    ax_hist.set_title(
        f"activation when firing\n(fires on {card.frequency:.1%} of observations)", fontsize=8
    )
    ax_hist.tick_params(labelsize=7)
    change = -np.asarray(card.ablation.get("logit_change", [0.0] * len(actions)))
    colours = ["#c0504d" if v < 0 else "#4a7bb7" for v in change]
    ax_act.bar(np.arange(len(change)), change, color=colours)
    ax_act.set_xticks(np.arange(len(change)))
    ax_act.set_xticklabels(actions, rotation=90 if len(actions) > 6 else 0, fontsize=6)
    ax_act.axhline(0, color="#444", linewidth=0.6)
    ab = card.ablation
    ax_act.set_title(
        "logit contribution per action (logits - logits without the latent)\n"
        f"KL {ab.get('kl', 0):.3g}, action flips {ab.get('flip', 0):.1%}, "
        f"value contribution {-ab.get('value_change', 0):+.3g}",
        fontsize=8,
    )
    ax_act.tick_params(axis="y", labelsize=7)
    meaning = ""
    if card.concept:
        meaning = f"\nbest concept: {card.concept['concept']} (r = {card.concept['r']:+.2f})"
    fig.suptitle(
        f"latent {card.latent} of {hook}{meaning}",
        fontsize=10,
        y=1.08 if meaning else 1.02,
    )
    return to_png(fig)


def behaviour_rows(result: SpliceEval) -> list[dict[str, Any]]:
    """One table row per condition of a spliced-in evaluation."""

    def ci(value: float, interval: tuple[float, float]) -> str:
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"

    rows = []
    for cond, e in result.conditions.items():
        off = e.held_out
        rows.append(
            {
                "at the hook": cond.replace("_", " "),
                "success (95% CI)": ci(e.success_rate, e.success_rate_ci),
                "kept": e.success_kept if off is not None and e.success_kept is not None else "",
                "return (95% CI)": f"{e.mean_return:.2f} [{e.return_ci[0]:.2f}, "
                f"{e.return_ci[1]:.2f}]",
                "agree in world (95% CI)": ci(e.action_agreement, e.action_agreement_ci)
                if off is not None
                else "",
                "agree held-out": off.action_agreement if off is not None else "",
                "KL": off.kl if off is not None else "",
                "regret / gap": f"{off.regret:.3g} / {off.gap:.3g}" if off is not None else "",
            }
        )
    return rows


def render(dashboard: SAEDashboard, folder: str | Path) -> Path:
    """Write ``latent_<j>.png`` per card, ``latents.json`` and ``index.html`` into ``folder``;
    returns the HTML path.

    The page opens with the behaviour with the SAE spliced in (when measured), then every live
    latent's best ground-truth concept (when matched), then the cards.
    """
    from policylens.artifacts import write_bytes, write_json
    from policylens.report.html import Report

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    context, cards = dashboard.context, dashboard.cards
    behaviour, concepts = dashboard.behaviour, dashboard.concepts
    env_id = context.get("env_id")
    env_kwargs = context.get("env_kwargs", {})
    site = context.get("site", {})
    hook = site.get("hook", "?")
    report = Report(
        f"SAE feature dashboard: {hook}",
        f"{context.get('arch')} SAE with {context.get('d_sae')} latents on {site.get('layout')} "
        f"vectors of {site.get('hook')} (activation shape {site.get('shape')}), agent of "
        f"{context.get('run')} at step {context.get('checkpoint_step')}, "
        f"{context.get('observations')} observations of {env_id}.",
    )
    if behaviour is not None:
        rec = behaviour.reconstruction
        section = report.section("Behaviour with the SAE spliced in")
        section.note(
            f"{behaviour.episodes} episodes per condition from the same starts. The SAE "
            "replaces the hook's activation by its reconstruction (spliced); zero and mean "
            "ablation of the whole hook are the floor. Kept: success over the original's. "
            "Agree: the same action as the original agent on the same observation, in the world "
            "and on held-out observations; regret: the original's logit (Q-value) of its own "
            "choice minus that of the spliced choice, beside its mean best-minus-second gap."
        )
        section.table(behaviour_rows(behaviour))
        section.note(
            f"Reconstruction on the held-out observations: explained variance "
            f"{rec['explained_variance']:.4f}, L0 {rec['l0']:.1f}, dead latents "
            f"{rec['dead_latents']} of {behaviour.d_sae} (objective {behaviour.objective})."
        )
    if concepts is not None:
        section = report.section("What the live latents track (ground truth)")
        section.note(
            f"For each of the {concepts['live']} live latents, the world label its activation "
            "correlates with most (Pearson r over observations; per position for per-position "
            f"latents). Chance level (95th percentile of the best |r| with the observations "
            f"shuffled): {concepts['chance']:.3f}; {concepts['above_chance']:.0%} of live latents "
            "beat it. Precision: share of firing observations where a yes/no concept holds; "
            "recall: share of those where it holds that the latent fires on."
            + (
                f" Constant on these observations, so left out: {', '.join(concepts['constant'])}."
                if concepts.get("constant")
                else ""
            )
        )
        section.text("Each concept's best latent (by |r|):")
        section.table(
            [
                {"concept": name, "latent": e["latent"], "r": e["r"]}
                for name, e in sorted(
                    concepts["by_concept"].items(), key=lambda kv: -abs(kv[1]["r"])
                )
            ]
        )
        section.text("Each live latent's best concept:")
        ranked = sorted(concepts["latents"].items(), key=lambda kv: -kv[1]["score"])
        section.table(
            [
                {
                    "latent": j,
                    "best concept": e["concept"],
                    "r": e["r"],
                    "precision": e.get("precision", ""),
                    "recall": e.get("recall", ""),
                    "runner-up": f"{e['runner_up']} ({e['runner_up_r']:+.2f})",
                }
                for j, e in ranked
            ]
        )
    summary = report.section("Latents by effect")
    summary.note(
        "Each latent is removed from the real activation (its decoder contribution subtracted, "
        "the reconstruction error kept) on the observations where it fires; KL is "
        "KL(original || ablated) of the action distribution there, flips the share of changed "
        "actions, dV the value contribution (V - V_ablated); kl_all and flips_all multiply them "
        "by the frequency. Greedy (Q-value) agents are ranked by flips_all, others by kl_all."
    )
    summary.table(
        [
            {
                "latent": c.latent,
                "frequency": c.frequency,
                "max act": c.top_values[0] if c.top_values else 0.0,
                "KL": c.ablation.get("kl", 0.0),
                "flips": c.ablation.get("flip", 0.0),
                "dV": -c.ablation.get("value_change", 0.0),
                "kl_all": c.ablation.get("kl_all", 0.0),
                "flips_all": c.ablation.get("flip_all", 0.0),
                "best concept (r)": f"{c.concept['concept']} ({c.concept['r']:+.2f})"
                if c.concept
                else "",
            }
            for c in cards
        ]
    )
    summary.json(context)
    for card in cards:
        png = latent_figure(card, env_id, dashboard.action_names, hook, env_kwargs)
        write_bytes(folder / f"latent_{card.latent}.png", png)
        report.section(f"Latent {card.latent}").figure(png, f"dashboard of latent {card.latent}")
    write_json(folder / "latents.json", dashboard.to_json())
    return report.write(folder / "index.html")


__all__ = ["behaviour_rows", "latent_figure", "render"]
