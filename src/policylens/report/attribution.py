"""The report's attribution sections: observation, value and policy attributions, NMF features of
value attributions with their dataset examples, and activation-cluster maps (Hilton et al. 2020;
Trim & Grayston 2024). Cluster labels and NMF results are saved beside the report when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policylens.agents import HookedAgent
from policylens.artifacts import atomic_path, write_json
from policylens.envs.maze import MazeConfig
from policylens.lenses import features as fe
from policylens.lenses.attribution import attribute, default_layer
from policylens.lenses.nmf import attribution_nmf, label_features
from policylens.report import features as rf
from policylens.report.html import Report
from policylens.studies.maze import dataset as md

ACTION_NAMES = ("up", "down", "left", "right")


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
        "mean f(x) - f(baseline)": c["output_difference_mean"],
        "mean sum of attributions": c["sum_attributions_mean"],
        "mean |error|": c["mean_abs_error"],
        "relative error": c["relative_error"],
    }


def attribution_section(
    report: Report,
    agent: HookedAgent,
    config: MazeConfig,
    save_to: Path | None = None,
    n_obs: int = 256,
    layer: str | None = None,
    k: int = 8,
    clusters: int = 4,
    seed: int = 0,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Add the attribution sections to ``report`` for a maze agent; returns the numbers (also
    saved under ``save_to`` when given: attribution.json, the NMF arrays, the clusters).

    Observations: ``n_obs`` test mazes (cheese anywhere) with the mouse on cells the agent itself
    visits. Input attributions use IG from an all-zero (empty) maze, 50 steps; hidden-layer
    attributions follow Hilton et al.: IG from a zero activation at ``layer`` (default: a middle
    residual layer) to the value, 10 steps. NMF (``k`` features) factors those; k-means and
    average-linkage clustering (``clusters`` groups) group the layer's channel vectors.
    """
    layer = layer or default_layer(agent)
    log(f"attribution: {n_obs} observations, layer {layer} ...")
    data = md.maze_dataset(config, n_obs, seed=seed, agent=agent)
    show = np.arange(min(4, len(data)))
    obs = data.obs
    names = ACTION_NAMES if agent.num_actions == 4 else None
    greedy = agent.act(obs[show], greedy=True).numpy()
    cols = [f"obs {i}: {names[a] if names else a}" for i, a in zip(show, greedy, strict=True)]

    # -- observation attributions: value and policy ----------------------------------------
    v_in = attribute(agent, obs[show], "ig", "value", n_steps=50)
    p_in = attribute(agent, obs[show], "ig", "action", n_steps=50, actions=greedy)
    sal = attribute(agent, obs[show], "saliency", "value")
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

    # -- hidden-layer attributions (Hilton et al.) ---------------------------------------------
    v_layer = attribute(agent, obs, "ig", "value", layer=layer, baseline="zeros", n_steps=10)
    p_layer = attribute(agent, obs[show], "ig", "action", layer=layer, n_steps=10, actions=greedy)
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

    # -- NMF features of the value attributions -------------------------------------------------
    log("attribution: NMF ...")
    nmf = attribution_nmf(v_layer.attributions, k=k, seed=seed)
    masks = md.resize_masks(md.object_masks(data.states), nmf.maps.shape[1:3])
    nmf.labels = label_features(nmf.maps, masks)
    sec = report.section("NMF features of value attributions")
    sec.figure(rf.nmf_figure(obs[show], nmf.maps[show], nmf.colours, cols), "NMF feature maps")
    legend = []
    for i, lab in enumerate(nmf.labels):
        legend.append(
            {
                "feature": f"{i} ({nmf.colours[i]})",
                "sign": "positive" if nmf.sign[i] >= 0.5 else "negative",
                "best label": lab["label"],
                "correlation": lab["correlation"],
                "IoU": lab["iou"],
                "best IoU label": f"{lab['best_iou_label']} ({lab['best_iou']:.2f})",
                "mean strength": float(nmf.maps[..., i].mean()),
            }
        )
    sec.table(legend)
    rows = [fe.examples_from_maps(nmf.maps[..., i], obs, 6, radius=2) for i in range(nmf.k)]
    sec.figure(
        rf.examples_figure(
            rows, [f"{i}: {lab['label']}" for i, lab in enumerate(nmf.labels)], nmf.colours
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

    # -- activation clustering ----------------------------------------------------------------
    log("attribution: clustering ...")
    acts = fe.feature_maps(agent, obs, layer)
    truth = md.categories(md.resize_masks(md.object_masks(data.states), acts.shape[2:]))
    sec = report.section(f"Activation clusters at {layer}")
    cluster_rows, cluster_results = [], {}
    for method in ("kmeans", "average"):
        cl = fe.cluster_positions(acts, clusters, method, seed=seed, layer=layer)
        cl.scores = fe.alignment_scores(cl.labels, truth, md.CATEGORIES)
        if save_to is not None:
            fe.save_clusters(save_to, cl)
        cluster_results[method] = cl.to_dict()
        sec.figure(
            rf.cluster_figure(obs[show], cl.labels[show], [f"{method}: {c}" for c in cols]),
            f"{method} clusters",
        )
        cluster_rows.append(
            {
                "method": method,
                "AMI vs wall/path/mouse/cheese": cl.scores["ami"],
                "purity": cl.scores["purity"],
                "clusters (majority, share)": ", ".join(
                    f"{c['majority']} {c['share']:.2f}" for c in cl.scores["clusters"]
                ),
            }
        )
    sec.table(cluster_rows)
    sec.note(
        "Each cell's channel vector (channels scaled to unit variance) is a point; clusters are "
        "painted over the maze. AMI is 0 for chance agreement with the ground-truth categories "
        "and 1 for the same partition; purity is the share of cells in a cluster whose majority "
        "category is their own (walls alone give about 0.55)."
    )

    result = {
        "layer": layer,
        "n_obs": len(obs),
        "completeness": {
            "input_value": v_in.completeness,
            "input_action": p_in.completeness,
            "layer_value": v_layer.completeness,
            "layer_action": p_layer.completeness,
        },
        "nmf": nmf.to_dict(),
        "clusters": cluster_results,
    }
    if save_to is not None:
        write_json(save_to / "attribution.json", result)
        with atomic_path(save_to / "attribution_nmf.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, maps=nmf.maps, components=nmf.components, residual=nmf.residual)
    return result
