"""Playing a decision transformer in its world, conditioned on a return-to-go (RTG) schedule.

The DT acts on the last ``context`` steps of its own episode: the RTG starts at the target and
falls by every reward received (``rtg_{t+1} = rtg_t - r_t``), the timestep counts steps, and the
action of each step is read at its state token. Many episodes are played at once, one env each,
with one batched forward per step; episode ``i`` of every target starts from the reset of seed
``seed + i``, so targets are compared on the same starts.

This is the decision transformer's counterpart of :mod:`policylens.rollout.engine` (which plays
memoryless ``obs -> logits`` agents): a DT's action depends on its whole window of history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from policylens.agents.dt import DTBatch, DTConfig
from policylens.envs import make


@dataclass(frozen=True)
class DTEpisode:
    """One episode a decision transformer played."""

    target: float
    """The RTG it was asked for."""
    seed: int
    ret: float
    """The return it achieved."""
    length: int
    success: bool
    outcome: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PlayOptions:
    """How :func:`play_dt` plays."""

    episodes: int = 100
    """Episodes per target RTG."""
    seed: int = 10_000
    """Episode ``i`` starts from the reset of seed ``seed + i``; sampling is seeded from it too."""
    greedy: bool = False
    """Argmax actions instead of sampling the DT's softmax."""
    batch: int = 128
    """Episodes played at once."""

    def __post_init__(self) -> None:
        for name in ("episodes", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")


class EpisodeSlot:
    """One env and the history its episode has so far."""

    def __init__(self, env: Any, target: float, seed: int) -> None:
        self.env, self.target, self.seed = env, target, seed
        obs, info = env.reset(seed=seed)
        self.obs, self.dirs = [obs], [int(info.get("agent_dir", 0))]
        self.rtg, self.actions = [float(target)], []  # type: ignore[var-annotated]
        self.ret, self.done, self.outcome, self.success = 0.0, False, "", False

    def act(self, action: int) -> float:
        """Step the env with ``action`` and extend the history (the next RTG token is the last
        minus the reward); the reward."""
        obs, r, terminated, truncated, info = self.env.step(action)
        self.actions.append(action)
        self.ret += float(r)
        if terminated or truncated:
            self.done = True
            self.outcome = str(info.get("outcome", "truncated" if truncated else ""))
            self.success = bool(info.get("success", False))
            return float(r)
        self.obs.append(obs)
        self.dirs.append(int(info.get("agent_dir", 0)))
        self.rtg.append(self.rtg[-1] - float(r))
        return float(r)


def history_window(slots: Sequence[EpisodeSlot], k: int, shape: tuple[int, ...]) -> DTBatch:
    """The last ``k`` steps of each slot's episode, right-aligned (missing steps masked)."""
    n = len(slots)
    obs = np.zeros((n, k, *shape), dtype=np.uint8)
    actions = np.zeros((n, k), dtype=np.int64)
    rtg = np.zeros((n, k), dtype=np.float32)
    time = np.zeros((n, k), dtype=np.int64)
    dirs = np.zeros((n, k), dtype=np.int64)
    mask = np.zeros((n, k), dtype=bool)
    for i, s in enumerate(slots):
        t = len(s.obs)  # steps so far, the latest included
        m = min(t, k)
        lo = t - m
        obs[i, k - m :] = np.stack(s.obs[lo:])
        dirs[i, k - m :] = s.dirs[lo:]
        rtg[i, k - m :] = s.rtg[lo:]
        time[i, k - m :] = np.arange(lo, t)
        acts = s.actions[lo:] + [0]  # the latest step's action is not known yet
        actions[i, k - m :] = acts
        mask[i, k - m :] = True
    return DTBatch(
        obs=torch.from_numpy(obs),
        actions=torch.from_numpy(actions),
        rtg=torch.from_numpy(rtg),
        timesteps=torch.from_numpy(time),
        mask=torch.from_numpy(mask),
        direction=torch.from_numpy(dirs),
    )


@torch.no_grad()
def play_dt(
    model: Any,
    env_id: str,
    targets: Sequence[float],
    options: PlayOptions | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> list[DTEpisode]:
    """Play ``options.episodes`` episodes at each target RTG with ``model`` (a decision
    transformer, :func:`~policylens.agents.dt.build_dt`); returns them target by target."""
    options = options or PlayOptions()
    targets = [float(t) for t in targets]
    if not targets or not all(np.isfinite(targets)):
        raise ValueError("targets must hold at least one finite return-to-go.")
    cfg: DTConfig = model.dt_config
    jobs = [(t, options.seed + i) for t in targets for i in range(options.episodes)]
    gen = torch.Generator().manual_seed(options.seed)
    envs = [make(env_id, **dict(env_kwargs or {})) for _ in range(min(options.batch, len(jobs)))]
    results: list[DTEpisode] = []
    model.eval()
    try:
        for start in range(0, len(jobs), len(envs)):
            wave = jobs[start : start + len(envs)]
            slots = [EpisodeSlot(envs[j], t, s) for j, (t, s) in enumerate(wave)]
            while True:
                live = [s for s in slots if not s.done]
                if not live:
                    break
                logits = model(history_window(live, cfg.context, cfg.obs_shape))[:, -1].float()
                uniforms = torch.rand(len(logits), generator=gen)
                if options.greedy:
                    chosen = logits.argmax(-1)
                else:
                    cdf = torch.softmax(logits, -1).cumsum(-1)
                    chosen = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None].contiguous())
                    chosen = chosen[:, 0].clamp(max=logits.shape[-1] - 1)
                for s, a in zip(live, chosen.tolist(), strict=True):
                    s.act(a)
            results += [
                DTEpisode(s.target, s.seed, s.ret, len(s.actions), s.success, s.outcome)
                for s in slots
            ]
    finally:
        for env in envs:
            env.close()
    return results
