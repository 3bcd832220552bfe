"""Deep Q-learning (DQN, Double DQN, n-step returns), readable top to bottom (after CleanRL's dqn.py).

One process, a same-step-autoreset vector env, a HookedAgent whose network is a Q-network (its
logits are the Q-values, its value is max Q). Transitions go to a preallocated NumPy replay
buffer laid out ``(time, env)``, so each env's transitions stay in order and n-step returns are
computed when a batch is sampled. A target network, a linear epsilon schedule, Huber loss and
gradient clipping complete the classic recipe.

Run folders, checkpoints (log-spaced by default) and ``metrics.csv`` are those of PPO.
``resume.pt`` holds the whole trainer state including the replay buffer; with a world whose
vector env can save its state (the maze) a resumed run ends exactly where an uninterrupted run
would have; with other worlds (the rook endgame) the episodes in flight restart, reseeded, and
everything else (weights, optimiser, buffer, random streams) continues exactly.

Why one file of this length: like CleanRL's, the algorithm reads top to bottom in one file
(config, replay buffer, training loop, evaluation).
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor, nn

from policylens.agents.agent import HookedAgent
from policylens.envs import make_vec
from policylens.rollout.engine import legal_actions
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
from policylens.train.ppo import checkpoint_updates

SUCCESS_OUTCOMES = ("checkmate",)
"""``info["outcome"]`` values that count as a success in worlds without a ``success`` label."""


@dataclass
class DQNConfig:
    """Hyperparameters of a DQN run; every field is saved in the run's config.json."""

    env_id: str
    """Registered world to train in (a world's recipe fills it: ``policylens.worlds``)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options passed to the world (e.g. opponent, max_steps)."""
    arch: str = "mlp"
    """Network architecture; it must offer a Q head (``head="q"``, see policylens.agents.ARCHS)."""
    arch_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": [256, 256], "activation": "relu"}
    )
    """Options of the architecture (hidden sizes, activation); ``head="q"`` is added."""
    total_steps: int = 1_000_000
    """Environment steps to train for (summed over envs); training runs whole vector steps, so
    a count that is not a multiple of ``num_envs`` is rounded up (:func:`train_dqn` records the
    rounded count in the run's config.json)."""
    num_envs: int = 16
    """Environments stepped together; each vector step adds num_envs transitions."""
    buffer_size: int = 100_000
    """Replay buffer capacity in transitions (rounded down to a multiple of num_envs)."""
    batch_size: int = 128
    """Transitions per gradient step."""
    learning_rate: float = 5e-4
    """Adam learning rate at the start."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to zero over training."""
    gamma: float = 0.99
    """Discount factor."""
    n_step: int = 1
    """Rewards summed before bootstrapping (1 = classic one-step Q-learning)."""
    double_dqn: bool = True
    """Choose the bootstrap action with the online network, value it with the target network."""
    start_epsilon: float = 1.0
    """Exploration rate at the start."""
    end_epsilon: float = 0.05
    """Exploration rate after the schedule."""
    exploration_fraction: float = 0.2
    """Share of total_steps over which epsilon falls linearly from start to end."""
    learning_starts: int = 10_000
    """Environment steps collected before the first gradient step."""
    train_frequency: int = 4
    """Environment steps (summed over envs) per gradient step."""
    target_update: int = 2_000
    """Environment steps between target-network updates."""
    tau: float = 1.0
    """Target update rate: 1 copies the online network, < 1 moves the target part-way."""
    huber_delta: float = 1.0
    """Huber loss threshold (squared error below it, absolute error above)."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for learning (Q-values come out in these units)."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip."""
    mask_illegal: bool = False
    """Act and bootstrap only over ``info["legal_actions"]`` (the world must publish it)."""
    seed: int = 0
    """Seed of the envs, the network init, exploration and replay sampling."""
    threads: int = 1
    """Torch CPU threads (one is fastest for small networks on a busy machine)."""
    checkpoints: int = 20
    """Number of checkpoints besides the first and last."""
    checkpoint_spacing: str = "log"
    """'log' (dense early, for training dynamics) or 'linear'."""
    log_every: int = 10_000
    """Environment steps between rows of metrics.csv."""
    resume_every: int = 5
    """Save the resumable trainer state (buffer included) every this many metrics rows."""

    def __post_init__(self) -> None:
        problems = limits.type_problems(self)
        if problems:
            raise ValueError("Invalid DQN config: " + "; ".join(problems) + ".")
        problems += limits.bound_problems(self, {
            "total_steps": limits.MAX_STEPS, "num_envs": limits.MAX_ENVS,
            "buffer_size": limits.MAX_BUFFER, "batch_size": limits.MAX_BATCH,
            "n_step": limits.MAX_EPOCHS, "checkpoints": limits.MAX_CHECKPOINTS, "threads": 256,
        })  # fmt: skip
        if self.seed < 0 or self.checkpoints < 0:
            problems.append("seed and checkpoints must be >= 0")
        for name in (
            "total_steps",
            "num_envs",
            "batch_size",
            "n_step",
            "train_frequency",
            "target_update",
            "threads",
            "log_every",
            "resume_every",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_envs >= 1 and self.total_steps < self.num_envs:
            problems.append(
                f"total_steps {self.total_steps} is smaller than one vector step (num_envs {self.num_envs})"
            )
        if self.num_envs >= 1 and self.n_step >= 1 and self.buffer_rows <= self.n_step:
            problems.append(
                f"buffer_size {self.buffer_size} must hold more than n_step ({self.n_step}) steps "
                f"of each of the {self.num_envs} envs"
            )
        if self.learning_starts < 0:
            problems.append(f"learning_starts must be >= 0, got {self.learning_starts}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.gamma <= 1:
            problems.append(f"gamma must lie in [0, 1], got {self.gamma}")
        for name in ("start_epsilon", "end_epsilon", "exploration_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 < self.tau <= 1:
            problems.append(f"tau must lie in (0, 1], got {self.tau}")
        if self.huber_delta <= 0 or self.max_grad_norm <= 0 or self.reward_scale <= 0:
            problems.append("huber_delta, max_grad_norm and reward_scale must be > 0")
        if self.checkpoint_spacing not in ("log", "linear"):
            problems.append(
                f"checkpoint_spacing must be 'log' or 'linear', got {self.checkpoint_spacing!r}"
            )
        if self.arch_kwargs.get("head", "q") != "q":
            problems.append(
                f"arch_kwargs head must be 'q' for DQN, got {self.arch_kwargs['head']!r}"
            )
        if problems:
            raise ValueError("Invalid DQN config: " + "; ".join(problems) + ".")

    @property
    def buffer_rows(self) -> int:
        """Time steps per env the buffer holds."""
        return self.buffer_size // self.num_envs

    @property
    def num_iterations(self) -> int:
        """Vector steps of training: ``total_steps`` rounded up to whole vector steps."""
        return math.ceil(self.total_steps / self.num_envs)

    def rounding_note(self, flag: str = "--steps") -> str | None:
        """A sentence saying ``total_steps`` is trained as more steps (None when it is not)."""
        return limits.rounding_note(self.total_steps, self.num_envs, "vector steps", flag)


# -- schedules and targets ----------------------------------------------------------------------
def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """``start`` at ``t = 0`` moving linearly to ``end`` at ``t = duration``, then ``end``."""
    if duration <= 0:
        return end
    return start + (end - start) * min(t / duration, 1.0)


def td_targets(
    returns: Tensor,
    discounts: Tensor,
    next_q_target: Tensor,
    next_q_online: Tensor | None = None,
    next_masks: Tensor | None = None,
) -> Tensor:
    """TD targets ``R + discount * Q_target(s', a*)`` of a batch.

    Args:
        returns: ``(batch,)`` discounted (n-step) reward sums.
        discounts: ``(batch,)`` ``gamma ** n``, or 0 where the episode terminated.
        next_q_target: ``(batch, actions)`` target-network Q-values of the bootstrap states.
        next_q_online: ``(batch, actions)`` online Q-values there: given, ``a*`` is their argmax
            (Double DQN); None, ``a*`` is the target's own argmax (DQN: ``max_a Q_target``).
        next_masks: ``(batch, actions)`` bool, the actions ``a*`` may be chosen from (rows with no
            True are treated as all True).
    """
    chooser = next_q_target if next_q_online is None else next_q_online
    if next_masks is not None:
        allowed = next_masks | ~next_masks.any(dim=1, keepdim=True)
        chooser = chooser.masked_fill(~allowed, -torch.inf)
    best = chooser.argmax(dim=1, keepdim=True)  # (batch, 1)
    return returns + discounts * next_q_target.gather(1, best).squeeze(1)


# -- replay buffer ------------------------------------------------------------------------------
class Batch(NamedTuple):
    """A sampled batch of n-step transitions (NumPy arrays)."""

    obs: np.ndarray  # (batch, *obs_shape)
    actions: np.ndarray  # (batch,) int64
    returns: np.ndarray  # (batch,) float32, sum of gamma**k * r_k up to the episode's end
    next_obs: np.ndarray  # (batch, *obs_shape), the state bootstrapped from
    discounts: np.ndarray  # (batch,) float32, gamma**steps, 0 after termination
    next_masks: np.ndarray | None  # (batch, actions) bool legal actions in next_obs


class ReplayBuffer:
    """Preallocated NumPy ring buffer of transitions, ``(rows, num_envs)``: one column per env.

    Row ``t`` holds every env's transition of one vector step, so a column is one env's
    transitions in time order and n-step returns are summed at sampling time. ``next_obs`` is
    stored explicitly: for the last step of an episode it is the episode's final observation
    (``infos["final_obs"]``), not the first observation of the next episode.
    """

    def __init__(
        self,
        rows: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype,
        num_actions: int,
        store_masks: bool = False,
    ) -> None:
        if rows < 1 or num_envs < 1:
            raise ValueError(
                f"A replay buffer needs rows and num_envs >= 1, got {rows}, {num_envs}."
            )
        self.rows, self.num_envs = rows, num_envs
        self.obs = np.zeros((rows, num_envs, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((rows, num_envs, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros((rows, num_envs), dtype=np.int64)
        self.rewards = np.zeros((rows, num_envs), dtype=np.float32)
        self.terminated = np.zeros((rows, num_envs), dtype=bool)
        self.done = np.zeros((rows, num_envs), dtype=bool)  # terminated or truncated
        self.next_masks = (
            np.ones((rows, num_envs, num_actions), dtype=bool) if store_masks else None
        )
        self.pos = 0  # the row written next
        self.filled = 0  # rows written so far (at most ``rows``)

    def __len__(self) -> int:
        """Transitions stored."""
        return self.filled * self.num_envs

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        done: np.ndarray,
        next_masks: np.ndarray | None = None,
    ) -> None:
        """Store one vector step (every array has the env axis first)."""
        p = self.pos
        self.obs[p], self.next_obs[p], self.actions[p] = obs, next_obs, actions
        self.rewards[p], self.terminated[p], self.done[p] = rewards, terminated, done
        if self.next_masks is not None:
            if next_masks is None:
                raise ValueError("This buffer stores legal-action masks; pass next_masks to add().")
            self.next_masks[p] = next_masks
        self.pos = (p + 1) % self.rows
        self.filled = min(self.filled + 1, self.rows)

    def sample(
        self, batch_size: int, n_step: int, gamma: float, generator: torch.Generator
    ) -> Batch:
        """Uniformly sample ``batch_size`` n-step transitions.

        A start row qualifies when the ``n_step`` rows from it were all written in order (its
        age, counted back from the newest row, is at least ``n_step - 1``).
        """
        if self.filled < n_step:
            raise ValueError(
                f"The replay buffer holds {self.filled} steps per env, fewer than n_step={n_step}; "
                "collect more before sampling (raise learning_starts)."
            )
        age = torch.randint(n_step - 1, self.filled, (batch_size,), generator=generator).numpy()
        env = torch.randint(0, self.num_envs, (batch_size,), generator=generator).numpy()
        start = (self.pos - 1 - age) % self.rows  # (batch,)
        rows = (start[:, None] + np.arange(n_step)) % self.rows  # (batch, n)
        cols = env[:, None]
        done = self.done[rows, cols]  # (batch, n)
        # alive[:, k]: no episode ended before step k of the window.
        alive = np.ones_like(done)
        alive[:, 1:] = np.cumprod(~done[:, :-1], axis=1).astype(bool)
        powers = gamma ** np.arange(n_step)  # (n,)
        returns = (self.rewards[rows, cols] * alive * powers).sum(axis=1)
        last = np.where(done.any(axis=1), done.argmax(axis=1), n_step - 1)  # (batch,)
        last_row = rows[np.arange(batch_size), last]
        discounts = gamma ** (last + 1.0) * ~self.terminated[last_row, env]
        return Batch(
            obs=self.obs[start, env],
            actions=self.actions[start, env],
            returns=returns.astype(np.float32),
            next_obs=self.next_obs[last_row, env],
            discounts=discounts.astype(np.float32),
            next_masks=None if self.next_masks is None else self.next_masks[last_row, env],
        )

    _ARRAYS = ("obs", "next_obs", "actions", "rewards", "terminated", "done", "next_masks")

    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer as tensors (``resume.pt`` is read with weights_only)."""
        state: dict[str, Any] = {"pos": self.pos, "filled": self.filled}
        for name in self._ARRAYS:
            arr = getattr(self, name)
            if arr is not None:
                state[name] = torch.from_numpy(arr[: self.filled].copy())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        filled = int(state["filled"])
        if filled > self.rows or tuple(state["obs"].shape[1:]) != self.obs.shape[1:]:
            raise ValueError(
                "The saved replay buffer does not fit this run's buffer; resume with the same options."
            )
        self.pos, self.filled = int(state["pos"]), filled
        for name in self._ARRAYS:
            arr = getattr(self, name)
            if arr is not None:
                arr[:filled] = state[name].numpy()


# -- episode statistics -------------------------------------------------------------------------
# -- the trainer --------------------------------------------------------------------------------
RESUME_KEYS = ("iteration", "elapsed", "updates", "rows", "agent", "target", "optimizer",
               "generator", "torch_rng", "buffer", "env")  # fmt: skip
"""What a DQN ``resume.pt`` holds."""


def train_dqn(
    config: DQNConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> Run:
    """Train a Q-network agent with DQN into the run folder ``out``; returns the Run.

    ``resume=True`` continues from ``out/resume.pt``. ``stop_after_steps`` ends the process after
    that many more environment steps, as a kill would (used to test resuming).
    """
    from policylens.agents import ARCHS, build_agent

    # whole vector steps: a count that is not a multiple is rounded up, and recorded so
    config = replace(config, total_steps=config.num_iterations * config.num_envs)
    if (
        config.arch not in ARCHS
        or "head" not in inspect.signature(ARCHS[config.arch].cls).parameters
    ):
        q_archs = [a for a, s in ARCHS.items() if "head" in inspect.signature(s.cls).parameters]
        raise ValueError(
            f"DQN needs an architecture with a Q head; {config.arch!r} has none, use one of "
            f"{', '.join(q_archs)}."
        )
    torch.set_num_threads(config.threads)
    envs = make_vec(config.env_id, config.num_envs, **config.env_kwargs)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    obs_shape, obs_dtype = obs_space.shape, obs_space.dtype
    assert obs_shape is not None and obs_dtype is not None  # worlds observe Boxes
    assert isinstance(act_space, spaces.Discrete), "DQN acts in discrete action spaces"
    N, A = config.num_envs, int(act_space.n)
    agent = build_agent(
        config.arch, obs_shape, A, seed=config.seed, **{**config.arch_kwargs, "head": "q"}
    )
    if isinstance(obs_space, spaces.Box):  # a scaled observation is refused later
        agent.set_obs_high(float(np.max(obs_space.high)))
    target = copy.deepcopy(agent).requires_grad_(False)
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate, fused=True)
    generator = torch.Generator().manual_seed(config.seed)
    buffer = ReplayBuffer(config.buffer_rows, N, obs_shape, obs_dtype, A, config.mask_illegal)
    run_config = {"kind": "dqn", "trainer": config_json(asdict(config)), "agent": agent.config}

    run, state = Run.start(out, run_config, resume)
    try:
        next_obs, infos = envs.reset(seed=config.seed)
        if config.mask_illegal and "legal_actions" not in infos:
            raise ValueError(
                f"mask_illegal needs a world that labels info['legal_actions']; {config.env_id} does "
                "not, so train without masking."
            )
        outcomes = _outcome_columns(infos)
        tracker = EpisodeTracker(N, outcomes)
        tracker.start(infos, np.arange(N))
        start_iter, elapsed, updates, rows_written = 0, 0.0, 0, 0
        if state is not None:
            run.check_resume_fits(state, agent, RESUME_KEYS)
            run.check_resume_fits(state, target, what="target")
            agent.load_state_dict(state["agent"])
            target.load_state_dict(state["target"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            buffer.load_state_dict(state["buffer"])
            start_iter, elapsed = state["iteration"], state["elapsed"]
            updates, rows_written = state["updates"], state["rows"]
            if state["env"] is not None:
                # worlds with a saved state are policylens vector envs, which define it; VectorEnv does not
                envs.load_state_dict(env_from_saved(state["env"]))  # type: ignore[attr-defined]
                tracker.load_state_dict(state["tracker"])
                next_obs, infos = (
                    state["next_obs"].numpy(),
                    {"legal_actions": state["masks"].numpy()},
                )
            else:  # worlds without a savable state (the rook endgame) restart their episodes
                next_obs, infos = envs.reset(seed=config.seed + start_iter)
            run.truncate_metrics(start_iter * N)

        save_at = set(
            checkpoint_updates(config.num_iterations, config.checkpoints, config.checkpoint_spacing)
        )
        if start_iter == 0:
            run.save_checkpoint(agent, 0)
        masks = _legal(infos, N, A) if config.mask_illegal else None  # (N, A) legal actions now
        interval = {"loss": 0.0, "q": 0.0, "n": 0, "t": time.perf_counter(), "steps": 0}
        bar = TrainingProgress(progress, "DQN", "steps", config.num_iterations * N, start_iter * N)
        t_start = time.perf_counter() - elapsed
        saved_at = time.perf_counter()  # of the resume state
        stop_at = None if stop_after_steps is None else start_iter * N + stop_after_steps

        for iteration in range(start_iter, config.num_iterations):
            step_before, step = iteration * N, (iteration + 1) * N

            # -- act epsilon-greedily ------------------------------------------------------------------
            epsilon = linear_schedule(
                config.start_epsilon,
                config.end_epsilon,
                config.exploration_fraction * config.total_steps,
                step_before,
            )
            obs = np.asarray(next_obs)
            with torch.no_grad():
                q = agent(torch.from_numpy(obs))[0]  # (N, A)
                if masks is not None:
                    q = q.masked_fill(~torch.from_numpy(masks), -torch.inf)
                greedy = q.argmax(dim=1)
            explore = torch.rand(N, generator=generator) < epsilon
            allowed = torch.ones(N, A) if masks is None else torch.from_numpy(masks).float()
            allowed[allowed.sum(dim=1) == 0] = 1.0  # no legal move labelled: any move
            random_actions = torch.multinomial(allowed, 1, generator=generator).squeeze(1)
            actions = torch.where(explore, random_actions, greedy).numpy()

            # -- step the worlds and store the transitions ----------------------------------------------
            next_obs, reward, terminated, truncated, infos = envs.step(actions)
            done = terminated | truncated
            real_next = np.array(next_obs, copy=True)  # the obs each transition really led to
            next_masks = None
            if config.mask_illegal:
                masks = _legal(infos, N, A)
                next_masks = masks.copy()
            if done.any():
                idx = np.nonzero(done)[0]
                real_next[idx] = _rows(infos["final_obs"], idx)
                if next_masks is not None:
                    next_masks[idx] = _rows(infos["final_info"]["legal_actions"], idx)
            reward = np.asarray(reward, dtype=np.float32)
            buffer.add(obs, actions, reward * config.reward_scale, real_next, terminated, done,
                       next_masks)  # fmt: skip
            tracker.step(reward, terminated, truncated, infos)

            # -- learn: one gradient step per train_frequency env steps --------------------------------
            if config.anneal_lr:
                optimizer.param_groups[0]["lr"] = config.learning_rate * (
                    1 - iteration / config.num_iterations
                )
            due = step // config.train_frequency - step_before // config.train_frequency
            if step < config.learning_starts or buffer.filled < config.n_step:
                due = 0
            for _ in range(due):
                b = buffer.sample(config.batch_size, config.n_step, config.gamma, generator)
                q_all = agent(torch.from_numpy(b.obs))[0]  # (B, A)
                q_taken = q_all.gather(1, torch.from_numpy(b.actions)[:, None]).squeeze(1)  # (B,)
                with torch.no_grad():
                    next_obs_t = torch.from_numpy(b.next_obs)
                    y = td_targets(
                        torch.from_numpy(b.returns),
                        torch.from_numpy(b.discounts),
                        target(next_obs_t)[0],
                        agent(next_obs_t)[0] if config.double_dqn else None,
                        None if b.next_masks is None else torch.from_numpy(b.next_masks),
                    )
                loss = F.huber_loss(q_taken, y, delta=config.huber_delta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
                optimizer.step()
                updates += 1
                interval["loss"] += loss.item()
                interval["q"] += q_taken.mean().item()
                interval["n"] += 1

            # -- target network ------------------------------------------------------------------------
            if step // config.target_update > step_before // config.target_update:
                if config.tau == 1.0:
                    target.load_state_dict(agent.state_dict())
                else:
                    with torch.no_grad():
                        for p_t, p in zip(target.parameters(), agent.parameters(), strict=True):
                            p_t.lerp_(p, config.tau)

            # -- bookkeeping ---------------------------------------------------------------------------
            interval["steps"] += N
            done_iters = iteration + 1
            last = done_iters == config.num_iterations
            if step // config.log_every > step_before // config.log_every or last:
                now = time.perf_counter()
                n = interval["n"]
                row = {
                    "step": step,
                    "time": now - t_start,
                    **tracker.drain(),
                    "loss": interval["loss"] / n if n else math.nan,
                    "q_mean": interval["q"] / n if n else math.nan,
                    "epsilon": epsilon,
                    "lr": optimizer.param_groups[0]["lr"],
                    "updates": updates,
                    "steps_per_s": interval["steps"] / max(now - interval["t"], 1e-9),
                }
                run.append_metrics(row)
                rows_written += 1
                interval = {"loss": 0.0, "q": 0.0, "n": 0, "t": now, "steps": 0}
                bar.update(step, row, extra=f"eps {row['epsilon']:.2f}")
                if (
                    rows_written % config.resume_every == 0
                    or last
                    or time.perf_counter() - saved_at >= RESUME_SECONDS
                ):
                    saved_at = time.perf_counter()
                    run.save_resume_state(
                        {
                            "iteration": done_iters,
                            "elapsed": now - t_start,
                            "updates": updates,
                            "rows": rows_written,
                            "agent": agent.state_dict(),
                            "target": target.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "generator": generator.get_state(),
                            "torch_rng": torch.get_rng_state(),
                            "buffer": buffer.state_dict(),
                            "env": saved_env_state(envs),
                            "tracker": tracker.state_dict(),
                            "next_obs": torch.from_numpy(np.array(next_obs)),
                            "masks": torch.from_numpy(_legal(infos, N, A))
                            if config.mask_illegal
                            else torch.zeros(0),
                        }
                    )
            if done_iters in save_at:
                run.save_checkpoint(agent, step)
            if stop_at is not None and step >= stop_at:
                break
        else:
            run.mark_done(config.num_iterations * N)
        bar.close()
        envs.close()
    finally:
        run.release()
    return run


def _outcome_columns(infos: dict[str, Any]) -> tuple[str, ...]:
    """Metrics columns for the failure outcomes of worlds that label ``info["outcome"]``."""
    if "outcome" not in infos:
        return ()
    from policylens.envs.chess import OUTCOMES

    return tuple(o for o in OUTCOMES if o and o not in SUCCESS_OUTCOMES)


def _rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Stack entries ``idx`` of a vector-env info array (Gymnasium's may hold one array per env)."""
    if values.dtype == object:
        return np.stack([np.asarray(values[i]) for i in idx])
    return values[idx]


def _legal(infos: dict[str, Any], n: int, num_actions: int) -> np.ndarray:
    """``info["legal_actions"]`` as a ``(n, num_actions)`` bool array."""
    legal = legal_actions(infos, n, num_actions)
    if legal is None:
        raise ValueError("this world does not label info['legal_actions']; train unmasked.")
    return legal.numpy()


# -- evaluation ---------------------------------------------------------------------------------
def evaluate_q_agent(
    agent: HookedAgent,
    env_id: str,
    episodes: int = 1000,
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 10_000,
    epsilon: float = 0.0,
    mask_illegal: bool = False,
    max_envs: int = 250,
) -> dict[str, Any]:
    """Play ``episodes`` episodes epsilon-greedily (``epsilon=0``: argmax Q) and summarise them.

    Each env slot contributes its first episode only. Returns success (checkmate in the rook
    endgame), return and length with 95% intervals, and the share of each ``outcome`` label.
    """
    from policylens.rollout import engine, stats

    policy = engine.Policy(greedy=True, epsilon=epsilon, mask_illegal=mask_illegal)
    options = engine.EpisodeOptions(
        seed=seed, policy=policy, max_envs=max_envs, labels=engine.Labels(end=("outcome",))
    )
    eps = engine.run_episodes(agent, episodes, env_id, env_kwargs, options)
    outcomes = [str(e.end.get("outcome", "")) for e in eps]
    summary: dict[str, Any] = {
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs or {}),
        "epsilon": epsilon,
        "mask_illegal": mask_illegal,
        "episodes": len(eps),
        "success": stats.proportion([e.success for e in eps]),
        "return": stats.mean([e.ret for e in eps]),
        "length": stats.mean([e.length for e in eps]),
    }
    labelled = sorted({o for o in outcomes if o})
    if labelled:
        summary["outcomes"] = {o: stats.proportion([x == o for x in outcomes]) for o in labelled}
    return summary
