"""Figures, tables and the HTML report of the "Understanding RL Vision" study on the hazard world:
the feature legend, attribution overlays on strips of frames, the dissected failures, the
failure tables before and after editing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from policylens.artifacts import write_bytes
from policylens.envs.hazards import AGENT, CHANNELS, COIN, COLOURS, CRATE, ENEMY, LAVA, SAW, WALL
from policylens.report.features import nmf_figure
from policylens.report.figures import curves_figure
from policylens.report.html import Report
from policylens.report.sweeps import metrics_by_parameter
from policylens.studies.hazards.failures import FAILURE_CAUSES
from policylens.studies.rl_vision.diversity import diversity_effects
from policylens.studies.rl_vision.editing import edit_description, edit_verdict, verdict_sentence
from policylens.studies.rl_vision.features import HazardFeatures, feature_maps_of, named_sentence
from policylens.studies.rl_vision.hallucinations import hallucination_sentence
from policylens.sweeps import read_sweep

SKY_RGB = (170, 210, 245)
_CHANNEL_KIND = {"wall": WALL, "crate": CRATE, "lava": LAVA, "coin": COIN, "saw": SAW,
                 "enemy_left": ENEMY, "enemy_right": ENEMY, "agent": AGENT}  # fmt: skip


def symbolic_rgb(obs: np.ndarray, px: int = 4) -> np.ndarray:
    """A symbolic observation ``(channels, v, v)`` as a uint8 picture ``(v*px, v*px, 3)``; image
    observations pass through."""
    obs = np.asarray(obs)
    if obs.ndim == 3 and obs.shape[-1] == 3:
        return obs
    img = np.broadcast_to(np.array(SKY_RGB, np.uint8), (*obs.shape[1:], 3)).copy()
    for ch, name in enumerate(CHANNELS):
        if name in _CHANNEL_KIND:
            img[obs[ch] > 0] = COLOURS[_CHANNEL_KIND[name]]
    img[0, :2] = (np.clip(obs[-1, 0, :2].astype(float) * 20, 0, 255)[:, None]).astype(np.uint8)
    return np.repeat(np.repeat(img, px, 0), px, 1)


def legend_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The feature legend: colour, sign, label, alignment (correlation) and IoU, top frames."""
    rows = []
    for f in summary["nmf"]["features"]:
        tops = summary["examples"][f["feature"]][:3]
        rows.append({
            "feature": f["feature"], "colour": f["colour"],
            "sign": "+" if f["positive_share"] >= 0.5 else "-", "label": f["label"],
            "alignment": round(f["correlation"], 3), "IoU": round(f["iou"], 3),
            "top frames": ", ".join(str(t["frame"]) for t in tops),
        })  # fmt: skip
    return rows


def _write_png(path: Path, png: bytes) -> str:
    write_bytes(path, png)
    return str(path)


def feature_strip(hf: HazardFeatures, frames: list[int] | None = None) -> bytes:
    """Hilton's overlay: frames, all features mixed, then one row per feature (its label)."""
    frames = frames or [ex[0]["frame"] for ex in hf.examples][:6]
    obs = np.stack([symbolic_rgb(hf.frames.obs[i]) for i in frames])
    titles = [f"frame {i}" for i in frames]
    return nmf_figure(obs, hf.nmf.maps[frames], hf.nmf.colours, titles, names=hf.nmf.names())


def save_feature_figures(hf: HazardFeatures, out: Path) -> dict[str, str]:
    """The overlay strip (each feature's top frame) as a PNG under ``out``."""
    return {"feature_strip": _write_png(out / "rl_vision_features.png", feature_strip(hf))}


def save_dissection_figures(agent: Any, hf: HazardFeatures, failed: list, out: Path,
                            show: int = 4) -> dict[str, str]:  # fmt: skip
    """Per shown failure: its last frames with the NMF overlay (titles: value and advantage), and
    the value and the advantage over those steps."""
    files = {}
    for ep in failed[:show]:
        maps = feature_maps_of(agent, hf, ep.obs)
        obs = np.stack([symbolic_rgb(o) for o in ep.obs])
        titles = [f"t-{len(ep.obs) - 1 - t} v={v:.2f} A={a:+.2f}"
                  for t, (v, a) in enumerate(zip(ep.values, ep.advantages, strict=True))]  # fmt: skip
        files[f"failure_{ep.episode}_{ep.cause}"] = _write_png(
            out / f"rl_vision_failure_{ep.episode}.png",
            nmf_figure(obs, maps, hf.nmf.colours, titles, names=hf.nmf.names()),
        )
    shown = failed[:show]
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


def _ci(p: dict[str, Any]) -> str:
    return f"{p['rate']:.4f} [{p['ci'][0]:.4f}, {p['ci'][1]:.4f}]"


def edit_rows(exp: dict[str, Any]) -> list[dict[str, Any]]:
    """Failure table rows: unedited, each edit, each invisible control, each random direction."""
    tables = {"unedited": exp["baseline"], **exp["tables"]}
    rows = []
    for name, t in tables.items():
        row: dict[str, Any] = {"agent": name, "completion": _ci(t["completion"])}
        for cause in FAILURE_CAUSES:
            row[cause] = _ci(t["failures"][cause]["of_levels"])
        rows.append(row)
    return rows


def ratio_rows(exp: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant and cause: rate ratio to the unedited agent and the difference's interval."""
    rows = []
    for name, moves in exp["moves"].items():
        row: dict[str, Any] = {"agent": name}
        for cause in FAILURE_CAUSES:
            m = moves[cause]
            d = m["diff"]
            row[cause] = (
                f"x{m['ratio']:.2f} ({d['diff']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}])"
            )
        rows.append(row)
    return rows


def dissection_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per hazard cause: deaths and the share of each class (Wilson interval)."""
    rows = []
    for cause, r in summary["by_cause"].items():
        row: dict[str, Any] = {"cause": cause, "deaths": r["deaths"]}
        for cls in ("seen and ignored", "occluded", "not in view", "seen the whole window"):
            row[cls] = _ci(r[cls]) if r["deaths"] and cls in r else "-"
        rows.append(row)
    return rows


DIVERSITY_METRICS = ["training_completion", "unseen_completion", "interpretability_score",
                     "alignment_saw", "alignment_enemy"]  # fmt: skip
"""The diversity sweep's metrics the report plots (:mod:`policylens.studies.rl_vision.diversity`)."""


def diversity_section(report: Report, sweep: Path) -> None:
    """The diversity hypothesis: completion and interpretability by number of training levels."""
    spec, rows = read_sweep(sweep)
    if not rows:
        raise ValueError(f"the sweep in {sweep} has no finished trials to report yet.")
    missing = [m for m in DIVERSITY_METRICS if m not in rows[0]]
    if missing or "num_levels" not in spec.grid:
        raise ValueError(
            f"{sweep} is not a diversity sweep (`policylens sweep --world hazards --grid "
            f"num_levels=100,1000,10000`); it lacks {', '.join(missing) or 'a num_levels grid'}."
        )
    figure, table = metrics_by_parameter(spec, rows, DIVERSITY_METRICS)
    s = report.section("The diversity hypothesis")
    s.text(f"{len(rows)} agents of the hazards recipe by number of training levels (seeds "
           f"{spec.seeds}); completion on 1,000 training and 1,000 unseen levels; the "
           "interpretability score is the mean best alignment of the NMF features to an object "
           "mask. Means over seeds with Student-t 95% intervals.")  # fmt: skip
    if figure:
        s.figure(figure, "diversity hypothesis")
    s.table(table)
    s.text("; ".join(diversity_effects(rows, DIVERSITY_METRICS)) + " (Welch 95% intervals).")


def write_rl_vision_report(
    analysis: Path,
    out: Path,
    edits: list[Path] = (),  # type: ignore[assignment]
    sweep: Path | None = None,
) -> Path:
    """One HTML page from the JSON results the commands wrote under a run's ``analysis/`` (and
    the diversity sweep's folder, if given)."""
    report = Report(
        "Understanding RL Vision on the hazard world",
        "Hilton et al. (2020) reproduced on a policylens agent: NMF features of the value named "
        "by ground-truth object masks, dissected failures, hallucinations, and model editing.",
    )

    def load(name: str) -> dict[str, Any] | None:
        path = analysis / name
        return json.loads(path.read_text()) if path.exists() else None

    features = load("rl_vision_features.json")
    if features:
        s = report.section("Feature legend")
        s.text(f"Value IG at {features['layer']} on {features['frames']} frames, NMF into "
               f"{features['nmf']['k']} features (explains {features['nmf']['explained']:.1%}). "
               "Alignment: correlation of the feature map with the named object mask.")  # fmt: skip
        s.table(legend_rows(features))
        s.text(named_sentence(features))
        on = features.get("attribution_on_objects", {})
        s.table([
            {"object": k, "best alignment": round(v, 3),
             "|attribution| on / off the object": f"x{on[k]['ratio']:.1f}" if k in on else "-"}
            for k, v in features["best_alignment"].items()
        ])  # fmt: skip
        strip = analysis / "rl_vision_features.png"
        if strip.exists():
            s.figure(strip.read_bytes(), "feature overlay strip")
    dis = load("rl_vision_dissection.json")
    if dis:
        s = report.section("Failure dissection")
        s.text(f"{dis['failed']} of {dis['levels']} unseen levels failed; deaths by a hazard "
               f"classified from the last {dis['window']} steps' ground-truth flags. The view is "
               "centred on the agent, so the killer is in view at death by construction; 'seen "
               "the whole window' counts deaths whose killer was in view, unbroken, for all "
               f"{dis['window']} steps before.")  # fmt: skip
        s.table(dissection_rows(dis))
        for png in sorted(analysis.glob("rl_vision_failure*.png")):
            s.figure(png.read_bytes(), png.stem)
    hal = load("rl_vision_hallucinations.json")
    if hal:
        s = report.section("Hallucinations")
        s.text(hallucination_sentence(hal))
        s.table([{"feature": c["feature"], "label": c["label"], "cells": c["cells"],
                  "frames with one": _ci(c["frames"])} for c in hal["counts"].values()])  # fmt: skip
        if hal["check"]["checked"]:
            s.json({k: v for k, v in hal["check"].items() if k != "rows"})
    for edit in edits:
        exp_file = Path(edit) / "analysis" / "edit_experiment.json"
        if not exp_file.exists():
            raise FileNotFoundError(f"{exp_file} is missing; run `policylens edit ... --levels N`.")
        exp = json.loads(exp_file.read_text())
        s = report.section(f"Model editing: {Path(edit).name}")
        s.text(f"{exp['levels']} unseen levels, seed {exp['seed']}, layer {exp['layer']}.")
        if "edit" in exp:
            s.text(edit_description(exp["edit"]))
        if "verdict" in exp:  # judged again from the tables, by today's rule
            s.text(verdict_sentence(edit_verdict(exp, exp["verdict"]["feature"])))
        s.table(edit_rows(exp))
        s.note("Rate ratio to the unedited agent (difference, Newcombe 95% interval):")
        s.table(ratio_rows(exp))
    if sweep is not None:
        diversity_section(report, Path(sweep))
    return report.write(out)
