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

from policylens.envs.hazards import HazardsConfig
from policylens.lenses.attribution import attribute
from policylens.lenses.nmf import AttributionNMF, attribution_nmf, label_features
from policylens.rollout.engine import Step, policy_for, run_episodes
from policylens.runs import Run
from policylens.studies.hazards.failures import ENV_ID, level_splits

DEFAULT_LAYER = "hook_relu"
"""The recipe network's conv map after its ReLU (16 x 13 x 13), read only by ``fc``."""
OBJECTS = ("saw", "enemy", "coin", "agent", "wall", "crate", "lava", "velocity")
"""Ground-truth masks a feature may be named after."""
HAZARDS = ("saw", "enemy", "lava")
GOOD_ALIGNMENT = 0.6
"""The issue's bar: every hazard the agent meets should get a feature aligned at least this well."""


def hazard_env_kwargs(run: Run) -> dict[str, Any]:
    """The run's unseen levels (or its training distribution when it trained on all levels)."""
    trainer = run.config.get("trainer", {})
    if trainer.get("env_id") != ENV_ID:
        raise ValueError(
            f"{run.path} was trained in {trainer.get('env_id')}, not {ENV_ID}; this study needs a "
            "hazard-world run (`policylens train hazards`)."
        )
    splits = level_splits(trainer.get("env_kwargs", {}))
    return dict(splits.get("unseen", splits["training"]))


def velocity_mask(config: HazardsConfig) -> np.ndarray:
    """Where the velocity marker is painted: two tiles in the top-left corner ``(side, side)``."""
    p = config.pixels_per_tile
    mask = np.zeros((config.obs_side, config.obs_side), dtype=bool)
    if config.paint_vel_info:
        mask[:p, : 2 * p] = True
    return mask


@dataclass
class Frames:
    """Observations from play with their object masks and ground-truth flags, one row per step."""

    obs: np.ndarray
    masks: dict[str, np.ndarray]
    """Name -> bool ``(n, side, side)`` at observation resolution (see :data:`OBJECTS`)."""
    values: np.ndarray


def collect_frames(
    agent: Any,
    env_kwargs: dict[str, Any],
    n_frames: int,
    *,
    episodes: int | None = None,
    every: int = 4,
    seed: int = 20_000,
) -> Frames:
    """``n_frames`` frames drawn at random (seeded) from every ``every``-th step of ``episodes``
    sampled episodes, so that they cover whole levels, not only their first steps.

    ``episodes`` defaults to ``max(64, n_frames // 8)``: an episode of the recipe's agent gives
    about 10-25 frames at ``every=4``, so there are more to draw from than are kept. Fewer frames
    than asked are returned only when the episodes are too short to give them.
    """
    episodes = max(64, n_frames // 8) if episodes is None else episodes
    if n_frames < 1 or episodes < 1 or every < 1:
        raise ValueError("n_frames, episodes and every must be >= 1.")
    config = HazardsConfig.from_kwargs({**env_kwargs, "masks": True})
    hud = velocity_mask(config)
    rows: dict[str, list[Any]] = {"obs": [], "values": []}
    masks: dict[str, list[np.ndarray]] = {name: [] for name in OBJECTS}
    t = [0]

    def keep(step: Step, active: np.ndarray) -> None:
        if t[0] % every == 0:
            for i in np.nonzero(active)[0].tolist():
                rows["obs"].append(step.obs[i])
                rows["values"].append(float(step.values[i]))
                for name in OBJECTS:
                    masks[name].append(hud if name == "velocity" else step.infos[f"mask_{name}"][i])
        t[0] += 1

    run_episodes(
        agent, episodes, ENV_ID, {**env_kwargs, "masks": True}, seed=seed,
        policy=policy_for(agent), max_envs=min(episodes, 256), on_step=keep,
    )  # fmt: skip
    n = len(rows["obs"])
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:n_frames])
    return Frames(
        obs=np.stack(rows["obs"])[pick],
        masks={k: np.stack(v)[pick].astype(bool) for k, v in masks.items()},
        values=np.array(rows["values"])[pick],
    )


def resize_masks(masks: dict[str, np.ndarray], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Masks at a layer's resolution: a cell is on if any observation cell under it is."""
    out = {}
    for name, m in masks.items():
        n, h, w = m.shape
        fh, fw = shape
        if (h, w) == (fh, fw):
            out[name] = m
            continue
        rows = (np.arange(h) * fh) // h
        cols = (np.arange(w) * fw) // w
        small = np.zeros((n, fh, fw), dtype=bool)
        r, c = np.meshgrid(rows, cols, indexing="ij")
        for i in range(n):
            np.logical_or.at(small[i], (r, c), m[i])
        out[name] = small
    return out


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
                raise ValueError(f"--feature {i} does not exist: there are {self.nmf.k} features.")
            return i
        if name not in OBJECTS:
            raise ValueError(
                f"--feature must be one of {', '.join(OBJECTS)} or an index, not {name!r}."
            )
        return int(np.argmax([lab["correlations"][name] for lab in self.nmf.labels]))

    def direction(self, feature: int) -> np.ndarray:
        """The feature's signed channel direction at the layer ``(channel,)``."""
        return self.nmf.directions()[feature]

    def summary(self) -> dict[str, Any]:
        """Per-object best alignment, the legend, and whether each hazard met reaches the bar."""
        best = {
            name: max((lab["correlations"][name] for lab in self.nmf.labels), default=float("nan"))
            for name in OBJECTS
        }
        present = {name: bool(self.frames.masks[name].any()) for name in OBJECTS}
        return {
            "layer": self.layer,
            "frames": len(self.frames.obs),
            "nmf": self.nmf.to_dict(),
            "examples": self.examples,
            "best_alignment": best,
            "hazards_met": [h for h in HAZARDS if present[h]],
            "hazards_named": {h: best[h] >= GOOD_ALIGNMENT for h in HAZARDS if present[h]},
            "interpretability_score": interpretability_score(self.nmf.labels),
            "attribution_on_objects": attribution_on_objects(
                self.attributions, resize_masks(self.frames.masks, self.attributions.shape[2:])
            ),
        }


def named_sentence(summary: dict[str, Any]) -> str:
    """Whether each hazard the agent met got a feature aligned at the bar, in one sentence."""
    named = summary["hazards_named"]
    if not named:
        return "No hazard appeared in the frames."
    verdicts = ", ".join(
        f"{h} {'yes' if ok else 'no'} ({summary['best_alignment'][h]:.2f})"
        for h, ok in named.items()
    )
    return f"Hazards met with a feature aligned >= {GOOD_ALIGNMENT}: {verdicts}."


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


def object_direction(agent: Any, frames: Frames, layer: str, name: str) -> np.ndarray:
    """The channel direction of object ``name`` at ``layer``, from ground truth, not NMF: the mean
    activation over cells on the object minus the mean over the other cells ``(channel,)``.

    What an edit can do at best with one direction: if removing it does not blind the agent to
    the object, no NMF feature aligned with the object would either.
    """
    if name not in OBJECTS:
        raise ValueError(f"--feature must be one of {', '.join(OBJECTS)} for an object direction.")
    _, cache = agent.run_with_cache(frames.obs, names=[layer])
    act = cache[layer].float().numpy()
    if act.ndim != 4:
        raise ValueError(f"--layer {layer} is not a conv layer; pick one with (channel, h, w).")
    mask = resize_masks({name: frames.masks[name]}, act.shape[2:])[name]
    if not mask.any():
        raise ValueError(f"No {name} is in view in the frames; raise --n-obs.")
    cells = act.transpose(0, 2, 3, 1)  # (n, h, w, channel)
    return cells[mask].mean(0) - cells[~mask].mean(0)


def interpretability_score(labels: list[dict[str, Any]]) -> float:
    """Mean best alignment (correlation) of the features with an object mask."""
    return float(np.mean([lab["correlation"] for lab in labels])) if labels else float("nan")


def hazard_features(
    agent: Any,
    frames: Frames,
    *,
    layer: str = DEFAULT_LAYER,
    k: int = 8,
    n_steps: int = 16,
    seed: int = 0,
    examples: int = 6,
) -> HazardFeatures:
    """Value IG at ``layer`` from a zero baseline, split by sign, NMF into ``k`` named features."""
    attr = attribute(agent, frames.obs, "ig", "value", layer, baseline="zeros", n_steps=n_steps)
    a = attr.numpy()
    if a.ndim != 4:
        raise ValueError(f"--layer {layer} is not a conv layer; pick one with (channel, h, w).")
    nmf = attribution_nmf(a, k=k, seed=seed)
    nmf.labels = label_features(nmf.maps, resize_masks(frames.masks, a.shape[2:]))
    tops = [top_examples(nmf.maps[..., i], examples) for i in range(nmf.k)]
    return HazardFeatures(layer, frames, a, nmf, tops)


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


def run_features(
    run: Run,
    *,
    n_frames: int = 512,
    k: int = 8,
    layer: str = DEFAULT_LAYER,
    n_steps: int = 16,
    seed: int = 0,
    step: int | None = None,
) -> tuple[Any, HazardFeatures]:
    """The run's agent and its named features on frames from its unseen levels."""
    agent = run.load_agent(step)
    frames = collect_frames(agent, hazard_env_kwargs(run), n_frames, seed=20_000 + seed)
    return agent, hazard_features(agent, frames, layer=layer, k=k, n_steps=n_steps, seed=seed)


def feature_maps_of(
    agent: Any, hf: HazardFeatures, obs: np.ndarray, n_steps: int = 16
) -> np.ndarray:
    """The fitted features' maps ``(n, h, w, k)`` on new observations (value IG at the layer)."""
    attr = attribute(agent, obs, "ig", "value", hf.layer, baseline="zeros", n_steps=n_steps)
    return hf.nmf.transform(attr.numpy())
