"""A decision transformer's static report: RTG calibration, the RTG scan, attention by token type,
direct logit attribution's top components and the patching table, drawn from the results of
:mod:`policylens.studies.dt` and :mod:`policylens.studies.dt_analysis` (``policylens dt report``).
Runs no analysis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policylens.report.figures import plt, to_png
from policylens.report.html import Report
from policylens.studies.dt import CalibrationResult
from policylens.studies.dt_analysis import (
    AttentionResult,
    AttributionResult,
    PatchResult,
    ScanResult,
)

KINDS = ("R", "s", "a", "pad")
KIND_COLOURS = {"R": "#b8860b", "s": "#2a5bd7", "a": "#2e8b57", "pad": "#999999"}


@dataclass(frozen=True)
class DTReport:
    """What the page shows; ``patching`` may be the sentence saying why it could not run (no
    history changes its action between the two RTGs)."""

    run: str
    calibration: CalibrationResult
    scan: ScanResult
    attention: AttentionResult
    attribution: AttributionResult
    patching: PatchResult | str


def _ci(x: dict[str, Any], digits: int = 3) -> str:
    return f"{x['mean']:.{digits}f} [{x['ci'][0]:.{digits}f}, {x['ci'][1]:.{digits}f}]"


def _err(means: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.clip([means - lows, highs - means], 0, None))


def calibration_figure(result: CalibrationResult) -> bytes:
    """PNG: the mean achieved return (95% interval) and the success rate at each target RTG."""
    t = np.array([r["target"] for r in result.rows], dtype=float)
    m = np.array([r["return"]["mean"] for r in result.rows], dtype=float)
    lo = np.array([r["return"]["ci"][0] for r in result.rows], dtype=float)
    hi = np.array([r["return"]["ci"][1] for r in result.rows], dtype=float)
    s = np.array([r["success"]["rate"] for r in result.rows], dtype=float)
    fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
    ax.errorbar(t, m, yerr=_err(m, lo, hi), fmt="o-", color="#4c78a8", capsize=3,
                label="mean return (95% CI)")  # fmt: skip
    ax.plot(t, s, "s--", color="#54a24b", ms=4, label="success rate")
    span = [min(t.min(), -1.0), max(t.max(), 1.0)]
    ax.plot(span, span, ":", color="#999", label="return = target")
    ax.set_xlabel("target RTG")
    ax.set_ylabel("achieved")
    ax.legend(fontsize=7)
    ax.set_title(f"RTG calibration ({result.episodes} episodes per target)", fontsize=9)
    return to_png(fig)


def scan_figure(result: ScanResult) -> bytes:
    """PNG: each action's mean probability (95% band) at fixed histories as the RTG varies."""
    rtg = np.array([r["rtg"] for r in result.rows], dtype=float)
    fig, ax = plt.subplots(figsize=(5.6, 3.4), layout="constrained")
    for a in result.actions:
        m = np.array([r["probability"][a]["mean"] for r in result.rows], dtype=float)
        lo = np.array([r["probability"][a]["ci"][0] for r in result.rows], dtype=float)
        hi = np.array([r["probability"][a]["ci"][1] for r in result.rows], dtype=float)
        ax.plot(rtg, m, "o-", ms=3, label=f"P({a})")
        ax.fill_between(rtg, np.where(np.isnan(lo), m, lo), np.where(np.isnan(hi), m, hi),
                        alpha=0.2)  # fmt: skip
    ax.set_xlabel("RTG token (every step of the window)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"RTG scan over {result.histories} histories", fontsize=9)
    return to_png(fig)


def attention_figure(result: AttentionResult) -> bytes:
    """PNG: per head, the total attention from the last state token to R, s, a and pad tokens
    (95% intervals), and the mean attention to each token of each step of the window."""
    heads = result.heads
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    x = np.arange(len(heads))
    width = 0.8 / len(KINDS)
    for i, kind in enumerate(KINDS):
        m = np.array([h["by_type"][kind]["mean"] for h in heads], dtype=float)
        lo = np.array([h["by_type"][kind]["ci"][0] for h in heads], dtype=float)
        hi = np.array([h["by_type"][kind]["ci"][1] for h in heads], dtype=float)
        axes[0].bar(x + (i - 1.5) * width, m, width, yerr=_err(m, lo, hi), capsize=2,
                    color=KIND_COLOURS[kind], label=kind)  # fmt: skip
    axes[0].set_xticks(x, [h["head"] for h in heads])
    axes[0].set_ylabel("attention from the last state token")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7, ncols=4)
    axes[0].set_title("by token type", fontsize=9)
    steps = heads[0]["by_step"]
    cols = [f"{k}{row['offset']}" for row in steps for k in KINDS[:3]]
    grid = np.array([[row[k] for row in h["by_step"] for k in KINDS[:3]] for h in heads])
    im = axes[1].imshow(grid, vmin=0, vmax=max(float(grid.max()), 1e-9), cmap="magma",
                        aspect="auto")  # fmt: skip
    axes[1].set_xticks(range(len(cols)), cols, rotation=60, fontsize=7)
    axes[1].set_yticks(range(len(heads)), [h["head"] for h in heads], fontsize=8)
    axes[1].set_title("by token (offset 0: the current step)", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    fig.suptitle(f"attention at RTG {result.rtg:g} over {result.histories} histories", fontsize=10)
    return to_png(fig)


def attribution_figure(result: AttributionResult, top: int = 10) -> bytes:
    """PNG: the components with the largest mean direct logit attribution (95% intervals)."""
    rows = [r for r in result.components if r["component"] != "embed"][:top][::-1]
    m = np.array([r["mean"] for r in rows], dtype=float)
    lo = np.array([r["ci"][0] for r in rows], dtype=float)
    hi = np.array([r["ci"][1] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(5.6, 0.3 * len(rows) + 1.2), layout="constrained")
    ax.barh(range(len(rows)), m, xerr=_err(m, lo, hi), capsize=2,
            color=["#4c78a8" if v >= 0 else "#e45756" for v in m])  # fmt: skip
    ax.set_yticks(range(len(rows)), [r["component"] for r in rows], fontsize=8)
    ax.axvline(0, color="#333", lw=0.6)
    ax.set_xlabel(f"contribution to the {result.metric}")
    ax.set_title(f"direct logit attribution at RTG {result.rtg:g}", fontsize=9)
    return to_png(fig)


def render_dt_report(report: DTReport, top: int = 10) -> Report:
    """The report's page (a :class:`~policylens.report.html.Report`, not yet written)."""
    page = Report(
        f"Decision transformer: {Path(report.run).name}",
        f"{report.run} at checkpoint step {report.calibration.step}: how the return follows the "
        "target RTG, how the action probabilities move with the RTG token, where the acting "
        "state token attends, which components write the action, and which carry the RTG "
        "(patching). Every figure comes with 95% intervals.",
    )
    cal = report.calibration
    sec = page.section("RTG calibration")
    sec.figure(calibration_figure(cal), "target RTG against achieved return")

    def rho(v: float | None, p: float | None) -> str:
        return "undefined (a constant)" if v is None else f"{v:.3f} (p = {p:.2g})"

    sec.note(f"Spearman's rank correlation of target and achieved return: every episode "
             f"{rho(cal.spearman, cal.spearman_p)}; per-target means "
             f"{rho(cal.spearman_means, cal.spearman_means_p)}. "
             f"{'Greedy' if cal.greedy else 'Sampled'} actions.")  # fmt: skip
    sec.table([{"target RTG": r["target"], "return (95% CI)": _ci(r["return"]),
                "success": r["success"]["rate"], "mean length": r["length"]["mean"]}
               for r in cal.rows])  # fmt: skip

    scan = report.scan
    sec = page.section("RTG scan")
    sec.figure(scan_figure(scan), "action probabilities against the RTG token")
    sec.note(f"{scan.histories} histories of {scan.data}: every RTG token of the window set to "
             "the value; the action read at the last state token.")  # fmt: skip
    sec.table([{"RTG": r["rtg"], **{f"P({a})": _ci(r["probability"][a], 2) for a in scan.actions},
                **{f"argmax {a}": r["argmax_share"][a] for a in scan.actions}}
               for r in scan.rows])  # fmt: skip

    att = report.attention
    sec = page.section("Attention by token type")
    sec.figure(attention_figure(att), "attention by token type per head")
    sec.table([{"head": h["head"], **{k: _ci(h["by_type"][k]) for k in KINDS}}
               for h in att.heads])  # fmt: skip

    dla = report.attribution
    sec = page.section("Direct logit attribution: top components")
    sec.figure(attribution_figure(dla, top), "top components by direct logit attribution")
    sec.note(f"{dla.metric} = {_ci(dla.logit)} over {dla.histories} histories at RTG "
             f"{dla.rtg:g}; the components sum to it (largest error {dla.max_sum_error:.1e}). "
             f"{dla.convention}.")  # fmt: skip
    sec.table([{"component": r["component"], "mean contribution (95% CI)": _ci(r)}
               for r in dla.components[:top]])  # fmt: skip
    if dla.neurons:
        sec.text("Top neurons:")
        sec.table([{"neuron": r["component"], "mean contribution (95% CI)": _ci(r)}
                   for r in dla.neurons])  # fmt: skip

    sec = page.section("Activation patching between a high and a low RTG")
    patch = report.patching
    if isinstance(patch, str):
        sec.note(f"Not available: {patch}")
        return page
    sec.note(f"RTG {patch.high:g} patched into RTG {patch.low:g} (recovered) and back (lost) at "
             f"the last state token, on the {patch.histories} of {patch.candidates} histories "
             f"whose action changes; logit gap {_ci(patch.gap, 2)}.")  # fmt: skip
    sec.table([{"component": r["component"], "recovered (95% CI)": _ci(r["recovered"]),
                "lost (95% CI)": _ci(r["lost"]), "chooses a_high": r["chosen"]}
               for r in patch.rows])  # fmt: skip
    for what, f in (("of embed, heads and MLPs", patch.fewest),
                    ("without the MLPs", patch.fewest_upstream)):  # fmt: skip
        state = "reach" if f["reached"] else "do not reach"
        sec.text(f"Fewest components {what}: {', '.join(f['components'])} {state} "
                 f"{patch.bar:.0%} ({f['search']} search): recovered {_ci(f['recovered'])}.")  # fmt: skip
    return page


def write_dt_report(report: DTReport, out: str | Path, top: int = 10) -> Path:
    """Write the self-contained page to ``out`` (atomically)."""
    return render_dt_report(report, top).write(out)
