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

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from policylens.artifacts import atomic_path, read_json, write_json
from policylens.errors import check_known
from policylens.lenses.attribution import attribution_mode, check_layer, layer_activation

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent

CLUSTER_METHODS = ("kmeans", "single", "average", "ward")


# --------------------------------------------------------------------------- feature maps
def feature_maps(agent: HookedAgent, obs: np.ndarray | Tensor, layer: str) -> np.ndarray:
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
    anchors: np.ndarray | None = None
    """Points ``(M, channel)`` that label new positions by nearness (:func:`assign_positions`):
    k-means' centres, or the positions a linkage clustered; in the scaled space. Not saved."""
    anchor_labels: np.ndarray | None = None
    scale: np.ndarray | None = None
    """Per-channel divisor applied before clustering (``normalize``)."""

    def to_json(self) -> dict[str, Any]:
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
    check_known([method], CLUSTER_METHODS, "clustering")
    if acts.ndim != 4:
        raise ValueError(
            f"Clustering needs spatial activations (N, channel, h, w), got shape {acts.shape}; "
            "use a conv layer."
        )
    n, c, h, w = acts.shape
    points = acts.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
    if not 2 <= k <= len(points):
        raise ValueError(f"k must be between 2 and the number of positions {len(points)}, got {k}.")
    scale = np.maximum(points.std(0), 1e-8) if normalize else np.ones(c)
    points = points / scale
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        found = _cluster(points, n, h, w, k, method, seed, max_points, layer)
    found.scale = scale
    return found


def assign_positions(clusters: Clusters, acts: np.ndarray) -> np.ndarray:
    """Cluster labels ``(N, h, w)`` of new activations ``acts (N, C, h, w)`` of the clustered
    layer (e.g. the frame on screen), by the rule the clustering labels its own positions with:
    the nearest k-means centre, or a linkage's nearest clustered position."""
    if clusters.anchors is None or clusters.anchor_labels is None or clusters.scale is None:
        raise ValueError("These clusters keep no centres (loaded from a file); cluster again.")
    if acts.ndim != 4 or acts.shape[1] != clusters.anchors.shape[1]:
        raise ValueError(
            f"Activations of shape {acts.shape} are not (N, {clusters.anchors.shape[1]}, h, w) "
            "like the clustered layer's."
        )
    n, c, h, w = acts.shape
    points = acts.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64) / clusters.scale
    return _nearest(clusters.anchors, clusters.anchor_labels, points).reshape(n, h, w)


def _nearest(anchors: np.ndarray, anchor_labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The label of each point's nearest anchor."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=1).fit(anchors)
    return anchor_labels[nn.kneighbors(points, return_distance=False)[:, 0]]


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
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(points)
        labels, anchors, anchor_labels = km.labels_, km.cluster_centers_, np.arange(k)
    else:
        rng = np.random.default_rng(seed)
        pick = rng.permutation(len(points))[:max_points]
        sub = AgglomerativeClustering(n_clusters=k, linkage=method).fit_predict(points[pick])
        labels = np.empty(len(points), dtype=np.int64)
        labels[pick] = sub
        rest = np.setdiff1d(np.arange(len(points)), pick)
        if len(rest):
            labels[rest] = _nearest(points[pick], sub, points[rest])
        anchors, anchor_labels = points[pick], sub
    return Clusters(
        labels.reshape(n, h, w).astype(np.int64), method, k, layer, seed,
        anchors=anchors, anchor_labels=anchor_labels.astype(np.int64),
    )  # fmt: skip


def alignment_scores(
    labels: np.ndarray, truth: np.ndarray, names: Sequence[str] = ()
) -> dict[str, Any]:
    """How well cluster labels match ground-truth categories (same shape; ``names[i]`` names
    category ``i``).

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
        counts = np.bincount(cats, minlength=len(names))
        best = int(counts.argmax())
        hits += int(counts[best])
        per.append({
            "cluster": int(cl), "size": int(len(cats)),
            "majority": names[best] if best < len(names) else str(best),
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
    write_json(path.with_suffix(".json"), clusters.to_json())
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


# --------------------------------------------------------------------------- dataset examples
@dataclass
class Example:
    """One dataset example: observation ``index``, strongest layer ``position`` and its value."""

    index: int
    position: tuple[int, int]
    value: float
    crop: np.ndarray
    """The observation cropped around the position (grid ``(planes, s, s)`` or image ``(s, s, 3)``)."""


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
    maps: np.ndarray,
    obs: np.ndarray,
    k: int = 8,
    radius: int | None = None,
    outside_plane: int | None = None,
) -> list[Example]:
    """The ``k`` observations whose strength map ``(N, h, w)`` peaks highest (one per observation),
    each cropped to ``2 * radius + 1`` cells/pixels around the peak (default: a quarter side).

    A crop reaching past a grid observation's edge is zeros there, with plane ``outside_plane``
    set to 1 if given (the world's wall plane: outside a maze is wall)."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1)
    best = flat.argmax(1)
    peak = flat[np.arange(n), best]
    order = np.argsort(-peak, kind="stable")[: min(k, n)]
    if obs.ndim != 4:  # vector observations: nothing to crop, the example is the whole row
        return [Example(int(i), divmod(int(best[i]), w), float(peak[i]), obs[i]) for i in order]
    grid = obs.shape[-1] != 3  # channels-first one-hot planes (maze, hazard world), not HWC RGB
    H, W = (obs.shape[2], obs.shape[3]) if grid else (obs.shape[1], obs.shape[2])
    r = radius if radius is not None else max(1, max(H, W) // 4)
    out = []
    for i in order:
        pr, pc = divmod(int(best[i]), w)
        cr, cc = int((pr + 0.5) * H / h), int((pc + 0.5) * W / w)  # centre in obs coordinates
        crop = _crop(obs[i], cr, cc, r, grid, outside_plane)
        out.append(Example(int(i), (pr, pc), float(peak[i]), crop))
    return out


def _crop(o: np.ndarray, r: int, c: int, radius: int, grid: bool, plane: int | None) -> np.ndarray:
    if grid:
        pad = np.zeros((o.shape[0], o.shape[1] + 2 * radius, o.shape[2] + 2 * radius), o.dtype)
        if plane is not None:
            pad[plane] = 1
        pad[:, radius:-radius, radius:-radius] = o
        return pad[:, r : r + 2 * radius + 1, c : c + 2 * radius + 1]
    pad = np.zeros((o.shape[0] + 2 * radius, o.shape[1] + 2 * radius, 3), o.dtype)
    pad[radius:-radius, radius:-radius] = o
    return pad[r : r + 2 * radius + 1, c : c + 2 * radius + 1]


def dataset_examples(
    agent: HookedAgent,
    obs: np.ndarray,
    layer: str,
    feature: int | np.ndarray,
    k: int = 8,
    radius: int | None = None,
    outside_plane: int | None = None,
) -> list[Example]:
    """Dataset examples of a channel or channel-space direction at ``layer`` (see
    :func:`examples_from_maps`; for NMF features pass ``nmf.maps[..., i]`` to it directly)."""
    strength = feature_strength(feature_maps(agent, obs, layer), feature)
    return examples_from_maps(strength, obs, k, radius, outside_plane)


# --------------------------------------------------------------------------- visualisation
@dataclass
class FeatureVisualization:
    """An input optimised to excite a feature, and the objective along the optimisation."""

    input: np.ndarray  # (channel, h, w) in [0, 1], the network's input space
    history: list[float]
    layer: str
    feature: Any


@dataclass(frozen=True)
class VisualizationOptions:
    """How :func:`visualize_feature` optimises its input."""

    steps: int = 200
    """Gradient-ascent steps (Adam)."""
    lr: float = 0.05
    """Adam's learning rate on the input's logits."""
    jitter: float = 1.0
    """Largest random translation per step, in cells/pixels."""
    scale: tuple[float, float] = (0.95, 1.05)
    """Range of the random scaling per step."""
    tv_weight: float = 0.01
    """Weight of the total-variation penalty."""
    seed: int = 0
    """Seed of the start and of the jitter and scaling."""

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"VisualizationOptions.steps must be >= 1, got {self.steps!r}.")
        if not self.lr > 0:
            raise ValueError(f"VisualizationOptions.lr must be > 0, got {self.lr}.")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(
                f"VisualizationOptions.scale must be (low, high) with 0 < low <= high, got "
                f"{self.scale}."
            )


def visualize_feature(
    agent: HookedAgent,
    layer: str,
    feature: int | np.ndarray | Callable[[Tensor], Tensor],
    options: VisualizationOptions = VisualizationOptions(),
    position: tuple[int, int] | None = None,
) -> FeatureVisualization:
    """Gradient ascent on a (sigmoid-parameterised) input to maximise a feature at ``layer``.

    The objective is the channel / direction at ``position`` (default: mean over positions), or
    ``feature(act) -> scalar`` for anything else. Each step applies a random translation of up to
    ``options.jitter`` cells/pixels and a random scaling in ``options.scale`` (bilinear
    resampling) so the result does not exploit one exact alignment, plus a total-variation
    penalty.

    Where it is weak: Hilton et al. (2020) found this useful only for layers near the input; for
    deeper features of RL agents it produces inputs far from real observations (a grid maze has
    only 0/1 cells), so read dataset examples instead.
    """
    check_layer(agent, layer)
    gen = torch.Generator().manual_seed(options.seed)
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
        opt = torch.optim.Adam([logits], lr=options.lr)
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

        for _ in range(options.steps):
            x = torch.sigmoid(logits)
            s = float(torch.empty(1).uniform_(*options.scale, generator=gen))
            t = (
                (torch.rand(2, generator=gen) * 2 - 1)
                * options.jitter
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
                loss = -obj + options.tv_weight * tv
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
