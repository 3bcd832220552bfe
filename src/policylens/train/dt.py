"""Decision-transformer training: offline, behaviour cloning conditioned on return-to-go.

Reads a trajectory store (``policylens dt collect``: one row per step with ``obs``,
``direction``, ``actions``, ``rtg``, ``timestep``, ``episode``), samples windows of ``context``
consecutive steps of one episode (ending at a uniformly drawn step; steps before the episode's
start are padding), and minimises the cross-entropy of each real step's action read at its state
token. AdamW, linear warm-up then cosine decay, gradient clipping; no dropout, so with a pinned
thread count a run repeats bit for bit and a killed-and-resumed run equals an uninterrupted one.

A run folder like every trainer's (:class:`~policylens.runs.Run`): ``config.json`` (``kind
"dt"``, the trainer config with the store's world, the model's config as ``agent``),
``checkpoints/step_<N>.safetensors`` (``N`` gradient steps, log-spaced), ``metrics.csv``,
``resume.pt`` and ``DONE``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from policylens.agents.agent import WEIGHTS_FILE
from policylens.agents.dt import DTBatch, DTConfig, build_dt, load_dt
from policylens.agents.pretrained import check_files, read_config
from policylens.rollout.store import Store, is_store
from policylens.runs import RESUME_SECONDS, Run, TrainingProgress, config_json
from policylens.train import limits
from policylens.train.ppo import checkpoint_updates

RESUME_KEYS = ("step", "elapsed", "rows", "model", "optimizer", "generator")
"""What a DT ``resume.pt`` holds."""
MODEL_FIELDS = ("context", "n_layers", "d_model", "n_heads", "d_mlp", "attn_only", "act_fn",
                "normalization_type", "use_direction")  # fmt: skip
"""The trainer config's fields that shape the model (:class:`~policylens.agents.dt.DTConfig`)."""


@dataclass
class DTTrainConfig:
    """Hyperparameters of a decision-transformer run; every field is saved in config.json."""

    data: str
    """The trajectory store to learn from."""
    env_id: str = ""
    """The world the data comes from (filled from the store)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """The world's options (filled from the store)."""
    context: int = 8
    """Steps per window (the model sees ``3 * context`` tokens)."""
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 2
    d_mlp: int = 512
    attn_only: bool = False
    act_fn: str = "relu"
    normalization_type: str | None = "LN"
    use_direction: bool = True
    """Give the state token the agent's absolute direction (the view alone does not show it)."""
    total_steps: int = 3000
    """Gradient steps."""
    batch_size: int = 128
    """Windows per gradient step."""
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    """Steps of linear learning-rate warm-up (then cosine decay to a tenth)."""
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    rtg_headroom: float = 0.0
    """Raise the return-to-go of the best play's windows (episodes of the mix's exact planner that
    reached the goal) by a uniform draw in ``[0, rtg_headroom]``. Nothing in the data earns more
    than the best play, so a target above the data's top (RTG 1.0 over a best return of 0.96) then
    asks for the best play instead of for tokens the DT never saw. 0: the recorded return-to-go."""
    seed: int = 0
    """Seeds the initial weights and the window sampling."""
    threads: int = 1
    """Torch CPU threads (pin it to repeat a run bit for bit)."""
    checkpoints: int = 10
    """Checkpoints besides the first and the last."""
    checkpoint_spacing: str = "log"
    log_every: int = 100
    """Gradient steps between rows of metrics.csv."""
    resume_every: int = 5
    """Save the resumable state every this many metrics rows (and at least every 2 minutes)."""

    def __post_init__(self) -> None:
        problems = limits.type_problems(self)
        if problems:
            raise ValueError("Invalid DT config: " + "; ".join(problems) + ".")
        for name in ("total_steps", "batch_size", "threads", "log_every", "resume_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "checkpoints", "warmup_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.max_grad_norm <= 0 or self.weight_decay < 0:
            problems.append("learning_rate and max_grad_norm must be > 0, weight_decay >= 0")
        if self.rtg_headroom < 0:
            problems.append(f"rtg_headroom must be >= 0, got {self.rtg_headroom}")
        if self.checkpoint_spacing not in ("log", "linear"):
            problems.append(
                f"checkpoint_spacing must be 'log' or 'linear', got {self.checkpoint_spacing!r}"
            )
        problems += limits.bound_problems(self, {
            "total_steps": limits.MAX_STEPS, "batch_size": limits.MAX_BATCH,
            "checkpoints": limits.MAX_CHECKPOINTS, "threads": 256, "context": 4096,
        })  # fmt: skip
        if problems:
            raise ValueError("Invalid DT config: " + "; ".join(problems) + ".")

    def model_config(self, meta: dict[str, Any]) -> DTConfig:
        """The model of these settings for a store with ``meta``."""
        return DTConfig(
            obs_shape=tuple(meta.get("obs_shape", (7, 7, 3))),
            num_actions=int(meta["num_actions"]),
            max_timestep=int(meta["max_steps"]),
            **{name: getattr(self, name) for name in MODEL_FIELDS},
        )


class TrajectoryData:
    """A trajectory store held in memory, sampled as windows of one episode each."""

    def __init__(self, path: str | Path) -> None:
        if Path(path).is_dir() and not is_store(path):
            raise ValueError(
                f"{path} is not a trajectory store (collect one with `policylens dt collect`)."
            )
        store = Store(path)
        meta = store.meta
        missing = [
            k
            for k in ("obs", "direction", "actions", "rtg", "timestep", "episode")
            if k not in store
        ]
        if meta.get("kind") != "trajectories" or missing:
            raise ValueError(
                f"{path} is not a trajectory store (collect one with `policylens dt collect`)."
            )
        self.meta = meta
        self.obs = torch.from_numpy(store["obs"][:])  # (N, H, W, 3) uint8
        self.direction = torch.from_numpy(store["direction"][:].astype(np.int64))
        self.actions = torch.from_numpy(store["actions"][:].astype(np.int64))
        self.rtg = torch.from_numpy(store["rtg"][:].astype(np.float32))
        self.timestep = torch.from_numpy(store["timestep"][:].astype(np.int64))
        episode = store["episode"][:]
        if len(episode) == 0:
            raise ValueError(f"{path} holds no steps; collect some episodes first.")
        starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
        lengths = np.diff(np.r_[starts, len(episode)])
        self.start = torch.from_numpy(np.repeat(starts, lengths).astype(np.int64))  # (N,)
        self.rows = len(episode)
        self.best = self._best_play(store, starts, lengths)
        store.close()

    def _best_play(self, store: Store, starts: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """Per row: is it from an episode of the mix's exact planner (no epsilon, temperature,
        wrong side or wandering) that reached the goal?"""
        policies = self.meta.get("policies", [])
        exact = [
            i
            for i, p in enumerate(policies)
            if not (p.get("epsilon") or p.get("temperature") or p.get("wrong_side"))
            and not np.any(p.get("wander", 0))
        ]
        if "policy" not in store or "terminated" not in store or not exact:
            return torch.zeros(self.rows, dtype=torch.bool)
        policy = store["policy"][:]
        ends = starts + lengths - 1
        reached = store["terminated"][:][ends] & (self.rtg.numpy()[starts] > 0)
        return torch.from_numpy(np.isin(policy, exact) & np.repeat(reached, lengths))

    def windows(
        self,
        ends: torch.Tensor,
        k: int,
        headroom: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> DTBatch:
        """The ``k`` steps ending at rows ``ends`` (earlier steps of another episode masked); with
        ``headroom``, the best play's windows ask for up to that much more return (see
        :attr:`DTTrainConfig.rtg_headroom`)."""
        idx = ends[:, None] + torch.arange(-k + 1, 1)  # (B, k)
        mask = idx >= self.start[ends][:, None]
        idx = torch.where(mask, idx, ends[:, None])
        rtg = self.rtg[idx]
        if headroom > 0:
            raise_by = torch.rand(len(ends), generator=generator) * headroom
            rtg = rtg + torch.where(self.best[ends], raise_by, 0.0)[:, None]
        return DTBatch(
            obs=self.obs[idx],
            actions=self.actions[idx],
            rtg=rtg,
            timesteps=self.timestep[idx],
            mask=mask,
            direction=self.direction[idx],
        )


def run_store(run: Run, data: str | None = None) -> str:
    """``data``, or else the store the DT run trained on; refused in one sentence when that is
    not here (a zoo DT ships without its data)."""
    if data:
        return data
    path = str(run.config.get("trainer", {}).get("data", ""))
    if not path or not Path(path).exists():
        task = run.config.get("data", {}).get("task") or "obstacles"
        raise FileNotFoundError(
            f"{run.path}'s training store {path or '(none recorded)'} is not here; collect one "
            f"with `policylens dt collect --task {task} --seed 1 --out DIR` and pass --data DIR."
        )
    return path


def learning_rate(config: DTTrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to a tenth at ``total_steps``."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    span = max(config.total_steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def dt_loss(model: Any, batch: DTBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of the real steps' actions, and the share predicted right (argmax)."""
    logits = model(batch)  # (B, K, A)
    mask = batch.mask
    chosen, target = logits[mask], batch.actions[mask]
    loss = F.cross_entropy(chosen, target)
    accuracy = (chosen.argmax(-1) == target).float().mean()
    return loss, accuracy


def train_dt(
    config: DTTrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> Run:
    """Train a decision transformer on ``config.data`` into the run folder ``out``.

    ``resume=True`` continues from ``out/resume.pt``; ``stop_after_steps`` ends the process after
    that many more gradient steps, as a kill would (to test resuming).
    """
    data = TrajectoryData(config.data)
    if config.rtg_headroom > 0 and not bool(data.best.any()):
        raise ValueError(
            f"{config.data} holds no episode of an exact planner that reached the goal, so "
            "rtg_headroom has no best play to raise; train without it."
        )
    config = replace(
        config,
        data=str(Path(config.data).resolve()),
        env_id=config.env_id or str(data.meta["env_id"]),
        env_kwargs=config.env_kwargs or dict(data.meta.get("env_kwargs", {})),
    )
    if config.env_id != data.meta["env_id"]:
        raise ValueError(
            f"env_id {config.env_id} differs from the store's world {data.meta['env_id']}."
        )
    torch.set_num_threads(config.threads)
    model_config = config.model_config(data.meta)
    model = build_dt(model_config, seed=config.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    generator = torch.Generator().manual_seed(config.seed)
    run_config = {
        "kind": "dt",
        "trainer": config_json(asdict(config)),
        "agent": model_config.to_json(),
        "data": {
            "rows": data.rows,
            "episodes": data.meta.get("episodes"),
            "task": data.meta.get("task"),
        },
    }
    run, state = Run.start(out, run_config, resume)
    try:
        step, elapsed, rows_written = 0, 0.0, 0
        if state is not None:
            run.check_resume_fits(state, model, RESUME_KEYS, what="model")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            step, elapsed, rows_written = state["step"], state["elapsed"], state["rows"]
            run.truncate_metrics(step)
        save_at = set(
            checkpoint_updates(config.total_steps, config.checkpoints, config.checkpoint_spacing)
        )
        if step == 0:
            run.save_checkpoint(model, 0)
        bar = TrainingProgress(progress, "DT", "steps", config.total_steps, step)
        t_start = time.perf_counter() - elapsed
        saved_at = time.perf_counter()
        interval = {"loss": 0.0, "acc": 0.0, "n": 0, "t": time.perf_counter()}
        stop_at = None if stop_after_steps is None else step + stop_after_steps
        while step < config.total_steps:
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            ends = torch.randint(data.rows, (config.batch_size,), generator=generator)
            batch = data.windows(ends, config.context, config.rtg_headroom, generator)
            loss, accuracy = dt_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            step += 1
            interval["loss"] += loss.item()
            interval["acc"] += accuracy.item()
            interval["n"] += 1
            last = step == config.total_steps
            if step % config.log_every == 0 or last:
                now = time.perf_counter()
                n = interval["n"]
                row = {
                    "step": step,
                    "time": now - t_start,
                    "episodes": 0,
                    "loss": interval["loss"] / n,
                    "accuracy": interval["acc"] / n,
                    "lr": lr,
                    "steps_per_s": n / max(now - interval["t"], 1e-9),
                }
                run.append_metrics(row)
                rows_written += 1
                interval = {"loss": 0.0, "acc": 0.0, "n": 0, "t": now}
                bar.update(step, row, extra=f"loss {row['loss']:.3f}")
                if (
                    rows_written % config.resume_every == 0
                    or last
                    or time.perf_counter() - saved_at >= RESUME_SECONDS
                ):
                    saved_at = time.perf_counter()
                    run.save_resume_state(
                        {
                            "step": step,
                            "elapsed": now - t_start,
                            "rows": rows_written,
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "generator": generator.get_state(),
                        }
                    )
            if step in save_at:
                run.save_checkpoint(model, step)
            if stop_at is not None and step >= stop_at:
                break
        else:
            run.mark_done(config.total_steps)
        bar.close()
    finally:
        run.release()
    return run


def load_decision_transformer(source: str | Path, step: int | None = None) -> Any:
    """The decision transformer of a DT run folder (at a checkpoint, the latest by default), of a
    pretrained folder (``policylens zoo export``'s layout, its sha256 checked), of ``zoo:NAME`` or
    of ``hf://org/name``, in eval mode: what ``load_agent`` is for the other agents."""
    folder = Path(source)
    pretrained = not str(source).startswith(("zoo:", "hf:")) and (folder / WEIGHTS_FILE).is_file()
    if pretrained and not (folder / "checkpoints").is_dir():
        config = read_config(folder)
        check_files(folder, config)
        return load_dt(folder / WEIGHTS_FILE, config["agent"])
    return load_run_dt(Run(source), step)


def load_run_dt(run: Run, step: int | None = None) -> Any:
    """The decision transformer of a DT run at a checkpoint (latest by default), in eval mode."""
    if run.config.get("kind") != "dt":
        raise ValueError(
            f"{run.path} is not a decision-transformer run (kind {run.config.get('kind')!r})."
        )
    _, file = run.checkpoint(step)
    return load_dt(file, run.config["agent"])
