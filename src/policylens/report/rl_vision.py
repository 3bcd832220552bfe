"""Figures, tables and the HTML report of the "Understanding RL Vision" study on the hazard world:
the feature legend, attribution overlays on strips of frames, the dissected failures, the
failure tables before and after editing, drawn from the study's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from policylens.artifacts import write_bytes
from policylens.report.features import nmf_figure
from policylens.report.figures import curves_figure
from policylens.report.hazards import rows_table
from policylens.report.html import Report
from policylens.report.sweeps import metrics_by_parameter
from policylens.studies.hazards.failures import FAILURE_CAUSES
from policylens.studies.rl_vision.dissection import DissectionResult
from policylens.studies.rl_vision.diversity import DiversityResult
from policylens.studies.rl_vision.editing import (
    TARGET_RATIO,
    EditExperiment,
    EditRecord,
    EditVerdict,
)
from policylens.studies.rl_vision.features import GOOD_ALIGNMENT, FeaturesResult
from policylens.studies.rl_vision.hallucinations import NAMED, HallucinationResult
from policylens.studies.rl_vision.summary import StudySummary
from policylens.worlds.hazards import symbolic_rgb


def _ci(p: dict[str, Any], places: int = 4) -> str:
    return f"{p['rate']:.{places}f} [{p['ci'][0]:.{places}f}, {p['ci'][1]:.{places}f}]"


def _write_png(path: Path, png: bytes) -> str:
    write_bytes(path, png)
    return str(path)


# -- features -----------------------------------------------------------------------------------
def legend_rows(result: FeaturesResult) -> list[dict[str, Any]]:
    """The feature legend: colour, sign, label, alignment (correlation) and IoU, top frames."""
    rows = []
    for f in result.nmf["features"]:
        tops = result.examples[f["feature"]][:3]
        rows.append({
            "feature": f["feature"], "colour": f["colour"],
            "sign": "+" if f["positive_share"] >= 0.5 else "-", "label": f["label"],
            "alignment": round(f["correlation"], 3), "IoU": round(f["iou"], 3),
            "top frames": ", ".join(str(t["frame"]) for t in tops),
        })  # fmt: skip
    return rows


def named_sentence(result: FeaturesResult) -> str:
    """Whether each hazard the agent met got a feature aligned at the bar, in one sentence."""
    named = result.hazards_named
    if not named:
        return "No hazard appeared in the frames."
    verdicts = ", ".join(
        f"{h} {'yes' if ok else 'no'} ({result.best_alignment[h]:.2f})" for h, ok in named.items()
    )
    return f"Hazards met with a feature aligned >= {GOOD_ALIGNMENT}: {verdicts}."


def feature_strip(result: FeaturesResult, frames: list[int] | None = None) -> bytes:
    """Hilton's overlay: frames, all features mixed, then one row per feature (its label)."""
    hf = result.fitted
    if hf is None:
        raise ValueError("the features were read back from JSON; the overlay needs fitted ones.")
    frames = frames or [ex[0]["frame"] for ex in hf.examples][:6]
    obs = np.stack([symbolic_rgb(hf.frames.obs[i]) for i in frames])
    titles = [f"frame {i}" for i in frames]
    return nmf_figure(obs, hf.nmf.maps[frames], hf.nmf.colours, titles, names=hf.nmf.names())


def save_feature_figures(result: FeaturesResult, out: Path) -> dict[str, str]:
    """The overlay strip (each feature's top frame) as a PNG under ``out``."""
    return {"feature_strip": _write_png(out / "rl_vision_features.png", feature_strip(result))}


def features_console(result: FeaturesResult, title: str, files: dict[str, str]) -> list[Any]:
    """What ``policylens features`` prints for a hazard run: the legend, how much NMF explains,
    which hazards are named, where the attribution lies, and the figures written."""
    on = result.attribution_on_objects
    return [
        rows_table(legend_rows(result), title),
        f"NMF explains {result.nmf['explained']:.1%} of the squared attribution.",
        named_sentence(result),
        "|attribution| per cell on each object / elsewhere: "
        + ", ".join(f"{k} x{v['ratio']:.1f}" for k, v in on.items()),
        *(f"{kind}: {path}" for kind, path in files.items()),
    ]


# -- dissection ---------------------------------------------------------------------------------
def save_dissection_figures(result: DissectionResult, out: Path) -> dict[str, str]:
    """Per shown failure: its last frames with the NMF overlay (titles: value and advantage), and
    the value and the advantage over those steps."""
    files = {}
    shown = result.shown
    for ep in shown:
        obs = np.stack([symbolic_rgb(o) for o in ep.obs])
        titles = [f"t-{len(ep.obs) - 1 - t} v={v:.2f} A={a:+.2f}"
                  for t, (v, a) in enumerate(zip(ep.values, ep.advantages, strict=True))]  # fmt: skip
        files[f"failure_{ep.episode}_{ep.cause}"] = _write_png(
            out / f"rl_vision_failure_{ep.episode}.png",
            nmf_figure(obs, ep.maps, result.feature_colours, titles, names=result.feature_names),
        )
    keys = [f"{ep.cause} {ep.episode}" for ep in shown]
    for kind in ("values", "advantages") if shown else ():
        rows = [
            {"step": t, **{k: float(getattr(ep, kind)[t]) for k, ep in zip(keys, shown, strict=True)
                           if t < len(ep.values)}}
            for t in range(max(len(e.values) for e in shown))
        ]  # fmt: skip
        name = "value" if kind == "values" else "advantage"
        files[kind] = _write_png(
            out / f"rl_vision_failure_{kind}.png",
            curves_figure(rows, keys, f"{name} over the last steps before failing"),
        )
    return files


def dissection_rows(result: DissectionResult) -> list[dict[str, Any]]:
    """Per hazard cause: deaths and the share of each class (Wilson interval)."""
    rows = []
    for cause, r in result.by_cause.items():
        row: dict[str, Any] = {"cause": cause, "deaths": r["deaths"]}
        for cls in ("seen and ignored", "occluded", "not in view", "seen the whole window"):
            row[cls] = _ci(r[cls]) if r["deaths"] and cls in r else "-"
        rows.append(row)
    return rows


# -- hallucinations -----------------------------------------------------------------------------
def hallucination_rows(result: HallucinationResult, places: int = 4) -> list[dict[str, Any]]:
    """Per checked feature: its label, hallucinated cells and the share of frames with one."""
    return [{"feature": c["feature"], "label": c["label"], "cells": c["cells"],
             "frames with one": _ci(c["frames"], places)}
            for c in result.counts.values()]  # fmt: skip


def hallucination_sentence(result: HallucinationResult, min_correlation: float = 0.3) -> str:
    """What a hallucination search found, in one sentence; it says when no feature was named
    well enough to be checked (no evidence either way) rather than "none found"."""
    counts, check = result.counts, result.check
    if not counts:
        return (
            f"No feature is named for {', '.join(NAMED)} at correlation >= {min_correlation}, "
            "so none could be checked for hallucinations: no evidence either way."
        )
    names = ", ".join(f"{c['feature']} ({c['label']})" for c in counts.values())
    if not check["checked"]:
        return f"No hallucinations: features {names} never fired strongly away from their object."
    d = check["difference"]
    return (
        f"Features {names}: patching {check['checked']} hallucinated regions from a clean frame "
        f"changed |value| by {check['abs_value_change']['mean']:.4f} against "
        f"{check['abs_value_change_control']['mean']:.4f} for the same patch where the feature "
        f"is quiet; difference {d['mean']:.4f} [{d['ci'][0]:.4f}, {d['ci'][1]:.4f}]"
        + (" (no effect)." if d["ci"][0] <= 0 <= d["ci"][1] else ".")
    )


# -- editing ------------------------------------------------------------------------------------
def edit_rows(exp: EditExperiment) -> list[dict[str, Any]]:
    """Failure table rows: unedited, each edit, each invisible control, each random direction."""
    tables = {"unedited": exp.baseline, **exp.tables}
    rows = []
    for name, t in tables.items():
        row: dict[str, Any] = {"agent": name, "completion": _ci(t.completion)}
        for cause in FAILURE_CAUSES:
            row[cause] = _ci(t.of_levels(cause))
        rows.append(row)
    return rows


def ratio_rows(exp: EditExperiment) -> list[dict[str, Any]]:
    """Per variant and cause: rate ratio to the unedited agent and the difference's interval."""
    rows = []
    for name, moves in exp.moves.items():
        row: dict[str, Any] = {"agent": name}
        for cause in FAILURE_CAUSES:
            m = moves[cause]
            d = m["diff"]
            row[cause] = (
                f"x{m['ratio']:.2f} ({d['diff']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}])"
            )
        rows.append(row)
    return rows


def edit_description(edit: EditRecord) -> str:
    """What an edit removed, from where, in one sentence (the CLI and the report)."""
    if edit.direction_from == "object":
        what = f"the {edit.requested} direction from its masks"
    else:
        what = (
            f"NMF feature {edit.feature} (labelled {edit.label}; alignment with "
            f"{edit.requested}: {edit.alignment:.2f})"
        )
    return f"Removed {what} at {edit.layer} from the weights of {edit.reader}."


def verdict_sentence(v: EditVerdict) -> str:
    """The verdict in one sentence, saying "no effect" where the interval includes zero."""
    d = v.diff
    head = (
        f"{v.feature} deaths {v.baseline['rate']:.2%} -> {v.rate['rate']:.2%} of levels "
        f"(x{v.ratio:.2f}, {d['diff']:+.2%} [{d['ci'][0]:+.2%}, {d['ci'][1]:+.2%}])"
    )
    if not v.effect:
        head += ": no effect"
    parts = [head]
    if v.invisible_diff:
        i = v.invisible_diff
        parts.append(f"hazard invisible {i['diff']:+.2%} [{i['ci'][0]:+.2%}, {i['ci'][1]:+.2%}]")
        if v.share_of_invisible is not None and v.effect:
            parts.append(f"the edit does {v.share_of_invisible:.0%} of what invisibility does")
    if v.random_diffs:
        parts.append("random directions " + ", ".join(f"{r:+.2%}" for r in v.random_diffs))
    if v.largest_rise != v.feature:
        parts.append(
            f"not specific: {v.largest_rise} deaths rose more ({v.rises[v.largest_rise]:+.2%})"
        )
    if v.other_ratios:
        worst = max(v.other_ratios, key=lambda c: abs(np.log(max(v.other_ratios[c], 1e-9))))
        parts.append(f"largest other move {worst} x{v.other_ratios[worst]:.2f}")
    met = "met" if v.target_met else "not met"
    if v.invisible_reaches_target is False:
        met += " (the invisible hazard itself does not reach it, so no edit could)"
    return (
        "; ".join(parts) + f". Target (x{TARGET_RATIO:.0f} or +5 points, others < x2, "
        f"above every random direction): {met}."
    )


# -- the page -----------------------------------------------------------------------------------
def diversity_section(report: Report, diversity: DiversityResult) -> None:
    """The diversity hypothesis: completion and interpretability by number of training levels."""
    spec, rows = diversity.spec, diversity.rows
    figure, table = metrics_by_parameter(diversity.result, list(diversity.metrics))
    s = report.section("The diversity hypothesis")
    s.text(f"{len(rows)} agents of the hazards recipe by number of training levels (seeds "
           f"{spec.seeds}); completion on 1,000 training and 1,000 unseen levels; the "
           "interpretability score is the mean best alignment of the NMF features to an object "
           "mask. Means over seeds with Student-t 95% intervals.")  # fmt: skip
    if figure:
        s.figure(figure, "diversity hypothesis")
    s.table(table)
    s.text("; ".join(diversity.effects) + " (Welch 95% intervals).")


def render(summary: StudySummary, out: Path) -> Path:
    """One HTML page of the study's saved results (and the figures its commands drew)."""
    report = Report(
        "Understanding RL Vision on the hazard world",
        "Hilton et al. (2020) reproduced on a policylens agent: NMF features of the value named "
        "by ground-truth object masks, dissected failures, hallucinations, and model editing.",
    )
    analysis = summary.analysis
    features = summary.features
    if features:
        s = report.section("Feature legend")
        s.text(f"Value IG at {features.layer} on {features.frames} frames, NMF into "
               f"{features.nmf['k']} features (explains {features.nmf['explained']:.1%}). "
               "Alignment: correlation of the feature map with the named object mask.")  # fmt: skip
        s.table(legend_rows(features))
        s.text(named_sentence(features))
        on = features.attribution_on_objects
        s.table([
            {"object": k, "best alignment": round(v, 3),
             "|attribution| on / off the object": f"x{on[k]['ratio']:.1f}" if k in on else "-"}
            for k, v in features.best_alignment.items()
        ])  # fmt: skip
        strip = analysis / "rl_vision_features.png"
        if strip.exists():
            s.figure(strip.read_bytes(), "feature overlay strip")
    dis = summary.dissection
    if dis:
        s = report.section("Failure dissection")
        s.text(f"{dis.failed} of {dis.levels} unseen levels failed; deaths by a hazard "
               f"classified from the last {dis.window} steps' ground-truth flags. The view is "
               "centred on the agent, so the killer is in view at death by construction; 'seen "
               "the whole window' counts deaths whose killer was in view, unbroken, for all "
               f"{dis.window} steps before.")  # fmt: skip
        s.table(dissection_rows(dis))
        for png in sorted(analysis.glob("rl_vision_failure*.png")):
            s.figure(png.read_bytes(), png.stem)
    hal = summary.hallucinations
    if hal:
        s = report.section("Hallucinations")
        s.text(hallucination_sentence(hal))
        s.table(hallucination_rows(hal))
        if hal.check["checked"]:
            s.json({k: v for k, v in hal.check.items() if k != "rows"})
    for name, exp in summary.edits:
        s = report.section(f"Model editing: {name}")
        s.text(f"{exp.levels} unseen levels, seed {exp.seed}, layer {exp.layer}.")
        if exp.edit is not None:
            s.text(edit_description(exp.edit))
        if exp.verdict is not None:
            s.text(verdict_sentence(exp.verdict))
        s.table(edit_rows(exp))
        s.note("Rate ratio to the unedited agent (difference, Newcombe 95% interval):")
        s.table(ratio_rows(exp))
    if summary.diversity is not None:
        diversity_section(report, summary.diversity)
    return report.write(out)
