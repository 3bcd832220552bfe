"""Episode bookkeeping shared by the trainers: running returns and the metrics of finished ones."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from policylens.rollout.engine import episode_success


class EpisodeTracker:
    """Running per-env returns and lengths, and the episodes finished since the last drain.

    ``infos`` are vector-env info dicts (same-step autoreset: an ended env's labels are in
    ``infos["final_info"]``). Worlds that label ``dist_to_cheese`` at an episode's start get a
    ``path_ratio`` column (mean length over mean shortest path); ``outcomes`` names
    ``info["outcome"]`` values whose share gets its own column.
    """

    def __init__(self, num_envs: int, outcomes: tuple[str, ...] = ()) -> None:
        self.outcomes = outcomes
        self.ret = np.zeros(num_envs)
        self.len = np.zeros(num_envs, dtype=np.int64)
        self.shortest = np.full(num_envs, np.nan)  # NaN until the world labels dist_to_cheese
        self.finished: list[tuple[float, int, bool, float, str]] = []

    def start(self, infos: dict[str, Any], envs: np.ndarray) -> None:
        """Note the shortest path of the episodes that just began in ``envs``."""
        if "dist_to_cheese" in infos:
            self.shortest[envs] = infos["dist_to_cheese"][envs]

    def step(
        self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, infos: dict
    ) -> None:
        self.ret += reward
        self.len += 1
        done = np.nonzero(terminated | truncated)[0]
        final = infos.get("final_info", infos)
        for i in done:
            outcome = str(final["outcome"][i]) if "outcome" in final else ""
            success = episode_success(final, i, terminated[i])
            self.finished.append(
                (float(self.ret[i]), int(self.len[i]), success, float(self.shortest[i]), outcome)
            )
        self.ret[done] = 0
        self.len[done] = 0
        self.start(infos, done)

    def drain(self) -> dict[str, float]:
        """Means over the episodes finished since the last call (NaN when none finished)."""
        eps, self.finished = self.finished, []
        n = len(eps)
        rets, lens, succ, short = (np.array([e[k] for e in eps], dtype=float) for k in range(4))
        row = {
            "episodes": n,
            "return": float(rets.mean()) if n else math.nan,
            "length": float(lens.mean()) if n else math.nan,
            "success": float(succ.mean()) if n else math.nan,
        }
        if np.isfinite(self.shortest).any():  # the world labels shortest paths
            ok = n and np.isfinite(short).all() and short.mean() > 0
            row["path_ratio"] = float(lens.mean() / short.mean()) if ok else math.nan
        for o in self.outcomes:
            row[o] = float(np.mean([e[4] == o for e in eps])) if n else math.nan
        return row

    def state_dict(self) -> dict[str, Any]:
        return {
            "ret": torch.from_numpy(self.ret.copy()),
            "len": torch.from_numpy(self.len.copy()),
            "shortest": torch.from_numpy(self.shortest.copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ret, self.len = state["ret"].numpy().copy(), state["len"].numpy().copy()
        if "shortest" in state:  # resume files written before DQN tracked paths lack it
            self.shortest = state["shortest"].numpy().copy()
