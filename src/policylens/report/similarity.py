"""Figures and a page of representation similarity: CKA heatmaps (layer x layer at the last
checkpoint, each layer's CKA with its final self over training, and across two runs) and the
TwoNN intrinsic dimension per layer over training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policylens.report.figures import plt, to_png
from policylens.report.html import Report
from policylens.studies.similarity import SimilarityResult


def _short(hook: str) -> str:
    return hook.replace(".hook_", ".").replace("hook_", "")


def _heat(ax, matrix: np.ndarray, rows: list[str], cols: list[str], title: str, fig) -> None:
    im = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=1, cmap="magma", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title, fontsize=9)
    if matrix.size <= 160:
        for (i, j), v in np.ndenumerate(matrix):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                        color="white" if v < 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


def cka_figure(result: SimilarityResult, title: str = "CKA") -> bytes:
    """PNG: layer x layer CKA at the last checkpoint, CKA of each layer with its final self per
    checkpoint, and (with another run) layer x layer across the two runs."""
    names = [_short(h) for h in result.hooks]
    cross = result.cross_layers()
    panels = 3 if cross is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.2), squeeze=False)
    _heat(axes[0, 0], result.layer_matrix(), names, names,
          f"layers at step {result.steps[-1]}", fig)  # fmt: skip
    _heat(axes[0, 1], result.to_final(), names, [str(s) for s in result.steps],
          "each layer vs its final self (column: step)", fig)  # fmt: skip
    if cross is not None:
        other = Path(result.other or "other").name
        _heat(axes[0, 2], cross, names, names, f"rows: this run, columns: {other}", fig)
    estimator = "unbiased" if result.unbiased else "biased"
    kernel = result.kernel if result.kernel == "linear" else f"rbf {result.rbf_fraction:g}"
    fig.suptitle(f"{title} ({kernel} kernel, {estimator} HSIC, {result.samples} observations)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return to_png(fig)


def dimension_figure(result: SimilarityResult, title: str = "TwoNN intrinsic dimension") -> bytes:
    """PNG: the TwoNN dimension of each layer against the training step (another run dashed)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(result.hooks), 1)))
    x = np.array(result.steps, dtype=float)
    for colour, hook in zip(colours, result.hooks, strict=True):
        ax.plot(x, result.dimension.get(hook, [np.nan] * len(x)), marker="o", ms=3, lw=1.3,
                color=colour, label=_short(hook))  # fmt: skip
        if hook in result.other_dimension:
            ax.plot(np.array(result.other_steps, dtype=float), result.other_dimension[hook],
                    ls="--", lw=1, color=colour)  # fmt: skip
    positive = x[x > 0]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0)
    ax.set_xlabel("training step")
    ax.set_ylabel("intrinsic dimension (TwoNN)")
    ax.set_title(
        title + (" (dashed: the other run)" if result.other_dimension else ""), fontsize=10
    )
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return to_png(fig)


def write_similarity_report(result: SimilarityResult, path: str | Path, title: str) -> Path:
    """A self-contained HTML page with both figures and the numbers behind them."""
    report = Report(
        title,
        "Centred kernel alignment between the layers of the run's agent at its checkpoints, all "
        "run on the same observations (collected once with the final agent), and the intrinsic "
        "dimension of each layer's activations.",
    )
    s = report.section("CKA")
    s.figure(cka_figure(result, title), "CKA heatmaps")
    s.note(
        "1 = the same representation up to rotation and scale (linear kernel). The middle panel "
        "shows when each layer settles: the CKA of the layer at each checkpoint with the same "
        "layer at the last one."
    )
    s.table([{"layer": h, **{f"step {st}": float(v) for st, v in zip(result.steps, row,
                                                                     strict=True)}}
             for h, row in zip(result.hooks, result.to_final(), strict=True)])  # fmt: skip
    if result.dimension:
        d = report.section("Intrinsic dimension")
        d.figure(dimension_figure(result), "TwoNN dimension per layer")
        d.note(
            "TwoNN (Facco et al. 2017) with tdhook's fit; duplicates (distance <= 1e-5) skipped."
        )
        d.table([{"layer": h, **{f"step {st}": v for st, v in zip(result.steps, dims,
                                                                  strict=True)}}
                 for h, dims in result.dimension.items()])  # fmt: skip
    return report.write(path)


__all__ = ["cka_figure", "dimension_figure", "write_similarity_report"]
