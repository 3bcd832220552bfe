"""Hallucinations: a feature responding strongly where the labels say its object is not.

Hilton et al. (2020) found the value function reacting to objects that are not there. Here a
feature named after object X (saw, enemy, coin, lava, agent) hallucinates at a cell when its
strength there reaches the median of its strength on real X cells while no X lies within
``margin`` cells (only features aligned with X at correlation >= 0.3 are checked: a weakly
named feature "hallucinates" everywhere). Each one is checked by intervention: the layer's
activation over the cell's neighbourhood is replaced by that of a clean frame (the dataset frame
where the feature is weakest there) and the value change is measured, against the same patch at a
random cell of the same frame where the feature is quiet (the control); the paired difference of
|value change| has a 95% interval.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from policylens.agents.agent import HookedAgent
from policylens.artifacts import FolderLock, write_json
from policylens.rollout import stats
from policylens.runs import Run
from policylens.studies.rl_vision.features import FeatureOptions, fit_features
from policylens.worlds.hazards import hazard_env_kwargs, masks_at

NAMED = ("saw", "enemy", "coin", "lava", "agent")
"""Objects whose features are checked for hallucinations (walls and the HUD are everywhere)."""


def dilate(mask: np.ndarray, margin: int) -> np.ndarray:
    """``mask`` ``(n, h, w)`` grown by ``margin`` cells in each direction (a square)."""
    out = mask.copy()
    h, w = mask.shape[1:]
    for dr in range(-margin, margin + 1):
        for dc in range(-margin, margin + 1):
            src = mask[:, max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
            out[:, max(0, dr) : h - max(0, -dr), max(0, dc) : w - max(0, -dc)] |= src
    return out


@dataclass
class Hallucination:
    frame: int
    feature: int
    label: str
    cell: tuple[int, int]
    strength: float


def find_hallucinations(
    maps: np.ndarray,
    masks: dict[str, np.ndarray],
    labels: list[dict[str, Any]],
    *,
    margin: int = 1,
    min_correlation: float = 0.3,
) -> tuple[list[Hallucination], dict[str, Any]]:
    """Hallucinated cells of the named features (maps ``(n, h, w, k)``, masks at their size).

    Returns the hallucinations (strongest first) and per feature the count, the share of frames
    with one (Wilson interval) and its threshold.
    """
    found: list[Hallucination] = []
    counts: dict[str, Any] = {}
    for i, lab in enumerate(labels):
        name = lab["label"]
        if name not in NAMED or lab["correlation"] < min_correlation:
            continue
        f = maps[..., i]
        real = masks[name]
        if not real.any():
            continue
        threshold = float(np.median(f[real]))
        ghost = (f >= threshold) & (f > 0) & ~dilate(real, margin)
        frames, rows, cols = np.nonzero(ghost)
        found += [
            Hallucination(int(n), i, name, (int(r), int(c)), float(f[n, r, c]))
            for n, r, c in zip(frames, rows, cols, strict=True)
        ]
        counts[f"{i}:{name}"] = {
            "feature": i,
            "label": name,
            "threshold": threshold,
            "cells": int(ghost.sum()),
            "frames": stats.proportion(ghost.any(axis=(1, 2))),
        }
    found.sort(key=lambda h: -h.strength)
    return found, counts


def _patched_value(agent: HookedAgent, obs: np.ndarray, layer: str, clean: torch.Tensor,
                   region: tuple[slice, slice]) -> float:  # fmt: skip
    def patch(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.clone()
        act[:, :, region[0], region[1]] = clean[:, :, region[0], region[1]].to(act.dtype)
        return act

    with torch.no_grad():
        _, value = agent.run_with_hooks(obs[None], fwd_hooks=[(layer, patch)])
    return float(value[0])


def intervention_check(
    agent: HookedAgent,
    obs: np.ndarray,
    maps: np.ndarray,
    layer: str,
    found: list[Hallucination],
    *,
    radius: int = 1,
    limit: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Value change from patching each hallucinated region with a clean frame, and the control."""
    if not found:
        return {"checked": 0}
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        (_, values), cache = agent.run_with_cache(obs, names=[layer])
    acts = cache[layer]
    h, w = maps.shape[1:3]
    rows: list[dict[str, Any]] = []
    for hal in found[:limit]:
        r, c = hal.cell
        region = (
            slice(max(0, r - radius), r + radius + 1),
            slice(max(0, c - radius), c + radius + 1),
        )
        local = maps[:, region[0], region[1], hal.feature].reshape(len(maps), -1).max(axis=1)
        clean = acts[int(np.argmin(local))][None]
        quiet = np.argwhere(maps[hal.frame, :, :, hal.feature] <= np.median(maps[..., hal.feature]))
        cr, cc = (
            quiet[rng.integers(len(quiet))] if len(quiet) else (rng.integers(h), rng.integers(w))
        )
        control = (
            slice(max(0, cr - radius), cr + radius + 1),
            slice(max(0, cc - radius), cc + radius + 1),
        )
        base = float(values[hal.frame])
        o = obs[hal.frame]
        rows.append(
            {
                "frame": hal.frame,
                "feature": hal.feature,
                "label": hal.label,
                "cell": [r, c],
                "value": base,
                "patched": _patched_value(agent, o, layer, clean, region) - base,
                "control": _patched_value(agent, o, layer, clean, control) - base,
            }
        )
    patched = np.abs([x["patched"] for x in rows])
    quiet_change = np.abs([x["control"] for x in rows])
    return {
        "checked": len(rows),
        "abs_value_change": stats.mean(patched),
        "abs_value_change_control": stats.mean(quiet_change),
        "difference": stats.mean(patched - quiet_change),
        "rows": rows,
    }


@dataclass(frozen=True)
class HallucinationOptions:
    """The features searched (frames, NMF) and how many hallucinations are checked by patching."""

    features: FeatureOptions = FeatureOptions()
    limit: int = 64
    """Hallucinations checked by patching (the strongest first)."""

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}.")


@dataclass(frozen=True)
class HallucinationResult:
    """Hallucinations of a run's named features and the patching check."""

    layer: str
    frames: int
    counts: dict[str, Any]
    """Per checked feature (``"<index>:<label>"``): cells, share of frames with one, threshold."""
    check: dict[str, Any]
    """:func:`intervention_check`'s result (``checked``: 0 when nothing was found)."""
    examples: list[dict[str, Any]]
    """The ten strongest hallucinations."""

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "frames": self.frames, "counts": self.counts,
                "check": self.check, "examples": self.examples}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HallucinationResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def run_hallucinations(run: Run, options: HallucinationOptions) -> HallucinationResult:
    """Hallucinations of the run's named features on frames from its unseen levels, each checked
    by patching; saved as ``analysis/rl_vision_hallucinations.json``."""
    env_kwargs = hazard_env_kwargs(run)
    agent = run.load_agent(options.features.step)
    with FolderLock(run.analysis_dir, "analysis folder"):
        hf = fit_features(agent, env_kwargs, options.features)
        maps = hf.nmf.maps
        masks = masks_at(hf.frames.masks, maps.shape[1:3])
        found, counts = find_hallucinations(maps, masks, hf.nmf.labels)
        check = intervention_check(
            agent, hf.frames.obs, maps, hf.layer, found, limit=options.limit,
            seed=options.features.seed,
        )  # fmt: skip
        result = HallucinationResult(
            hf.layer, len(maps), counts, check, [dataclasses.asdict(h) for h in found[:10]]
        )
        write_json(run.analysis_dir / "rl_vision_hallucinations.json", result.to_json())
    return result
