"""Representation similarity over layers and training: CKA between every pair of (checkpoint,
layer) representations of a run's agent (and, optionally, of another run's, e.g. another seed)
on one fixed set of observations, and the TwoNN intrinsic dimension of each.

The observations are collected once with the run's final agent in its world with the world's
probe options (the maze: cheese anywhere), like the probes' data, deduplicated and subsampled to
``samples`` rows; every checkpoint (of both runs) is run on the same rows, so a change in CKA is
a change in the representation, not in the data. :mod:`policylens.lenses.similarity` computes
CKA and TwoNN. Results are saved under ``RUN/analysis/similarity/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policylens import artifacts, worlds
from policylens.errors import check_known
from policylens.lenses.probes import probe_store_for_run
from policylens.lenses.similarity import (
    KERNELS,
    RBF_FRACTION,
    RepresentationSet,
    check_cka_settings,
    flat_activations,
)
from policylens.runs import Run

Say = Callable[[str], None]
"""A progress callback: one short message per stage."""


@dataclass(frozen=True)
class SimilarityOptions:
    """What is compared (checkpoints, layers, another run), on which data, with which CKA."""

    other: str | Path | None = None
    """Another run (same world) whose checkpoints are compared with this run's, e.g. a seed."""
    kernel: str = "linear"
    """CKA kernel: linear or rbf."""
    unbiased: bool = False
    """The unbiased HSIC estimator (about 0 for independent representations) instead of the
    biased one."""
    rbf_fraction: float = RBF_FRACTION
    """RBF bandwidth as a fraction of the median pairwise distance."""
    checkpoints: int = 10
    """Checkpoints compared, spread over the run's (log-spaced) ones, first and last included;
    0 takes every checkpoint."""
    hooks: Sequence[str] | None = None
    """Layers compared; None: every hook of the agent."""
    samples: int = 1000
    """Distinct observations compared (the Gram matrices are samples x samples; each
    representation keeps 4 MB at 1,000: 10 checkpoints x 11 layers x 2 runs hold 880 MB)."""
    episodes: int = 100
    """Episodes collected for the observations."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """World options of the observations, over the world's probe options."""
    seed: int = 0
    """Seed of the episodes and the subsample."""
    dimension: bool = True
    """Also the TwoNN intrinsic dimension of every representation."""
    discard_fraction: float = 0.0
    """TwoNN: share of the largest distance ratios left out of the fit (0: tdhook's fit)."""

    def __post_init__(self) -> None:
        check_cka_settings(self.kernel, self.rbf_fraction)
        for name, low in (("checkpoints", 0), ("samples", 10), ("episodes", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}.")
        if not 0 <= self.discard_fraction < 1:
            raise ValueError(f"discard_fraction must lie in [0, 1), got {self.discard_fraction}.")


def _jsonable(a: np.ndarray) -> list:
    return [[None if math.isnan(v) else float(v) for v in row] for row in np.atleast_2d(a)]


@dataclass(frozen=True)
class SimilarityResult:
    """CKA between every (checkpoint, layer) pair of one run (and across two runs), and each
    representation's intrinsic dimension. Index ``i = checkpoint_index * len(hooks) +
    layer_index`` (checkpoint-major) in :attr:`cka` and :attr:`cross`."""

    run: str
    steps: list[int]
    hooks: list[str]
    kernel: str
    unbiased: bool
    rbf_fraction: float
    samples: int
    cka: np.ndarray
    """(C*L, C*L) CKA between this run's representations."""
    dimension: dict[str, list[float]]
    """hook -> TwoNN dimension per step (NaN where undefined); empty when not asked."""
    other: str | None = None
    other_steps: list[int] = field(default_factory=list)
    cross: np.ndarray | None = None
    """(C*L, C'*L) CKA of this run's representations (rows) with the other run's (columns)."""
    other_dimension: dict[str, list[float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def index(self, step: int, hook: str) -> int:
        return self.steps.index(step) * len(self.hooks) + self.hooks.index(hook)

    def layer_matrix(self, step: int | None = None) -> np.ndarray:
        """(L, L) CKA between the layers at checkpoint ``step`` (default: the last)."""
        c = self.steps.index(self.steps[-1] if step is None else step)
        span = slice(c * len(self.hooks), (c + 1) * len(self.hooks))
        return self.cka[span, span]

    def to_final(self) -> np.ndarray:
        """(L, C) CKA of each layer at each checkpoint with the same layer at the last one."""
        n_l, last = len(self.hooks), len(self.steps) - 1
        return np.array([[self.cka[c * n_l + h, last * n_l + h] for c in range(len(self.steps))]
                         for h in range(n_l)])  # fmt: skip

    def cross_layers(self) -> np.ndarray | None:
        """(L, L) CKA of this run's layers (rows) with the other run's (columns), last
        checkpoints."""
        if self.cross is None:
            return None
        n_l = len(self.hooks)
        c, o = len(self.steps) - 1, len(self.other_steps) - 1
        return self.cross[c * n_l : (c + 1) * n_l, o * n_l : (o + 1) * n_l]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run": self.run, "steps": self.steps, "hooks": self.hooks, "kernel": self.kernel,
            "unbiased": self.unbiased, "rbf_fraction": self.rbf_fraction,
            "samples": self.samples, "index": "checkpoint_index * len(hooks) + layer_index",
            "cka": _jsonable(self.cka), "layers_at_last": _jsonable(self.layer_matrix()),
            "to_final": _jsonable(self.to_final()),
            "dimension": {h: [None if math.isnan(v) else v for v in d]
                          for h, d in self.dimension.items()},
            "other": self.other, "meta": self.meta,
        }  # fmt: skip
        cross_layers = self.cross_layers()
        if self.other is not None and self.cross is not None and cross_layers is not None:
            out["other_steps"] = self.other_steps
            out["cross"] = _jsonable(self.cross)
            out["cross_layers_at_last"] = _jsonable(cross_layers)
            out["other_dimension"] = {
                h: [None if math.isnan(v) else v for v in d]
                for h, d in self.other_dimension.items()
            }
        return out


def pick_checkpoints(steps: Sequence[int], count: int) -> list[int]:
    """``count`` of ``steps`` spread evenly by index (log-spaced checkpoints stay log-spaced),
    first and last included; all of them when ``count`` is 0 or not smaller."""
    steps = sorted(steps)
    if count == 0 or count >= len(steps):
        return steps
    if count == 1:
        return [steps[-1]]
    picked = np.unique(np.round(np.linspace(0, len(steps) - 1, count)).astype(int))
    return [steps[i] for i in picked]


def result_file(run: Run, options: SimilarityOptions) -> Path:
    """Where :func:`run_similarity` saves its result for these settings."""
    name = f"cka_{options.kernel}{'_unbiased' if options.unbiased else ''}"
    if options.other is not None:
        name += f"_vs_{Run(options.other).name}"
    return run.analysis_dir / "similarity" / f"{name}.json"


def observations(run: Run, options: SimilarityOptions, progress: Say | None = None) -> np.ndarray:
    """``samples`` distinct observations collected with ``run``'s final agent (one store under
    ``RUN/analysis/similarity/rollouts``, reused while its settings match)."""
    world = worlds.of_run(run)
    env_kwargs = {**world.probe_options, **options.env_kwargs}
    if progress:
        progress("collecting observations with the final agent")
    store = probe_store_for_run(run, episodes=options.episodes, seed=options.seed,
                                env_kwargs=env_kwargs,
                                out=run.analysis_dir / "similarity" / "rollouts")  # fmt: skip
    obs = store["obs"][np.arange(len(store))]
    _, first = np.unique(obs.reshape(len(obs), -1), axis=0, return_index=True)
    first = np.sort(first)
    if len(first) < 10:
        raise ValueError(
            f"The collected episodes hold {len(first)} distinct observations; at least 10 are "
            "needed: raise episodes."
        )
    rng = np.random.default_rng(options.seed)
    rows = (
        first
        if len(first) <= options.samples
        else np.sort(rng.choice(first, options.samples, replace=False))
    )
    return np.asarray(obs[rows])


def _add_run(
    reps: RepresentationSet, run: Run, steps: list[int], hooks: list[str], obs: np.ndarray,
    tag: str, say: Say,
) -> None:  # fmt: skip
    for step in steps:
        say(f"{tag}checkpoint {step}")
        acts = flat_activations(run.load_agent(step), obs, hooks)
        for h in hooks:
            reps.add((tag, step, h), acts[h])


def run_similarity(
    run: Run, options: SimilarityOptions = SimilarityOptions(), progress: Say | None = None
) -> SimilarityResult:
    """CKA between every pair of ``options.checkpoints`` checkpoints x layers of ``run`` (and
    with ``options.other``'s), with the TwoNN dimension of each; saved in :func:`result_file`."""
    say = progress or (lambda message: None)
    final = run.load_agent()
    hooks = list(options.hooks) if options.hooks else list(final.hook_names())
    check_known(hooks, final.hook_names(), "hook")
    steps = pick_checkpoints([s for s, _ in run.checkpoints()], options.checkpoints)
    other = None if options.other is None else Run(options.other)
    other_steps: list[int] = []
    if other is not None:
        mine, theirs = worlds.of_run(run), worlds.of_run(other)
        if (mine.env_id, run.config["agent"].get("obs_shape")) != (
            theirs.env_id,
            other.config["agent"].get("obs_shape"),
        ):
            raise ValueError(
                f"other must be a run of the same world and observation shape as {run.path}; "
                f"{other.path} is not"
            )
        check_known(hooks, other.load_agent().hook_names(), "hook of the other run")
        other_steps = pick_checkpoints([s for s, _ in other.checkpoints()], options.checkpoints)
    file = result_file(run, options)
    with artifacts.FolderLock(file.parent, "similarity folder"):
        obs = observations(run, options, say)
        reps = RepresentationSet(len(obs), options.kernel, options.unbiased,  # type: ignore[arg-type]
                                 options.rbf_fraction, options.discard_fraction,
                                 options.dimension)  # fmt: skip
        _add_run(reps, run, steps, hooks, obs, "", say)
        mine_n = len(reps.names)
        if other is not None:
            _add_run(reps, other, other_steps, hooks, obs, "other ", say)
        say("CKA between all pairs")
        ours = list(range(mine_n))
        matrix = reps.cka(ours)
        cross = reps.cka(ours, range(mine_n, len(reps.names))) if other is not None else None

        def dims(offset: int, n_steps: int) -> dict[str, list[float]]:
            if not options.dimension:
                return {}
            n_l = len(hooks)
            return {h: [reps.dimensions[offset + c * n_l + i] for c in range(n_steps)]
                    for i, h in enumerate(hooks)}  # fmt: skip

        result = SimilarityResult(
            run=str(run.path), steps=steps, hooks=hooks, kernel=options.kernel,
            unbiased=options.unbiased, rbf_fraction=options.rbf_fraction, samples=len(obs),
            cka=matrix, dimension=dims(0, len(steps)),
            other=None if other is None else str(other.path), other_steps=other_steps,
            cross=cross, other_dimension=dims(mine_n, len(other_steps)) if other else {},
            meta={"episodes": options.episodes, "seed": options.seed,
                  "env_kwargs": dict(options.env_kwargs),
                  "discard_fraction": options.discard_fraction, "dimension": "TwoNN",
                  "estimator": "unbiased HSIC (Song et al. 2012)" if options.unbiased
                  else "biased HSIC (Kornblith et al. 2019)"},
        )  # fmt: skip
        artifacts.write_json(file, result.to_json())
    return result


__all__ = [
    "KERNELS",
    "SimilarityOptions",
    "SimilarityResult",
    "observations",
    "pick_checkpoints",
    "result_file",
    "run_similarity",
]
