"""The explorer's decision-transformer view: one episode played by a DT at a target return-to-go,
recorded step by step (the view, the R/s/a tokens and the window the DT acted on), and the
attention of each head over that window.

:func:`play_recorded` plays exactly as :func:`policylens.rollout.dt.play_dt` plays episode 0 of
one target (the same reset seed, the same uniforms, the same windows, built by its own helpers),
and keeps what ``play_dt`` summarises away: so the explorer's episode is the one the library's
evaluation plays, with its tokens. :func:`attention` reads the attention patterns from
``run_with_cache`` on the window of one step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from policylens.agents.dt import DTBatch, DTConfig
from policylens.envs import make
from policylens.rollout.dt import DTEpisode, EpisodeSlot, history_window

TOKEN_KINDS = ("R", "s", "a")
DIRECTIONS = ("east", "south", "west", "north")
"""MiniGrid's ``agent_dir`` 0..3."""


@dataclass(frozen=True)
class DTRollout:
    """One episode a DT played, step by step (``T`` steps: each has its R, s and a token)."""

    episode: DTEpisode
    """What :func:`~policylens.rollout.dt.play_dt` reports for it."""
    greedy: bool
    obs: np.ndarray
    """``(T, H, W, 3)`` uint8: the view at each step (the state token)."""
    directions: np.ndarray
    """``(T,)``: the agent's direction at each step."""
    rtg: np.ndarray
    """``(T,)`` float32: the return-to-go token of each step."""
    actions: np.ndarray
    """``(T,)`` int64: the action taken (the action token)."""
    logits: np.ndarray
    """``(T, actions)`` float32: the DT's logits at each step's state token."""
    rewards: np.ndarray
    """``(T,)`` float32."""
    windows: DTBatch
    """``(T, K, ...)``: the window of history the DT acted on at each step."""

    @property
    def length(self) -> int:
        return len(self.actions)

    def window(self, t: int) -> DTBatch:
        """The window of step ``t`` as a batch of one."""
        if not 0 <= t < self.length:
            raise ValueError(f"step {t} is outside the episode (steps 0 to {self.length - 1})")
        w = self.windows
        return DTBatch(
            obs=w.obs[t : t + 1], actions=w.actions[t : t + 1], rtg=w.rtg[t : t + 1],
            timesteps=w.timesteps[t : t + 1], mask=w.mask[t : t + 1],
            direction=None if w.direction is None else w.direction[t : t + 1],
        )  # fmt: skip


@torch.no_grad()
def play_recorded(
    model: Any,
    env_id: str,
    target: float,
    seed: int,
    greedy: bool = False,
    env_kwargs: Mapping[str, Any] | None = None,
) -> DTRollout:
    """Play one episode at ``target`` from the reset of ``seed``, as ``play_dt(model, env_id,
    [target], PlayOptions(1, seed, greedy))`` plays it, recording every step."""
    target = float(target)
    if not np.isfinite(target):
        raise ValueError(f"the target RTG must be finite, got {target}.")
    cfg: DTConfig = model.dt_config
    gen = torch.Generator().manual_seed(seed)
    env = make(env_id, **dict(env_kwargs or {}))
    model.eval()
    windows: list[DTBatch] = []
    logits_seen: list[np.ndarray] = []
    rewards: list[float] = []
    try:
        slot = EpisodeSlot(env, target, seed)
        while not slot.done:
            window = history_window([slot], cfg.context, cfg.obs_shape)
            logits = model(window)[:, -1].float()
            uniforms = torch.rand(len(logits), generator=gen)
            if greedy:
                chosen = logits.argmax(-1)
            else:
                cdf = torch.softmax(logits, -1).cumsum(-1)
                chosen = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None].contiguous())
                chosen = chosen[:, 0].clamp(max=logits.shape[-1] - 1)
            a = int(chosen[0])
            windows.append(window)
            logits_seen.append(logits[0].numpy())
            rewards.append(slot.act(a))
    finally:
        env.close()
    episode = DTEpisode(target, seed, slot.ret, len(slot.actions), slot.success, slot.outcome)
    stacked = DTBatch(
        obs=torch.cat([w.obs for w in windows]),
        actions=torch.cat([w.actions for w in windows]),
        rtg=torch.cat([w.rtg for w in windows]),
        timesteps=torch.cat([w.timesteps for w in windows]),
        mask=torch.cat([w.mask for w in windows]),
        direction=torch.cat([w.direction for w in windows if w.direction is not None])
        if windows[0].direction is not None
        else None,
    )
    return DTRollout(
        episode=episode,
        greedy=greedy,
        obs=np.stack(slot.obs).astype(np.uint8),
        directions=np.asarray(slot.dirs, dtype=np.int64),
        rtg=np.asarray(slot.rtg, dtype=np.float32),
        actions=np.asarray(slot.actions, dtype=np.int64),
        logits=np.stack(logits_seen).astype(np.float32),
        rewards=np.asarray(rewards, dtype=np.float32),
        windows=stacked,
    )


def attention(model: Any, window: DTBatch) -> np.ndarray:
    """The attention patterns of every head on one window: ``(layers, heads, 3K, 3K)`` (query,
    key), as ``run_with_cache`` caches them at ``blocks.<l>.attn.hook_pattern``."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(window, names_filter=lambda n: n in names)
    return np.stack([cache[n][0].float().numpy() for n in names])


def window_tokens(rollout: DTRollout, t: int, action_names: list[str]) -> list[dict[str, Any]]:
    """The tokens of step ``t``'s window in sequence order: ``step`` (of the episode; None for
    padding), ``kind`` (R, s, a or pad) and a short ``label``. The last action token is not
    known when the DT acts (it reads the action at the last state token)."""
    w = rollout.window(t)
    k = int(w.mask.shape[1])
    out: list[dict[str, Any]] = []
    for j in range(k):
        step = t - (k - 1) + j
        real = bool(w.mask[0, j])
        for kind in TOKEN_KINDS:
            if not real:
                out.append({"step": None, "kind": "pad", "label": "pad"})
            elif kind == "R":
                out.append(
                    {"step": step, "kind": kind, "label": f"R{step}={rollout.rtg[step]:.2f}"}
                )
            elif kind == "s":
                out.append({"step": step, "kind": kind, "label": f"s{step}"})
            elif step == t:
                out.append({"step": step, "kind": kind, "label": f"a{step}=?"})
            else:
                name = action_names[int(rollout.actions[step])]
                out.append({"step": step, "kind": kind, "label": f"a{step}={name}"})
    return out
