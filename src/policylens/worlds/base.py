"""What every world provides above its env: the contract studies, the explorer, sweeps and
reports look worlds up by, and the generic world any registered env gets.

A world is one subclass of :class:`World` in its own module under ``worlds/`` (listed in
``worlds/__init__.py``): its id, recipe, action names, drawing, a dataset of observations with
their ground truth (masks at observation resolution, boolean concepts), categories per position,
how an episode ended, its default layer, the concepts probes read, and the evaluation sweeps call.
An instance is bound to one run (its world options and acting policy); the class-level parts
(recipe, names, concepts) need no run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from policylens.agents.agent import HookedAgent
from policylens.lenses.attribution import Attribution
from policylens.rollout import engine
from policylens.runs import Run
from policylens.train.ppo import gae

Progress = Callable[[float, str], None]
"""A job's progress callback: fraction done and a short message."""


def run_world(run: Run) -> dict[str, Any]:
    """World and acting policy of a run: env_id, env_kwargs, greedy (Q-networks) and masking."""
    trainer = run.config.get("trainer", {})
    if "env_id" not in trainer:
        raise ValueError(f"Run {run.path} does not name its world (trainer.env_id in config.json).")
    agent_cfg = run.config.get("agent", {})
    q = run.config.get("kind") == "dqn" or (agent_cfg.get("kwargs") or {}).get("head") == "q"
    return {
        "env_id": trainer["env_id"],
        "env_kwargs": dict(trainer.get("env_kwargs", {})),
        "greedy": bool(q),
        "mask_illegal": bool(trainer.get("mask_illegal", False)),
    }


def image_of(obs: np.ndarray) -> np.ndarray | None:
    """An RGB picture of an image-like observation ``(H, W, 3)`` or ``(C, H, W)`` (C of 1 or 3,
    scaled to its range), or None for a plain vector (drawn as bars)."""
    if obs.ndim == 3 and obs.shape[-1] == 3:
        return obs.astype(np.uint8) if obs.dtype != np.uint8 else obs
    if obs.ndim == 3 and obs.shape[0] in (1, 3):
        img = np.moveaxis(obs.astype(np.float32), 0, -1)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-9)
        return (np.repeat(img, 3, -1) if img.shape[-1] == 1 else img * 255).astype(np.uint8)
    return None


@dataclass
class Episode:
    """One played episode: every observation the agent saw (and the last one) with its outputs."""

    seed: int
    level: int | None
    obs: np.ndarray
    """(T + 1, *obs_shape): the observations acted on, then the episode's last one."""
    logits: np.ndarray
    """(T + 1, actions) float32: the agent's logits (Q-values for a Q-network) at each."""
    values: np.ndarray
    """(T + 1,): the value head (max Q for a Q-network)."""
    actions: np.ndarray
    """(T,) the actions taken."""
    rewards: np.ndarray
    """(T,) the rewards received."""
    outcome: str
    """How it ended, in the world's words ("cheese", "checkmate", "truncated", ...)."""
    success: bool
    truncated: bool = False
    """Cut off by the step limit (its last value bootstraps the advantages)."""
    anywhere: bool = False
    """Maze: the cheese could be anywhere (the test distribution)."""

    @property
    def length(self) -> int:
        return len(self.actions)


@dataclass
class Dataset:
    """Observations for dataset examples, clustering and NMF, with the world's ground truth."""

    obs: np.ndarray
    truth: Any
    """Maze: the states behind the observations; hazards: ``{object: bool (N, h, w)}`` masks at
    observation resolution; other worlds: ``{label: bool (N,)}``."""


@dataclass(frozen=True)
class SharedUniforms(engine.Policy):
    """A :class:`~policylens.rollout.engine.Policy` whose batch rows all draw the same uniforms,
    one pair per step from its own seeded ``uniforms`` generator (the engine's draws go unused):
    rows playing different conditions from one state are compared on equal luck, and a row's
    path is the same whatever the batch size (with one row: the engine's own draws, for the same
    seed)."""

    uniforms: torch.Generator = field(default_factory=torch.Generator)

    def choose(
        self, logits: torch.Tensor, uniforms: torch.Tensor, legal: torch.Tensor | None = None
    ) -> torch.Tensor:
        shared = torch.rand(2, 1, generator=self.uniforms).expand(2, len(logits))
        return super().choose(logits, shared, legal)


def on_rows(fwd_hooks: list, rows: slice) -> list:
    """``fwd_hooks`` changed to act on the batch ``rows`` only; the other rows pass unchanged."""

    def restrict(fn: Any) -> Any:
        def hook_fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            out = fn(act[rows], hook)
            if out is None:  # changed in place, through the view
                return act
            act = act.clone()
            act[rows] = out
            return act

        return hook_fn

    return [(name, restrict(fn)) for name, fn in fwd_hooks]


class World:
    """The generic world: plays any registered env; draws observations as images or bars."""

    name: ClassVar[str] = "generic"
    """Short name (``policylens train NAME``, a sweep's ``world``); also the explorer's kind."""
    env_id: ClassVar[str] = ""
    """The Gymnasium id of the world's env ("" for the generic world)."""
    recipe: ClassVar[type | None] = None
    """The world's tested training settings: a frozen options dataclass, checked on construction,
    whose ``config()`` is a trainer config (``MazeRecipe(cheese_region=3).config()``)."""
    sweep_metrics: ClassVar[str | None] = None
    """``module:function`` a sweep calls on each finished run of this world (imported by name at
    run time, as any user-given evaluation is)."""
    headline: ClassVar[str | None] = None
    """``module:function`` measuring a run's headline figures with intervals (a zoo entry's
    ``results.json``), called as ``function(run, **options)``."""
    concepts: ClassVar[tuple[str, ...]] = ()
    """``info`` labels probes read by default (any label can be probed by name)."""
    probe_options: ClassVar[Mapping[str, Any]] = {}
    """World options for collecting probe data, over the run's own."""
    studied_layers: ClassVar[Mapping[str, str]] = {}
    """Network architecture -> the layer this world's study reads (:meth:`studied_layer`)."""
    has_levels: ClassVar[bool] = False
    editable: ClassVar[bool] = False
    outside_plane: ClassVar[int | None] = None
    """The plane of a grid observation that is 1 outside the world (its wall), for dataset
    examples cropped past the edge; None leaves the outside empty."""
    end_labels: ClassVar[tuple[str, ...]] = ()
    labels: ClassVar[tuple[str, ...]] = ()
    """Boolean ``info`` labels whose correlation with each unit the activations view shows."""
    about_dataset: ClassVar[str] = "the agent's own play, 16 games at once, consecutive steps"
    """What the dataset behind examples, correlations, clusters and NMF is, for the page."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.setup = run_world(run)
        self.env_kwargs: dict[str, Any] = self.setup["env_kwargs"]
        self.policy = engine.Policy(
            greedy=self.setup["greedy"], mask_illegal=self.setup["mask_illegal"]
        )
        trainer = run.config.get("trainer", {})
        self.gamma = float(trainer.get("gamma", 0.99))
        self.gae_lambda = float(trainer.get("gae_lambda", 0.0))
        agent = run.config.get("agent", {})
        self.obs_shape = tuple(agent.get("obs_shape", ()))
        self.run_env_id: str = self.setup["env_id"]
        """The run's own env id (the generic world serves any)."""
        self.action_names = self.names_of_actions(self.env_kwargs, int(agent.get("num_actions", 0)))

    @classmethod
    def serves(cls, env_id: str) -> bool:
        """Whether this world is the one behind ``env_id``."""
        return env_id == cls.env_id

    @classmethod
    def world_actions(cls, env_kwargs: Mapping[str, Any]) -> Sequence[str]:
        """The world's own action names under ``env_kwargs`` (none for the generic world)."""
        return ()

    @classmethod
    def names_of_actions(cls, env_kwargs: Mapping[str, Any], num_actions: int) -> list[str]:
        """Readable action names where the world has them for ``num_actions``, else ``a0, a1, ...``."""
        names = cls.world_actions(env_kwargs)
        if len(names) != num_actions:
            names = [f"a{i}" for i in range(num_actions)]
        return list(names)

    @classmethod
    def studied_layer(cls, agent: HookedAgent) -> str | None:
        """The layer this world's study reads in ``agent``'s network (None: no study layer)."""
        return cls.studied_layers.get(str(agent.config.get("arch")))

    @classmethod
    def picture(cls, obs: np.ndarray, env_kwargs: Mapping[str, Any]) -> np.ndarray | None:
        """An RGB picture of one observation for reports, or None for a plain vector."""
        return image_of(np.asarray(obs))

    # -- drawing ----------------------------------------------------------------------------------
    def render(self) -> dict[str, Any]:
        """How the page draws an observation of this world."""
        if len(self.obs_shape) == 3 and self.obs_shape[-1] == 3:
            return {"kind": "image"}
        return {"kind": "vector"}

    def drawn(self, obs: np.ndarray) -> np.ndarray:
        """A batch of observations as the page receives them to draw (here: unchanged)."""
        return obs

    def input_map(self, attribution: Attribution) -> np.ndarray:
        """An input attribution of one observation as a map over the drawn observation."""
        if attribution.is_spatial:
            return attribution.spatial()[0].detach().numpy()
        return attribution.attributions[0].detach().reshape(1, -1).numpy()

    # -- playing ----------------------------------------------------------------------------------
    def level_kwargs(self, level: int | None) -> dict[str, Any]:
        """The world's options for playing ``level`` (None: the run's own distribution)."""
        return self.env_kwargs

    def reset(self, seed: int, level: int | None, anywhere: bool) -> tuple[Any, Any, Any]:
        """A one-env vector world reset to ``seed``, on ``level`` where the world numbers them."""
        from policylens.envs import make_vec

        envs = make_vec(self.run_env_id, 1, **self.level_kwargs(level))
        obs, infos = envs.reset(seed=seed)
        return envs, obs, infos

    def outcome(self, ep: engine.Episode) -> str:
        if ep.end.get("truncated"):
            return "truncated"
        return "success" if ep.success else "failure"

    def play(
        self,
        agent: HookedAgent,
        seed: int,
        level: int | None = None,
        anywhere: bool = False,
        fwd_hooks: engine.Hooks = (),
        progress: Progress | None = None,
    ) -> Episode:
        """One episode through the rollout engine, keeping every observation and output."""
        envs, obs, infos = self.reset(seed, level, anywhere)
        frames: list[np.ndarray] = []
        logits: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        actions: list[int] = []
        rewards: list[float] = []
        last: list[np.ndarray] = []
        limit = int(self.env_kwargs.get("max_steps", 500))

        def record(step: engine.Step, active: np.ndarray) -> None:
            if not active[0]:
                return
            frames.append(np.asarray(step.obs[0]).copy())
            logits.append(step.logits[0])
            values.append(step.values[0])
            actions.append(int(step.actions[0]))
            rewards.append(float(step.reward[0]))
            if step.done[0]:
                last.append(np.asarray(step.next_infos["final_obs"][0]).copy())
            if progress is not None:
                progress(len(frames) / limit, f"step {len(frames)}")

        try:
            (ep,) = engine.first_episodes(
                agent, envs, (obs, infos), self.policy, torch.Generator().manual_seed(seed),
                fwd_hooks, engine.Labels(end=self.end_labels), on_step=record,
            )  # fmt: skip
        finally:
            envs.close()
        with torch.no_grad():
            end_logits, end_value = agent.run_with_hooks(last[0][None], fwd_hooks=list(fwd_hooks))
        return Episode(
            seed=seed,
            level=level,
            obs=np.stack(frames + last),
            logits=torch.cat([torch.stack(logits), end_logits.float()]).numpy(),
            values=torch.cat([torch.stack(values), end_value.float().reshape(1)]).numpy(),
            actions=np.array(actions, dtype=np.int32),
            rewards=np.array(rewards, dtype=np.float32),
            outcome=self.outcome(ep),
            success=ep.success,
            truncated=bool(ep.end.get("truncated")),
            anywhere=anywhere,
        )

    def advantages(self, ep: Episode) -> np.ndarray:
        """The episode's advantage estimates ``(T,)`` as PPO computes them in training, with the
        run's own discount and GAE lambda (0, one-step TD errors, for runs without one): the last
        value bootstraps a truncated episode, not an ended one."""
        dones = np.zeros(ep.length, dtype=np.float32)
        dones[-1] = not ep.truncated
        return gae(ep.rewards, ep.values[:-1], dones, ep.values[-1], self.gamma, self.gae_lambda)

    # -- data for dataset examples, labels and clusters --------------------------------------------
    def dataset(self, agent: HookedAgent, n: int, seed: int) -> Dataset:
        """``n`` observations of the agent playing (many episodes at once), with their labels."""
        from policylens.envs import make_vec

        envs = make_vec(self.run_env_id, min(16, n), **self.env_kwargs)
        rows: list[np.ndarray] = []
        labels: dict[str, list[np.ndarray]] = {k: [] for k in self.labels}
        try:
            gen = torch.Generator().manual_seed(seed)
            stream = engine.steps(agent, envs, envs.reset(seed=seed), self.policy, gen)
            for step in stream:
                rows.append(np.asarray(step.obs).copy())
                for k in labels:
                    labels[k].append(np.asarray(step.infos[k], dtype=bool).reshape(-1))
                if sum(len(r) for r in rows) >= n:
                    stream.close()
                    break
        finally:
            envs.close()
        truth = {k: np.concatenate(v)[:n] for k, v in labels.items()}
        return Dataset(np.concatenate(rows)[:n], truth)

    def masks(self, data: Dataset, hw: tuple[int, int]) -> dict[str, np.ndarray]:
        """Ground truth ``name -> bool (N, h, w)`` at a layer's resolution (a row label covers
        every position of its row)."""
        h, w = hw
        return {k: np.broadcast_to(v[:, None, None], (len(v), h, w)) for k, v in data.truth.items()}

    def categories(
        self, data: Dataset, hw: tuple[int, int]
    ) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """Ground-truth category per position (for scoring clusters), where the world has one."""
        return None
