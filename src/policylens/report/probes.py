"""Figures of linear probes: probe score over training per concept and layer, with controls, and
one layer x checkpoint heatmap per concept over several runs (what, when, where)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policylens import artifacts
from policylens.lenses.probes import ProbeCurves
from policylens.report.figures import plt, to_png
from policylens.studies.probes import ConceptTimeline


def write_probe_curves(curves: ProbeCurves, path: str | Path, title: str) -> Path:
    """Draw ``curves`` into the PNG file ``path`` (atomically)."""
    path = Path(path)
    artifacts.write_bytes(path, probe_curves_figure(curves, title))
    return path


def probe_curves_figure(curves: ProbeCurves, title: str = "linear probes over training") -> bytes:
    """PNG: one panel per concept, score vs training step per layer, controls dashed/dotted."""
    n = len(curves.labels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    x = np.array(curves.steps, dtype=float)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(curves.hooks), 1)))
    for ax, label in zip(axes.flat, curves.labels, strict=False):
        for colour, hook in zip(colours, curves.hooks, strict=True):
            ax.plot(x, curves.scores[label][hook], marker="o", ms=3, lw=1.4, color=colour,
                    label=hook)  # fmt: skip
            c = curves.controls[label][hook]
            if "random_init" in c:
                ax.axhline(c["random_init"], color=colour, ls="--", lw=0.9, alpha=0.8)
            if "shuffled" in c:
                ax.axhline(c["shuffled"], color=colour, ls=":", lw=0.9, alpha=0.8)
        ax.axhline(curves.baselines[label], color="grey", lw=0.8)
        positive = x[x > 0]
        ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0)
        ax.set_xlim(left=0, right=float(x.max()) * 1.15 if x.max() > 0 else 1.0)
        ax.set_xlabel("training step")
        ax.set_ylabel(curves.metrics[label].replace("_", " "))
        ax.set_title(label, fontsize=10)
    handles, names = axes.flat[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [
        Line2D([], [], color="k", ls="--", lw=0.9),
        Line2D([], [], color="k", ls=":", lw=0.9),
        Line2D([], [], color="grey", lw=0.8),
    ]
    names += ["random-init net (same probe)", "shuffled labels", "constant guess"]
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.04 * (len(names) > 4)))  # fmt: skip
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return to_png(fig)


def concept_heatmaps_figure(
    timeline: ConceptTimeline, title: str = "concepts over training", penalty: str = "l2"
) -> bytes:
    """PNG: one heatmap per concept, layer x checkpoint, of the probe score (mean over the runs),
    the best layer boxed and the median emergence step marked (dashed: the change point)."""
    curves = timeline.curves
    first = curves[0]
    labels, hooks, steps = first.labels, first.hooks, first.steps
    summary = timeline.summary[penalty]
    n = len(labels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols, 0.45 * len(hooks) * rows + 1.6 * rows), squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels, strict=False):
        grid = np.mean(
            [[(c.l1_scores if penalty == "l1" else c.scores)[label][h] for h in hooks]
             for c in curves], axis=0,
        )  # fmt: skip
        s = summary[label]
        lo = s["constant_guess"]  # at or below the constant guess: the darkest colour
        im = ax.imshow(np.maximum(grid, lo), aspect="auto", cmap="viridis", vmin=lo,
                       vmax=max(float(grid.max()), lo + 1e-6))  # fmt: skip
        ax.set_yticks(range(len(hooks)), hooks, fontsize=7)
        ticks = sorted({round(i) for i in np.linspace(0, len(steps) - 1, min(len(steps), 7))})
        ax.set_xticks(ticks, [f"{steps[i]:,}" for i in ticks], rotation=45, ha="right", fontsize=7)
        best = hooks.index(s["best_layer"])
        ax.add_patch(plt.Rectangle((-0.5, best - 0.5), len(steps), 1, fill=False, ec="red", lw=1.2))
        emerged = s["emergence_step"]["median"]
        x = float(np.interp(emerged, steps, range(len(steps))))
        ax.axvline(x, color="white", lw=1.2)
        change = s["change_point_beyond_paper"]["step"]["median"]
        ax.axvline(float(np.interp(change, steps, range(len(steps)))) - 0.5, color="orange",
                   lw=1.0, ls="--")  # fmt: skip
        ax.set_title(f"{label} ({s['metric'].replace('_', ' ')})", fontsize=9)
        ax.set_xlabel("training step (checkpoint)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    fig.suptitle(
        f"{title}: {penalty.upper()} probes, mean of {len(curves)} run(s); red box: best layer, "
        "white: median emergence (90% of final), orange dashed: largest jump (beyond the paper); "
        "scores at or below the constant guess share the darkest colour",
        fontsize=9,
    )
    fig.tight_layout()
    return to_png(fig)


def write_concept_heatmaps(
    timeline: ConceptTimeline, path: str | Path, title: str, penalty: str = "l2"
) -> Path:
    """Draw :func:`concept_heatmaps_figure` into the PNG file ``path`` (atomically)."""
    path = Path(path)
    artifacts.write_bytes(path, concept_heatmaps_figure(timeline, title, penalty))
    return path
