"""SAEs on a run folder's agent: train, evaluate spliced in, and gather dashboard data.

An SAE folder written here is :func:`~policylens.agents.sae.save_sae`'s ``config.json`` +
``sae.safetensors`` + ``site.json`` (hook, layout, activation shape, source run and checkpoint,
world, held-out metrics), plus ``history.json`` (the training curve) and, when asked, a SAELens
copy in ``saelens/``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policylens.agents.sae import (
    HookSite,
    SAEConfig,
    SparseAutoencoder,
    check_sae_fits,
    export_saelens,
    load_sae,
    read_site,
    save_sae,
    site_for_sae,
)
from policylens.artifacts import write_json
from policylens.lenses.sae import Downstream, evaluate_sae, train_sae
from policylens.studies.rook_sae.concepts import match_concepts
from policylens.studies.rook_sae.data import (
    ActivationData,
    activations_from_store,
    gather_activations,
)
from policylens.studies.rook_sae.evaluation import evaluate_spliced
from policylens.studies.rook_sae.latents import LatentCard, latent_ablation, latent_cards

HISTORY_FILE = "history.json"
DEFAULT_OBJECTIVE = "kl"
"""The objective ``sae train`` uses unless told: the one that kept the rook DQN's mate rate and
greedy actions (BENCHMARKS.md, "SAEs judged by behaviour"); plain ``mse`` did not."""


def run_world(run) -> dict[str, Any]:
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


def default_sae_dir(run, hook: str, arch: str, expansion: int) -> Path:
    """``RUN/analysis/sae/<hook>-<arch>-x<expansion>``."""
    return run.analysis_dir / "sae" / f"{hook}-{arch}-x{expansion}"


def sae_config_for(
    site: HookSite,
    arch: str = "topk",
    expansion: int = 8,
    k: int | None = None,
    samples: int = 500_000,
    seed: int = 0,
    **overrides: Any,
) -> SAEConfig:
    """An SAEConfig sized for ``site``: ``d_sae = expansion * d_in``; k defaults to min(32, d_in/2)."""
    if expansion < 1:
        raise ValueError(f"expansion must be >= 1, got {expansion}.")
    if k is None:
        k = min(32, max(1, site.d_in // 2))
    return SAEConfig(
        d_in=site.d_in,
        d_sae=expansion * site.d_in,
        arch=arch,
        k=k,
        samples=samples,
        seed=seed,
        **overrides,
    )


def train_agent_sae(
    data: ActivationData,
    config: SAEConfig,
    holdout: float = 0.1,
    progress: bool = False,
    agent=None,
) -> tuple[SparseAutoencoder, list[dict[str, float]], dict[str, Any]]:
    """Train an SAE on ``data``'s vectors, holding out the last observations for its metrics.

    A behaviour-keeping ``config.objective`` needs ``agent`` (the one ``data`` came from) and
    ``data.logits``. Returns the SAE, its training history and a summary: held-out mse,
    explained variance, l0, dead fraction, objective (and its temperature), training samples per
    second, vectors used.
    """
    if config.d_in != data.site.d_in:
        raise ValueError(
            f"SAEConfig.d_in={config.d_in} but the data are {data.site.describe()}; size the "
            "config with sae_config_for(site)."
        )
    train, test = data.split(holdout)
    x_train = train.vectors()  # (N_train * positions, d_in)
    downstream = None
    if config.objective != "mse":
        if agent is None or train.logits is None:
            raise ValueError(
                f"The {config.objective!r} objective needs the agent and its logits on the data; "
                "pass agent= (and gather the data from it), or use objective 'mse'."
            )
        downstream = Downstream(agent, data.site, train.obs, train.logits, config)
    t0 = time.perf_counter()
    sae, history = train_sae(x_train, config, progress=progress, downstream=downstream)
    seconds = time.perf_counter() - t0
    metrics = evaluate_sae(sae, test.vectors())
    seen = history[-1]["samples"] if history else 0
    summary = {
        **metrics,
        "objective": config.objective,
        "temperature": downstream.temperature if downstream is not None else None,
        "train_vectors": int(x_train.shape[0]),
        "test_vectors": int(test.vectors().shape[0]),
        "samples": int(seen),
        "seconds": round(seconds, 3),
        "samples_per_s": round(seen / max(seconds, 1e-9), 1),
    }
    return sae, history, summary


def train_run_sae(
    source: str | os.PathLike,
    hook: str,
    out: str | os.PathLike | None = None,
    *,
    arch: str = "topk",
    expansion: int = 8,
    k: int | None = None,
    l1_coeff: float | None = None,
    objective: str = DEFAULT_OBJECTIVE,
    samples: int = 3_000_000,
    steps: int = 60_000,
    step: int | None = None,
    layout: str = "auto",
    seed: int = 0,
    holdout: float = 0.1,
    saelens: bool = False,
    progress: bool = False,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train an SAE on a run's agent (``steps`` steps of play) or on a collect store's activations.

    ``objective`` names what training keeps (:data:`~policylens.agents.sae.SAE_OBJECTIVES`); a
    behaviour-keeping one runs the agent (a store's, from the run it was collected from). Writes
    the SAE folder (default ``RUN/analysis/sae/<hook>-<arch>-x<expansion>``) and returns it with
    the summary stored in its ``site.json``.
    """
    from policylens.rollout import is_store, open_store
    from policylens.runs import Run

    overrides = dict(config_overrides or {}, objective=objective)
    if l1_coeff is not None:
        overrides["l1_coeff"] = l1_coeff
    meta: dict[str, Any]
    agent = None
    if is_store(source):
        store = open_store(source)
        data = activations_from_store(store, hook, layout, max_rows=steps, seed=seed)
        run_path = data.meta.get("run")
        meta = {
            "source": "store",
            "store": str(store.path),
            "run": run_path,
            "checkpoint_step": data.meta.get("checkpoint_step"),
            "env_id": data.meta.get("env_id"),
            "env_kwargs": data.meta.get("env_kwargs", {}),
        }
        if not run_path and out is None:
            raise ValueError(
                f"Store {store.path} was not collected from a run; pass --out for the SAE."
            )
        if not run_path and objective != "mse":
            raise ValueError(
                f"Store {store.path} was not collected from a run, so the {objective!r} "
                "objective has no agent to keep; use --objective mse."
            )
        if out is None:
            out = default_sae_dir(Run(str(run_path)), hook, arch, expansion)
        if objective != "mse":
            agent = Run(str(run_path)).load_agent(data.meta.get("checkpoint_step"))
    else:
        run = Run(source)
        ckpt, _ = run.checkpoint(step)
        agent = run.load_agent(ckpt)
        world = run_world(run)
        data = gather_activations(
            agent, hook, world["env_id"], world["env_kwargs"], steps, seed=seed,
            greedy=world["greedy"], mask_illegal=world["mask_illegal"], layout=layout,
        )  # fmt: skip
        meta = {"source": "run", "run": str(run.path), "checkpoint_step": ckpt, **world}
        if out is None:
            out = default_sae_dir(run, hook, arch, expansion)
    config = sae_config_for(data.site, arch, expansion, k, samples, seed, **overrides)
    sae, history, summary = train_agent_sae(data, config, holdout, progress, agent)
    meta.update(steps_gathered=len(data), seed=seed, metrics=summary)
    folder = save_sae(sae, out, data.site, meta)
    write_json(folder / HISTORY_FILE, history)
    if saelens:
        export_saelens(sae, folder / "saelens", data.site)
    return folder, {"sae_dir": str(folder), **data.site.to_dict(), "d_sae": config.d_sae, **meta}


def load_run_sae(
    run_path: str | os.PathLike,
    sae_dir: str | os.PathLike,
    step: int | None = None,
    hook: str | None = None,
):
    """The run, checkpoint step, agent, SAE and site for using ``sae_dir`` on a run's agent.

    The checkpoint is ``step``, else the one the SAE was trained on (same run), else the latest;
    the hook is ``hook``, else the one the SAE was trained on.
    """
    from policylens.runs import Run

    run = Run(run_path)
    sae, info = load_sae(sae_dir), read_site(sae_dir)
    if (
        step is None
        and info.get("checkpoint_step") is not None
        and (str(Path(info.get("run") or "").resolve()) == str(run.path.resolve()))
    ):
        step = int(info["checkpoint_step"])
    ckpt, _ = run.checkpoint(step)
    agent = run.load_agent(ckpt)
    site = site_for_sae(agent, info, hook)
    check_sae_fits(sae, site)
    return run, ckpt, agent, sae, site


def eval_run_sae(
    run_path: str | os.PathLike,
    sae_dir: str | os.PathLike,
    episodes: int = 100,
    steps: int = 4096,
    step: int | None = None,
    hook: str | None = None,
    seed: int = 10_000,
    ablation_top: int = 10,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate an SAE folder on a run's agent (see :func:`evaluate_spliced`) and rank latents.

    Gathers ``steps`` fresh steps (seeded with ``seed``, not the training seed) for the offline
    metrics and the mean activation; writes ``eval.json`` into the SAE folder when ``write``.
    """
    run, ckpt, agent, sae, site = load_run_sae(run_path, sae_dir, step, hook)
    world = run_world(run)
    data = gather_activations(
        agent, site.hook, world["env_id"], world["env_kwargs"], steps, seed=seed,
        greedy=world["greedy"], mask_illegal=world["mask_illegal"], layout=site.layout,
    )  # fmt: skip
    result = evaluate_spliced(
        agent, sae, site, data, world["env_id"], world["env_kwargs"], episodes, seed,
        world["greedy"], world["mask_illegal"],
    )  # fmt: skip
    result.update(run=str(run.path), checkpoint_step=ckpt, sae_dir=str(sae_dir))
    if ablation_top > 0:
        ranking = latent_ablation(agent, sae, site, data, greedy=world["greedy"], seed=seed)
        result["alive_fraction_on_eval"] = len(ranking) / sae.config.d_sae
        result["latent_ablation"] = [
            {k: v for k, v in e.items() if k not in ("logit_change", "prob_change")}
            for e in ranking[:ablation_top]
        ]
    if write:
        write_json(Path(sae_dir) / "eval.json", result)
    return result


@dataclass
class DashboardData:
    """What a feature dashboard of an SAE on a run's agent shows."""

    cards: list[LatentCard]
    context: dict[str, Any]
    """Run, checkpoint, SAE folder, site, d_sae, arch, observations, alive fraction, world."""
    num_actions: int
    behaviour: dict[str, Any] | None = None
    """:func:`evaluate_spliced` on the same data (None when no episodes were asked for)."""
    concepts: dict[str, Any] | None = None
    """:func:`match_concepts` on the same data: every live latent's best ground-truth concept."""


def dashboard_data(
    run_path: str | os.PathLike,
    sae_dir: str | os.PathLike,
    latents: Sequence[int] | None = None,
    top: int = 8,
    steps: int = 4096,
    step: int | None = None,
    hook: str | None = None,
    seed: int = 10_000,
    episodes: int = 100,
) -> DashboardData:
    """Cards for ``latents`` (default: the ``top`` by ablation effect) on ``steps`` fresh steps
    of a run's agent, seeded with ``seed``; the agent's behaviour with the SAE spliced in over
    ``episodes`` episodes per condition (0: none); every live latent's best-matching concept."""
    run, ckpt, agent, sae, site = load_run_sae(run_path, sae_dir, step, hook)
    world = run_world(run)
    data = gather_activations(
        agent, site.hook, world["env_id"], world["env_kwargs"], steps, seed=seed,
        greedy=world["greedy"], mask_illegal=world["mask_illegal"], layout=site.layout,
    )  # fmt: skip
    cards, ranking = latent_cards(
        agent, sae, site, data, latents, top=top, greedy=world["greedy"], seed=seed
    )
    concepts = match_concepts(sae, data, seed=seed) if data.labels else None
    for card in cards:
        card.concept = concepts["latents"].get(card.latent) if concepts else None
    behaviour = None
    if episodes > 0:
        behaviour = evaluate_spliced(
            agent, sae, site, data, world["env_id"], world["env_kwargs"], episodes, seed,
            world["greedy"], world["mask_illegal"],
        )  # fmt: skip
    context = {
        "run": str(run.path),
        "checkpoint_step": ckpt,
        "sae_dir": str(sae_dir),
        "site": site.to_dict(),
        "d_sae": sae.config.d_sae,
        "arch": sae.config.arch,
        "observations": len(data),
        "alive_fraction": len(ranking) / sae.config.d_sae,
        **world,
    }
    return DashboardData(cards, context, agent.num_actions, behaviour, concepts)


__all__ = [
    "HISTORY_FILE",
    "DashboardData",
    "dashboard_data",
    "default_sae_dir",
    "eval_run_sae",
    "load_run_sae",
    "run_world",
    "sae_config_for",
    "train_agent_sae",
    "train_run_sae",
]
