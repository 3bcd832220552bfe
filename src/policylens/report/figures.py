"""Figures shared by the report and the CLI (matplotlib, Agg backend, PNG bytes out)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from policylens.envs.maze import MazeState, human_view  # noqa: E402

if TYPE_CHECKING:
    from policylens.studies.maze.vector_fields import VectorField

Cell = tuple[int, int]


def to_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def maze_image(
    ax: Any,
    state: MazeState,
    trajectory: list[Cell] | None = None,
    title: str | None = None,
    cell_px: int = 24,
) -> None:
    """Draw a maze (world coordinates: cell (r, c) spans x in [c, c+1], y in [r, r+1])."""
    img = human_view(state, cell_px=cell_px, trajectory=trajectory)
    w = state.world_size
    ax.imshow(img, extent=(0, w, w, 0))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def trajectories_figure(
    states: Sequence[MazeState], trajectories: Sequence[list[Cell]], titles: Sequence[str]
) -> bytes:
    """Mazes in rows of up to four, each with the mouse's path drawn."""
    n = len(states)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s, t, title in zip(axes.flat, states, trajectories, titles, strict=False):
        ax.axis("on")
        maze_image(ax, s, t, title)
    return to_png(fig)


def vector_field_figure(panels: Sequence[tuple[MazeState, VectorField, str, str]]) -> bytes:
    """panels: [(state, VectorField, title, colour)]; arrows show the expected move at each cell."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3), squeeze=False)
    for ax, (state, field, title, colour) in zip(axes[0], panels, strict=True):
        maze_image(ax, state.copy(mouse=state.start), None, title)
        cells = np.array(field.cells, dtype=float)
        arrows = field.arrows
        ax.quiver(
            cells[:, 1] + 0.5, cells[:, 0] + 0.5, arrows[:, 0], arrows[:, 1],
            color=colour, angles="xy", scale_units="xy", scale=1.6, width=0.012,
        )  # fmt: skip
    return to_png(fig)


def heatmap_figure(counts: np.ndarray, title: str) -> bytes:
    """Counts per cell on a log colour scale."""
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    im = ax.imshow(np.log1p(counts), cmap="magma")
    fig.colorbar(im, ax=ax, label="log(1 + visits)")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return to_png(fig)


def bars_figure(
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    title: str,
    ylabel: str,
) -> bytes:
    """Bars with 95% interval whiskers."""
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(labels)), 3))
    v = np.asarray(values, dtype=float)
    # clipped: a rate and its interval's end can differ by a rounding error's sign
    err = np.array([v - np.asarray(lows, dtype=float), np.asarray(highs, dtype=float) - v])
    err = np.clip(err, 0.0, None)
    ax.bar(range(len(labels)), v, yerr=err, capsize=4, color="#4c78a8")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1.0, float(np.nanmax(highs)) * 1.05))
    ax.set_title(title, fontsize=9)
    return to_png(fig)


def curves_figure(rows: Sequence[dict[str, float]], keys: Sequence[str], title: str) -> bytes:
    """Training curves from metrics rows (x = environment steps)."""
    fig, axes = plt.subplots(
        1, len(keys), figsize=(3.3 * len(keys), 3.0), squeeze=False, layout="constrained"
    )  # constrained: the title clears the panel titles
    steps = np.array([r["step"] for r in rows])
    for ax, key in zip(axes[0], keys, strict=True):
        y = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        ok = np.isfinite(y)
        ax.plot(steps[ok], y[ok], lw=1)
        ax.set_xlabel("environment steps")
        ax.set_title(key, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


def interval_panels_figure(
    labels: Sequence[str],
    panels: Sequence[
        tuple[str, Sequence[float], Sequence[float], Sequence[float], Sequence[Sequence[float]]]
    ],
    xlabel: str,
) -> bytes:
    """One panel per quantity: the mean at each label with its 95% interval, and the values it
    was averaged from as dots. ``panels``: ``[(title, means, lows, highs, values per label)]``."""
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    x = np.arange(len(labels))
    for ax, (title, means, lows, highs, values) in zip(axes.flat, panels, strict=False):
        m = np.asarray(means, dtype=float)
        # no interval (one seed) draws no whisker; clipped: an end can differ from m by rounding
        err = np.nan_to_num(
            np.clip([m - np.asarray(lows, float), np.asarray(highs, float) - m], 0, None)
        )
        ax.errorbar(x, m, yerr=err, fmt="o", color="#4c78a8", capsize=4, zorder=2)
        for i, vs in enumerate(values):
            ax.scatter(np.full(len(vs), i) + 0.12, vs, s=9, color="#999", zorder=1)
        ax.set_xticks(x)
        ax.set_xticklabels(
            labels,
            rotation=20 if len(labels) > 3 else 0,
            ha="right" if len(labels) > 3 else "center",
            fontsize=8,
        )
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(title, fontsize=9)
    return to_png(fig)
