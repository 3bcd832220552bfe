"""What a layer's channels see: feature maps, activation clustering, dataset examples, visualisation.

- Feature maps: per-channel activation grids of any conv layer, drawn over the observation (the
  maze CNN keeps the 9x9 grid, so channel maps line up cell for cell; IMPALA layers are stretched
  over the image).
- Activation clustering (Trim & Grayston 2024): every spatial position's channel vector is a
  point; k-means or hierarchical clustering (single / average / ward linkage) groups them; the
  clusters are painted over the maze and scored against ground-truth categories (wall, path,
  mouse, cheese) with adjusted mutual information and purity. Labels are saved with the run.
- Dataset examples: the observations where a channel, a direction in channel space, or an NMF
  feature is strongest, cropped around the strongest position.
- Feature visualisation by gradient ascent on the input with jitter and small scalings (Olah et
  al. 2017). Weak for RL agents past the first layers: Hilton et al. (2020) found it useful only
  near the input; deeper objectives give textures off the observation manifold (a binary grid
  maze has no "in-between" cells), so prefer dataset examples there.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from policylens.artifacts import atomic_path, read_json, write_json
from policylens.envs.maze import (
    CHEESE,
    CHEESE_RGB,
    FLOOR_RGB,
    MOUSE,
    MOUSE_RGB,
    WALL,
    WALL_RGB,
    MazeBatch,
    MazeConfig,
    MazeState,
    generate_level,
)
from policylens.lenses.attribution import attribution_mode, check_layer, layer_activation

CATEGORIES = ("wall", "path", "mouse", "cheese")
"""Ground-truth categories of a maze position, in label order."""
CLUSTER_METHODS = ("kmeans", "single", "average", "ward")


# --------------------------------------------------------------------------- maze data
@dataclass
class MazeDataset:
    """Maze observations with the states they show (the ground truth for labels and masks)."""

    obs: np.ndarray  # (N, *obs_shape) uint8
    states: list[MazeState]
    config: MazeConfig

    def __len__(self) -> int:
        return len(self.states)


def maze_dataset(
    config: MazeConfig, n: int, seed: int = 0, agent: Any = None, cheese_anywhere: bool = True
) -> MazeDataset:
    """``n`` maze observations: mouse positions along the agent's own (sampled) trajectories when
    ``agent`` is given, else uniformly random free cells; cheese anywhere by default."""
    if n < 1:
        raise ValueError(f"n must be >= 1 observations, got {n}.")
    cfg = MazeConfig(**{**config.__dict__, "cheese_region": None}) if cheese_anywhere else config
    rng = np.random.default_rng(seed)
    levels = [generate_level(seed * 7919 + i, cfg) for i in range(max(1, -(-n // 6)))]
    states: list[MazeState] = []
    if agent is not None:
        from policylens.studies.maze.behaviour import run_episodes_from_states

        limited = MazeConfig(**{**cfg.__dict__, "max_steps": min(cfg.max_steps, 60)})
        for level, ep in zip(
            levels, run_episodes_from_states(agent, levels, limited, seed=seed), strict=True
        ):
            cells = [p for p in dict.fromkeys(ep.positions) if p != level.cheese]
            for j in rng.permutation(len(cells))[:6]:
                states.append(level.copy(mouse=cells[j]))
    while len(states) < n:
        level = levels[len(states) % len(levels)]
        cells = [p for p in level.free_cells() if p != level.cheese]
        states.append(level.copy(mouse=cells[int(rng.integers(len(cells)))]))
    states = [states[i] for i in rng.permutation(len(states))[:n]]
    batch = MazeBatch(config, 1)
    return MazeDataset(np.stack([batch.observe(s) for s in states]), states, config)


def object_masks(
    states: Sequence[MazeState] | None = None, obs: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Ground-truth masks ``name -> bool (N, world, world)``: wall, path, mouse, cheese, corner.

    From maze states, or from grid observations ``(N, 3, W, W)`` (the corner is then the top-right
    cell of the maze, found from the first row with a free cell).
    """
    if states is not None:
        walls = np.stack([s.walls for s in states])
        n, w = walls.shape[0], walls.shape[1]
        mouse, cheese, corner = (np.zeros_like(walls) for _ in range(3))
        for i, s in enumerate(states):
            mouse[i][s.mouse] = cheese[i][s.cheese] = corner[i][s.corner] = True
    elif obs is not None and obs.ndim == 4 and obs.shape[1] == 3 and obs.shape[2] == obs.shape[3]:
        walls, mouse, cheese = obs[:, WALL] > 0, obs[:, MOUSE] > 0, obs[:, CHEESE] > 0
        n, w = walls.shape[0], walls.shape[1]
        corner = np.zeros_like(walls)
        for i in range(n):
            free_rows = np.nonzero((~walls[i]).any(1))[0]
            if len(free_rows):
                size = w - int(free_rows[0])
                corner[i, w - size, size - 1] = True
    else:
        raise ValueError(
            "object_masks needs maze states or grid observations (N, 3, W, W); pass the states "
            "of image observations."
        )
    path = ~walls & ~mouse & ~cheese
    return {"wall": walls, "path": path, "mouse": mouse, "cheese": cheese, "corner": corner}


def resize_masks(masks: dict[str, np.ndarray], hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Masks at a layer's resolution: a layer cell is on if the mask covers at least half of it
    (any part, for the one-cell objects mouse, cheese and corner)."""
    out = {}
    for name, m in masks.items():
        if m.shape[1:] == tuple(hw):
            out[name] = m
            continue
        frac = F.adaptive_avg_pool2d(torch.as_tensor(m, dtype=torch.float32)[:, None], hw)[:, 0]
        small = name in ("mouse", "cheese", "corner")
        out[name] = (frac > 0).numpy() if small else (frac >= 0.5).numpy()
    return out


def categories(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Category index per position ``(N, h, w)`` (:data:`CATEGORIES`; cheese > mouse > wall > path)."""
    cat = np.full(masks["wall"].shape, CATEGORIES.index("path"), dtype=np.int64)
    for name in ("wall", "mouse", "cheese"):
        cat[masks[name]] = CATEGORIES.index(name)
    return cat


# --------------------------------------------------------------------------- feature maps
def feature_maps(agent: Any, obs: np.ndarray | Tensor, layer: str) -> np.ndarray:
    """Activations ``(N, channel, h, w)`` of conv hook ``layer`` for observations ``obs``."""
    check_layer(agent, layer)
    with attribution_mode(agent), torch.no_grad():
        act = layer_activation(agent, agent.preprocess(obs), layer)
    if act.dim() != 4:
        raise ValueError(
            f"Layer {layer!r} has activations of shape {tuple(act.shape[1:])} without spatial "
            "dimensions; feature maps need a (channel, h, w) conv layer."
        )
    return act.float().contiguous().cpu().numpy()


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

    from policylens.report.figures import to_png

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


# --------------------------------------------------------------------------- clustering
@dataclass
class Clusters:
    """Cluster label of every spatial position ``(N, h, w)`` of a layer."""

    labels: np.ndarray
    method: str
    k: int
    layer: str = ""
    seed: int = 0
    scores: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "method": self.method, "k": self.k, "seed": self.seed,
                "shape": list(self.labels.shape), **self.scores}  # fmt: skip


def cluster_positions(
    acts: np.ndarray,
    k: int = 4,
    method: str = "kmeans",
    seed: int = 0,
    max_points: int = 4000,
    normalize: bool = True,
    layer: str = "",
) -> Clusters:
    """Cluster every position's channel vector of ``acts (N, C, h, w)`` into ``k`` groups.

    ``kmeans`` (scikit-learn, 4 seeded restarts) or agglomerative ``single``/``average``/``ward``
    linkage. Hierarchical clustering is quadratic in the points, so it runs on ``max_points``
    seeded random positions and every other position takes the label of its nearest clustered
    neighbour. ``normalize`` scales each channel to unit standard deviation first.
    """
    if method not in CLUSTER_METHODS:
        close = difflib.get_close_matches(method, CLUSTER_METHODS, n=2)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown clustering {method!r}.{hint} Use one of {', '.join(CLUSTER_METHODS)}."
        )
    if acts.ndim != 4:
        raise ValueError(
            f"Clustering needs spatial activations (N, channel, h, w), got shape {acts.shape}; "
            "use a conv layer."
        )
    n, c, h, w = acts.shape
    points = acts.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
    if not 2 <= k <= len(points):
        raise ValueError(f"k must be between 2 and the number of positions {len(points)}, got {k}.")
    if normalize:
        points = points / np.maximum(points.std(0, keepdims=True), 1e-8)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _cluster(points, n, h, w, k, method, seed, max_points, layer)


def _cluster(
    points: np.ndarray,
    n: int,
    h: int,
    w: int,
    k: int,
    method: str,
    seed: int,
    max_points: int,
    layer: str,
) -> Clusters:
    from sklearn.cluster import AgglomerativeClustering, KMeans

    if method == "kmeans":
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(points)
    else:
        rng = np.random.default_rng(seed)
        pick = rng.permutation(len(points))[:max_points]
        sub = AgglomerativeClustering(n_clusters=k, linkage=method).fit_predict(points[pick])
        labels = np.empty(len(points), dtype=np.int64)
        labels[pick] = sub
        rest = np.setdiff1d(np.arange(len(points)), pick)
        if len(rest):
            from sklearn.neighbors import NearestNeighbors

            nn = NearestNeighbors(n_neighbors=1).fit(points[pick])
            labels[rest] = sub[nn.kneighbors(points[rest], return_distance=False)[:, 0]]
    return Clusters(labels.reshape(n, h, w).astype(np.int64), method, k, layer, seed)


def alignment_scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """How well cluster labels match ground-truth categories (same shape).

    ``ami``: adjusted mutual information (0 = chance, 1 = the same partition); ``purity``: share of
    positions whose cluster's majority category is their own; ``clusters``: per cluster its size,
    majority category and that category's share.
    """
    from sklearn.metrics import adjusted_mutual_info_score

    lab, tru = np.asarray(labels).reshape(-1), np.asarray(truth).reshape(-1)
    if lab.shape != tru.shape:
        raise ValueError(f"labels {labels.shape} and categories {truth.shape} differ in shape.")
    per, hits = [], 0
    for cl in np.unique(lab):
        cats = tru[lab == cl]
        counts = np.bincount(cats, minlength=len(CATEGORIES))
        best = int(counts.argmax())
        hits += int(counts[best])
        per.append({
            "cluster": int(cl), "size": int(len(cats)),
            "majority": CATEGORIES[best] if best < len(CATEGORIES) else str(best),
            "share": float(counts[best] / len(cats)),
        })  # fmt: skip
    return {
        "ami": float(adjusted_mutual_info_score(tru, lab)),
        "purity": float(hits / len(lab)),
        "clusters": per,
    }


def save_clusters(directory: str | Path, clusters: Clusters) -> Path:
    """Write ``<dir>/clusters_<layer>_<method>_k<k>.npz`` (labels) and ``.json`` (scores)."""
    stem = f"clusters_{clusters.layer or 'layer'}_{clusters.method}_k{clusters.k}".replace("/", "_")
    path = Path(directory) / f"{stem}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, labels=clusters.labels)
    write_json(path.with_suffix(".json"), clusters.to_dict())
    return path


def load_clusters(path: str | Path) -> Clusters:
    """Read clusters written by :func:`save_clusters`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No cluster file at {path}; run `policylens features` first.")
    meta = read_json(path.with_suffix(".json"))
    with np.load(path) as data:
        labels = data["labels"]
    scores = {k: v for k, v in meta.items() if k not in ("layer", "method", "k", "seed", "shape")}
    return Clusters(
        labels, meta["method"], int(meta["k"]), meta["layer"], int(meta["seed"]), scores
    )


def cluster_figure(
    obs: np.ndarray, labels: np.ndarray, titles: Sequence[str] | None = None
) -> bytes:
    """PNG: each observation (top row) above its positions coloured by cluster (bottom row)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from policylens.report.figures import to_png

    k = int(labels.max()) + 1
    cmap = ListedColormap(plt.get_cmap("tab10").colors[: max(k, 1)])
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


# --------------------------------------------------------------------------- dataset examples
@dataclass
class Example:
    """One dataset example: observation ``index``, strongest layer ``position`` and its value."""

    index: int
    position: tuple[int, int]
    value: float
    crop: np.ndarray
    """The observation cropped around the position (grid ``(3, s, s)`` or image ``(s, s, 3)``)."""


def feature_strength(acts: np.ndarray, feature: int | np.ndarray) -> np.ndarray:
    """Strength map ``(N, h, w)`` of a channel index or a direction ``(channel,)`` in ``acts``."""
    if isinstance(feature, int | np.integer):
        if not 0 <= feature < acts.shape[1]:
            raise ValueError(
                f"Channel {feature} does not exist: this layer has {acts.shape[1]} channels "
                f"(0..{acts.shape[1] - 1})."
            )
        return acts[:, int(feature)]
    d = np.asarray(feature, dtype=np.float64).reshape(-1)
    if d.shape[0] != acts.shape[1]:
        raise ValueError(
            f"A direction needs one weight per channel ({acts.shape[1]}), got {d.shape[0]}."
        )
    return np.einsum("nchw,c->nhw", acts, d)


def examples_from_maps(
    maps: np.ndarray, obs: np.ndarray, k: int = 8, radius: int | None = None
) -> list[Example]:
    """The ``k`` observations whose strength map ``(N, h, w)`` peaks highest (one per observation),
    each cropped to ``2 * radius + 1`` cells/pixels around the peak (default: a quarter side)."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1)
    best = flat.argmax(1)
    peak = flat[np.arange(n), best]
    order = np.argsort(-peak, kind="stable")[: min(k, n)]
    grid = obs.ndim == 4 and obs.shape[1] == 3 and obs.shape[-1] != 3
    H, W = (obs.shape[2], obs.shape[3]) if grid else (obs.shape[1], obs.shape[2])
    r = radius if radius is not None else max(1, max(H, W) // 4)
    out = []
    for i in order:
        pr, pc = divmod(int(best[i]), w)
        cr, cc = int((pr + 0.5) * H / h), int((pc + 0.5) * W / w)  # centre in obs coordinates
        out.append(Example(int(i), (pr, pc), float(peak[i]), _crop(obs[i], cr, cc, r, grid)))
    return out


def _crop(o: np.ndarray, r: int, c: int, radius: int, grid: bool) -> np.ndarray:
    if grid:
        pad = np.zeros((o.shape[0], o.shape[1] + 2 * radius, o.shape[2] + 2 * radius), o.dtype)
        pad[WALL] = 1  # outside the world is wall
        pad[:, radius:-radius, radius:-radius] = o
        return pad[:, r : r + 2 * radius + 1, c : c + 2 * radius + 1]
    pad = np.zeros((o.shape[0] + 2 * radius, o.shape[1] + 2 * radius, 3), o.dtype)
    pad[radius:-radius, radius:-radius] = o
    return pad[r : r + 2 * radius + 1, c : c + 2 * radius + 1]


def dataset_examples(
    agent: Any,
    obs: np.ndarray,
    layer: str,
    feature: int | np.ndarray,
    k: int = 8,
    radius: int | None = None,
) -> list[Example]:
    """Dataset examples of a channel or channel-space direction at ``layer`` (see
    :func:`examples_from_maps`; for NMF features pass ``nmf.maps[..., i]`` to it directly)."""
    return examples_from_maps(
        feature_strength(feature_maps(agent, obs, layer), feature), obs, k, radius
    )


def examples_figure(
    rows: Sequence[Sequence[Example]], labels: Sequence[str], colours: Sequence[str] | None = None
) -> bytes:
    """PNG: one row per feature, its dataset-example crops left to right."""
    import matplotlib.pyplot as plt

    from policylens.report.figures import to_png

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


# --------------------------------------------------------------------------- visualisation
@dataclass
class FeatureVisualization:
    """An input optimised to excite a feature, and the objective along the optimisation."""

    input: np.ndarray  # (channel, h, w) in [0, 1], the network's input space
    history: list[float]
    layer: str
    feature: Any


def visualize_feature(
    agent: Any,
    layer: str,
    feature: int | np.ndarray | Callable[[Tensor], Tensor],
    steps: int = 200,
    lr: float = 0.05,
    jitter: float = 1.0,
    scale: tuple[float, float] = (0.95, 1.05),
    tv_weight: float = 0.01,
    position: tuple[int, int] | None = None,
    seed: int = 0,
) -> FeatureVisualization:
    """Gradient ascent on a (sigmoid-parameterised) input to maximise a feature at ``layer``.

    The objective is the channel / direction at ``position`` (default: mean over positions), or
    ``feature(act) -> scalar`` for anything else. Each step applies a random translation of up to
    ``jitter`` cells/pixels and a random scaling in ``scale`` (bilinear resampling) so the result
    does not exploit one exact alignment, plus a total-variation penalty.

    Where it is weak: Hilton et al. (2020) found this useful only for layers near the input; for
    deeper features of RL agents it produces inputs far from real observations (a grid maze has
    only 0/1 cells), so read dataset examples instead.
    """
    check_layer(agent, layer)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    gen = torch.Generator().manual_seed(seed)
    with attribution_mode(agent):
        x0 = agent.preprocess(
            torch.zeros(
                (1, *agent.obs_shape),
                dtype=torch.uint8 if agent.obs_kind == "image" else torch.float32,
            )
        )
        if x0.dim() != 4:
            raise ValueError(
                "Feature visualisation needs spatial inputs (channel, h, w); this agent's are flat."
            )
        logits = (
            (0.1 * torch.randn(x0.shape, generator=gen, dtype=torch.float32))
            .to(x0)
            .requires_grad_(True)
        )
        opt = torch.optim.Adam([logits], lr=lr)
        history = []

        def objective(act: Tensor) -> Tensor:
            if callable(feature):
                return feature(act)
            if act.dim() != 4:
                raise ValueError(
                    f"Layer {layer!r} is not spatial; pass feature= as a function of the activation."
                )
            if isinstance(feature, int | np.integer):
                if not 0 <= feature < act.shape[1]:
                    raise ValueError(
                        f"Channel {feature} does not exist: {layer!r} has {act.shape[1]} channels."
                    )
                m = act[:, int(feature)]
            else:
                d = torch.as_tensor(np.asarray(feature), dtype=act.dtype, device=act.device)
                m = torch.einsum("nchw,c->nhw", act, d)
            return m[:, position[0], position[1]].mean() if position else m.mean()

        for _ in range(steps):
            x = torch.sigmoid(logits)
            s = float(torch.empty(1).uniform_(*scale, generator=gen))
            t = (
                (torch.rand(2, generator=gen) * 2 - 1)
                * jitter
                * 2
                / torch.tensor(x.shape[-2:][::-1], dtype=torch.float32)
            )
            theta = torch.tensor(
                [[1 / s, 0, float(t[0])], [0, 1 / s, float(t[1])]], dtype=x.dtype, device=x.device
            )
            grid = F.affine_grid(theta[None], list(x.shape), align_corners=False)
            xt = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
            with torch.enable_grad():
                act = layer_activation(agent, xt, layer)
                obj = objective(act)
                tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
                    x[..., :, 1:] - x[..., :, :-1]
                ).abs().mean()
                loss = -obj + tv_weight * tv
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(obj.detach()))
        with torch.no_grad():
            final = objective(layer_activation(agent, torch.sigmoid(logits), layer))
        history.append(float(final))
    return FeatureVisualization(
        torch.sigmoid(logits)[0].detach().float().cpu().numpy(), history, layer, feature
    )


def json_ready(data: Any) -> Any:
    """Round-trip through JSON (NumPy scalars to Python) for ``--json`` output."""
    return json.loads(
        json.dumps(data, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    )
