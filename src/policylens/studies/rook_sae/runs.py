"""SAEs on a run folder's agent: the study's entry points (train, evaluate spliced in, dashboard).

Each entry point takes its options object and returns a typed result with ``to_json()``;
:mod:`policylens.report.sae` renders them. An SAE folder written here is
:func:`~policylens.agents.sae.save_sae`'s ``config.json`` + ``sae.safetensors`` + ``site.json``
(hook, layout, activation shape, source run and checkpoint, world, held-out metrics), plus
``history.json`` (the training curve), ``eval.json`` once evaluated and, when asked, a SAELens
copy in ``saelens/``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policylens.agents.agent import HookedAgent
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
from policylens.artifacts import FolderLock, write_json
from policylens.lenses.sae import Downstream, evaluate_sae, train_sae
from policylens.runs import Run
from policylens.studies.rook_sae.concepts import match_concepts
from policylens.studies.rook_sae.data import (
    ActivationData,
    PlaySetting,
    activations_from_store,
    gather_activations,
)
from policylens.studies.rook_sae.evaluation import SpliceEval, evaluate_spliced
from policylens.studies.rook_sae.latents import (
    AblationOptions,
    LatentCard,
    latent_cards,
    survey_latents,
)

HISTORY_FILE = "history.json"
EVAL_FILE = "eval.json"
DEFAULT_OBJECTIVE = "kl"
"""The objective ``sae train`` uses unless told: the one that kept the rook DQN's mate rate and
greedy actions (BENCHMARKS.md, "SAEs judged by behaviour"); plain ``mse`` did not."""


@dataclass(frozen=True)
class SAESpec:
    """The SAE to train on a hook, short of its input width (known once the hook is read)."""

    arch: str = "topk"
    """relu, topk, batchtopk or jumprelu."""
    expansion: int = 8
    """Latents per input dimension (d_sae = expansion * d_in)."""
    k: int | None = None
    """Active latents (topk, batchtopk); None: min(32, d_in / 2)."""
    objective: str = DEFAULT_OBJECTIVE
    """What training keeps: mse, kl or logits (:data:`~policylens.agents.sae.SAE_OBJECTIVES`)."""
    samples: int = 3_000_000
    """Training samples (vectors) in total."""
    batch_size: int = 1024
    lr: float = 3e-3
    l1_coeff: float = 1.0
    """Weight of the L1 penalty (relu)."""
    behaviour_coeff: float = 1.0
    """Weight of the behaviour term (kl, logits), in units of the activations' variance."""
    temperature: float | None = None
    """kl: temperature of the action distributions (None: the SAEConfig default)."""

    def config(self, site: HookSite, seed: int = 0) -> SAEConfig:
        """The SAEConfig for ``site``, seeded with ``seed``."""
        if self.expansion < 1:
            raise ValueError(f"expansion must be >= 1, got {self.expansion}.")
        k = self.k if self.k is not None else min(32, max(1, site.d_in // 2))
        return SAEConfig(
            d_in=site.d_in,
            d_sae=self.expansion * site.d_in,
            arch=self.arch,
            k=k,
            objective=self.objective,
            samples=self.samples,
            batch_size=self.batch_size,
            lr=self.lr,
            l1_coeff=self.l1_coeff,
            behaviour_coeff=self.behaviour_coeff,
            temperature=self.temperature,
            seed=seed,
        )


def default_sae_dir(run: Run, hook: str, spec: SAESpec) -> Path:
    """``RUN/analysis/sae/<hook>-<arch>-x<expansion>``."""
    return run.analysis_dir / "sae" / f"{hook}-{spec.arch}-x{spec.expansion}"


def train_agent_sae(
    data: ActivationData,
    config: SAEConfig,
    holdout: float = 0.1,
    progress: bool = False,
    agent: HookedAgent | None = None,
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
            "config with SAESpec.config(site)."
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


# ----------------------------------------------------------------------------- train
@dataclass(frozen=True)
class SAETrainOptions:
    """What ``sae train`` does: the SAE, the data it learns from, where it goes."""

    hook: str
    """Hook whose activations the SAE reads."""
    sae: SAESpec = field(default_factory=SAESpec)
    steps: int = 60_000
    """Environment steps of the run's agent to gather (a store: most rows read)."""
    step: int | None = None
    """Checkpoint of the run (None: the latest)."""
    layout: str = "auto"
    """vector, channels (per-position), flat, or auto."""
    seed: int = 0
    """Seed of the rollouts, the SAE's initialisation and the data order."""
    holdout: float = 0.1
    """Fraction of the observations (the last ones) held out for the metrics."""
    out: Path | None = None
    """SAE folder (None: ``RUN/analysis/sae/<hook>-<arch>-x<expansion>``)."""
    saelens: bool = False
    """Also export the SAE in SAELens's layout (``saelens/``)."""
    progress: bool = False
    """Show a progress bar while training."""


@dataclass(frozen=True)
class TrainedSAE:
    """An SAE folder written by :func:`train_run_sae`, with what its ``site.json`` records."""

    folder: Path
    site: HookSite
    d_sae: int
    arch: str
    objective: str
    metrics: dict[str, Any]
    """Held-out metrics (:func:`train_agent_sae`'s summary)."""
    provenance: dict[str, Any]
    """Source (run or store), checkpoint, world, steps gathered and seed."""

    @property
    def run(self) -> str | None:
        """The run whose agent the data came from (None for a store not collected from one)."""
        return self.provenance.get("run")

    def to_json(self) -> dict[str, Any]:
        return {
            "sae_dir": str(self.folder),
            **self.site.to_dict(),
            "d_sae": self.d_sae,
            **self.provenance,
            "metrics": self.metrics,
        }


def train_run_sae(source: str | os.PathLike, options: SAETrainOptions) -> TrainedSAE:
    """Train an SAE on a run's agent (``options.steps`` steps of play) or on a collect store's
    activations, into its SAE folder (held locked while written).

    A behaviour-keeping objective runs the agent (a store's: the run it was collected from).
    """
    from policylens.rollout import is_store, open_store

    spec, hook = options.sae, options.hook
    provenance: dict[str, Any]
    agent = None
    out = options.out
    if is_store(source):
        store = open_store(source)
        data = activations_from_store(
            store, hook, options.layout, max_rows=options.steps, seed=options.seed
        )
        run_path = data.meta.get("run")
        provenance = {
            "source": "store",
            "store": str(store.path),
            "run": run_path,
            "checkpoint_step": data.meta.get("checkpoint_step"),
            "env_id": data.meta.get("env_id"),
            "env_kwargs": data.meta.get("env_kwargs", {}),
        }
        if not run_path and out is None:
            raise ValueError(
                f"Store {store.path} was not collected from a run; give the SAE an out folder."
            )
        if not run_path and spec.objective != "mse":
            raise ValueError(
                f"Store {store.path} was not collected from a run, so the {spec.objective!r} "
                "objective has no agent to keep; use the objective mse."
            )
        if out is None:
            out = default_sae_dir(Run(str(run_path)), hook, spec)
        if spec.objective != "mse":
            agent = Run(str(run_path)).load_agent(data.meta.get("checkpoint_step"))
    else:
        run = Run(source)
        ckpt, _ = run.checkpoint(options.step)
        agent = run.load_agent(ckpt)
        setting = PlaySetting.of_run(run)
        data = gather_activations(
            agent, hook, setting, options.steps, seed=options.seed, layout=options.layout
        )
        provenance = {
            "source": "run",
            "run": str(run.path),
            "checkpoint_step": ckpt,
            **setting.to_json(),
        }
        if out is None:
            out = default_sae_dir(run, hook, spec)
    config = spec.config(data.site, options.seed)
    with FolderLock(out, "SAE folder"):
        sae, history, summary = train_agent_sae(
            data, config, options.holdout, options.progress, agent
        )
        provenance.update(steps_gathered=len(data), seed=options.seed)
        folder = save_sae(sae, out, data.site, {**provenance, "metrics": summary})
        write_json(folder / HISTORY_FILE, history)
        if options.saelens:
            export_saelens(sae, folder / "saelens", data.site)
    return TrainedSAE(folder, data.site, config.d_sae, config.arch, config.objective, summary,
                      provenance)  # fmt: skip


# ----------------------------------------------------------------------------- use on a run
@dataclass(frozen=True)
class SAEOnRun:
    """An SAE folder opened on a run's agent."""

    run: Run
    checkpoint_step: int
    agent: HookedAgent
    sae: SparseAutoencoder
    site: HookSite
    setting: PlaySetting

    def fresh_data(self, steps: int, seed: int) -> ActivationData:
        """``steps`` steps of the agent's play at the SAE's hook, seeded with ``seed``."""
        return gather_activations(
            self.agent, self.site.hook, self.setting, steps, seed=seed, layout=self.site.layout
        )


def load_run_sae(
    run: Run, sae_dir: str | os.PathLike, step: int | None = None, hook: str | None = None
) -> SAEOnRun:
    """``sae_dir``'s SAE on ``run``'s agent: at checkpoint ``step``, else the one the SAE was
    trained on (same run), else the latest; at ``hook``, else the one it was trained on."""
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
    return SAEOnRun(run, ckpt, agent, sae, site, PlaySetting.of_run(run))


# ----------------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class SAEEvalOptions:
    """What ``sae eval`` measures."""

    episodes: int = 100
    """Episodes per condition."""
    steps: int = 4096
    """Fresh steps for the held-out metrics and the hook's mean activation."""
    step: int | None = None
    """Checkpoint (None: the SAE's own on its run, else the latest)."""
    hook: str | None = None
    """Hook to splice into (None: the one the SAE was trained on)."""
    seed: int = 10_000
    """Seed of the evaluation's rollouts and episodes (not the training seed)."""
    ablation_top: int = 10
    """Latents listed by the effect of removing them (0: none)."""
    write: bool = True
    """Write ``eval.json`` into the SAE folder."""


@dataclass(frozen=True)
class SAEEvaluation:
    """An SAE folder judged on a run's agent: :class:`SpliceEval` and the latents by effect."""

    behaviour: SpliceEval
    run: str
    checkpoint_step: int
    sae_dir: str
    alive_fraction: float | None = None
    """Share of latents firing on the evaluation data (None: no latent ranking asked for)."""
    latent_ablation: list[dict[str, Any]] = field(default_factory=list)
    """The largest effects of removing one latent (:func:`~.latents.latent_ablation` entries)."""

    def to_json(self) -> dict[str, Any]:
        out = {
            **self.behaviour.to_json(),
            "run": self.run,
            "checkpoint_step": self.checkpoint_step,
            "sae_dir": self.sae_dir,
        }
        if self.alive_fraction is not None:
            out.update(alive_fraction_on_eval=self.alive_fraction,
                       latent_ablation=self.latent_ablation)  # fmt: skip
        return out


def eval_run_sae(run: Run, sae_dir: str | os.PathLike, options: SAEEvalOptions) -> SAEEvaluation:
    """Evaluate an SAE folder on a run's agent (:func:`evaluate_spliced`) and rank its latents by
    the effect of removing each; ``eval.json`` goes into the SAE folder (locked) when asked."""
    used = load_run_sae(run, sae_dir, options.step, options.hook)
    data = used.fresh_data(options.steps, options.seed)
    behaviour = evaluate_spliced(
        used.agent, used.sae, data, used.setting, options.episodes, options.seed
    )
    alive, top = None, []
    if options.ablation_top > 0:
        ablation = AblationOptions(greedy=used.setting.greedy, seed=options.seed)
        survey = survey_latents(used.agent, used.sae, data, ablation)
        alive = survey.alive_fraction
        top = [
            {k: v for k, v in e.items() if k not in ("logit_change", "prob_change")}
            for e in survey.ranking[: options.ablation_top]
        ]
    result = SAEEvaluation(behaviour, str(run.path), used.checkpoint_step, str(sae_dir), alive, top)
    if options.write:
        with FolderLock(sae_dir, "SAE folder"):
            write_json(Path(sae_dir) / EVAL_FILE, result.to_json())
    return result


# ----------------------------------------------------------------------------- dashboard
@dataclass(frozen=True)
class DashboardOptions:
    """What ``sae dashboard`` shows."""

    latents: Sequence[int] | None = None
    """Latents to draw (None: the ``top`` by ablation effect)."""
    top: int = 8
    steps: int = 4096
    """Fresh steps to find the top-activating observations."""
    step: int | None = None
    """Checkpoint (None: the SAE's own on its run, else the latest)."""
    hook: str | None = None
    """Hook (None: the one the SAE was trained on)."""
    seed: int = 10_000
    """Seed of the rollouts."""
    episodes: int = 100
    """Episodes per condition of the behaviour table (0: none)."""


@dataclass(frozen=True)
class SAEDashboard:
    """What a feature dashboard of an SAE on a run's agent shows."""

    cards: list[LatentCard]
    context: dict[str, Any]
    """Run, checkpoint, SAE folder, site, d_sae, arch, observations, alive fraction, world."""
    action_names: list[str]
    """The agent's actions, in the world's words where it has them."""
    behaviour: SpliceEval | None = None
    """:func:`evaluate_spliced` on the same data (None when no episodes were asked for)."""
    concepts: dict[str, Any] | None = None
    """:func:`match_concepts` on the same data: every live latent's best ground-truth concept."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "context": self.context,
            "latents": [c.summary() for c in self.cards],
        }
        if self.behaviour is not None:
            out["behaviour"] = self.behaviour.to_json()
        if self.concepts is not None:  # latent numbers as strings: JSON object keys
            latents = {str(j): e for j, e in self.concepts["latents"].items()}
            out["concepts"] = {**self.concepts, "latents": latents}
        return out


def dashboard_data(run: Run, sae_dir: str | os.PathLike, options: DashboardOptions) -> SAEDashboard:
    """Cards for the chosen latents on fresh steps of a run's agent, the agent's behaviour with
    the SAE spliced in, and every live latent's best-matching concept."""
    from policylens.worlds import for_env

    used = load_run_sae(run, sae_dir, options.step, options.hook)
    agent, sae, setting = used.agent, used.sae, used.setting
    data = used.fresh_data(options.steps, options.seed)
    ablation = AblationOptions(greedy=setting.greedy, seed=options.seed)
    survey = survey_latents(agent, sae, data, ablation)
    cards = latent_cards(agent, sae, data, options.latents, options.top, options=ablation,
                         survey=survey)  # fmt: skip
    concepts = match_concepts(sae, data, seed=options.seed) if data.labels else None
    for card in cards:
        card.concept = concepts["latents"].get(card.latent) if concepts else None
    behaviour = None
    if options.episodes > 0:
        behaviour = evaluate_spliced(agent, sae, data, setting, options.episodes, options.seed)
    context = {
        "run": str(run.path),
        "checkpoint_step": used.checkpoint_step,
        "sae_dir": str(sae_dir),
        "site": used.site.to_dict(),
        "d_sae": sae.config.d_sae,
        "arch": sae.config.arch,
        "observations": len(data),
        "alive_fraction": survey.alive_fraction,
        **setting.to_json(),
    }
    names = for_env(setting.env_id).names_of_actions(setting.env_kwargs, agent.num_actions)
    return SAEDashboard(cards, context, names, behaviour, concepts)


__all__ = [
    "DEFAULT_OBJECTIVE",
    "EVAL_FILE",
    "HISTORY_FILE",
    "DashboardOptions",
    "SAEDashboard",
    "SAEEvalOptions",
    "SAEEvaluation",
    "SAEOnRun",
    "SAESpec",
    "SAETrainOptions",
    "TrainedSAE",
    "dashboard_data",
    "default_sae_dir",
    "eval_run_sae",
    "load_run_sae",
    "train_agent_sae",
    "train_run_sae",
]
