"""Activations for SAEs: play an agent and keep one hook's activations, or read them from a store.

:func:`gather_activations` steps the agent through :func:`policylens.rollout.engine.steps` with
the hook cached and keeps observations, the agent's outputs and the activations in memory;
:func:`activations_from_store` reads the same from a ``policylens collect`` store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from policylens.agents.agent import HookedAgent
from policylens.agents.sae import HookSite, hook_site
from policylens.rollout import engine
from policylens.rollout.collect import numeric_labels
from policylens.rollout.store import Store, open_store
from policylens.runs import Run
from policylens.worlds import run_world


@dataclass(frozen=True)
class PlaySetting:
    """Where and how an agent plays: its world (env id and options) and its acting policy."""

    env_id: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    greedy: bool = False
    """Argmax actions (the right policy for a Q-network) instead of sampling."""
    mask_illegal: bool = False
    """Act over legal actions only (worlds that label ``info["legal_actions"]``)."""

    @classmethod
    def of_run(cls, run: Run) -> PlaySetting:
        """The world a run was trained in and the policy its agent acts with."""
        world = run_world(run)
        return cls(world["env_id"], world["env_kwargs"], world["greedy"], world["mask_illegal"])

    @property
    def policy(self) -> engine.Policy:
        return engine.Policy(greedy=self.greedy, mask_illegal=self.mask_illegal)

    def to_json(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "env_kwargs": dict(self.env_kwargs),
            "greedy": self.greedy,
            "mask_illegal": self.mask_illegal,
        }


@dataclass
class ActivationData:
    """Observations, the agent's outputs on them and one hook's activations, in memory."""

    site: HookSite
    obs: np.ndarray
    """(N, *obs_shape) observations the agent acted on."""
    acts: Tensor
    """(N, *site.shape) float32 activations at the hook."""
    logits: Tensor | None = None
    """(N, num_actions) logits of the unmodified agent (None when not known)."""
    values: Tensor | None = None
    """(N,) values of the unmodified agent."""
    legal: np.ndarray | None = None
    """(N, num_actions) bool legal-action masks where the world labels them."""
    meta: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    """The world's numeric ``info`` labels of each observation, ``(N, ...)`` (see
    :func:`policylens.rollout.collect.numeric_labels`), for matching latents to concepts."""

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def vectors(self) -> Tensor:
        """All SAE input vectors ``(N * positions, d_in)``."""
        return self.site.to_vectors(self.acts)

    def split(self, holdout: float) -> tuple[ActivationData, ActivationData]:
        """The first and last ``holdout`` fraction of observations (later episodes held out)."""
        n_test = int(round(len(self) * holdout))
        if not 0 < n_test < len(self):
            raise ValueError(
                f"Cannot hold out {holdout:.0%} of {len(self)} observations; gather more steps or "
                "change the holdout fraction."
            )
        cut = len(self) - n_test
        return self.take(slice(0, cut)), self.take(slice(cut, len(self)))

    def take(self, rows: slice | np.ndarray) -> ActivationData:
        """The observations ``rows`` (a slice or index array) with everything known about them."""

        def part(x: Any) -> Any:
            return None if x is None else x[rows]

        return ActivationData(
            self.site,
            self.obs[rows],
            self.acts[rows],
            part(self.logits),
            part(self.values),
            part(self.legal),
            dict(self.meta),
            {k: v[rows] for k, v in self.labels.items()},
        )


def gather_activations(
    agent: HookedAgent,
    hook: str,
    setting: PlaySetting,
    steps: int = 10_000,
    seed: int = 0,
    layout: str = "auto",
    num_envs: int = 32,
) -> ActivationData:
    """Play ``agent`` in ``setting`` for ``steps`` environment steps and keep what the SAE tools
    need.

    Environments autoreset, so the rows cover many episodes. ``seed`` seeds the worlds and the
    sampling. The world's numeric labels of each observation are kept in ``labels``.
    """
    from policylens.envs import make_vec

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    site = hook_site(agent, hook, layout)
    env_kwargs = dict(setting.env_kwargs)
    n = min(num_envs, steps)
    envs = make_vec(setting.env_id, n, **env_kwargs)
    parts: dict[str, list] = {"obs": [], "acts": [], "logits": [], "values": [], "legal": []}
    labels: dict[str, list[np.ndarray]] = {}
    rows = 0
    try:
        engine.check_world(agent, envs, setting.env_id)
        generator = torch.Generator().manual_seed(seed)
        start = envs.reset(seed=seed)
        stream = engine.steps(agent, envs, start, setting.policy, generator, cache=[hook])
        with contextlib.closing(stream):
            for step in stream:
                take = min(n, steps - rows)
                parts["obs"].append(np.asarray(step.obs)[:take].copy())
                parts["acts"].append(step.cache[hook][:take].float().cpu().contiguous())
                parts["logits"].append(step.logits[:take])
                parts["values"].append(step.values[:take])
                if step.legal is not None:
                    parts["legal"].append(step.legal[:take].numpy())
                for key, value in numeric_labels(step.infos, n)[0].items():
                    labels.setdefault(key, []).append(value[:take])
                rows += take
                if rows >= steps:
                    break
    finally:
        envs.close()
    return ActivationData(
        site=site,
        obs=np.concatenate(parts["obs"]),
        acts=torch.cat(parts["acts"]),
        logits=torch.cat(parts["logits"]),
        values=torch.cat(parts["values"]),
        legal=np.concatenate(parts["legal"]) if parts["legal"] else None,
        meta={**setting.to_json(), "steps": steps, "seed": seed},
        labels={k: np.concatenate(v) for k, v in labels.items() if len(v) == len(parts["obs"])},
    )


def activations_from_store(
    store: Store | str | os.PathLike,
    hook: str,
    layout: str = "auto",
    max_rows: int | None = None,
    seed: int = 0,
) -> ActivationData:
    """Read a hook's activations (and observations, logits, values) from a collect store.

    ``max_rows`` caps the observations read into memory (a subset drawn with ``seed``, in row
    order).
    """
    from policylens.errors import unknown_message

    store = store if isinstance(store, Store) else open_store(store)
    if hook not in store.hooks:
        raise ValueError(
            unknown_message(f"hook in store {store.path}", hook, store.hooks)
            + " Collect the store with that hook among its hooks."
        )
    arr = store[f"activations/{hook}"]
    site = HookSite.resolve(hook, arr.row_shape, layout)
    n = len(store)
    rows: np.ndarray | slice = slice(0, n)
    if max_rows is not None and max_rows < n:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=max_rows, replace=False))
    meta = dict(store.meta)

    def optional(name: str, dtype: Any) -> Any:
        return store[name][rows].astype(dtype) if name in store else None

    logits, values = optional("logits", np.float32), optional("values", np.float32)
    labels = {key: store[f"labels/{key}"][rows] for key in store.labels}
    return ActivationData(
        site=site,
        obs=store["obs"][rows],
        acts=torch.from_numpy(np.ascontiguousarray(arr[rows], dtype=np.float32)),
        logits=None if logits is None else torch.from_numpy(logits),
        values=None if values is None else torch.from_numpy(values),
        legal=optional("labels/legal_actions", bool),
        meta={
            "store": str(store.path),
            "env_id": meta.get("env_id"),
            "env_kwargs": meta.get("env_kwargs", {}),
            "run": meta.get("run"),
            "checkpoint_step": meta.get("checkpoint_step"),
            "greedy": meta.get("greedy", False),
        },
        labels=labels,
    )


__all__ = ["ActivationData", "PlaySetting", "activations_from_store", "gather_activations"]
