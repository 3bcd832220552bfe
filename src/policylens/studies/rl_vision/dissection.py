"""Failure dissection: for each failed level, what the agent saw in its last steps, and why it died.

Hilton et al. (2020) dissected CoinRun failures frame by frame. Here the last ``window`` steps of
every failed episode are kept (observation, value, advantage, the world's in-view and occluded flags of every
saw and enemy, whether lava was in view), and each death by a hazard is classified from those
labels: the hazard that killed (the one of its kind nearest the agent at death) was

- **seen and ignored**: in view and not occluded in at least one of the last steps;
- **occluded**: in view in some of them but covered (an enemy over a saw, ...) in all of those;
- **not in view**: outside the observation in all of them.

Lava is a tile and cannot be occluded: seen if any lava was in view. Falls and timeouts have no
hazard to see and are counted as such. With an agent-centred view the killer is in view at the
moment of death by construction, so the dissection also counts how long before death it was in
view without a break (``visible_steps``, at most ``window``): a hazard in view for the whole
window left the agent time to react. Occlusion does not break the count: at contact the agent's
own box covers the killer.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from policylens.agents.agent import HookedAgent
from policylens.artifacts import FolderLock, write_json
from policylens.rollout import stats
from policylens.rollout.engine import EpisodeOptions, Labels, Step, policy_for, run_episodes
from policylens.runs import Run
from policylens.studies.rl_vision.features import FeatureOptions, feature_maps_of, fit_features
from policylens.train.ppo import gae
from policylens.worlds.hazards import ENV_ID, hazard_env_kwargs

MAX_LEVELS = 1024
"""Levels dissected at once: one batch of envs, each keeping its last steps in memory."""
CLASSES = ("seen and ignored", "occluded", "not in view")
KEEP = ("saw_pos", "saw_valid", "saw_in_view", "saw_occluded", "enemy_pos", "enemy_valid",
        "enemy_in_view", "enemy_occluded", "agent_pos", "mask_lava")  # fmt: skip


@dataclass
class FailedEpisode:
    """The last steps of one failed level (oldest first) and how it ended."""

    episode: int
    cause: str
    obs: np.ndarray
    values: np.ndarray
    advantages: np.ndarray
    """GAE advantages of those steps, as PPO computes them (the episode's end included)."""
    flags: dict[str, np.ndarray]
    """Per step: the labels in :data:`KEEP` (arrays over saw / enemy slots, or the lava mask)."""
    final_agent: np.ndarray
    """The agent's position at death."""


def killer_flags(ep: FailedEpisode) -> dict[str, np.ndarray] | None:
    """Per step ``in_view`` and ``occluded`` of the hazard that killed (None: no hazard did)."""
    if ep.cause == "lava":
        seen = np.array([m.any() for m in ep.flags["mask_lava"]])
        return {"in_view": seen, "occluded": np.zeros_like(seen)}
    if ep.cause not in ("saw", "enemy"):
        return None
    pos = ep.flags[f"{ep.cause}_pos"][-1]
    valid = ep.flags[f"{ep.cause}_valid"][-1]
    dist = np.where(valid, np.linalg.norm(pos - ep.final_agent, axis=-1), np.inf)
    slot = int(np.argmin(dist))
    return {
        "in_view": np.array([f[slot] for f in ep.flags[f"{ep.cause}_in_view"]], dtype=bool),
        "occluded": np.array([f[slot] for f in ep.flags[f"{ep.cause}_occluded"]], dtype=bool),
    }


def classify(in_view: np.ndarray, occluded: np.ndarray) -> str:
    """One of :data:`CLASSES` from the killer's per-step flags over the last steps."""
    in_view, occluded = np.asarray(in_view, bool), np.asarray(occluded, bool)
    if (in_view & ~occluded).any():
        return "seen and ignored"
    return "occluded" if in_view.any() else "not in view"


def visible_steps(in_view: np.ndarray) -> int:
    """How many of the last steps, counted back from death, had the killer in view unbroken."""
    seen = np.asarray(in_view, bool)
    gaps = np.nonzero(~seen[::-1])[0]
    return int(gaps[0]) if len(gaps) else len(seen)


def failed_episodes(
    agent: HookedAgent,
    env_kwargs: dict[str, Any],
    levels: int,
    *,
    window: int = 8,
    seed: int = 10_000,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> tuple[int, list[FailedEpisode]]:
    """Play ``levels`` levels; the last ``window`` steps of each failed one, with advantages by
    the run's discount and GAE lambda (a timeout bootstraps from its last observation's value)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}.")
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must lie in 1..{MAX_LEVELS} (one batch of envs), got {levels}.")
    buffers: dict[int, deque] = {}
    final_obs: dict[int, np.ndarray] = {}

    def keep(step: Step, active: np.ndarray) -> None:
        for i in np.nonzero(active)[0].tolist():
            buf = buffers.setdefault(i, deque(maxlen=window))
            flags = {k: np.array(step.infos[k][i]) for k in KEEP}
            buf.append((step.obs[i], float(step.values[i]), flags, float(step.reward[i])))
            if step.truncated[i] and not step.terminated[i]:
                final_obs[i] = np.asarray(step.next_infos["final_obs"][i]).copy()

    options = EpisodeOptions(
        seed=seed, policy=policy_for(agent), max_envs=levels,
        labels=Labels(end=("death_cause", "agent_pos")),
    )  # fmt: skip
    eps = run_episodes(agent, levels, ENV_ID, {**env_kwargs, "masks": True}, options, on_step=keep)
    out = []
    for i, e in enumerate(eps):
        if e.success:
            continue
        steps = list(buffers[i])
        values = np.array([s[1] for s in steps], dtype=np.float32)
        dones = np.zeros(len(steps), dtype=np.float32)
        bootstrap = 0.0
        if i in final_obs:  # cut off by the step limit: its last observation is worth something
            with torch.no_grad():
                bootstrap = float(agent(final_obs[i][None])[1].float().reshape(()))
        else:
            dones[-1] = 1.0
        rewards = np.array([s[3] for s in steps], dtype=np.float32)
        out.append(
            FailedEpisode(
                episode=i,
                cause=str(e.end["death_cause"]),
                obs=np.stack([s[0] for s in steps]),
                values=values,
                advantages=gae(rewards, values, dones, bootstrap, gamma, gae_lambda),
                flags={k: np.stack([s[2][k] for s in steps]) for k in KEEP},
                final_agent=np.asarray(e.end["agent_pos"], dtype=float),
            )
        )
    return len(eps), out


def dissect(
    agent: HookedAgent,
    env_kwargs: dict[str, Any],
    levels: int,
    *,
    window: int = 8,
    seed: int = 10_000,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> tuple[DissectionResult, list[FailedEpisode]]:
    """Counts of each class per cause (with Wilson intervals of their share), and the failed
    episodes."""
    played, failed = failed_episodes(
        agent, env_kwargs, levels, window=window, seed=seed, gamma=gamma, gae_lambda=gae_lambda
    )
    # per failed episode, once: its class and how long its killer was in view (None: no hazard)
    judged = []
    for ep in failed:
        kf = killer_flags(ep)
        judged.append((classify(**kf), visible_steps(kf["in_view"])) if kf else (None, None))
    rows: dict[str, dict[str, Any]] = {}
    for cause in ("saw", "enemy", "lava"):
        of_cause = [j for ep, j in zip(failed, judged, strict=True) if ep.cause == cause]
        rows[cause] = {
            "deaths": len(of_cause),
            **{c: stats.proportion([cls == c for cls, _ in of_cause]) for c in CLASSES},
            "seen the whole window": stats.proportion([seen == window for _, seen in of_cause]),
        }
    other = {c: sum(ep.cause == c for ep in failed) for c in ("fell", "timeout", "multiple")}
    episodes = [
        {"episode": ep.episode, "cause": ep.cause, "values": ep.values.tolist(),
         "advantages": ep.advantages.tolist(), "class": cls, "visible_steps": seen}
        for ep, (cls, seen) in zip(failed, judged, strict=True)
    ]  # fmt: skip
    result = DissectionResult(played, len(failed), window, seed, rows, other, episodes)
    return result, failed


@dataclass(frozen=True)
class ShownFailure:
    """A failure drawn in the report: its last frames with the features' maps on them."""

    episode: int
    cause: str
    obs: np.ndarray
    values: np.ndarray
    advantages: np.ndarray
    maps: np.ndarray
    """The fitted features' maps on the frames ``(steps, h, w, k)``."""


SAVED = ("levels", "failed", "window", "seed", "by_cause", "other", "episodes")
"""The fields of a :class:`DissectionResult` its JSON holds."""


@dataclass(frozen=True)
class DissectionResult:
    """Per hazard cause: how many deaths fell in each class; and each failed level's last steps."""

    levels: int
    failed: int
    window: int
    seed: int
    by_cause: dict[str, dict[str, Any]]
    """Per hazard (saw, enemy, lava): deaths, the share of each class and of deaths whose killer
    was in view for the whole window (Wilson intervals)."""
    other: dict[str, int]
    """Deaths with no hazard to see: fell, timeout, multiple."""
    episodes: list[dict[str, Any]]
    """Per failed level: its cause, values, advantages, class and visible steps."""
    shown: tuple[ShownFailure, ...] = ()
    """The first few failures with the features' maps (not saved)."""
    feature_colours: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SAVED}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DissectionResult:
        return cls(**{k: data[k] for k in SAVED})


@dataclass(frozen=True)
class DissectOptions:
    """The levels dissected, and the features drawn on the failures."""

    levels: int = 256
    """Unseen levels played (at most :data:`MAX_LEVELS`)."""
    window: int = 8
    """Last steps kept of each failure."""
    seed: int = 10_000
    """Seed of the levels and the sampled actions."""
    show: int = 4
    """Failures drawn with the features' maps."""
    features: FeatureOptions = FeatureOptions(n_obs=256)
    """The frames and NMF of the features drawn (``features.step``: the checkpoint dissected)."""

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(
                f"levels must lie in 1..{MAX_LEVELS} (one batch of envs), got {self.levels}."
            )
        if self.window < 1 or self.show < 0:
            raise ValueError(f"window must be >= 1 and show >= 0, got {self.window}, {self.show}.")


def run_dissection(run: Run, options: DissectOptions) -> DissectionResult:
    """Dissect the failures of the run's agent on its unseen levels, the first few with the named
    features' maps; saved as ``analysis/rl_vision_dissection.json``."""
    env_kwargs = hazard_env_kwargs(run)
    fo = options.features
    agent = run.load_agent(fo.step)
    trainer = run.config.get("trainer", {})
    with FolderLock(run.analysis_dir, "analysis folder"):
        hf = fit_features(agent, env_kwargs, fo)
        result, failed = dissect(
            agent, env_kwargs, options.levels, window=options.window, seed=options.seed,
            gamma=float(trainer.get("gamma", 0.99)),
            gae_lambda=float(trainer.get("gae_lambda", 0.95)),
        )  # fmt: skip
        shown = tuple(
            ShownFailure(ep.episode, ep.cause, ep.obs, ep.values, ep.advantages,
                         feature_maps_of(agent, hf, ep.obs, n_steps=fo.n_steps))
            for ep in failed[: options.show]
        )  # fmt: skip
        result = dataclasses.replace(
            result,
            shown=shown,
            feature_colours=tuple(hf.nmf.colours),
            feature_names=tuple(hf.nmf.names()),
        )
        write_json(run.analysis_dir / "rl_vision_dissection.json", result.to_json())
    return result
