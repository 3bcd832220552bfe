"""Figures of linear probes: probe score over training per concept and layer, with controls."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policylens import artifacts
from policylens.lenses.probes import ProbeCurves
from policylens.report.figures import plt, to_png


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
