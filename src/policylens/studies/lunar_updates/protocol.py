"""The two-phase protocol: settings, the phase trainers, jobs and the experiment folder.

Layout of an experiment folder ``DIR``::

    DIR/experiment.json                  settings (query with find_experiments)
    DIR/seed_<s>/phase1/                 run folder (config.json, checkpoints/, metrics.csv, DONE)
    DIR/seed_<s>/phase1/evaluation.json  the initial and pre models' episodes
    DIR/seed_<s>/<B>/phase2/             run folder of phase 2 on reward B
    DIR/seed_<s>/<B>/models/             update, noise and subtracted weights (.safetensors)
    DIR/seed_<s>/<B>/salvage/            run folder: the subtracted model retrained on A
    DIR/seed_<s>/<B>/update.json         metadata, evaluations, salvage curve
    DIR/analysis/jobs.json               what each job did and how long it took

Jobs (:class:`Job` in, plain dict out, no global state) run in a local process pool. Finished
phases are reused, so rerunning an experiment with the same settings resumes it.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from policylens import artifacts
from policylens.errors import check_known
from policylens.lenses import updates as U
from policylens.studies.lunar_updates.evaluation import (
    ensure_lunar_world,
    evaluate_weights,
    variant_coefficients,
)

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent
    from policylens.runs import Run
    from policylens.train.ppo import PPOConfig

BACKENDS = ("builtin", "sb3")
"""Trainers: the built-in PPO (policylens.train.ppo) and Stable-Baselines3's PPO MlpPolicy."""
EXPERIMENT_FILE = "experiment.json"
UNIT_FILE = "update.json"
EVAL_FILE = "evaluation.json"
RECIPE_OPTIONS = ("hidden", "num_envs", "num_steps", "learning_rate")
"""Options of :func:`policylens.worlds.lunar.LunarRecipe` an experiment may override."""


# ----------------------------------------------------------------------------- settings
def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-9"``, ``"0,2,5"``, ``"3"`` or a mix (``"0-2,7"``) -> sorted unique seeds."""
    seeds: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                seeds.update(range(lo, hi + 1))
            else:
                seeds.add(int(part))
        except ValueError:
            raise ValueError(
                f"Cannot read seeds {text!r}; write a range like 0-9, a list like 0,2,5, or both."
            ) from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"Seeds {text!r} must name at least one non-negative integer, e.g. 0-9.")
    return tuple(sorted(seeds))


@dataclass
class UpdatesConfig:
    """Settings of one two-phase experiment; saved in ``experiment.json``."""

    phase1: str = "no_fuel"
    """Reward variant of phase 1 (A)."""
    phase2: tuple[str, ...] = ("scaled_fuel",)
    """Reward variant(s) of phase 2 (B); several give updates to compare across variants."""
    steps1: int = 300_000
    """Phase-1 environment steps (rounded down to whole rollouts)."""
    steps2: int = 30_000
    """Phase-2 environment steps, K (rounded down to whole rollouts)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds; each seeds its envs, network init, sampling and noise."""
    backend: str = "builtin"
    """Trainer: 'builtin' (policylens PPO) or 'sb3' (Stable-Baselines3 PPO MlpPolicy)."""
    salvage_steps: int | None = None
    """Steps of retraining the subtracted model on A (default: a quarter of phase 1)."""
    episodes: int = 50
    """Full episodes per evaluated model."""
    greedy: bool = False
    """Evaluate with argmax actions instead of sampling."""
    control: bool = True
    """Add the phase 2 that keeps reward A (the control update)."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """Overrides of LunarRecipe: hidden, num_envs, num_steps, learning_rate."""
    eval_seed: int = 1_000_000
    """Seed of the evaluation episodes (the same for every model)."""

    def __post_init__(self) -> None:
        from policylens.envs.lunar import check_variant

        if isinstance(self.phase2, str):
            self.phase2 = (self.phase2,)
        self.phase2 = tuple(dict.fromkeys(self.phase2))
        self.seeds = tuple(int(s) for s in self.seeds)
        check_variant(self.phase1)
        for v in self.phase2:
            check_variant(v)
        if not self.phase2:
            raise ValueError("phase2 must name at least one reward variant, e.g. scaled_fuel.")
        check_known([self.backend], BACKENDS, "backend")
        unknown = sorted(set(self.recipe) - set(RECIPE_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unknown recipe option(s) {', '.join(unknown)}; use {', '.join(RECIPE_OPTIONS)}."
            )
        if not self.seeds or min(self.seeds) < 0:
            raise ValueError("seeds must hold at least one non-negative seed, e.g. 0, 1, 2.")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}.")
        batch = self.rollout
        if self.steps2 <= 0:
            raise ValueError(
                f"The phase-2 length must be positive, got steps2={self.steps2}; with no "
                "phase 2 there is no update to study."
            )
        for name, steps, option in (
            ("phase-1", self.steps1, "steps1"),
            ("phase-2", self.steps2, "steps2"),
            ("salvage", self.salvage, "salvage_steps"),
        ):
            if steps < batch:
                raise ValueError(
                    f"The {name} length {steps} is shorter than one PPO rollout ({batch} steps = "
                    f"num_envs x num_steps); use {option} >= {batch} or a smaller rollout."
                )

    @property
    def rollout(self) -> int:
        """Environment steps per PPO update."""
        return int(self.recipe.get("num_envs", 16)) * int(self.recipe.get("num_steps", 256))

    @property
    def salvage(self) -> int:
        """Steps of the salvage phase (``salvage_steps`` or its default)."""
        return (
            self.salvage_steps
            if self.salvage_steps is not None
            else max(self.steps1 // 4, self.rollout)
        )

    @property
    def units(self) -> tuple[str, ...]:
        """Phase-2 variants trained per seed: B variants, then the control A (if asked)."""
        extra = (self.phase1,) if self.control and self.phase1 not in self.phase2 else ()
        return self.phase2 + extra

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON data (tuples as lists), so saved and live settings compare."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpdatesConfig:
        return cls(**{**data, "phase2": tuple(data["phase2"]), "seeds": tuple(data["seeds"])})


def phase_config(config: UpdatesConfig, variant: str, steps: int, seed: int) -> PPOConfig:
    """The PPOConfig of one phase: the lunar world's recipe on ``variant`` for ``steps``."""
    from policylens.worlds.lunar import LunarRecipe

    recipe = dict(config.recipe)
    if "hidden" in recipe:
        recipe["hidden"] = tuple(recipe["hidden"])
    return LunarRecipe(
        variant, total_steps=steps, seed=seed, env_id=ensure_lunar_world(), **recipe
    ).config()


def seed_dir(root: str | Path, seed: int) -> Path:
    """The folder of one seed in an experiment folder."""
    return Path(root) / f"seed_{seed}"


def load_experiment(path: str | Path) -> tuple[UpdatesConfig, dict[str, Any]]:
    """The settings of an experiment folder, with a clear error if it is not one."""
    path = Path(path)
    meta = path / EXPERIMENT_FILE
    if not meta.is_file():
        raise FileNotFoundError(
            f"{path} is not an updates experiment (no {EXPERIMENT_FILE}); create one with "
            "an updates run into that folder."
        )
    data = artifacts.read_json(meta)
    return UpdatesConfig.from_json(data["config"]), data


# ----------------------------------------------------------------------------- trainers
def train_phase(
    backend: str, ppo_config: PPOConfig, out: Path, init_from: Path | None = None
) -> Run:
    """Train one phase with ``backend`` into ``out`` (reused when finished); returns the Run.

    The built-in trainer resumes an unfinished folder from ``resume.pt``; SB3 has no exact
    resume, so an unfinished SB3 run of the same config is trained again from the start (its
    checkpoints replaced; nothing else in the folder is deleted).
    """
    from policylens.runs import Run

    if (out / "DONE").exists():
        return Run(out)
    if backend == "builtin":
        from policylens.train.ppo import train_ppo

        resume = (out / "config.json").exists()
        return train_ppo(ppo_config, out, resume=resume, progress=False, init_from=init_from)
    from policylens.train.sb3_backend import train_sb3

    return train_sb3(ppo_config, out, init_from=init_from, progress=False)


def final_checkpoint(run_dir: Path, phase: str, seed: int) -> Path:
    """The last checkpoint of a finished phase, or a clear error naming the missing phase."""
    from policylens.runs import Run

    hint = "run the experiment again with the same settings into the same folder to finish it"
    where = f"Missing the {phase} checkpoint of seed {seed}"
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{where}: {run_dir} holds no run; {hint}.")
    run = Run(run_dir)
    found = run.checkpoints()
    if not (run_dir / "DONE").exists() or not found:
        raise FileNotFoundError(f"{where}: {run_dir} did not finish training; {hint}.")
    return found[-1][1]


def agent_for(agent_config: dict[str, Any]) -> HookedAgent:
    """A fresh HookedAgent of the architecture in a run's agent config (either backend)."""
    from policylens.agents.models import agent_from_config
    from policylens.train.sb3_backend import is_sb3_config, sb3_agent_from_config

    if is_sb3_config(agent_config):
        return sb3_agent_from_config(agent_config)
    return agent_from_config(agent_config, source="the run's agent config")


def return_curve(rows: list[dict[str, float]]) -> list[list[float]]:
    """``[[step, return, episodes], ...]`` from metrics rows (return NaN when none finished)."""
    return [[r["step"], r.get("return", math.nan), r.get("episodes", 0.0)] for r in rows]


# ----------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One independent piece of an experiment: plain data, so any process (or machine) can run it."""

    kind: str
    """'phase1' (train A, evaluate initial and pre) or 'phase2' (train B, controls, salvage)."""
    root: str
    """Experiment folder."""
    seed: int
    variant: str
    """Reward of this job's training phase."""
    config: dict[str, Any]
    """The experiment's UpdatesConfig as JSON."""
    threads: int = 1
    """Torch threads of the job (one suits these small MLPs; workers add parallelism)."""


def run_job(job: Job) -> dict[str, Any]:
    """Run one job and return a plain summary; everything it needs is in ``job``."""
    torch.set_num_threads(job.threads)
    ensure_lunar_world()
    config = UpdatesConfig.from_json(job.config)
    t0 = time.perf_counter()
    if job.kind == "phase1":
        out = _phase1(job, config)
    elif job.kind == "phase2":
        out = _phase2(job, config)
    else:
        raise ValueError(f"Unknown job kind {job.kind!r}; use 'phase1' or 'phase2'.")
    return {"kind": job.kind, "seed": job.seed, "variant": job.variant,
            "seconds": time.perf_counter() - t0, **out}  # fmt: skip


def _evaluate(
    agent: HookedAgent, state: dict[str, torch.Tensor], config: UpdatesConfig, seed: int
) -> dict[str, Any]:
    """One model's evaluation: the experiment's episodes, seeded the same for every model."""
    return evaluate_weights(agent, state, config.episodes, config.eval_seed + seed, config.greedy)


def _phase1(job: Job, config: UpdatesConfig) -> dict[str, Any]:
    d = seed_dir(job.root, job.seed) / "phase1"
    run = train_phase(config.backend, phase_config(config, job.variant, config.steps1, job.seed), d)
    eval_file = d / EVAL_FILE
    if not eval_file.exists():
        agent = agent_for(run.config["agent"])
        first, last = run.checkpoints()[0], run.checkpoints()[-1]
        result = {
            name: _evaluate(agent, U.load_state(file), config, job.seed)
            for name, (_, file) in (("initial", first), ("pre", last))
        }
        artifacts.write_json(eval_file, result)
    result = artifacts.read_json(eval_file)
    return {"pre_return": result["pre"]["summary"]["return"][job.variant]["mean"]}


def noise_seed(seed: int, variant: str) -> int:
    """Seed of the noise control of one unit (distinct per seed and variant)."""
    return 7919 * (seed + 1) + 104729 * list(variant_coefficients()).index(variant)


def _phase2(job: Job, config: UpdatesConfig) -> dict[str, Any]:
    sd = seed_dir(job.root, job.seed)
    unit = sd / job.variant
    unit_file = unit / UNIT_FILE
    if unit_file.exists():
        return {"reused": True}
    pre_file = final_checkpoint(sd / "phase1", "phase-1 (pre)", job.seed)
    p2 = train_phase(
        config.backend,
        phase_config(config, job.variant, config.steps2, job.seed),
        unit / "phase2",
        init_from=pre_file,
    )
    post_file = final_checkpoint(p2.path, f"phase-2 (post, {job.variant})", job.seed)
    pre, post = U.load_state(pre_file), U.load_state(post_file)
    update = U.weight_delta(pre, post)
    noise = U.noise_like(update, noise_seed(job.seed, job.variant))
    models = unit / "models"
    U.save_state(update, models / "update.safetensors")
    U.save_state(noise, models / "noise.safetensors")
    derived = {
        "post": post,
        "subtracted": U.apply_update(pre, update, -1.0),
        "noise_subtracted": U.apply_update(pre, noise, -1.0),
        "noise_added": U.apply_update(pre, noise, 1.0),
    }
    U.save_state(derived["subtracted"], models / "subtracted.safetensors")
    agent = agent_for(p2.config["agent"])
    evaluations = {
        name: _evaluate(agent, state, config, job.seed) for name, state in derived.items()
    }
    sv = train_phase(
        config.backend,
        phase_config(config, config.phase1, config.salvage, job.seed),
        unit / "salvage",
        init_from=models / "subtracted.safetensors",
    )
    salvaged = U.load_state(final_checkpoint(sv.path, f"salvage ({job.variant})", job.seed))
    evaluations["salvaged"] = _evaluate(agent, salvaged, config, job.seed)
    salvage = {"curve": return_curve(sv.metrics()), "steps": config.salvage}
    artifacts.write_json(
        unit_file,
        {
            "seed": job.seed,
            "phase1": config.phase1,
            "phase2": job.variant,
            "control": job.variant == config.phase1,
            "steps1": config.steps1,
            "steps2": config.steps2,
            "backend": config.backend,
            "pre": str(pre_file.relative_to(job.root)),
            "post": str(post_file.relative_to(job.root)),
            "noise_seed": noise_seed(job.seed, job.variant),
            "evaluations": evaluations,
            "salvage": salvage,
        },
    )
    return {"post_return": evaluations["post"]["summary"]["return"][job.variant]["mean"]}


# ----------------------------------------------------------------------------- the experiment
def plan_jobs(config: UpdatesConfig, root: str | Path, threads: int = 1) -> list[Job]:
    """Phase-1 jobs (one per seed); phase-2 jobs follow from :func:`phase2_jobs`."""
    data = config.to_json()
    return [Job("phase1", str(root), s, config.phase1, data, threads) for s in config.seeds]


def phase2_jobs(config: UpdatesConfig, root: str | Path, seed: int, threads: int = 1) -> list[Job]:
    """One job per phase-2 variant (control included) for ``seed``."""
    data = config.to_json()
    return [Job("phase2", str(root), seed, v, data, threads) for v in config.units]


def run_experiment(
    config: UpdatesConfig,
    out: str | Path,
    workers: int = 1,
    log: Callable[[str], None] | None = None,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Run every job of the protocol into ``out``; returns the jobs' summaries (``jobs.json``).

    ``workers > 1`` runs the jobs in a local process pool (spawned processes, ``threads`` torch
    threads each); a phase-2 job starts as soon as its seed's phase 1 is done. Finished phases in ``out``
    are reused, so a killed experiment continues where it stopped. Analyse the folder with
    :func:`~policylens.studies.lunar_updates.analysis.analyze_experiment`.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}.")
    out = Path(out)
    with artifacts.FolderLock(out, "experiment folder"):  # one process writes an experiment
        return _run_jobs(config, out, workers, log or (lambda _m: None), threads)


def _run_jobs(
    config: UpdatesConfig, out: Path, workers: int, log: Callable[[str], None], threads: int
) -> list[dict[str, Any]]:
    """The body of :func:`run_experiment`, run while its folder is locked."""
    meta_file = out / EXPERIMENT_FILE
    env_id = ensure_lunar_world()
    if meta_file.exists():
        old = artifacts.read_json(meta_file)
        if old.get("config") != config.to_json():
            raise ValueError(
                f"{out} holds an experiment with other settings; choose another folder or repeat "
                "the same settings to continue it."
            )
    artifacts.write_json(
        meta_file,
        {"config": config.to_json(), "env_id": env_id, "kind": "two_phase_updates",
         "version": _version()},
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def done(res: dict[str, Any]) -> None:
        results.append(res)
        log(
            f"[{time.perf_counter() - t0:7.1f}s] seed {res['seed']} {res['kind']} "
            f"({res['variant']}) done in {res['seconds']:.1f}s"
        )

    if workers <= 1:
        for job in plan_jobs(config, out, threads):
            done(run_job(job))
            for j2 in phase2_jobs(config, out, job.seed, threads):
                done(run_job(j2))
    else:
        ctx = multiprocessing.get_context("spawn")
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        try:
            pending = {pool.submit(run_job, j): j for j in plan_jobs(config, out, threads)}
            while pending:
                finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    job = pending.pop(fut)
                    done(fut.result())  # re-raises a job's error here
                    if job.kind == "phase1":
                        for j2 in phase2_jobs(config, out, job.seed, threads):
                            pending[pool.submit(run_job, j2)] = j2
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    artifacts.write_json(out / "analysis" / "jobs.json", results)
    return results


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("policylens")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


__all__ = [
    "BACKENDS",
    "EXPERIMENT_FILE",
    "EVAL_FILE",
    "UNIT_FILE",
    "Job",
    "UpdatesConfig",
    "agent_for",
    "final_checkpoint",
    "load_experiment",
    "parse_seeds",
    "phase_config",
    "return_curve",
    "run_experiment",
    "run_job",
    "seed_dir",
    "train_phase",
]
