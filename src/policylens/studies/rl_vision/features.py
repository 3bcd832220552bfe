"""Features of a hazard-world agent's value function, named from the world's ground truth.

Hilton et al. (2020) attribute the value to a middle conv layer with integrated gradients, split
the attributions by sign and factor them with NMF; the features turn out to be objects. Here each
feature is named automatically: its map is correlated with every object mask the world publishes
(saw, enemy, coin, agent, wall, crate, lava, the velocity marker) and takes the best one; that
correlation is its alignment score. Frames come from the agent's own play on unseen levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policylens.agents.agent import HookedAgent
from policylens.artifacts import FolderLock, write_json
from policylens.lenses.attribution import IntegratedGradients, attribute
from policylens.lenses.nmf import AttributionNMF, ValueFeatureOptions, value_features
from policylens.runs import Run
from policylens.worlds.hazards import (
    HAZARDS,
    OBJECTS,
    Frames,
    collect_frames,
    hazard_env_kwargs,
    masks_at,
    studied_layer,
)

GOOD_ALIGNMENT = 0.6
"""The issue's bar: every hazard the agent meets should get a feature aligned at least this well."""


@dataclass
class HazardFeatures:
    """NMF features of value attributions at ``layer``, each named by its best object mask."""

    layer: str
    frames: Frames
    attributions: np.ndarray
    """Integrated gradients of the value at the layer ``(n, channel, h, w)``."""
    nmf: AttributionNMF
    examples: list[list[dict[str, Any]]] = field(default_factory=list)
    """Per feature, its top dataset examples (frame, peak cell, strength)."""

    def feature_for(self, name: str) -> int:
        """The feature best aligned with object ``name``'s mask (a feature index also works)."""
        if name.isdigit():
            i = int(name)
            if not 0 <= i < self.nmf.k:
                raise ValueError(f"feature {i} does not exist: there are {self.nmf.k} features.")
            return i
        if name not in OBJECTS:
            raise ValueError(
                f"feature must be one of {', '.join(OBJECTS)} or an index, not {name!r}."
            )
        return int(np.argmax([lab["correlations"][name] for lab in self.nmf.labels]))

    def direction(self, feature: int) -> np.ndarray:
        """The feature's signed channel direction at the layer ``(channel,)``."""
        return self.nmf.directions()[feature]

    def result(self) -> FeaturesResult:
        """Per-object best alignment, the legend, and whether each hazard met reaches the bar."""
        best = {
            name: max((lab["correlations"][name] for lab in self.nmf.labels), default=float("nan"))
            for name in OBJECTS
        }
        present = {name: bool(self.frames.masks[name].any()) for name in OBJECTS}
        return FeaturesResult(
            layer=self.layer,
            frames=len(self.frames.obs),
            nmf=self.nmf.to_json(),
            examples=self.examples,
            best_alignment=best,
            hazards_met=[h for h in HAZARDS if present[h]],
            hazards_named={h: best[h] >= GOOD_ALIGNMENT for h in HAZARDS if present[h]},
            interpretability_score=interpretability_score(self.nmf.labels),
            attribution_on_objects=attribution_on_objects(
                self.attributions, masks_at(self.frames.masks, self.attributions.shape[2:])
            ),
            fitted=self,
        )


@dataclass(frozen=True)
class FeaturesResult:
    """The named features of a hazard run's value, as ``policylens features`` shows them."""

    layer: str
    frames: int
    nmf: dict[str, Any]
    """The NMF's summary: ``k``, ``explained``, per feature its colour, sign and label."""
    examples: list[list[dict[str, Any]]]
    """Per feature, its top frames (frame, peak cell, strength)."""
    best_alignment: dict[str, float]
    """Per object: the best correlation of any feature's map with its mask."""
    hazards_met: list[str]
    hazards_named: dict[str, bool]
    """Per hazard in the frames: whether a feature is aligned with it at :data:`GOOD_ALIGNMENT`."""
    interpretability_score: float
    attribution_on_objects: dict[str, dict[str, float]]
    fitted: HazardFeatures | None = field(default=None, compare=False, repr=False)
    """The fitted features with their frames (None when read back from JSON)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "frames": self.frames,
            "nmf": self.nmf,
            "examples": self.examples,
            "best_alignment": self.best_alignment,
            "hazards_met": self.hazards_met,
            "hazards_named": self.hazards_named,
            "interpretability_score": self.interpretability_score,
            "attribution_on_objects": self.attribution_on_objects,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeaturesResult:
        """A result as saved (saves from before ``attribution_on_objects`` have none)."""
        saved = {"attribution_on_objects": {}, **data}
        return cls(**{k: saved[k] for k in cls.__dataclass_fields__ if k != "fitted"})


def attribution_on_objects(
    attributions: np.ndarray, masks: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per object: the mean |attribution| of a layer cell on it and off it, and their ratio.

    Where the value looks, whether or not one NMF feature isolates the object: a sparse object
    (a saw covers ~0.2% of cells) can draw several times the attribution of other cells and
    still correlate weakly with every feature map. Objects never present are left out.
    """
    total = np.abs(attributions).sum(1)  # (n, h, w)
    out = {}
    for name, mask in masks.items():
        if mask.any() and not mask.all():
            on, off = float(total[mask].mean()), float(total[~mask].mean())
            out[name] = {"on": on, "off": off, "ratio": on / off if off > 0 else float("inf")}
    return out


def object_direction(agent: HookedAgent, frames: Frames, layer: str, name: str) -> np.ndarray:
    """The channel direction of object ``name`` at ``layer``, from ground truth, not NMF: the mean
    activation over cells on the object minus the mean over the other cells ``(channel,)``.

    What an edit can do at best with one direction: if removing it does not blind the agent to
    the object, no NMF feature aligned with the object would either.
    """
    if name not in OBJECTS:
        raise ValueError(f"feature must be one of {', '.join(OBJECTS)} for an object direction.")
    _, cache = agent.run_with_cache(frames.obs, names=[layer])
    act = cache[layer].float().numpy()
    if act.ndim != 4:
        raise ValueError(f"layer {layer} is not a conv layer; pick one with (channel, h, w).")
    mask = masks_at({name: frames.masks[name]}, act.shape[2:])[name]
    if not mask.any():
        raise ValueError(f"No {name} is in view in the frames; raise n_obs.")
    cells = act.transpose(0, 2, 3, 1)  # (n, h, w, channel)
    return cells[mask].mean(0) - cells[~mask].mean(0)


def interpretability_score(labels: list[dict[str, Any]]) -> float:
    """Mean best alignment (correlation) of the features with an object mask."""
    return float(np.mean([lab["correlation"] for lab in labels])) if labels else float("nan")


def hazard_features(
    agent: HookedAgent,
    frames: Frames,
    *,
    layer: str | None = None,
    k: int = 8,
    n_steps: int = 16,
    seed: int = 0,
    examples: int = 6,
) -> HazardFeatures:
    """Value IG at ``layer`` (default: the study's layer of this network) from a zero baseline,
    split by sign, NMF into ``k`` named features."""
    layer = layer or studied_layer(agent)
    # every object is a tile or less: a layer cell holds it where any part of it is (masks_at)
    options = ValueFeatureOptions(k=k, n_steps=n_steps, seed=seed, any_cover=OBJECTS)
    found = value_features(agent, frames.obs, frames.masks, layer, options)
    nmf = found.nmf
    tops = [top_examples(nmf.maps[..., i], examples) for i in range(nmf.k)]
    return HazardFeatures(layer, frames, found.attribution.numpy(), nmf, tops)


def top_examples(maps: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The ``k`` frames whose map ``(n, h, w)`` peaks highest, with the peak cell and strength."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1)
    best = flat.argmax(1)
    peak = flat[np.arange(n), best]
    order = np.argsort(-peak, kind="stable")[: min(k, n)]
    return [
        {"frame": int(i), "cell": list(divmod(int(best[i]), w)), "strength": float(peak[i])}
        for i in order
    ]


@dataclass(frozen=True)
class FeatureOptions:
    """Which frames the features are fitted on, and how."""

    n_obs: int = 512
    """Frames from the run's unseen levels."""
    nmf: int = 8
    """NMF features."""
    layer: str | None = None
    """The conv layer the value is attributed to (None: the study's layer of the network,
    :data:`~policylens.worlds.hazards.STUDIED_LAYERS`)."""
    n_steps: int = 16
    """Integrated-gradient steps from the layer's zero activation."""
    seed: int = 0
    """Seed of the NMF; the frames' levels are seeded ``20_000 + seed``."""
    step: int | None = None
    """Checkpoint step (None: the latest)."""

    def __post_init__(self) -> None:
        if self.n_obs < 1 or self.nmf < 1 or self.n_steps < 1:
            raise ValueError(
                f"n_obs, nmf and n_steps must be >= 1, got {self.n_obs}, {self.nmf}, "
                f"{self.n_steps}."
            )


def fit_features(
    agent: HookedAgent, env_kwargs: dict[str, Any], options: FeatureOptions
) -> HazardFeatures:
    """The agent's named features on frames of its play under ``env_kwargs``."""
    frames = collect_frames(agent, env_kwargs, options.n_obs, seed=20_000 + options.seed)
    return hazard_features(
        agent, frames, layer=options.layer, k=options.nmf, n_steps=options.n_steps,
        seed=options.seed,
    )  # fmt: skip


def run_features(run: Run, options: FeatureOptions) -> FeaturesResult:
    """The named features of the run's agent on frames from its unseen levels, saved as
    ``analysis/rl_vision_features.json`` (the report reads it)."""
    env_kwargs = hazard_env_kwargs(run)
    agent = run.load_agent(options.step)
    with FolderLock(run.analysis_dir, "analysis folder"):
        result = fit_features(agent, env_kwargs, options).result()
        write_json(run.analysis_dir / "rl_vision_features.json", result.to_json())
    return result


def feature_maps_of(
    agent: HookedAgent, hf: HazardFeatures, obs: np.ndarray, n_steps: int = 16
) -> np.ndarray:
    """The fitted features' maps ``(n, h, w, k)`` on new observations (value IG at the layer,
    from its zero activation, as the features were fitted)."""
    ig = IntegratedGradients(n_steps=n_steps, baseline="zeros")
    return hf.nmf.transform(attribute(agent, obs, ig, "value", hf.layer).numpy())
