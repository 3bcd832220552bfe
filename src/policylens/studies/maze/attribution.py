"""Attribution of a maze agent, as Hilton et al. (2020) did for CoinRun: integrated gradients to
the observation and to a hidden layer, NMF of the layer's value attributions into features named
by the maze objects they cover, and clusters of the layer's channel vectors scored against the
ground truth (Trim & Grayston 2024). Returns data; :mod:`policylens.report.attribution` draws it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policylens.agents.agent import HookedAgent
from policylens.artifacts import atomic_path, write_json
from policylens.envs.maze import ACTION_NAMES, WALL, MazeConfig
from policylens.lenses import features as fe
from policylens.lenses.attribution import (
    Attribution,
    IntegratedGradients,
    Saliency,
    attribute,
    default_layer,
)
from policylens.lenses.nmf import AttributionNMF, ValueFeatureOptions, value_features
from policylens.worlds import maze as md

CLUSTERING = ("kmeans", "average")


@dataclass(frozen=True)
class MazeAttribution:
    """Everything the report's attribution sections show, for one agent and one dataset."""

    layer: str
    obs: np.ndarray
    """All observations ``(n, *obs_shape)``; the first ``len(shown)`` are drawn."""
    shown: np.ndarray
    greedy: np.ndarray
    """The greedy action on each shown observation."""
    captions: list[str]
    inputs: dict[str, Attribution]
    """Shown observations: IG to the value, IG to log p(greedy action), saliency of the value."""
    hidden: dict[str, Attribution]
    """IG from ``layer`` to the value (all observations) and to log p(action) (shown ones)."""
    nmf: AttributionNMF
    examples: list[list[fe.Example]]
    """Per NMF feature, its strongest crops."""
    clusters: dict[str, fe.Clusters]

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "n_obs": len(self.obs),
            "completeness": {
                name: None if (check := attr.completeness) is None else check.to_json()
                for name, attr in (
                    ("input_value", self.inputs["value"]),
                    ("input_action", self.inputs["action"]),
                    ("layer_value", self.hidden["value"]),
                    ("layer_action", self.hidden["action"]),
                )
            },
            "nmf": self.nmf.to_json(),
            "clusters": {m: c.to_json() for m, c in self.clusters.items()},
        }

    def save(self, folder: Path) -> None:
        """attribution.json, the NMF arrays and the cluster labels under ``folder``."""
        write_json(folder / "attribution.json", self.to_json())
        with atomic_path(folder / "attribution_nmf.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f, maps=self.nmf.maps, components=self.nmf.components, residual=self.nmf.residual
            )
        for c in self.clusters.values():
            fe.save_clusters(folder, c)


def attribution_study(
    agent: HookedAgent,
    config: MazeConfig,
    n_obs: int = 256,
    layer: str | None = None,
    k: int = 8,
    clusters: int = 4,
    seed: int = 0,
    log: Callable[[str], Any] = print,
) -> MazeAttribution:
    """Attributions, NMF features and clusters of ``agent`` on ``n_obs`` maze observations.

    Observations: test mazes (cheese anywhere) with the mouse on cells the agent itself visits.
    Input attributions use IG from an all-zero (empty) maze, 50 steps; hidden-layer attributions
    follow Hilton et al.: IG from a zero activation at ``layer`` (default: a middle residual
    layer) to the value, 10 steps. NMF (``k`` features) factors those; k-means and
    average-linkage clustering (``clusters`` groups) group the layer's channel vectors.
    """
    layer = layer or default_layer(agent)
    log(f"attribution: {n_obs} observations, layer {layer} ...")
    data = md.maze_dataset(config, n_obs, seed=seed, agent=agent)
    obs, shown = data.obs, np.arange(min(4, len(data)))
    names = ACTION_NAMES if agent.num_actions == 4 else None
    greedy = agent.act(obs[shown], greedy=True).numpy()
    captions = [f"obs {i}: {names[a] if names else a}" for i, a in zip(shown, greedy, strict=True)]
    ig50, ig10 = IntegratedGradients(n_steps=50), IntegratedGradients(n_steps=10)
    inputs = {
        "value": attribute(agent, obs[shown], ig50, "value"),
        "action": attribute(agent, obs[shown], ig50, "action", actions=greedy),
        "saliency": attribute(agent, obs[shown], Saliency(), "value"),
    }
    log("attribution: value IG at the layer and NMF ...")
    options = ValueFeatureOptions(k=k, n_steps=10, seed=seed, any_cover=md.ONE_CELL)
    features = value_features(agent, obs, md.object_masks(data.states), layer, options)
    hidden = {
        "value": features.attribution,
        "action": attribute(agent, obs[shown], ig10, "action", layer, actions=greedy),
    }
    nmf = features.nmf
    examples = [
        fe.examples_from_maps(nmf.maps[..., i], obs, 6, radius=2, outside_plane=WALL)
        for i in range(nmf.k)
    ]
    log("attribution: clustering ...")
    acts = fe.feature_maps(agent, obs, layer)
    truth = md.categories(features.masks)  # the layer's resolution, as the clusters
    found = {}
    for method in CLUSTERING:
        cl = fe.cluster_positions(acts, clusters, method, seed=seed, layer=layer)
        cl.scores = fe.alignment_scores(cl.labels, truth, md.CATEGORIES)
        found[method] = cl
    return MazeAttribution(
        layer, obs, shown, greedy, captions, inputs, hidden, nmf, examples, found
    )
