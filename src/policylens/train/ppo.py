"""Proximal Policy Optimisation, readable top to bottom (after CleanRL's ppo.py).

One process, a batched vector env, a HookedAgent. Checkpoints follow a schedule (log-spaced by
default, so training dynamics can be probed later); ``resume.pt`` after every few updates lets a
killed run continue and end exactly where an uninterrupted run with the same seed would have.

Speed: for CNNs on CPUs with native bf16 (AVX512-BF16, AMX), convolutions and matmuls run under
bf16 autocast while weights, optimiser and losses stay float32 (``precision``). The rollout acts
through ``HookedAgent.acting_forward`` (fused oneDNN kernels for MazeCNN) and keeps its per-step
bookkeeping in NumPy; truncated episodes' final observations are valued in the next step's
forward pass instead of a separate one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policylens.envs import make_vec
from policylens.runs import (
    RESUME_SECONDS,
    Run,
    TrainingProgress,
    config_json,
    env_from_saved,
    saved_env_state,
)
from policylens.train import limits
from policylens.train.episodes import EpisodeTracker
from policylens.train.threads import ThreadGovernor


@dataclass
class PPOConfig:
    """Hyperparameters of a PPO run; every field is saved in the run's config.json."""

    env_id: str
    """Registered world to train in (a world's recipe fills it: ``policylens.worlds``)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options passed to the world (e.g. cheese_region, num_levels)."""
    arch: str = "maze_cnn"
    """Network architecture (see policylens.agents.ARCHS)."""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the architecture (channels, hidden sizes...)."""
    total_steps: int = 3_000_000
    """Environment steps to train for (summed over envs); training runs whole rollouts, so a
    count that is not a multiple of ``batch_size`` is rounded up (:func:`train_ppo` records the
    rounded count in the run's config.json)."""
    num_envs: int = 64
    """Environments stepped together."""
    num_steps: int = 64
    """Steps per env in each rollout; batch = num_envs * num_steps."""
    learning_rate: float = 1e-3
    """Adam learning rate at the start."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to zero over training."""
    gamma: float = 0.95
    """Discount factor."""
    gae_lambda: float = 0.9
    """GAE lambda."""
    update_epochs: int = 2
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per pass."""
    clip_coef: float = 0.2
    """PPO ratio clip."""
    clip_vloss: bool = False
    """Clip the value loss like the policy ratio."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    seed: int = 0
    """Seed of the envs, the network init and the action sampling."""
    threads: int = 0
    """Torch CPU threads; 0 = as many as the cores other processes leave free, up to 2, re-checked
    every few seconds (see train/threads.py; pin a count to reproduce a run bit for bit)."""
    precision: str = "auto"
    """'float32', 'bfloat16' (autocast; weights and optimiser stay float32), or 'auto': bfloat16
    for convolutional networks where the CPU multiplies bf16 natively (AVX512-BF16 or AMX),
    else float32 (see compute_dtype)."""
    checkpoints: int = 20
    """Number of checkpoints besides the first and last."""
    checkpoint_spacing: str = "log"
    """'log' (dense early, for training dynamics) or 'linear'."""
    resume_every: int = 10
    """Save the resumable trainer state every this many updates."""
    init_weights: str | None = None
    """A .safetensors file of the same architecture to start from instead of fresh weights (e.g.
    an earlier run's last checkpoint, committed, to continue a long training in a new session);
    a resumed run takes its weights from resume.pt instead."""

    def __post_init__(self) -> None:
        problems = limits.type_problems(self)
        if problems:
            raise ValueError("Invalid PPO config: " + "; ".join(problems) + ".")
        problems += limits.bound_problems(self, {
            "total_steps": limits.MAX_STEPS, "num_envs": limits.MAX_ENVS,
            "num_steps": limits.MAX_ROLLOUT, "batch_size": limits.MAX_BATCH,
            "update_epochs": limits.MAX_EPOCHS, "num_minibatches": limits.MAX_EPOCHS,
            "checkpoints": limits.MAX_CHECKPOINTS, "threads": 256,
        })  # fmt: skip
        if self.learning_rate <= 0 or self.clip_coef < 0 or self.max_grad_norm <= 0:
            problems.append("learning_rate and max_grad_norm must be > 0 and clip_coef >= 0")
        if self.seed < 0 or self.checkpoints < 0:
            problems.append("seed and checkpoints must be >= 0")
        if self.total_steps < self.batch_size:
            problems.append(
                f"total_steps {self.total_steps} is smaller than one rollout ({self.batch_size} = num_envs x num_steps)"
            )
        if self.batch_size % self.num_minibatches:
            problems.append(
                f"num_minibatches {self.num_minibatches} must divide the batch {self.batch_size}"
            )
        if self.precision not in ("auto", "float32", "bfloat16"):
            problems.append("precision must be 'auto', 'float32' or 'bfloat16'")
        if self.checkpoint_spacing not in ("log", "linear"):
            problems.append("checkpoint_spacing must be 'log' or 'linear'")
        for name in (
            "num_envs",
            "num_steps",
            "update_epochs",
            "num_minibatches",
            "resume_every",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.threads < 0:
            problems.append("threads must be >= 0 (0 = adapt to the free cores)")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            problems.append("gamma and gae_lambda must lie in [0, 1]")
        if problems:
            raise ValueError("Invalid PPO config: " + "; ".join(problems) + ".")

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Rollouts trained: ``total_steps`` rounded up to whole rollouts."""
        return math.ceil(self.total_steps / self.batch_size)

    def rounding_note(self, flag: str = "--steps") -> str | None:
        """A sentence saying ``total_steps`` is trained as more steps (None when it is not)."""
        return limits.rounding_note(self.total_steps, self.batch_size, "rollouts", flag)


def compute_dtype(precision: str, convolutional: bool = True) -> torch.dtype:
    """The dtype convolutions and matmuls run in for a ``PPOConfig.precision`` and a network.

    ``auto`` picks bf16 only where it pays: on a CPU that multiplies bf16 natively (emulated,
    it is slower than float32) and for convolutional networks. A small MLP's matmuls are too
    short to win back autocast's casts (the lunar recipe's 64x64 MLP: a training step 1.18 ms in
    float32, 1.44 ms in bf16, measured).
    """
    if precision == "auto":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return torch.bfloat16 if native and convolutional else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]


def checkpoint_updates(num_updates: int, count: int, spacing: str) -> list[int]:
    """Update indices after which to save a checkpoint (0 = the initial weights, always included)."""
    if spacing == "log":
        points = np.unique(np.round(np.logspace(0, math.log10(max(num_updates, 1)), count)))
    else:
        points = np.unique(np.round(np.linspace(1, num_updates, count)))
    return sorted({0, num_updates, *(int(p) for p in points if 1 <= p <= num_updates)})


RESUME_KEYS = ("update", "elapsed", "agent", "optimizer", "generator", "torch_rng", "env",
               "tracker", "next_obs")  # fmt: skip
"""What a PPO ``resume.pt`` holds."""


def train_ppo(
    config: PPOConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_after_updates: int | None = None,
    init_from: str | Path | None = None,
) -> Run:
    """Train an agent with PPO into the run folder ``out``; returns the Run.

    ``resume=True`` continues from ``out/resume.pt``. ``stop_after_updates`` ends the process
    early as a kill would (used to test resuming). ``init_from`` (a ``.safetensors`` file of the
    same architecture) replaces the fresh initial weights, e.g. to continue a trained policy on a
    changed reward, as ``config.init_weights`` does (give one of them); a resumed run takes its
    weights from ``resume.pt`` instead.
    """
    from policylens.agents import build_agent

    # whole rollouts: a count that is not a multiple is rounded up, and recorded so
    config = replace(config, total_steps=config.num_updates * config.batch_size)
    if init_from is not None and config.init_weights is not None:
        raise ValueError("Give the starting weights once: init_from or init_weights, not both.")
    init_from = init_from if init_from is not None else config.init_weights
    governor = ThreadGovernor(config.threads)
    envs = make_vec(config.env_id, config.num_envs, **config.env_kwargs)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    obs_shape = obs_space.shape
    assert obs_shape is not None  # worlds observe Boxes
    assert isinstance(act_space, spaces.Discrete), "PPO here acts in discrete action spaces"
    torch.manual_seed(config.seed)
    agent = build_agent(
        config.arch, obs_shape, int(act_space.n), seed=config.seed, **config.arch_kwargs
    )
    if isinstance(obs_space, spaces.Box):  # a scaled observation is refused later
        agent.set_obs_high(float(np.max(obs_space.high)))
    if init_from is not None:
        agent.load_weights(init_from)
    # fused: one kernel for all parameters, 4x faster than the default per-tensor loop on CPU
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)
    generator = torch.Generator().manual_seed(config.seed)
    tracker = EpisodeTracker(config.num_envs)
    convolutional = any(isinstance(m, nn.Conv2d) for m in agent.modules())
    low = compute_dtype(config.precision, convolutional) == torch.bfloat16
    run_config = {
        "kind": "ppo",
        "trainer": config_json(asdict(config)),
        "agent": agent.config,
        "compute_dtype": "bfloat16" if low else "float32",  # what precision="auto" became here
    }

    run, state = Run.start(out, run_config, resume)
    try:
        next_obs, infos = envs.reset(seed=config.seed)
        tracker.start(infos, np.arange(config.num_envs))
        start_update, elapsed = 0, 0.0
        if state is not None:
            run.check_resume_fits(state, agent, RESUME_KEYS)
            agent.load_state_dict(state["agent"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if state["env"] is not None:
                # worlds with a saved state are policylens vector envs, which define it; VectorEnv does not
                envs.load_state_dict(env_from_saved(state["env"]))  # type: ignore[attr-defined]
                tracker.load_state_dict(state["tracker"])
                next_obs = state["next_obs"].numpy()
            else:  # worlds without a savable state (e.g. Box2D) restart their episodes, reseeded
                next_obs, infos = envs.reset(seed=config.seed + state["update"])
                tracker.start(infos, np.arange(config.num_envs))
            start_update, elapsed = state["update"], state["elapsed"]
            run.truncate_metrics(start_update * config.batch_size)

        save_at = set(
            checkpoint_updates(config.num_updates, config.checkpoints, config.checkpoint_spacing)
        )
        if start_update == 0:
            run.save_checkpoint(agent, 0)

        T, N = config.num_steps, config.num_envs
        # Rollout buffers are NumPy arrays: the per-step bookkeeping on 64-row vectors runs several
        # times faster in NumPy than as torch ops; training reads them as tensors without copying.
        obs_buf = np.zeros((T, N, *obs_shape), dtype=obs_space.dtype)  # uint8 mazes
        act_buf = np.zeros((T, N), dtype=np.int64)
        logp_buf, rew_buf, done_buf, val_buf = (
            np.zeros((T, N), dtype=np.float32) for _ in range(4)
        )

        bar = TrainingProgress(progress, "PPO", "updates", config.num_updates, start_update)
        t_start = time.perf_counter() - elapsed
        saved_at = time.perf_counter()  # of the resume state
        for update in range(start_update, config.num_updates):
            t_update = time.perf_counter()
            governor.update()
            if config.anneal_lr:
                optimizer.param_groups[0]["lr"] = config.learning_rate * (
                    1 - update / config.num_updates
                )

            # -- rollout -------------------------------------------------------------------------------
            # One autocast region for the whole rollout: the weights do not change in it, so their
            # bf16 copies are cast once per update (the fused MazeCNN casts them when built).
            policy = agent.acting_forward(torch.bfloat16 if low else torch.float32, N)
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=low):
                truncated_at = None  # (env indices, final observations) of the previous step
                for t in range(T + 1):
                    obs_t = np.asarray(next_obs)
                    rows = (
                        obs_t if truncated_at is None else np.concatenate([obs_t, truncated_at[1]])
                    )
                    # truncated episodes' final values ride along in the same forward
                    out_logits, out_value = policy(torch.from_numpy(rows))
                    logits, value = out_logits[:N].float().numpy(), out_value.float().numpy()
                    if truncated_at is not None:  # bootstrap them from their final observation
                        rew_buf[t - 1, truncated_at[0]] += config.gamma * value[N:]
                        value = value[:N]
                    if t == T:
                        next_value = value
                        break
                    obs_buf[t] = obs_t
                    action, logp_buf[t] = sample_actions(logits, generator)
                    act_buf[t], val_buf[t] = action, value
                    next_obs, reward, terminated, truncated, infos = envs.step(action)
                    rew_buf[t] = reward
                    done_buf[t] = terminated | truncated
                    tracker.step(np.asarray(reward), terminated, truncated, infos)
                    idx = np.nonzero(truncated)[0]
                    truncated_at = (idx, _final_obs(infos, idx)) if len(idx) else None

            # -- generalised advantage estimation ------------------------------------------------------
            adv = gae(rew_buf, val_buf, done_buf, next_value, config.gamma, config.gae_lambda)

            # -- optimisation --------------------------------------------------------------------------
            b_obs = torch.from_numpy(obs_buf).reshape(-1, *obs_shape)
            b_act = torch.from_numpy(act_buf).reshape(-1)
            b_logp = torch.from_numpy(logp_buf).reshape(-1)
            b_adv = torch.from_numpy(adv).reshape(-1)
            b_ret = torch.from_numpy(adv + val_buf).reshape(-1)  # the returns
            b_val = torch.from_numpy(val_buf).reshape(-1)
            mb = config.batch_size // config.num_minibatches
            stats: dict[str, list[float]] = {k: [] for k in ("pg", "v", "ent", "kl", "clip")}
            for _ in range(config.update_epochs):
                perm = torch.randperm(config.batch_size, generator=generator)
                for start in range(0, config.batch_size, mb):
                    i = perm[start : start + mb]
                    with torch.autocast("cpu", torch.bfloat16, enabled=low):
                        # index_select: 17x faster than b_obs[i] for 1024 maze rows (measured)
                        logits, value = agent(b_obs.index_select(0, i))
                    logits, value = logits.float(), value.float()
                    logp_all = torch.log_softmax(logits, dim=-1)
                    logp = logp_all.gather(1, b_act[i, None]).squeeze(1)
                    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                    log_ratio = logp - b_logp[i]
                    ratio = log_ratio.exp()
                    a = b_adv[i]
                    if config.norm_adv:
                        a = (a - a.mean()) / (a.std() + 1e-8)
                    pg_loss = torch.max(
                        -a * ratio, -a * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)
                    ).mean()
                    if config.clip_vloss:
                        v_clipped = b_val[i] + (value - b_val[i]).clamp(
                            -config.clip_coef, config.clip_coef
                        )
                        v_loss = (
                            0.5
                            * torch.max((value - b_ret[i]) ** 2, (v_clipped - b_ret[i]) ** 2).mean()
                        )
                    else:
                        v_loss = 0.5 * ((value - b_ret[i]) ** 2).mean()
                    loss = pg_loss - config.ent_coef * entropy + config.vf_coef * v_loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
                    optimizer.step()
                    with torch.no_grad():
                        stats["pg"].append(pg_loss.item())
                        stats["v"].append(v_loss.item())
                        stats["ent"].append(entropy.item())
                        stats["kl"].append(((ratio - 1) - log_ratio).mean().item())
                        stats["clip"].append(
                            ((ratio - 1).abs() > config.clip_coef).float().mean().item()
                        )

            # -- bookkeeping ---------------------------------------------------------------------------
            done_updates = update + 1
            step = done_updates * config.batch_size
            var_ret = b_ret.var().item()
            episodes = tracker.drain()
            row = {
                "step": step,
                "time": time.perf_counter() - t_start,
                **episodes,
                "policy_loss": float(np.mean(stats["pg"])),
                "value_loss": float(np.mean(stats["v"])),
                "entropy": float(np.mean(stats["ent"])),
                "approx_kl": float(np.mean(stats["kl"])),
                "clipfrac": float(np.mean(stats["clip"])),
                "explained_variance": math.nan
                if var_ret == 0
                else 1 - (b_ret - b_val).var().item() / var_ret,
                "lr": optimizer.param_groups[0]["lr"],
                "steps_per_s": config.batch_size / (time.perf_counter() - t_update),
                "threads": governor.current,
            }
            run.append_metrics(row)
            if done_updates in save_at:
                run.save_checkpoint(agent, step)
            if (
                done_updates % config.resume_every == 0
                or done_updates == config.num_updates
                or time.perf_counter() - saved_at >= RESUME_SECONDS
            ):
                saved_at = time.perf_counter()
                run.save_resume_state(
                    {
                        "update": done_updates,
                        "elapsed": time.perf_counter() - t_start,
                        "agent": agent.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "env": saved_env_state(envs),
                        "tracker": tracker.state_dict(),
                        "next_obs": torch.from_numpy(np.array(next_obs)),
                    }
                )
            bar.update(done_updates, row)
            if stop_after_updates is not None and done_updates - start_update >= stop_after_updates:
                break
        else:
            run.mark_done(config.num_updates * config.batch_size)
        bar.close()
        envs.close()
    finally:
        run.release()
    return run


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    next_value: np.ndarray | float,
    gamma: float,
    lam: float,
) -> np.ndarray:
    """Generalised advantage estimates (Schulman et al. 2016), float32, shaped like ``rewards``.

    ``rewards``, ``values`` (of each step's observation) and ``dones`` (1 where an episode ended
    at that step) are ``(T, ...)``: ``(T, envs)`` in training, ``(T,)`` for one episode;
    ``next_value`` values the observation after step ``T - 1``. A done step bootstraps nothing
    and cuts the trace, so a truncated episode's final value must already be in its reward (as
    :func:`train_ppo` adds it), or its last step left not done. ``lam = 0``: one-step TD errors.
    """
    T = len(rewards)
    adv = np.zeros(np.shape(rewards), dtype=np.float32)
    last = np.zeros(np.shape(rewards)[1:], dtype=np.float32)
    for t in reversed(range(T)):
        nonterminal = 1.0 - dones[t]
        following = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv


def _final_obs(infos: dict[str, Any], idx: np.ndarray) -> np.ndarray:
    final = infos["final_obs"]
    if final.dtype == object:  # Gymnasium's SyncVectorEnv stores one array per env
        return np.stack([final[i] for i in idx])
    return final[idx]


def sample_actions(logits: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Actions drawn from ``softmax(logits)`` row by row, and their log-probabilities.

    Inverse-CDF sampling in NumPy with uniforms from the seeded ``generator``: on the rollout's
    (64, actions) arrays this costs a fraction of torch's log_softmax + multinomial + gather.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    cdf = np.cumsum(np.exp(logp), axis=1)
    u = torch.rand(len(logits), generator=generator).numpy()
    action = np.minimum((u[:, None] > cdf).sum(axis=1), logits.shape[1] - 1)
    return action, logp[np.arange(len(logits)), action]
