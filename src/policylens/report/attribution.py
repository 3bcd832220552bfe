"""The report's attribution sections: observation, value and policy attributions, NMF features of
value attributions with their dataset examples, and activation-cluster maps (Hilton et al. 2020;
Trim & Grayston 2024), drawn from the maze attribution study's results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policylens.report import features as rf
from policylens.report.html import Report
from policylens.studies.maze.attribution import MazeAttribution


def attribution_rows_figure(
    obs: np.ndarray,
    rows: Sequence[np.ndarray],
    row_titles: Sequence[str],
    col_titles: Sequence[str],
) -> bytes:
    """PNG: the observations on top, then one row per attribution map ``(n, h, w)`` drawn over
    them (red = raises the target, blue = lowers it; one symmetric scale per row)."""
    import matplotlib.pyplot as plt

    from policylens.report.figures import to_png

    n = len(obs)
    fig, axes = plt.subplots(
        len(rows) + 1, n, figsize=(2.1 * n, 2.1 * (len(rows) + 1)), squeeze=False
    )
    imgs = [rf.observation_rgb(o) for o in obs]
    for j in range(n):
        h, w = imgs[j].shape[:2]
        axes[0, j].imshow(imgs[j], extent=(0, w, h, 0))
        axes[0, j].set_title(col_titles[j], fontsize=8)
    for r, maps in enumerate(rows, start=1):
        lim = max(float(np.abs(maps).max()), 1e-12)
        for j in range(n):
            h, w = imgs[j].shape[:2]
            ax = axes[r, j]
            ax.imshow(imgs[j].mean(-1), extent=(0, w, h, 0), cmap="gray", vmin=0.0, vmax=1.0)
            ax.imshow(maps[j], extent=(0, w, h, 0), cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.7)
        axes[r, 0].set_ylabel(row_titles[r - 1], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return to_png(fig)


def _completeness_row(name: str, attr: Any) -> dict[str, Any]:
    c = attr.completeness
    return {
        "attribution": name,
        "n_steps": attr.n_steps,
        "mean f(x) - f(baseline)": c.output_difference_mean,
        "mean sum of attributions": c.sum_attributions_mean,
        "mean |error|": c.mean_abs_error,
        "relative error": c.relative_error,
    }


def attribution_section(report: Report, study: MazeAttribution) -> None:
    """Add the attribution sections (observation, hidden layer, NMF features, clusters) drawn
    from ``study`` (:func:`policylens.studies.maze.attribution.attribution_study`)."""
    obs, show, cols, layer = study.obs, study.shown, study.captions, study.layer
    v_in, p_in, sal = (study.inputs[k] for k in ("value", "action", "saliency"))
    sec = report.section("Attribution: observation")
    sec.figure(
        attribution_rows_figure(
            obs[show],
            [v_in.spatial().numpy(), p_in.spatial().numpy(), sal.spatial().numpy()],
            ["IG -> value", "IG -> log p(greedy action)", "|gradient| -> value"],
            cols,
        ),
        "input attributions",
    )
    sec.note(
        "Integrated gradients from an empty maze (all-zero observation), 50 Gauss-Legendre steps, "
        "summed over the wall/mouse/cheese channels. Red cells raise the target, blue lower it. "
        "Saliency (last row) is the gradient's magnitude, so it is never negative."
    )

    v_layer, p_layer = study.hidden["value"], study.hidden["action"]
    sec = report.section(f"Attribution: hidden layer {layer}")
    sec.figure(
        attribution_rows_figure(
            obs[show],
            [v_layer.spatial()[show].numpy(), p_layer.spatial().numpy()],
            [f"IG {layer} -> value", f"IG {layer} -> log p(action)"],
            cols,
        ),
        "hidden-layer attributions",
    )
    sec.table(
        [
            _completeness_row("input -> value", v_in),
            _completeness_row("input -> log p(action)", p_in),
            _completeness_row(f"{layer} -> value", v_layer),
            _completeness_row(f"{layer} -> log p(action)", p_layer),
        ]
    )
    sec.note(
        "As Hilton et al.: integrated gradients from a zero activation of the layer, 10 steps, "
        "summed over channels; the layer's positions line up with the maze cells. Completeness: "
        "attributions should sum to f(x) - f(baseline); the error of a ReLU network's "
        "piecewise-constant integrand shrinks with more steps."
    )

    nmf = study.nmf
    sec = report.section("NMF features of value attributions")
    sec.figure(
        rf.nmf_figure(obs[show], nmf.maps[show], nmf.colours, cols, names=nmf.names()),
        "NMF feature maps",
    )
    sec.table(
        [
            {
                "feature": f"{i} ({nmf.colours[i]})",
                "sign": "positive" if nmf.sign[i] >= 0.5 else "negative",
                "best label": lab["label"],
                "correlation": lab["correlation"],
                "IoU": lab["iou"],
                "best IoU label": f"{lab['best_iou_label']} ({lab['best_iou']:.2f})",
                "mean strength": float(nmf.maps[..., i].mean()),
            }
            for i, lab in enumerate(nmf.labels)
        ]
    )
    sec.figure(
        rf.examples_figure(
            study.examples,
            [f"{i}: {lab['label']}" for i, lab in enumerate(nmf.labels)],
            nmf.colours,
        ),
        "NMF dataset examples",
    )
    sec.note(
        f"Value attributions at {layer} over {len(obs)} observations, positions flattened into the "
        "batch, positive and negative parts split, factored by NMF into "
        f"{nmf.k} features explaining {nmf.explained:.1%} of the squared attribution (the rest is "
        "the residual). Each feature is labelled by the ground-truth mask it correlates with most "
        "(wall, path, mouse, cheese, top-right corner). Dataset examples: the 5x5 crops around "
        "each feature's strongest cell in the observations where it is strongest."
    )

    sec = report.section(f"Activation clusters at {layer}")
    rows = []
    for method, cl in study.clusters.items():
        sec.figure(
            rf.cluster_figure(obs[show], cl.labels[show], [f"{method}: {c}" for c in cols]),
            f"{method} clusters",
        )
        rows.append(
            {
                "method": method,
                "AMI vs wall/path/mouse/cheese": cl.scores["ami"],
                "purity": cl.scores["purity"],
                "clusters (majority, share)": ", ".join(
                    f"{c['majority']} {c['share']:.2f}" for c in cl.scores["clusters"]
                ),
            }
        )
    sec.table(rows)
    sec.note(
        "Each cell's channel vector (channels scaled to unit variance) is a point; clusters are "
        "painted over the maze. AMI is 0 for chance agreement with the ground-truth categories "
        "and 1 for the same partition; purity is the share of cells in a cluster whose majority "
        "category is their own (walls alone give about 0.55)."
    )
