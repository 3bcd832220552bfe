"""Isolating updates: two-phase PPO on LunarLander, the weight update, and its controls.

The protocol (one experiment folder, every seed and reward variant an independent job):

1. **Phase 1**: train on reward A (e.g. ``no_fuel``) from scratch; its last checkpoint is *pre*.
2. **Phase 2**: from *pre*, train on reward B (e.g. ``scaled_fuel``) for K steps; *post*.
   The **update** is ``post - pre`` and the **subtracted** model ``pre - update``.
3. **Controls**: ``pre -/+ noise`` with noise of the update's norm in every tensor, and a phase 2
   that keeps reward A (its own update, post and subtracted model).
4. **Evaluation** of initial, pre, post, subtracted and the controls over N full episodes.
   Reward variants only re-weight the same two reward terms (the reward never feeds back into the
   dynamics), so each model plays one set of episodes, scored under every variant: total reward,
   fuel used and landing rate, each with a 95% interval. All models play the same episode seeds.
5. **Salvage**: retrain the subtracted model on reward A and record its learning curve.

Layout of an experiment folder ``DIR``::

    DIR/experiment.json                  settings (query with find_experiments)
    DIR/seed_<s>/phase1/                 run folder (config.json, checkpoints/, metrics.csv, DONE)
    DIR/seed_<s>/phase1/evaluation.json  the initial and pre models' episodes
    DIR/seed_<s>/<B>/phase2/             run folder of phase 2 on reward B
    DIR/seed_<s>/<B>/models/             update, noise and subtracted weights (.safetensors)
    DIR/seed_<s>/<B>/salvage/            run folder: the subtracted model retrained on A
    DIR/seed_<s>/<B>/update.json         metadata, evaluations, salvage curve
    DIR/analysis/updates.json            everything :func:`analyze_experiment` computes

Jobs (:class:`Job` in, plain dict out, no global state) run in a local process pool.
"""

from __future__ import annotations

import concurrent.futures as cf
import difflib
import math
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policylens import artifacts
from policylens.lenses import updates as U
from policylens.rollout import stats

LUNAR_ID = "policylens/LunarLander-v0"
"""The LunarLander world with reward variants, registered by policylens.envs."""
BACKENDS = ("builtin", "sb3")
"""Trainers: the built-in PPO (policylens.train.ppo) and Stable-Baselines3's PPO MlpPolicy."""
EXPERIMENT_FILE = "experiment.json"
UNIT_FILE = "update.json"
EVAL_FILE = "evaluation.json"
UNIT_MODELS = ("post", "subtracted", "noise_subtracted", "noise_added", "salvaged")
"""Models evaluated in each phase-2 unit (initial and pre are evaluated once per seed)."""
RECIPE_OPTIONS = ("hidden", "num_envs", "num_steps", "learning_rate")
"""Options of :func:`policylens.train.recipes.lunar_recipe` an experiment may override."""
RECOVERY_FRACTION = 0.9
"""Salvage counts as recovered once the training return is 90% of the way back to pre's."""


# ----------------------------------------------------------------------------- the world
def ensure_lunar_world() -> str:
    """The LunarLander world's id, checking that policylens.envs registered it."""
    from policylens.envs import WORLDS

    if LUNAR_ID not in WORLDS:
        raise ValueError(
            f"The world {LUNAR_ID} is not registered; reinstall policylens (policylens.envs "
            "registers it on import)."
        )
    return LUNAR_ID


def variant_coefficients() -> dict[str, tuple[float, float]]:
    """Reward variant -> (coefficient of the fuel-free reward, coefficient of the fuel term)."""
    from policylens.envs import lunar

    return dict(lunar._COEFFS)


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
    """Overrides of lunar_recipe: hidden, num_envs, num_steps, learning_rate."""
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
            raise ValueError("Name at least one phase-2 reward variant, e.g. --phase2 scaled_fuel.")
        if self.backend not in BACKENDS:
            close = difflib.get_close_matches(str(self.backend), BACKENDS, n=1, cutoff=0.3)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown backend {self.backend!r}.{hint} Use builtin or sb3.")
        unknown = sorted(set(self.recipe) - set(RECIPE_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unknown recipe option(s) {', '.join(unknown)}; use {', '.join(RECIPE_OPTIONS)}."
            )
        if not self.seeds or min(self.seeds) < 0:
            raise ValueError("Give at least one non-negative seed, e.g. --seeds 0-2.")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}.")
        batch = self.rollout
        if self.steps2 <= 0:
            raise ValueError(
                f"The phase-2 length must be positive, got --steps2 {self.steps2}; with no "
                "phase 2 there is no update to study."
            )
        for name, steps, flag in (
            ("phase-1", self.steps1, "--steps1"),
            ("phase-2", self.steps2, "--steps2"),
            ("salvage", self.salvage, "--salvage-steps"),
        ):
            if steps < batch:
                raise ValueError(
                    f"The {name} length {steps} is shorter than one PPO rollout ({batch} steps = "
                    f"num_envs x num_steps); use {flag} >= {batch} or a smaller rollout."
                )

    @property
    def rollout(self) -> int:
        """Environment steps per PPO update."""
        return int(self.recipe.get("num_envs", 16)) * int(self.recipe.get("num_steps", 256))

    @property
    def salvage(self) -> int:
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
        return io_json(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpdatesConfig:
        return cls(**{**data, "phase2": tuple(data["phase2"]), "seeds": tuple(data["seeds"])})


def io_json(obj: Any) -> Any:
    """Round-trip through JSON (tuples become lists) so saved and live settings compare."""
    import json

    return json.loads(json.dumps(obj))


def phase_config(config: UpdatesConfig, variant: str, steps: int, seed: int):
    """The PPOConfig of one phase: the LunarLander recipe on ``variant`` for ``steps``."""
    from policylens.train.recipes import lunar_recipe

    recipe = dict(config.recipe)
    if "hidden" in recipe:
        recipe["hidden"] = tuple(recipe["hidden"])
    return lunar_recipe(
        variant, total_steps=steps, seed=seed, env_id=ensure_lunar_world(), **recipe
    )


# ----------------------------------------------------------------------------- trainers
def train_phase(backend: str, ppo_config, out: Path, init_from: Path | None = None):
    """Train one phase with ``backend`` into ``out`` (reused when finished); returns the Run.

    The built-in trainer resumes an unfinished folder from ``resume.pt``; SB3 has no exact
    resume, so an unfinished SB3 folder is trained again from the start.
    """
    from policylens.runs import Run

    if (out / "DONE").exists():
        return Run(out)
    if backend == "builtin":
        from policylens.train.ppo import train_ppo

        resume = (out / "config.json").exists()
        return train_ppo(ppo_config, out, resume=resume, progress=False, init_from=init_from)
    from policylens.train.sb3_backend import train_sb3

    if out.exists():
        shutil.rmtree(out)
    return train_sb3(ppo_config, out, init_from=init_from, progress=False)


def final_checkpoint(run_dir: Path, phase: str, seed: int) -> Path:
    """The last checkpoint of a finished phase, or a clear error naming the missing phase."""
    from policylens.runs import Run

    hint = "rerun `policylens updates run` with the same settings and --out to finish it"
    where = f"Missing the {phase} checkpoint of seed {seed}"
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{where}: {run_dir} holds no run; {hint}.")
    run = Run(run_dir)
    found = run.checkpoints()
    if not (run_dir / "DONE").exists() or not found:
        raise FileNotFoundError(f"{where}: {run_dir} did not finish training; {hint}.")
    return found[-1][1]


def agent_for(agent_config: dict[str, Any]):
    """A fresh HookedAgent of the architecture in a run's agent config (either backend)."""
    from policylens.agents.models import agent_from_config
    from policylens.train.sb3_backend import is_sb3_config, sb3_agent_from_config

    if is_sb3_config(agent_config):
        return sb3_agent_from_config(agent_config)
    return agent_from_config(agent_config, source="the run's agent config")


def arch_signature(agent_config: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' weights comparable: network kind, options and sizes."""
    if "sb3" in agent_config:
        net = {k: v for k, v in agent_config["sb3"].items() if k != "ortho_init"}
        arch = "sb3_mlp"
    else:
        net = dict(agent_config.get("kwargs", {}))
        net.pop("init", None)
        arch = agent_config.get("arch")
    return {
        "arch": arch,
        "net": net,
        "obs_shape": agent_config.get("obs_shape"),
        "num_actions": agent_config.get("num_actions"),
    }


# ----------------------------------------------------------------------------- evaluation
def lunar_episodes(
    agent,
    episodes: int,
    seed: int,
    greedy: bool = False,
    env_id: str = LUNAR_ID,
) -> dict[str, list]:
    """Play ``episodes`` full LunarLander episodes (one per env slot); per-episode lists of the
    fuel-free return ``base``, the fuel term ``fuel`` (<= 0), ``length``, ``landed``,
    ``landed_on_pad``, ``crashed`` and ``truncated`` (time limit)."""
    from policylens.envs import make_vec

    envs = make_vec(env_id, episodes, reward_variant="fuel")
    generator = torch.Generator().manual_seed(seed)
    obs, _ = envs.reset(seed=seed)
    n = episodes
    base, fuel = np.zeros(n), np.zeros(n)
    length = np.zeros(n, dtype=np.int64)
    flags = {
        k: np.zeros(n, dtype=bool) for k in ("landed", "landed_on_pad", "crashed", "truncated")
    }
    active = np.ones(n, dtype=bool)
    agent.eval()
    while active.any():
        with torch.no_grad():
            logits, _ = agent(np.asarray(obs, dtype=np.float32))  # (n, actions)
        if greedy:
            actions = logits.argmax(-1)
        else:
            actions = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator)
            actions = actions[:, 0]
        obs, _, terminated, truncated, infos = envs.step(actions.numpy())
        ended = terminated | truncated
        final = infos.get("final_info", {})
        for i in np.nonzero(active)[0]:
            src = final if ended[i] else infos
            base[i] += float(src["reward_base"][i])
            fuel[i] += float(src["fuel"][i])
            length[i] += 1
            if ended[i]:
                for k in ("landed", "landed_on_pad", "crashed"):
                    flags[k][i] = bool(src[k][i])
                flags["truncated"][i] = bool(truncated[i] and not terminated[i])
                active[i] = False
    envs.close()
    return {
        "base": base.tolist(),
        "fuel": fuel.tolist(),
        "length": length.tolist(),
        **{k: v.tolist() for k, v in flags.items()},
    }


def summarize_episodes(eps: dict[str, list]) -> dict[str, Any]:
    """Returns under every reward variant, fuel used and landing rates, with 95% intervals."""
    base, fuel = np.asarray(eps["base"]), np.asarray(eps["fuel"])
    out: dict[str, Any] = {
        "episodes": len(base),
        "return": {
            v: stats.mean(b * base + f * fuel) for v, (b, f) in variant_coefficients().items()
        },
        "fuel_used": stats.mean(-fuel),
        "length": stats.mean(eps["length"]),
    }
    for k in ("landed", "landed_on_pad", "crashed", "truncated"):
        out[k] = stats.proportion(eps[k])
    return out


def evaluate_weights(
    agent, state: dict[str, torch.Tensor], config: UpdatesConfig, seed: int
) -> dict[str, Any]:
    """Load ``state`` into ``agent`` and play the experiment's evaluation episodes."""
    agent.load_net_state_dict(state, source="the evaluated weights")
    eps = lunar_episodes(agent, config.episodes, config.eval_seed + seed, config.greedy)
    return {"summary": summarize_episodes(eps), "episodes": eps}


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


def seed_dir(root: str | Path, seed: int) -> Path:
    return Path(root) / f"seed_{seed}"


def run_job(job: Job) -> dict[str, Any]:
    """Run one job and return a plain summary; everything it needs is in ``job``."""
    torch.set_num_threads(1)
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


def _phase1(job: Job, config: UpdatesConfig) -> dict[str, Any]:
    d = seed_dir(job.root, job.seed) / "phase1"
    run = train_phase(config.backend, phase_config(config, job.variant, config.steps1, job.seed), d)
    eval_file = d / EVAL_FILE
    if not eval_file.exists():
        agent = agent_for(run.config["agent"])
        first, last = run.checkpoints()[0], run.checkpoints()[-1]
        result = {
            name: evaluate_weights(agent, U.load_state(file), config, job.seed)
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
        name: evaluate_weights(agent, state, config, job.seed) for name, state in derived.items()
    }
    sv = train_phase(
        config.backend,
        phase_config(config, config.phase1, config.salvage, job.seed),
        unit / "salvage",
        init_from=models / "subtracted.safetensors",
    )
    salvaged = U.load_state(final_checkpoint(sv.path, f"salvage ({job.variant})", job.seed))
    evaluations["salvaged"] = evaluate_weights(agent, salvaged, config, job.seed)
    salvage = {"curve": _curve(sv.metrics()), "steps": config.salvage}
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


def _curve(rows: list[dict[str, float]]) -> list[list[float]]:
    """``[[step, return, episodes], ...]`` from metrics rows (return NaN when none finished)."""
    return [[r["step"], r.get("return", math.nan), r.get("episodes", 0.0)] for r in rows]


# ----------------------------------------------------------------------------- the experiment
def plan_jobs(config: UpdatesConfig, root: str | Path) -> list[Job]:
    """Phase-1 jobs (one per seed); phase-2 jobs follow from :func:`phase2_jobs`."""
    data = config.to_json()
    return [Job("phase1", str(root), s, config.phase1, data) for s in config.seeds]


def phase2_jobs(config: UpdatesConfig, root: str | Path, seed: int) -> list[Job]:
    """One job per phase-2 variant (control included) for ``seed``."""
    data = config.to_json()
    return [Job("phase2", str(root), seed, v, data) for v in config.units]


def run_experiment(
    config: UpdatesConfig,
    out: str | Path,
    workers: int = 1,
    log: Callable[[str], None] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run the whole protocol into ``out`` and analyse it; returns :func:`analyze_experiment`.

    ``workers > 1`` runs the jobs in a local process pool (spawned processes, one torch thread
    each); a phase-2 job starts as soon as its seed's phase 1 is done. Finished phases in ``out``
    are reused, so a killed experiment continues where it stopped.
    """
    log = log or (lambda _m: None)
    out = Path(out)
    meta_file = out / EXPERIMENT_FILE
    env_id = ensure_lunar_world()
    if meta_file.exists():
        old = artifacts.read_json(meta_file)
        if old.get("config") != config.to_json():
            raise ValueError(
                f"{out} holds an experiment with other settings; choose another --out or repeat "
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
        for job in plan_jobs(config, out):
            done(run_job(job))
            for j2 in phase2_jobs(config, out, job.seed):
                done(run_job(j2))
    else:
        ctx = multiprocessing.get_context("spawn")
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        try:
            pending = {pool.submit(run_job, j): j for j in plan_jobs(config, out)}
            while pending:
                finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    job = pending.pop(fut)
                    done(fut.result())  # re-raises a job's error here
                    if job.kind == "phase1":
                        for j2 in phase2_jobs(config, out, job.seed):
                            pending[pool.submit(run_job, j2)] = j2
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    artifacts.write_json(out / "analysis" / "jobs.json", results)
    return analyze_experiment(out, report=report)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("policylens")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


# ----------------------------------------------------------------------------- analysis
def load_experiment(path: str | Path) -> tuple[UpdatesConfig, dict[str, Any]]:
    """The settings of an experiment folder, with a clear error if it is not one."""
    path = Path(path)
    meta = path / EXPERIMENT_FILE
    if not meta.is_file():
        raise FileNotFoundError(
            f"{path} is not an updates experiment (no {EXPERIMENT_FILE}); create one with "
            "`policylens updates run ... --out DIR`."
        )
    data = artifacts.read_json(meta)
    return UpdatesConfig.from_json(data["config"]), data


def _smooth(curve: list[list[float]], window: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Episode-weighted rolling mean of a training-return curve: (steps, returns)."""
    c = np.asarray(curve, dtype=float).reshape(-1, 3)
    steps, ret, n = c[:, 0], c[:, 1], c[:, 2]
    ok = np.isfinite(ret) & (n > 0)
    w = np.where(ok, n, 0.0)
    r = np.where(ok, ret, 0.0)
    out = np.full(len(steps), np.nan)
    for i in range(len(steps)):
        lo = max(0, i - window + 1)
        if w[lo : i + 1].sum() > 0:
            out[i] = (r[lo : i + 1] * w[lo : i + 1]).sum() / w[lo : i + 1].sum()
    return steps, out


def steps_to_recover(
    curve: list[list[float]], start: float, target: float, fraction: float = RECOVERY_FRACTION
) -> float | None:
    """First step at which the smoothed training return has come ``fraction`` of the way from
    ``start`` to ``target``; 0 when ``start`` already reaches it; None if it never does."""
    if not (math.isfinite(start) and math.isfinite(target)):
        return None
    goal = start + fraction * (target - start)
    if start >= goal:
        return 0.0
    steps, ret = _smooth(curve)
    hit = np.nonzero(np.nan_to_num(ret, nan=-np.inf) >= goal)[0]
    return float(steps[hit[0]]) if hit.size else None


def _aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Across seeds: mean of the per-seed means, CI across seeds (episodes when one seed)."""

    def agg(values: list[float], episode_ci: list[float], key: str) -> dict[str, Any]:
        if len(values) > 1:
            m, lo, hi = stats.mean_ci(values)
            return {"mean": m, "ci": [lo, hi], "ci_kind": "seeds", "per_seed": values}
        return {"mean": values[0], "ci": episode_ci, "ci_kind": "episodes", "per_seed": values}

    out: dict[str, Any] = {"return": {}}
    for v in per_seed[0]["return"]:
        vals = [s["return"][v]["mean"] for s in per_seed]
        out["return"][v] = agg(vals, per_seed[0]["return"][v]["ci"], v)
    out["fuel_used"] = agg(
        [s["fuel_used"]["mean"] for s in per_seed], per_seed[0]["fuel_used"]["ci"], "fuel_used"
    )
    for k in ("landed", "landed_on_pad", "crashed", "truncated"):
        out[k] = agg([s[k]["rate"] for s in per_seed], per_seed[0][k]["ci"], k)
    out["episodes"] = sum(s["episodes"] for s in per_seed)
    return out


def _pairwise_mean(labels: Sequence[str], sim: np.ndarray, pick: Iterable[tuple[int, int]]) -> dict:
    vals = [float(sim[i, j]) for i, j in pick if math.isfinite(sim[i, j])]
    if not vals:
        return {"mean": math.nan, "ci": [math.nan, math.nan], "n": 0}
    m, lo, hi = stats.mean_ci(vals)
    return {"mean": m, "ci": [lo, hi], "n": len(vals)}


def analyze_experiment(path: str | Path, report: bool = True) -> dict[str, Any]:
    """Analyse a finished experiment folder: evaluations, update structure, consistency, salvage.

    Writes ``analysis/updates.json`` (and ``report.html`` unless ``report=False``) and returns it.
    Raises a clear error when a phase checkpoint is missing.
    """
    root = Path(path)
    config, meta = load_experiment(root)
    evals: dict[str, dict[str, list]] = {}  # model -> list of per-seed summaries (by unit)
    updates: dict[str, U.StateDict] = {}
    summaries: dict[str, Any] = {}
    noise_summaries: dict[str, Any] = {}
    salvage: dict[str, Any] = {}
    phase1: dict[str, Any] = {}
    arch = None
    for seed in config.seeds:
        sd = seed_dir(root, seed)
        pre_file = final_checkpoint(sd / "phase1", "phase-1 (pre)", seed)
        from policylens.runs import Run

        p1 = Run(sd / "phase1")
        arch = arch or arch_signature(p1.config["agent"])
        pre = U.load_state(pre_file)
        ev_file = sd / "phase1" / EVAL_FILE
        if not ev_file.is_file():
            raise FileNotFoundError(
                f"The evaluation of seed {seed}'s initial and pre models is missing ({ev_file}); "
                "rerun `policylens updates run` with the same settings and --out to finish it."
            )
        ev1 = artifacts.read_json(ev_file)
        for name in ("initial", "pre"):
            evals.setdefault(name, {}).setdefault("*", []).append(ev1[name]["summary"])
        phase1[str(seed)] = _curve(p1.metrics())
        for variant in config.units:
            unit = sd / variant
            unit_file = unit / UNIT_FILE
            if not unit_file.is_file():
                final_checkpoint(unit / "phase2", f"phase-2 (post, {variant})", seed)
                raise FileNotFoundError(
                    f"Seed {seed}'s {variant} unit has no {UNIT_FILE} (its evaluation did not "
                    "finish); rerun `policylens updates run` with the same settings and --out."
                )
            data = artifacts.read_json(unit_file)
            post_file = final_checkpoint(unit / "phase2", f"phase-2 (post, {variant})", seed)
            update = U.weight_delta(pre, U.load_state(post_file))
            label = f"s{seed}/{variant}"
            updates[label] = update
            summaries[label] = U.summarize_update(pre, update)
            noise = U.load_state(unit / "models" / "noise.safetensors")
            noise_summaries[label] = {
                "top_mass": U.summarize_update(pre, noise)["top_mass"],
                "tensors": [
                    {k: t[k] for k in ("name", "top1_energy", "effective_rank", "top_mass")}
                    for t in U.tensor_stats(noise, pre)
                ],
            }
            for name, ev in data["evaluations"].items():
                evals.setdefault(name, {}).setdefault(variant, []).append(ev["summary"])
            if data.get("salvage"):
                salvage.setdefault(variant, {})[str(seed)] = data["salvage"]["curve"]

    evaluation = {
        model: {unit: _aggregate(rows) for unit, rows in by_unit.items()}
        for model, by_unit in evals.items()
    }
    labels, sim = U.cosine_matrix(updates)
    by_group = {}
    for g in U.GROUPS:
        if any(U.param_group(k) == g for k in next(iter(updates.values()))):
            by_group[g] = U.cosine_matrix(updates, group=g)[1].tolist()
    idx = {lab: i for i, lab in enumerate(labels)}

    def key(lab: str) -> tuple[int, str]:
        s, v = lab.split("/", 1)
        return int(s[1:]), v

    consistency: dict[str, Any] = {"across_seeds": {}, "across_variants": {}}
    for v in config.units:
        labs = [lab for lab in labels if key(lab)[1] == v]
        pairs = [(idx[a], idx[b]) for i, a in enumerate(labs) for b in labs[i + 1 :]]
        consistency["across_seeds"][v] = _pairwise_mean(labels, sim, pairs)
    units = list(config.units)
    for i, a in enumerate(units):
        for b in units[i + 1 :]:
            pairs = [
                (idx[f"s{s}/{a}"], idx[f"s{s}/{b}"])
                for s in config.seeds
                if f"s{s}/{a}" in idx and f"s{s}/{b}" in idx
            ]
            consistency["across_variants"][f"{a} vs {b}"] = _pairwise_mean(labels, sim, pairs)
    # The reward-specific part: a variant's update minus the control update of the same seed.
    specific: dict[str, Any] = {}
    if config.phase1 in units:
        for v in config.phase2:
            if v == config.phase1:
                continue
            diffs = {
                s: {k: updates[f"s{s}/{v}"][k] - updates[f"s{s}/{config.phase1}"][k]
                    for k in updates[f"s{s}/{v}"]}
                for s in config.seeds
            }  # fmt: skip
            if len(diffs) > 1:
                dl, dsim = U.cosine_matrix({str(s): d for s, d in diffs.items()})
                pairs = [(i, j) for i in range(len(dl)) for j in range(i + 1, len(dl))]
                specific[v] = _pairwise_mean(dl, dsim, pairs)
    consistency["specific_across_seeds"] = specific

    recovery: dict[str, Any] = {}
    pre_a = {str(s): evals["pre"]["*"][i]["return"][config.phase1]["mean"]
             for i, s in enumerate(config.seeds)}  # fmt: skip
    init_a = {str(s): evals["initial"]["*"][i]["return"][config.phase1]["mean"]
              for i, s in enumerate(config.seeds)}  # fmt: skip
    scratch = {s: steps_to_recover(phase1[s], init_a[s], pre_a[s]) for s in phase1}
    for v, curves in salvage.items():
        sub = {str(s): r["return"][config.phase1]["mean"]
               for s, r in zip(config.seeds, evals["subtracted"][v], strict=True)}  # fmt: skip
        recovery[v] = {
            "steps_to_recover": {
                s: steps_to_recover(c, sub[s], pre_a[s]) for s, c in curves.items()
            },
            "scratch_steps": scratch,
            "subtracted_return": sub,
            "pre_return": pre_a,
        }
    result = {
        "experiment": {**config.to_json(), "env_id": meta.get("env_id"), "path": str(root)},
        "arch": arch,
        "evaluation": evaluation,
        "updates": summaries,
        "noise": noise_summaries,
        "cosine": {"labels": labels, "matrix": sim.tolist(), "by_group": by_group},
        "consistency": consistency,
        "salvage": {"curves": salvage, "recovery": recovery, "fraction": RECOVERY_FRACTION},
        "phase1_curves": phase1,
    }
    artifacts.write_json(root / "analysis" / "updates.json", result)
    if report:
        from policylens.report.updates import write_updates_report

        write_updates_report(root, result)
    return result


# ----------------------------------------------------------------------------- query, compare
def find_experiments(
    root: str | Path,
    phase1: str | None = None,
    phase2: str | None = None,
    steps1: int | None = None,
    steps2: int | None = None,
    backend: str | None = None,
) -> list[Path]:
    """Experiment folders under ``root`` matching every given filter (``phase2``: any of them)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; pass the folder holding your experiments.")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; use builtin or sb3.")
    found = []
    for meta in sorted(root.rglob(EXPERIMENT_FILE)):
        c = artifacts.read_json(meta).get("config", {})
        if (
            (phase1 is None or c.get("phase1") == phase1)
            and (phase2 is None or phase2 in c.get("phase2", []))
            and (steps1 is None or c.get("steps1") == steps1)
            and (steps2 is None or c.get("steps2") == steps2)
            and (backend is None or c.get("backend") == backend)
        ):
            found.append(meta.parent)
    return found


COMPARE_BY = ("variant", "steps", "backend")


def experiment_analysis(path: str | Path) -> dict[str, Any]:
    """The saved analysis of an experiment, computed (without a report) if absent."""
    file = Path(path) / "analysis" / "updates.json"
    if file.is_file():
        return artifacts.read_json(file)
    return analyze_experiment(path, report=False)


def compare_experiments(paths: Sequence[str | Path], by: str = "variant") -> dict[str, Any]:
    """Compare experiments grouped by reward variants, step counts or backend.

    One row per (group, phase-2 variant) with means over all seeds of the group and 95% intervals.
    Runs with different architectures can only be compared ``by="backend"`` (architecture-free
    statistics); otherwise a ValueError names the two that differ.
    """
    if by not in COMPARE_BY:
        close = difflib.get_close_matches(str(by), COMPARE_BY, n=1, cutoff=0.3)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown grouping {by!r}.{hint} Use variant, steps or backend.")
    if not paths:
        raise ValueError("Name at least one experiment folder to compare.")
    analyses = [experiment_analysis(p) for p in paths]
    first = analyses[0]
    for p, a in zip(paths[1:], analyses[1:], strict=True):
        if a["arch"] != first["arch"] and by != "backend":
            raise ValueError(
                f"{paths[0]} ({_arch_text(first['arch'])}) and {p} ({_arch_text(a['arch'])}) have "
                "different architectures; compare runs of one architecture, or use --by backend "
                "for architecture-free statistics."
            )
    groups: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for a in analyses:
        e = a["experiment"]
        for v in e["phase2"]:
            if by == "variant":
                g = f"{e['phase1']} -> {v}"
            elif by == "steps":
                g = f"{e['steps1']} + {e['steps2']} ({v})"
            else:
                g = f"{e['backend']} ({v})"
            groups.setdefault(g, []).append((a, v))
    rows = []
    curves: dict[str, list[list[list[float]]]] = {}
    for g, members in groups.items():
        per_seed: dict[str, list[float]] = {}
        for a, v in members:
            e = a["experiment"]
            ev = a["evaluation"]
            pre = ev["pre"]["*"]
            post = ev["post"][v]
            sub = ev["subtracted"][v]
            vals = {
                "fuel_used_pre": pre["fuel_used"]["per_seed"],
                "fuel_used_post": post["fuel_used"]["per_seed"],
                "return_B_pre": pre["return"][v]["per_seed"],
                "return_B_post": post["return"][v]["per_seed"],
                "return_A_subtracted": sub["return"][e["phase1"]]["per_seed"],
                "landed_subtracted": sub["landed"]["per_seed"],
            }
            if v in ev.get("noise_subtracted", {}):
                vals["return_A_noise_subtracted"] = ev["noise_subtracted"][v]["return"][
                    e["phase1"]
                ]["per_seed"]
            labels = [lab for lab in a["updates"] if lab.endswith(f"/{v}")]
            vals["update_rel_norm"] = [a["updates"][lab]["rel_norm"] for lab in labels]
            vals["update_top1pct_mass"] = [a["updates"][lab]["top_mass"]["0.01"] for lab in labels]
            vals["policy_share"] = [
                sum(
                    s["mass_share"]
                    for gname, s in a["updates"][lab]["groups"].items()
                    if gname.startswith("policy")
                )
                for lab in labels
            ]
            cl = a["cosine"]["labels"]
            m = np.asarray(a["cosine"]["matrix"], dtype=float)
            if e["phase1"] != v and e["control"]:
                vals["cos_to_control"] = [
                    float(m[cl.index(f"s{s}/{v}"), cl.index(f"s{s}/{e['phase1']}")])
                    for s in e["seeds"]
                ]
            rec = a["salvage"]["recovery"].get(v, {}).get("steps_to_recover", {})
            vals["salvage_steps"] = [np.nan if x is None else x for x in rec.values()]
            for k, xs in vals.items():
                per_seed.setdefault(k, []).extend(float(x) for x in xs)
            for c in a["salvage"]["curves"].get(v, {}).values():
                curves.setdefault(g, []).append(c)
        row: dict[str, Any] = {"group": g, "experiments": len(members)}
        for k, xs in per_seed.items():
            x = np.asarray(xs, dtype=float)
            x = x[np.isfinite(x)]
            m, lo, hi = stats.mean_ci(x) if x.size else (math.nan, math.nan, math.nan)
            row[k] = {"mean": m, "ci": [lo, hi], "n": int(x.size), "values": xs}
        rows.append(row)
    return {
        "by": by,
        "experiments": [str(p) for p in paths],
        "rows": rows,
        "salvage_curves": curves,
    }


def _arch_text(sig: dict[str, Any]) -> str:
    net = sig.get("net", {})
    sizes = net.get("hidden") or net.get("net_arch")
    return f"{sig.get('arch')} {sizes}"


__all__ = [
    "BACKENDS",
    "LUNAR_ID",
    "Job",
    "UpdatesConfig",
    "agent_for",
    "analyze_experiment",
    "compare_experiments",
    "ensure_lunar_world",
    "evaluate_weights",
    "final_checkpoint",
    "find_experiments",
    "lunar_episodes",
    "parse_seeds",
    "phase_config",
    "run_experiment",
    "run_job",
    "steps_to_recover",
    "summarize_episodes",
    "train_phase",
]
