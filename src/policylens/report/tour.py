"""The demo's tour: one short page per research line run on the zoo's agents, and the index page
linking them with the maze report. Each page leads with its headline, the control it is judged
against and 95% intervals, in one figure and one sentence; the tables come from the study's own
renderers (:mod:`~policylens.report.hazards`, :mod:`~policylens.report.rl_vision`,
:mod:`~policylens.report.sae`)."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from policylens.report.figures import interval_panels_figure
from policylens.report.hazards import difference_rows, failure_rows
from policylens.report.html import Report, Section
from policylens.report.rl_vision import (
    edit_description,
    edit_rows,
    legend_rows,
    named_sentence,
    ratio_rows,
    verdict_sentence,
)
from policylens.report.sae import behaviour_rows
from policylens.studies.hazards.failures import FailureStudy
from policylens.studies.rl_vision.editing import EditExperiment
from policylens.studies.rl_vision.features import FeaturesResult
from policylens.studies.rook_sae.runs import SAEEvaluation


def rate_text(p: dict[str, Any], places: int = 3) -> str:
    """A proportion as ``0.045 [0.031, 0.065]``."""
    return f"{p['rate']:.{places}f} [{p['ci'][0]:.{places}f}, {p['ci'][1]:.{places}f}]"


def mean_text(m: dict[str, Any], places: int = 1) -> str:
    """A mean as ``137.0 [132.8, 141.1]``."""
    return f"{m['mean']:.{places}f} [{m['ci'][0]:.{places}f}, {m['ci'][1]:.{places}f}]"


def diff_text(d: dict[str, Any], places: int = 3) -> str:
    """A difference with its interval and the verdict: "an effect" or "no effect"."""
    span = f"{d['diff']:+.{places}f} [{d['ci'][0]:+.{places}f}, {d['ci'][1]:+.{places}f}]"
    return f"{span}: {'an effect' if d['effect'] else 'no effect'}"


def _panel(
    title: str, stats: Sequence[dict[str, Any]], values: Sequence[Sequence[float]] | None = None
) -> tuple[str, list[float], list[float], list[float], list[list[float]]]:
    """One :func:`interval_panels_figure` panel from rates or means with their intervals."""
    key = "rate" if "rate" in stats[0] else "mean"
    return (
        title,
        [s[key] for s in stats],
        [s["ci"][0] for s in stats],
        [s["ci"][1] for s in stats],
        [list(v) for v in values] if values is not None else [[] for _ in stats],
    )


def _link(section: Section, href: str, text: str) -> None:
    section.parts.append(f'<p><a href="{html.escape(href)}">{html.escape(text)}</a></p>')


# -- Understanding RL Vision on the hazard world ------------------------------------------------
def hazards_headline(exp: EditExperiment) -> str:
    """Saws hidden against shown (the control of every edit), then the edit against random
    directions, in one sentence."""
    hidden = exp.moves["invisible:saw"]["saw"]
    edit = exp.moves["edit:saw"]["saw"]
    randoms = [m["saw"]["diff"]["diff"] for k, m in exp.moves.items() if k.startswith("random:")]
    return (
        f"saw deaths on {exp.levels} unseen levels {rate_text(hidden['baseline'], 4)}; with "
        f"saws invisible {rate_text(hidden['rate'], 4)}, {diff_text(hidden['diff'], 4)}; saw "
        f"direction removed {diff_text(edit['diff'], 4)} (random directions "
        + ", ".join(f"{r:+.4f}" for r in randoms)
        + ")"
    )


def hazards_figure(exp: EditExperiment) -> bytes:
    """Saw deaths and completion of the unedited agent, with saws invisible, with the saw
    direction removed and with random directions removed, with 95% intervals."""
    names = {"edit:saw": "saw removed", "invisible:saw": "saws invisible"}
    labels = ["unedited", *(names.get(k, k.replace(":", " ")) for k in exp.tables)]
    tables = [exp.baseline, *exp.tables.values()]
    return interval_panels_figure(
        labels,
        [
            _panel("saw deaths (share of levels)", [t.of_levels("saw") for t in tables]),
            _panel("completion", [t.completion for t in tables]),
        ],
        f"agent ({exp.levels} unseen levels each)",
    )


def hazards_page(
    features: FeaturesResult,
    strip: bytes | None,
    failures: FailureStudy,
    exp: EditExperiment,
    source: str,
    frames_note: str,
) -> Report:
    """Understanding RL Vision on a hazard agent: named features, failures with saws hidden and
    shown, and one edit against the invisible-saw and random-direction controls."""
    report = Report(
        f"Understanding RL Vision on {source}",
        "Hilton et al. (2020) on the hazard world's recipe agent: NMF features of the value named "
        "by ground-truth object masks, the failure table with saws hidden from the observation "
        "(the control every edit is judged against), and the saw's direction projected out of the "
        "weights against random directions. 95% intervals: Wilson for rates, Newcombe for "
        "differences.",
    )
    s = report.section("Headline")
    s.text(hazards_headline(exp) + ".")
    s.figure(hazards_figure(exp), "saw deaths and completion by agent, 95% intervals")

    s = report.section("Features of the value, named by object masks")
    s.text(
        f"Value integrated gradients at {features.layer} on {features.frames} frames "
        f"({frames_note}), NMF into {features.nmf['k']} features (explains "
        f"{features.nmf['explained']:.1%}). Alignment: the correlation of a feature's map with an "
        "object's mask."
    )
    s.table(legend_rows(features))
    s.text(named_sentence(features))
    on = features.attribution_on_objects
    s.note(
        "Where the value looks, against the control of the other cells: mean |attribution| per "
        "layer cell on each object over that off it."
    )
    s.table([
        {"object": k, "best alignment": round(v, 3),
         "|attribution| on / off the object": f"x{on[k]['ratio']:.1f}" if k in on else "-"}
        for k, v in features.best_alignment.items()
    ])  # fmt: skip
    if strip is not None:
        s.figure(strip, "feature overlay strip")

    s = report.section("Failures by cause: saws shown and hidden")
    s.text(
        f"{failures.episodes} unseen levels per table, sampled actions, the same levels and "
        "random numbers shown and hidden; each cause's share of levels with its Wilson interval."
    )
    s.table(failure_rows(failures))
    s.note("Hidden minus shown (Newcombe 95% interval; '(none)' where it holds zero):")
    s.table(difference_rows(failures))

    s = report.section("Model editing: the saw direction removed")
    if exp.edit is not None:
        s.text(edit_description(exp.edit))
    if exp.verdict is not None:
        s.text(verdict_sentence(exp.verdict))
    s.table(edit_rows(exp))
    s.note("Rate ratio to the unedited agent (difference, Newcombe 95% interval):")
    s.table(ratio_rows(exp))
    return report


# -- SAEs on the rook DQN -----------------------------------------------------------------------
def sae_headline(ev: SAEEvaluation) -> str:
    """The SAE spliced in against the original and against ablating the hook, in one sentence."""
    c = ev.behaviour.conditions
    ori, spl = c["original"], c["spliced"]

    def mate(e: Any) -> str:
        return f"{e.success_rate:.3f} [{e.success_rate_ci[0]:.3f}, {e.success_rate_ci[1]:.3f}]"

    text = (
        f"mate rate over {ev.behaviour.episodes} games: original {mate(ori)}, "
        f"{ev.behaviour.objective} SAE spliced in {mate(spl)}"
    )
    if spl.success_vs_original is not None:
        text += f" ({diff_text(spl.success_vs_original)})"
    for cond in ("zero_ablation", "mean_ablation"):
        if cond in c:
            e = c[cond]
            text += f"; {cond.replace('_', ' ')} {mate(e)}"
            if e.success_vs_original is not None:
                text += f" ({diff_text(e.success_vs_original)})"
    return text


def sae_figure(ev: SAEEvaluation) -> bytes:
    """Mate rate and action agreement with the original per condition at the hook, with 95%
    intervals."""
    b = ev.behaviour
    rates = [{"rate": e.success_rate, "ci": list(e.success_rate_ci)} for e in b.conditions.values()]
    agree = [
        {"rate": e.action_agreement, "ci": list(e.action_agreement_ci)}
        if e.held_out is not None
        else {"rate": 1.0, "ci": [1.0, 1.0]}
        for e in b.conditions.values()
    ]
    return interval_panels_figure(
        [c.replace("_", " ") for c in b.conditions],
        [_panel("mate rate", rates), _panel("action agreement with the original", agree)],
        f"at {b.hook} ({b.episodes} games each)",
    )


def sae_page(ev: SAEEvaluation, source: str) -> Report:
    """An SAE judged as a replacement for its hook: behaviour spliced in against the original
    agent and against zero and mean ablation of the hook."""
    b = ev.behaviour
    report = Report(
        f"SAEs on {source}",
        "A sparse autoencoder judged by behaviour (DuPlessie's rook endgame): the SAE's "
        "reconstruction replaces the hook's activation while the agent plays; the hook zeroed or "
        "set to its mean are the floor. 95% intervals: Wilson for rates, Newcombe for "
        "differences from the original.",
    )
    s = report.section("Headline")
    s.text(sae_headline(ev) + ".")
    s.figure(sae_figure(ev), "mate rate and action agreement by condition, 95% intervals")
    s = report.section("Spliced in, against ablation")
    s.text(
        f"SAE {b.arch} ({b.d_in} -> {b.d_sae} latents, k={b.k}, objective {b.objective}) at "
        f"{b.hook} of the agent at step {ev.checkpoint_step}; every condition plays "
        f"{b.episodes} games from the same starts; {b.observations} held-out observations for "
        "the offline figures."
    )
    s.table(behaviour_rows(b))
    r = b.reconstruction
    s.text(
        f"Reconstruction on the held-out observations: explained variance "
        f"{r['explained_variance']:.3f}, L0 {r['l0']:.1f}, dead latents {r['dead_latents']} "
        f"({r['dead_fraction']:.1%})"
        + (
            f"; return recovered {b.return_recovered:.3f}"
            if b.return_recovered is not None and math.isfinite(b.return_recovered)
            else ""
        )
        + "."
    )
    return report


# -- Isolating updates on the lunar lander ------------------------------------------------------
NOISE = "noise control"
"""The model name of phase 1 plus noise with the update's per-tensor norms."""


def updates_headline(result: dict[str, Any]) -> str:
    """Fuel and landing, phase 2 and the noise control against phase 1, and the update's size."""
    models, fuel, landed = result["models"], result["fuel_vs_phase1"], result["landed_vs_phase1"]
    text = (
        f"fuel per episode over {result['episodes']} episodes: phase 1 "
        f"{mean_text(models['phase 1']['fuel_used'])}, phase 2 "
        f"{mean_text(models['phase 2']['fuel_used'])} ({diff_text(fuel['phase 2'], 1)})"
    )
    if NOISE in fuel:
        text += f", the {NOISE} {diff_text(fuel[NOISE], 1)}"
    moved = group_moves(result["update"])
    value = sum(m["share"] for g, m in moved.items() if g.startswith("value"))
    policy = [m for g, m in moved.items() if g.startswith("policy")]
    policy_norm = math.sqrt(sum(m["norm"] ** 2 for m in policy))
    policy_weights = math.sqrt(sum(m["weight_norm"] ** 2 for m in policy))
    text += (
        f"; landed {rate_text(models['phase 2']['landed'], 2)} vs "
        f"{rate_text(models['phase 1']['landed'], 2)} ({diff_text(landed['phase 2'], 2)}); "
        f"the value layers take {value:.1%} of the update's squared norm, the policy's weights "
        f"move {policy_norm / policy_weights:.1%} of their norm"
    )
    return text


def group_moves(update: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per group of parameters (:data:`~policylens.lenses.updates.GROUPS`, as
    ``summarize_update`` assigns them): its share of the update's squared norm, the update's norm
    and the weights' norm there."""
    groups = {g: {"norm2": 0.0, "weight2": 0.0} for g in update["groups"]}
    split = "value body" in groups  # separate value layers: the shared trunk is the policy's
    for t in update["tensors"]:
        g = "policy body" if split and t["group"] == "shared" else t["group"]
        groups[g]["norm2"] += t["norm"] ** 2
        groups[g]["weight2"] += t["weight_norm"] ** 2
    total = sum(v["norm2"] for v in groups.values())
    return {
        g: {"share": v["norm2"] / total if total > 0 else math.nan,
            "norm": math.sqrt(v["norm2"]), "weight_norm": math.sqrt(v["weight2"])}
        for g, v in groups.items()
    }  # fmt: skip


def update_rows(update: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per tensor: its norm, norm relative to the weights, share of the update's mass in
    its top 1% entries, top singular direction's share of its energy."""
    total = update["norm"] ** 2
    return [
        {
            "tensor": t["name"],
            "group": t["group"],
            "shape": "x".join(str(d) for d in t["shape"]),
            "norm": t["norm"],
            "norm / weights": t["rel_norm"],
            "share of the update": t["norm"] ** 2 / total if total > 0 else math.nan,
            "top 1% mass": t["top_mass"]["0.01"],
            "top-1 singular energy": t["top1_energy"],
        }
        for t in update["tensors"]
    ]


def updates_figure(result: dict[str, Any]) -> bytes:
    """Fuel used per episode (each episode a dot) and landing rate per model, with 95%
    intervals."""
    models = result["models"]
    names = list(models)
    return interval_panels_figure(
        names,
        [
            _panel(
                "fuel used per episode",
                [models[n]["fuel_used"] for n in names],
                [result["fuel"][n] for n in names],
            ),
            _panel("landed", [models[n]["landed"] for n in names]),
        ],
        f"model ({result['episodes']} episodes each)",
    )


def updates_page(result: dict[str, Any], sources: tuple[str, str]) -> Report:
    """Phase 1 against phase 2 of the isolating-updates protocol: fuel and landing with
    intervals, a random update of the same per-tensor norms as the control, and where the update
    lands."""
    models = result["models"]
    report = Report(
        f"Isolating updates: {sources[0]} -> {sources[1]}",
        "PPO on the lunar lander without a fuel cost (phase 1), then a short phase with fuel "
        "charged (phase 2). Every model plays the same seeded episodes; the control is phase 1 "
        "plus Gaussian noise with the update's norm in every tensor. 95% intervals: normal for "
        "means, Wilson for rates, Welch and Newcombe for differences from phase 1.",
    )
    s = report.section("Headline")
    s.text(updates_headline(result) + ".")
    s.figure(updates_figure(result), "fuel used and landing rate by model, 95% intervals")
    s = report.section("Evaluation")
    s.table([
        {"model": n, "fuel used": mean_text(m["fuel_used"]), "landed": rate_text(m["landed"], 2),
         "crashed": rate_text(m["crashed"], 2), "length": mean_text(m["length"], 0),
         "return (no fuel)": mean_text(m["return"]["no_fuel"]),
         "return (scaled fuel)": mean_text(m["return"]["scaled_fuel"])}
        for n, m in models.items()
    ])  # fmt: skip
    s.note("Differences from phase 1 (fuel: Welch; landed: Newcombe):")
    s.table([
        {"model": n, "fuel used": diff_text(d, 1),
         "landed": diff_text(result["landed_vs_phase1"][n], 2)}
        for n, d in result["fuel_vs_phase1"].items()
    ])  # fmt: skip
    u = result["update"]
    s = report.section("The weight update, tensor by tensor")
    s.text(
        f"phase 2 minus phase 1: norm {u['norm']:.3f}, {u['rel_norm']:.2%} of the weights' "
        f"norm ({u['num_params']:,} parameters); its top 1% entries hold "
        f"{u['top_mass']['0.01']:.1%} of its squared mass, against "
        f"{result['noise_top_mass']['0.01']:.1%} for the noise control."
    )
    s.table([
        {"group": g, "share of the update's squared norm": m["share"], "update norm": m["norm"],
         "norm / weights": m["norm"] / m["weight_norm"] if m["weight_norm"] > 0 else math.nan,
         "share of the parameters": u["groups"][g]["param_share"]}
        for g, m in group_moves(u).items()
    ])  # fmt: skip
    s.table(update_rows(u))
    return report


# -- the index ----------------------------------------------------------------------------------
def index_page(
    maze_report: str, maze_lines: Sequence[str], sections: Sequence[dict[str, Any]]
) -> Report:
    """The tour's front page: the maze report and each section's page, each with its headline.

    ``sections``: ``{"title", "line", "page" (a path relative to the index, None when skipped),
    "headline" and "figure" (PNG bytes or None), or "skipped"}``.
    """
    report = Report(
        "policylens demo: every research line",
        "What `make demo` ran: two maze agents trained here and analysed, then a short section of "
        "every other research line on the agents shipped in the zoo. Each headline is set "
        "against its control with a 95% interval; 'no effect' where the interval holds zero.",
    )
    s = report.section("Goal misgeneralization in the maze (agents trained by this demo)")
    _link(s, maze_report, "the maze report")
    for line in maze_lines:
        s.text(line)
    for entry in sections:
        s = report.section(f"{entry['line']}: {entry['title']}")
        if entry.get("page") is None:
            s.note(str(entry["skipped"]))
            continue
        _link(s, entry["page"], f"the {entry['line']} page")
        s.text(str(entry["headline"]) + ".")
        if entry.get("figure"):
            s.figure(entry["figure"], f"{entry['line']}: the headline, 95% intervals")
    return report


def relative(path: Path, start: Path) -> str:
    """``path`` as a link relative to the folder ``start`` (forward slashes)."""
    return Path(os.path.relpath(path, start)).as_posix()
