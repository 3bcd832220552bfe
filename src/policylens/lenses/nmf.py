"""NMF of attributions into object-like features (Hilton et al., "Understanding RL Vision", 2020).

Attributions to a conv layer ``(batch, channel, h, w)`` become one row per spatial position
(positions flattened into the batch); positive and negative parts are split into separate
channels (``[max(a, 0), max(-a, 0)]``, ``2 x channel`` non-negative columns) so that a feature can
be "evidence for" or "evidence against" the target. scikit-learn's NMF factors the matrix into
``k`` spatial coefficient maps times ``k`` channel directions; what NMF does not explain is kept
as the *residual* map (Hilton's legend shows it as its own entry). Each feature is then named by
its alignment (Pearson correlation and IoU) with ground-truth object masks (wall, path, mouse,
cheese, corner for the maze), and its dataset examples are the observations where it is
strongest. :func:`value_features` is the whole recipe in one call: IG of the value at a layer,
NMF, each feature named by its best mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from policylens.lenses.attribution import (
    Attribution,
    IntegratedGradients,
    attribute,
    attribution_mode,
    check_layer,
    layer_activation,
)
from policylens.lenses.masks import resize_masks

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent

PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
    "#469990", "#9a6324", "#800000", "#000075",
)  # fmt: skip
"""Distinct feature colours (feature i gets ``PALETTE[i % len]``)."""


@dataclass
class AttributionNMF:
    """``k`` NMF features of split-sign attributions.

    ``maps`` are the features' spatial strengths ``(batch, h, w, k)``; ``components`` the
    channel directions ``(k, 2 * channel)`` (first half: positive attribution, second: negative),
    each of unit norm, with the scale moved into ``maps``.
    """

    maps: np.ndarray
    components: np.ndarray
    residual: np.ndarray
    """Per-position norm of what NMF leaves unexplained ``(batch, h, w)``."""
    explained: float
    """1 - ||X - WH||^2 / ||X||^2 over all positions."""
    channels: int
    seed: int
    model: Any = field(repr=False, default=None)
    labels: list[dict[str, Any]] = field(default_factory=list)
    """Per feature: best ground-truth label and its correlation / IoU (see :func:`label_features`)."""

    @property
    def k(self) -> int:
        return self.components.shape[0]

    @property
    def sign(self) -> np.ndarray:
        """Share of each feature's direction on positive attributions (1 = purely positive)."""
        pos = np.linalg.norm(self.components[:, : self.channels], axis=1) ** 2
        return pos / np.maximum(np.linalg.norm(self.components, axis=1) ** 2, 1e-30)

    @property
    def colours(self) -> list[str]:
        return [PALETTE[i % len(PALETTE)] for i in range(self.k)]

    def names(self) -> list[str]:
        """Each feature's figure label: index, object and alignment once labelled (``3 crate
        0.32``), else ``feature 3``."""
        if not self.labels:
            return [f"feature {i}" for i in range(self.k)]
        return [f"{i} {lab['label']} {lab['correlation']:.2f}" for i, lab in enumerate(self.labels)]

    def directions(self) -> np.ndarray:
        """Signed channel directions ``(k, channel)``: positive part minus negative part."""
        c = self.channels
        return self.components[:, :c] - self.components[:, c:]

    def transform(self, attributions: np.ndarray | Tensor) -> np.ndarray:
        """Feature maps ``(batch, h, w, k)`` of new attributions with the fitted directions."""
        x, shape = split_sign(attributions)
        if x.shape[1] != self.components.shape[1]:
            raise ValueError(
                f"These attributions have {x.shape[1] // 2} channels but the NMF was fitted on "
                f"{self.channels}; attribute to the same layer."
            )
        w = _nnls_rows(x, self.components)
        return w.reshape(*shape, self.k)

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "explained": self.explained,
            "seed": self.seed,
            "features": [
                {"feature": i, "colour": self.colours[i], "positive_share": float(self.sign[i]),
                 "mean_strength": float(self.maps[..., i].mean()), **(self.labels[i] if i < len(self.labels) else {})}
                for i in range(self.k)
            ],
            "residual_mean": float(self.residual.mean()),
        }  # fmt: skip


def split_sign(attributions: np.ndarray | Tensor) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(batch, channel, h, w)`` -> rows ``(batch * h * w, 2 * channel)`` = [a+, a-], and (b, h, w)."""
    a = (
        attributions.detach().cpu().numpy()
        if isinstance(attributions, Tensor)
        else np.asarray(attributions)
    )
    if a.ndim != 4:
        raise ValueError(
            f"NMF needs spatial attributions (batch, channel, h, w), got shape {a.shape}; "
            "attribute to a conv layer."
        )
    b, c, h, w = a.shape
    rows = a.transpose(0, 2, 3, 1).reshape(b * h * w, c).astype(np.float64)
    return np.concatenate([np.maximum(rows, 0), np.maximum(-rows, 0)], axis=1), (b, h, w)


def attribution_nmf(
    attributions: np.ndarray | Tensor,
    k: int = 8,
    seed: int = 0,
    max_iter: int = 400,
) -> AttributionNMF:
    """Factor split-sign attributions ``(batch, channel, h, w)`` into ``k`` features (+ residual).

    Uses scikit-learn's NMF (``init="nndsvda"``, coordinate descent, Frobenius loss), seeded.
    """
    from sklearn.decomposition import NMF

    x, (b, h, w) = split_sign(attributions)
    if not isinstance(k, int) or not 1 <= k <= min(x.shape):
        raise ValueError(
            f"k must be an integer between 1 and {min(x.shape)} (positions, 2 x channels), got {k!r}."
        )
    if not np.any(x):
        raise ValueError(
            "All attributions are zero, so NMF has nothing to factor; check the target."
        )
    from threadpoolctl import threadpool_limits

    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter, tol=1e-4)
    # One BLAS thread: threads only add contention on a (positions x 2C) matrix this thin
    # (measured 2.5-5x faster on a busy 2-core machine).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", category=Warning)  # ConvergenceWarning on easy data
        coef = model.fit_transform(x)  # (N, k)
    comps = model.components_  # (k, 2C)
    norms = np.maximum(np.linalg.norm(comps, axis=1), 1e-30)
    comps = comps / norms[:, None]
    coef = coef * norms[None, :]
    resid = x - coef @ comps
    explained = 1.0 - float((resid**2).sum() / (x**2).sum())
    return AttributionNMF(
        maps=coef.reshape(b, h, w, k),
        components=comps,
        residual=np.linalg.norm(resid, axis=1).reshape(b, h, w),
        explained=explained,
        channels=x.shape[1] // 2,
        seed=seed,
        model=model,
    )


def _nnls_rows(x: np.ndarray, comps: np.ndarray, iters: int = 200) -> np.ndarray:
    """Non-negative least squares ``x ~ w @ comps`` for every row (projected gradient)."""
    gram = comps @ comps.T  # (k, k)
    step = 1.0 / max(float(np.linalg.eigvalsh(gram).max()), 1e-12)
    xc = x @ comps.T  # (N, k)
    w = np.maximum(xc @ np.linalg.pinv(gram), 0)
    for _ in range(iters):
        w = np.maximum(w - step * (w @ gram - xc), 0)
    return w


def label_features(
    maps: np.ndarray, masks: dict[str, np.ndarray], iou_quantile: float = 0.9
) -> list[dict[str, Any]]:
    """Name each feature by its best-aligned ground-truth mask.

    Args:
        maps: feature maps ``(batch, h, w, k)``.
        masks: name -> bool mask ``(batch, h, w)`` at the maps' resolution.
        iou_quantile: a feature "covers" a position where it exceeds this quantile of its
            non-zero values; IoU is computed between that region and each mask.

    Returns per feature: ``label`` (highest correlation), ``correlation``, ``iou`` (of that label),
    ``best_iou_label`` / ``best_iou``, and every mask's correlation under ``correlations``.
    """
    b, h, w, k = maps.shape
    flat = maps.reshape(-1, k)
    out = []
    for i in range(k):
        f = flat[:, i]
        nz = f[f > 0]
        thr = np.quantile(nz, iou_quantile) if len(nz) else np.inf
        on = f >= thr if len(nz) else np.zeros_like(f, dtype=bool)
        corrs, ious = {}, {}
        for name, mask in masks.items():
            m = np.asarray(mask, dtype=bool).reshape(-1)
            if m.shape[0] != f.shape[0]:
                raise ValueError(
                    f"Mask {name!r} has {m.shape[0]} positions but the feature maps have "
                    f"{f.shape[0]}; resize masks to the layer's (batch, h, w)."
                )
            corrs[name] = _corr(f, m.astype(np.float64))
            union = np.logical_or(on, m).sum()
            ious[name] = float(np.logical_and(on, m).sum() / union) if union else 0.0
        best = max(corrs, key=lambda n: corrs[n])
        best_iou = max(ious, key=lambda n: ious[n])
        out.append({
            "label": best, "correlation": corrs[best], "iou": ious[best],
            "best_iou_label": best_iou, "best_iou": ious[best_iou],
            "correlations": corrs,
        })  # fmt: skip
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


# --------------------------------------------------------------------------- the whole recipe
@dataclass(frozen=True)
class ValueFeatureOptions:
    """How :func:`value_features` attributes, factors and names."""

    k: int = 8
    """NMF features."""
    n_steps: int = 10
    """Integration steps from the layer's zero activation (Hilton et al. used 10)."""
    seed: int = 0
    """Seed of the NMF."""
    any_cover: Collection[str] = ()
    """Masks of objects smaller than a layer cell: a cell is on where any part of it is covered,
    not half (:func:`~policylens.lenses.masks.resize_masks`)."""

    def __post_init__(self) -> None:
        for name in ("k", "n_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"ValueFeatureOptions.{name} must be an integer >= 1, got {value!r}."
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(
                f"ValueFeatureOptions.seed must be an integer >= 0, got {self.seed!r}."
            )


@dataclass(frozen=True)
class ValueFeatures:
    """NMF features of the value's integrated gradients at ``layer``, each named by its best
    ground-truth mask (Hilton et al. 2020)."""

    layer: str
    attribution: Attribution
    """IG of the value from the layer's zero activation, ``(n, channel, h, w)``."""
    nmf: AttributionNMF
    """The features; ``nmf.labels`` names them (empty without masks)."""
    masks: dict[str, np.ndarray]
    """The masks the features were named by, at the layer's resolution ``(n, h, w)``."""

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary: the layer, the IG completeness check, the labelled features."""
        check = self.attribution.completeness
        return {
            "layer": self.layer,
            "n_obs": len(self.attribution.attributions),
            "attribution_completeness": check.to_json() if check else None,
            "nmf": self.nmf.to_json(),
        }


Progress = Callable[[float, str], None]
"""``progress(fraction done, what now)``."""


def value_features(
    agent: HookedAgent,
    obs: np.ndarray | Tensor,
    masks: dict[str, np.ndarray],
    layer: str,
    options: ValueFeatureOptions = ValueFeatureOptions(),
    progress: Progress | None = None,
) -> ValueFeatures:
    """IG of the value at conv ``layer`` (zero baseline) → NMF → each feature named by its best
    mask: Hilton et al.'s recipe, for any agent and world.

    ``masks`` are ground truth ``name -> bool (n, H, W)`` for the observations, at observation
    resolution (resized to the layer's with :func:`~policylens.lenses.masks.resize_masks`) or
    already at the layer's; none leaves the features unnamed. With ``progress``, the
    attribution runs in up to 8 parts, each reported.
    """
    check_layer(agent, layer)
    with attribution_mode(agent), torch.no_grad():
        first = layer_activation(agent, agent.preprocess(obs[:1]), layer)
    if first.dim() != 4:
        raise ValueError(
            f"Layer {layer!r} has activations of shape {tuple(first.shape[1:])} without spatial "
            "dimensions; value features need a (channel, h, w) conv layer."
        )
    say = progress or (lambda fraction, message: None)
    ig = IntegratedGradients(n_steps=options.n_steps, baseline="zeros")
    parts = np.array_split(np.arange(len(obs)), min(8, len(obs)) if progress else 1)
    found = []
    for i, rows in enumerate(parts):
        say(0.8 * i / len(parts), "integrated gradients to the value")
        found.append(attribute(agent, obs[rows], ig, "value", layer))
    attr = found[0] if len(found) == 1 else _concat(found)
    say(0.8, "NMF")
    nmf = attribution_nmf(attr.attributions, k=options.k, seed=options.seed)
    small = resize_masks(masks, nmf.maps.shape[1:3], options.any_cover)
    if small:
        nmf.labels = label_features(nmf.maps, small)
    return ValueFeatures(layer, attr, nmf, small)


def _concat(parts: list[Attribution]) -> Attribution:
    """One attribution from those of consecutive parts of a batch (IG: baselines included)."""

    def cat(values: list[Tensor | None]) -> Tensor | None:
        present = [v for v in values if v is not None]
        return torch.cat(present) if len(present) == len(values) else None

    return replace(
        parts[0],
        attributions=torch.cat([p.attributions for p in parts]),
        inputs=torch.cat([p.inputs for p in parts]),
        outputs=torch.cat([p.outputs for p in parts]),
        baselines=cat([p.baselines for p in parts]),
        baseline_outputs=cat([p.baseline_outputs for p in parts]),
    )
