"""Figures of what a layer's channels see: feature maps, cluster maps, dataset examples and NMF
feature maps, drawn over the observations."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policylens.envs.maze import CHEESE, CHEESE_RGB, FLOOR_RGB, MOUSE, MOUSE_RGB, WALL, WALL_RGB
from policylens.lenses.features import Example
from policylens.report.figures import to_png


def observation_rgb(obs: np.ndarray) -> np.ndarray:
    """Display image ``(H, W, 3)`` floats in [0, 1] of one grid ``(3, W, W)`` or image observation."""
    obs = np.asarray(obs)
    grid = obs.ndim == 3 and obs.shape[0] == 3 and (obs.shape[-1] != 3 or obs.max() <= 1)
    if grid:
        img = np.broadcast_to(FLOOR_RGB, (*obs.shape[1:], 3)).copy()
        img[obs[WALL] > 0] = WALL_RGB
        img[obs[CHEESE] > 0] = CHEESE_RGB
        img[obs[MOUSE] > 0] = MOUSE_RGB
        return img / 255.0
    if obs.ndim == 3 and obs.shape[-1] == 3:
        return obs.astype(np.float64) / (255.0 if obs.dtype == np.uint8 else 1.0)
    raise ValueError(
        f"Cannot draw an observation of shape {obs.shape}; expected (3, W, W) or (H, W, 3)."
    )


def feature_maps_figure(
    obs: np.ndarray,
    maps: np.ndarray,
    channels: Sequence[int] | None = None,
    cols: int = 8,
    title: str = "",
) -> bytes:
    """PNG: one panel per channel, its activation map (viridis) over a faded observation.

    ``obs`` is one observation, ``maps`` its activations ``(channel, h, w)``; each map is
    stretched over the whole observation, so positions line up with cells/pixels.
    """
    import matplotlib.pyplot as plt

    chans = list(range(maps.shape[0])) if channels is None else list(channels)
    img = observation_rgb(obs)
    h, w = img.shape[:2]
    cols = min(cols, len(chans))
    rows = -(-len(chans) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.6 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c in zip(axes.flat, chans, strict=False):
        m = maps[c]
        ax.imshow(img * 0.5 + 0.5, extent=(0, w, h, 0))
        ax.imshow(m, extent=(0, w, h, 0), cmap="viridis", alpha=0.75, vmin=min(0.0, m.min()))
        ax.set_title(f"ch {c}  max {m.max():.2g}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return to_png(fig)


def cluster_figure(
    obs: np.ndarray, labels: np.ndarray, titles: Sequence[str] | None = None
) -> bytes:
    """PNG: each observation (top row) above its positions coloured by cluster (bottom row)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    k = int(labels.max()) + 1
    tab10 = plt.get_cmap("tab10")
    assert isinstance(tab10, ListedColormap)  # a qualitative map: a list of colours
    cmap = ListedColormap(np.asarray(tab10.colors)[: max(k, 1)])
    n = len(obs)
    fig, axes = plt.subplots(2, n, figsize=(2.1 * n, 4.3), squeeze=False)
    for i in range(n):
        img = observation_rgb(obs[i])
        h, w = img.shape[:2]
        axes[0, i].imshow(img, extent=(0, w, h, 0))
        axes[1, i].imshow(labels[i], extent=(0, w, h, 0), cmap=cmap, vmin=-0.5, vmax=k - 0.5)
        if titles:
            axes[0, i].set_title(titles[i], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(j)) for j in range(k)]
    fig.legend(handles, [f"cluster {j}" for j in range(k)], loc="lower center", ncol=min(k, 8),
               fontsize=7, frameon=False, bbox_to_anchor=(0.5, -0.04))  # fmt: skip
    return to_png(fig)


def examples_figure(
    rows: Sequence[Sequence[Example]], labels: Sequence[str], colours: Sequence[str] | None = None
) -> bytes:
    """PNG: one row per feature, its dataset-example crops left to right."""
    import matplotlib.pyplot as plt

    cols = max(1, max(len(r) for r in rows))
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(1.1 * cols + 1.6, 1.15 * len(rows)), squeeze=False
    )
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_color(colours[i] if colours else "#888")
                s.set_linewidth(2)
            if j < len(row):
                img = observation_rgb(row[j].crop)
                ax.imshow(img, interpolation="nearest")
                hh, ww = img.shape[:2]
                ax.add_patch(plt.Rectangle((ww / 2 - 0.5 - ww / 10, hh / 2 - 0.5 - hh / 10), ww / 5, hh / 5,
                                           fill=False, color="red", lw=1))  # fmt: skip
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    return to_png(fig)


def nmf_figure(
    obs: np.ndarray,
    maps: np.ndarray,
    colours: Sequence[str],
    titles: Sequence[str] | None = None,
    scale: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> bytes:
    """PNG: observations (top row), all features mixed (second row, Hilton's view: each cell
    takes the strength-weighted mix of the feature colours), then one row per feature alone,
    labelled ``names[i]`` (default ``feature i``).

    ``maps``: feature maps ``(n, h, w, k)`` of the ``n`` observations, stretched over them. A
    feature's opacity is its strength over ``scale[i]`` (default: its 99th percentile in ``maps``).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    n, fh, fw, k = maps.shape
    if scale is None:
        scale = np.array([max(np.quantile(maps[..., i], 0.99), 1e-12) for i in range(k)])
    strength = np.clip(maps / scale, 0, 1)  # (n, h, w, k)
    rgb = np.array([to_rgb(c) for c in colours[:k]])  # (k, 3)
    fig, axes = plt.subplots(k + 2, n, figsize=(1.7 * n, 1.7 * (k + 2)), squeeze=False)
    for j in range(n):
        img = observation_rgb(obs[j])
        h, w = img.shape[:2]
        grey = np.repeat(img.mean(-1, keepdims=True) * 0.5 + 0.5, 3, -1)
        axes[0, j].imshow(img, extent=(0, w, h, 0))
        if titles:
            axes[0, j].set_title(titles[j], fontsize=8)
        s = strength[j]
        mix = np.zeros((fh, fw, 4))
        mix[..., :3] = (s @ rgb) / np.maximum(s.sum(-1, keepdims=True), 1e-12)
        mix[..., 3] = s.max(-1) * 0.9
        axes[1, j].imshow(grey, extent=(0, w, h, 0))
        axes[1, j].imshow(mix, extent=(0, w, h, 0), interpolation="nearest")
        for i in range(k):
            one = np.zeros((fh, fw, 4))
            one[..., :3] = rgb[i]
            one[..., 3] = s[..., i] * 0.9
            axes[i + 2, j].imshow(grey, extent=(0, w, h, 0))
            axes[i + 2, j].imshow(one, extent=(0, w, h, 0), interpolation="nearest")
    axes[1, 0].set_ylabel("all features", fontsize=8)
    for i in range(k):
        name = names[i] if names else f"feature {i}"
        axes[i + 2, 0].set_ylabel(name, fontsize=8, color=colours[i])
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return to_png(fig)
