"""Stable-Baselines3 PPO (``MlpPolicy``) as a policylens trainer with the built-in run layout.

:func:`train_sb3` takes the same :class:`~policylens.train.ppo.PPOConfig` as
:func:`~policylens.train.ppo.train_ppo` (each field mapped to SB3's PPO argument of the same
meaning) and writes the same run folder: ``config.json`` (``kind: "sb3_ppo"``, the trainer config,
the SB3 arguments and the agent config), ``checkpoints/step_<N>.safetensors`` on the same schedule,
``metrics.csv`` with the same columns, and ``DONE``.

Checkpoints hold the weights of the SB3 ``ActorCriticPolicy`` wrapped as a HookedAgent
(:func:`policylens.agents.sb3_agent`), so their names are ``policy.mlp_extractor.policy_net.0.weight``
and so on. SB3's MlpPolicy has separate policy and value towers (no shared layers); the agent config
carries an ``"sb3"`` entry from which :mod:`policylens.agents.sb3` rebuilds the network, so
``policylens.load_agent(run_folder)`` loads these runs like any other.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from policylens.agents import HookedAgent, load_agent
from policylens.agents.sb3 import (
    ACTIVATIONS,
    is_sb3_config,
    require_sb3,
    sb3_agent,
    sb3_agent_config,
    sb3_agent_from_config,
    torch_policy_kwargs,
)
from policylens.runs import Run, TrainingProgress, config_json
from policylens.train.episodes import EpisodeTracker
from policylens.train.ppo import PPOConfig, checkpoint_updates
from policylens.train.threads import ThreadGovernor


def sb3_policy_kwargs(config: PPOConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` mirroring the built-in ``mlp`` options of ``config`` (JSON-able)."""
    if config.arch != "mlp":
        raise ValueError(
            f"The sb3 backend trains SB3's MlpPolicy, so it needs arch='mlp', got {config.arch!r}; "
            "use the builtin backend for other architectures."
        )
    kw = dict(config.arch_kwargs)
    kw.pop("seed", None)  # the builtin init seed; SB3 seeds its init with the run's seed
    if not kw.pop("separate_value", True):
        raise ValueError(
            "SB3's MlpPolicy always gives the value its own layers; set separate_value=True "
            "or use the builtin backend for a shared trunk."
        )
    unknown = sorted(set(kw) - {"hidden", "activation", "init"})
    if unknown or kw.get("head", "policy_value") != "policy_value":
        raise ValueError(
            f"The sb3 backend cannot mirror the mlp option(s) {', '.join(unknown) or 'head'}; "
            "use hidden and activation only."
        )
    hidden = [int(h) for h in kw.get("hidden", (64, 64))]
    activation = kw.get("activation", "tanh")
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}.")
    return {
        "net_arch": {"pi": hidden, "vf": hidden},
        "activation": activation,
        "ortho_init": kw.get("init", "orthogonal") == "orthogonal",
    }


class _LinearSchedule:
    """SB3 learning-rate schedule: ``lr * progress_remaining`` (1 -> 0), as ``anneal_lr`` does."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def __call__(self, progress_remaining: float) -> float:
        return self.lr * progress_remaining


def sb3_ppo_kwargs(config: PPOConfig) -> dict[str, Any]:
    """The SB3 ``PPO(...)`` arguments equivalent to ``config`` (JSON-able, schedule by name)."""
    return {
        "n_steps": config.num_steps,
        "batch_size": config.batch_size // config.num_minibatches,
        "n_epochs": config.update_epochs,
        "learning_rate": config.learning_rate,
        "lr_schedule": "linear" if config.anneal_lr else "constant",
        "gamma": config.gamma,
        "gae_lambda": config.gae_lambda,
        "clip_range": config.clip_coef,
        "clip_range_vf": config.clip_coef if config.clip_vloss else None,
        "normalize_advantage": config.norm_adv,
        "ent_coef": config.ent_coef,
        "vf_coef": config.vf_coef,
        "max_grad_norm": config.max_grad_norm,
        "seed": config.seed,
    }


def load_sb3_checkpoint(file: str | Path, agent_config: dict[str, Any]) -> HookedAgent:
    """An SB3 checkpoint (``.safetensors`` written by :func:`train_sb3`) as a HookedAgent."""
    return load_agent(file, config=agent_config)


def _make_env_fn(env_id: str, env_kwargs: dict[str, Any]) -> Callable[[], Any]:
    def make() -> Any:
        from policylens.envs import make as make_world

        return make_world(env_id, **env_kwargs)

    return make


def train_sb3(
    config: PPOConfig,
    out: str | Path,
    init_from: str | Path | None = None,
    progress: bool = False,
) -> Run:
    """Train SB3's PPO ``MlpPolicy`` with the settings of ``config`` into the run folder ``out``.

    ``init_from`` (a checkpoint of this backend) replaces the initial weights. The optimiser
    starts fresh, as in :func:`~policylens.train.ppo.train_ppo`. There is no exact resume: SB3
    keeps no savable Box2D state, so an unfinished folder must be trained again.
    """
    sb3 = require_sb3()
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    policy_kwargs = sb3_policy_kwargs(config)
    ppo_kwargs = sb3_ppo_kwargs(config)
    ThreadGovernor(config.threads)  # SB3's loop is its own: the count chosen now is kept
    env = DummyVecEnv([_make_env_fn(config.env_id, config.env_kwargs)] * config.num_envs)
    args = dict(ppo_kwargs)
    lr = args.pop("learning_rate")
    schedule = args.pop("lr_schedule")
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=_LinearSchedule(lr) if schedule == "linear" else lr,
        policy_kwargs=torch_policy_kwargs(policy_kwargs),
        device="cpu",
        verbose=0,
        **args,
    )
    agent = sb3_agent(model.policy)  # shares the policy's parameters
    if init_from is not None:
        agent.load_weights(init_from)
    agent_config = sb3_agent_config(agent.obs_shape, agent.num_actions, policy_kwargs)
    run = Run.create(
        out,
        {
            "kind": "sb3_ppo",
            "trainer": config_json(asdict(config)),
            "sb3": config_json({**ppo_kwargs, "version": sb3.__version__, "policy": "MlpPolicy"}),
            "agent": agent_config,
        },
        restart=True,
    )
    try:
        _learn(model, run, agent, config, progress)
    finally:
        run.release()
    return run


def _learn(model, run: Run, agent, config: PPOConfig, progress: bool) -> None:
    """SB3's training loop, writing checkpoints and metrics into ``run``; marks it done."""
    save_at = set(
        checkpoint_updates(config.num_updates, config.checkpoints, config.checkpoint_spacing)
    )
    bar = TrainingProgress(progress, "SB3 PPO", "updates", config.num_updates, 0)
    callback = _callback_class()(run, agent, config, save_at, bar)
    # log_interval=None: SB3 never dumps its logger, whose values the callback reads.
    model.learn(
        config.num_updates * config.batch_size,
        callback=callback,
        log_interval=None,  # type: ignore[arg-type]  # SB3 accepts None; its hint says int
    )
    bar.close()
    model.get_env().close()
    run.mark_done(config.num_updates * config.batch_size)


@functools.cache
def _callback_class() -> type:
    """The SB3 callback class, built on first use: SB3 is an optional dependency."""
    from stable_baselines3.common.callbacks import BaseCallback

    class RunCallback(BaseCallback):
        """Writes checkpoints on the built-in schedule and one metrics row per PPO update.

        A row is written at the start of the next rollout (or at the end of training), when the
        losses of the update just finished are in SB3's logger.
        """

        def __init__(
            self,
            run: Run,
            agent: HookedAgent,
            config: PPOConfig,
            save_at: set[int],
            bar: TrainingProgress,
        ) -> None:
            super().__init__(verbose=0)
            self.run, self.agent, self.cfg, self.save_at, self.bar = (
                run,
                agent,
                config,
                save_at,
                bar,
            )
            self.tracker = EpisodeTracker(config.num_envs)
            self.updates = 0
            self.t_start = self.t_update = 0.0

        def _on_training_start(self) -> None:
            self.t_start = self.t_update = time.perf_counter()
            self.run.save_checkpoint(self.agent, 0)

        def _on_step(self) -> bool:
            # SB3's per-env info dicts -> the vector-env layout the tracker reads
            infos = self.locals["infos"]
            dones = np.asarray(self.locals["dones"], dtype=bool)
            truncated = dones & np.array([bool(i.get("TimeLimit.truncated")) for i in infos])
            labels = (
                {"success": np.array([bool(i.get("success")) for i in infos])}
                if any("success" in i for i in infos)
                else {}
            )
            rewards = np.asarray(self.locals["rewards"], dtype=float)
            self.tracker.step(rewards, dones & ~truncated, truncated, labels)
            return True

        def _on_rollout_start(self) -> None:
            if self.num_timesteps > 0:
                self._finish_update()

        def _on_training_end(self) -> None:
            self._finish_update()

        def _finish_update(self) -> None:
            self.updates += 1
            step = self.updates * self.cfg.batch_size
            logged = self.model.logger.name_to_value
            now = time.perf_counter()
            row = {
                "step": step,
                "time": now - self.t_start,
                **self.tracker.drain(),
                "policy_loss": float(logged.get("train/policy_gradient_loss", math.nan)),
                "value_loss": float(logged.get("train/value_loss", math.nan)),
                "entropy": -float(logged.get("train/entropy_loss", math.nan)),
                "approx_kl": float(logged.get("train/approx_kl", math.nan)),
                "clipfrac": float(logged.get("train/clip_fraction", math.nan)),
                "explained_variance": float(logged.get("train/explained_variance", math.nan)),
                "lr": float(logged.get("train/learning_rate", math.nan)),
                "steps_per_s": self.cfg.batch_size / max(now - self.t_update, 1e-9),
            }
            self.t_update = now
            self.run.append_metrics(row)
            if self.updates in self.save_at:
                self.run.save_checkpoint(self.agent, step)
            self.bar.update(self.updates, row)

    return RunCallback


__all__ = [
    "is_sb3_config",  # re-exported for callers of the sb3 backend; defined in agents.sb3
    "load_sb3_checkpoint",
    "sb3_agent_from_config",  # re-exported as well
    "sb3_policy_kwargs",
    "sb3_ppo_kwargs",
    "train_sb3",
]
