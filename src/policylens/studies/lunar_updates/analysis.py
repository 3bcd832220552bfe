"""Analysis of finished experiments: evaluations across seeds, update structure, consistency,
salvage, and comparisons of several experiments.

:func:`analyze_experiment` returns an :class:`UpdatesAnalysis` and saves it as
``DIR/analysis/updates.json``; :func:`compare_experiments` returns an :class:`UpdatesComparison`.
policylens.report.updates renders both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from policylens import artifacts
from policylens.errors import check_known
from policylens.lenses import updates as U
from policylens.rollout import stats
from policylens.studies.lunar_updates.protocol import (
    BACKENDS,
    EVAL_FILE,
    EXPERIMENT_FILE,
    UNIT_FILE,
    UpdatesConfig,
    final_checkpoint,
    load_experiment,
    return_curve,
    seed_dir,
)

RECOVERY_FRACTION = 0.9
"""Salvage counts as recovered once the training return is 90% of the way back to pre's."""
COMPARE_BY = ("variant", "steps", "backend")
"""Groupings :func:`compare_experiments` offers."""


# ----------------------------------------------------------------------------- pieces
def arch_signature(agent_config: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' weights comparable: network kind, options and sizes."""
    if "sb3" in agent_config:
        net = {k: v for k, v in agent_config["sb3"].items() if k != "ortho_init"}
        arch: str | None = "sb3_mlp"
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

    def agg(values: list[float], episode_ci: list[float]) -> dict[str, Any]:
        if len(values) > 1:
            m, lo, hi = stats.mean_ci(values)
            return {"mean": m, "ci": [lo, hi], "ci_kind": "seeds", "per_seed": values}
        return {"mean": values[0], "ci": episode_ci, "ci_kind": "episodes", "per_seed": values}

    out: dict[str, Any] = {"return": {}}
    for v in per_seed[0]["return"]:
        vals = [s["return"][v]["mean"] for s in per_seed]
        out["return"][v] = agg(vals, per_seed[0]["return"][v]["ci"])
    out["fuel_used"] = agg(
        [s["fuel_used"]["mean"] for s in per_seed], per_seed[0]["fuel_used"]["ci"]
    )
    for k in ("landed", "landed_on_pad", "crashed", "truncated"):
        out[k] = agg([s[k]["rate"] for s in per_seed], per_seed[0][k]["ci"])
    out["episodes"] = sum(s["episodes"] for s in per_seed)
    return out


def _pairwise_mean(sim: np.ndarray, pick: Iterable[tuple[int, int]]) -> dict:
    """Mean (and 95% interval) of the finite similarities ``sim[i, j]`` over the pairs ``pick``."""
    vals = [float(sim[i, j]) for i, j in pick if math.isfinite(sim[i, j])]
    if not vals:
        return {"mean": math.nan, "ci": [math.nan, math.nan], "n": 0}
    m, lo, hi = stats.mean_ci(vals)
    return {"mean": m, "ci": [lo, hi], "n": len(vals)}


# ----------------------------------------------------------------------------- one experiment
ANALYSIS_FILE = "analysis/updates.json"
"""Where an experiment folder keeps its analysis (:meth:`UpdatesAnalysis.record`)."""


@dataclass(frozen=True)
class UpdatesAnalysis:
    """One experiment analysed: the models' behaviour, the updates, their consistency, salvage."""

    experiment: dict[str, Any]
    """The experiment's settings (:class:`UpdatesConfig` as JSON), env id and folder."""
    arch: dict[str, Any] | None
    """The network (:func:`arch_signature`): what makes two experiments' weights comparable."""
    evaluation: dict[str, Any]
    """Model -> phase-2 variant ("*" for initial and pre) -> returns under every reward
    variant, fuel used, landing and crash rates: means over seeds with 95% intervals."""
    updates: dict[str, Any]
    """``s<seed>/<variant>`` -> the update's size, sparsity, rank and location
    (:func:`policylens.lenses.updates.summarize_update`)."""
    noise: dict[str, Any]
    """The same label -> its noise control's sparsity, for comparison."""
    cosine: dict[str, Any]
    """Cosine similarity of all updates: labels, matrix, and per parameter group."""
    consistency: dict[str, Any]
    """Mean cosine across seeds, across variants within a seed, and of the reward-specific part."""
    salvage: dict[str, Any]
    """Retraining curves of the subtracted models and their steps to recover."""
    phase1_curves: dict[str, Any]
    """Seed -> phase 1's training-return curve."""

    @property
    def file(self) -> Path:
        """Where the analysis is saved in its experiment folder."""
        return Path(self.experiment["path"]) / ANALYSIS_FILE

    def record(self) -> dict[str, Any]:
        """Everything, as saved in ``analysis/updates.json`` (what the report draws)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> UpdatesAnalysis:
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        """The numbers a summary needs: no per-tensor detail, no curves."""
        return {
            "experiment": self.experiment,
            "arch": self.arch,
            "evaluation": self.evaluation,
            "updates": {
                k: {f: v for f, v in u.items() if f != "tensors"} for k, u in self.updates.items()
            },
            "consistency": self.consistency,
            "recovery": self.salvage["recovery"],
            "analysis_file": str(self.file),
        }


def analyze_experiment(path: str | Path) -> UpdatesAnalysis:
    """Analyse a finished experiment folder: evaluations, update structure, consistency, salvage.

    Saves it as ``analysis/updates.json`` (the folder locked meanwhile). Raises a clear error
    when a phase checkpoint is missing.
    """
    root = Path(path)
    config, meta = load_experiment(root)  # refuses a folder that is not an experiment
    with artifacts.FolderLock(root, "experiment folder"):
        analysis = _analyze(root, config, meta)
        artifacts.write_json(root / ANALYSIS_FILE, analysis.record())
    return analysis


def _analyze(root: Path, config: UpdatesConfig, meta: dict[str, Any]) -> UpdatesAnalysis:
    """The body of :func:`analyze_experiment`, run while its folder is locked."""
    from policylens.runs import Run

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
        p1 = Run(sd / "phase1")
        arch = arch or arch_signature(p1.config["agent"])
        pre = U.load_state(pre_file)
        ev_file = sd / "phase1" / EVAL_FILE
        if not ev_file.is_file():
            raise FileNotFoundError(
                f"The evaluation of seed {seed}'s initial and pre models is missing ({ev_file}); "
                "run the experiment again with the same settings into the same folder to "
                "finish it."
            )
        ev1 = artifacts.read_json(ev_file)
        for name in ("initial", "pre"):
            evals.setdefault(name, {}).setdefault("*", []).append(ev1[name]["summary"])
        phase1[str(seed)] = return_curve(p1.metrics())
        for variant in config.units:
            unit = sd / variant
            unit_file = unit / UNIT_FILE
            if not unit_file.is_file():
                final_checkpoint(unit / "phase2", f"phase-2 (post, {variant})", seed)
                raise FileNotFoundError(
                    f"Seed {seed}'s {variant} unit has no {UNIT_FILE} (its evaluation did not "
                    "finish); run the experiment again with the same settings into the same "
                    "folder."
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
        consistency["across_seeds"][v] = _pairwise_mean(sim, pairs)
    units = list(config.units)
    for i, a in enumerate(units):
        for b in units[i + 1 :]:
            pairs = [
                (idx[f"s{s}/{a}"], idx[f"s{s}/{b}"])
                for s in config.seeds
                if f"s{s}/{a}" in idx and f"s{s}/{b}" in idx
            ]
            consistency["across_variants"][f"{a} vs {b}"] = _pairwise_mean(sim, pairs)
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
                specific[v] = _pairwise_mean(dsim, pairs)
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
    return UpdatesAnalysis(
        experiment={**config.to_json(), "env_id": meta.get("env_id"), "path": str(root)},
        arch=arch,
        evaluation=evaluation,
        updates=summaries,
        noise=noise_summaries,
        cosine={"labels": labels, "matrix": sim.tolist(), "by_group": by_group},
        consistency=consistency,
        salvage={"curves": salvage, "recovery": recovery, "fraction": RECOVERY_FRACTION},
        phase1_curves=phase1,
    )


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


def experiment_analysis(path: str | Path) -> UpdatesAnalysis:
    """The saved analysis of an experiment, computed if absent."""
    file = Path(path) / ANALYSIS_FILE
    if file.is_file():
        return UpdatesAnalysis.from_record(artifacts.read_json(file))
    return analyze_experiment(path)


@dataclass(frozen=True)
class UpdatesComparison:
    """Several experiments grouped by reward variants, step counts or backend."""

    by: str
    """The grouping: one of :data:`COMPARE_BY`."""
    experiments: list[str]
    rows: list[dict[str, Any]]
    """Per (group, phase-2 variant): ``group``, ``experiments`` and, per statistic, its mean
    over all seeds of the group with a 95% interval, ``n`` and the values."""
    salvage_curves: dict[str, list[Any]]
    """Group -> every seed's salvage curve."""

    def to_json(self) -> dict[str, Any]:
        """The statistics (curves left out)."""
        return {"by": self.by, "experiments": self.experiments, "rows": self.rows}


def compare_experiments(paths: Sequence[str | Path], by: str = "variant") -> UpdatesComparison:
    """Compare experiments grouped by reward variants, step counts or backend.

    One row per (group, phase-2 variant) with means over all seeds of the group and 95% intervals.
    Runs with different architectures can only be compared ``by="backend"`` (architecture-free
    statistics); otherwise a ValueError names the two that differ.
    """
    check_known([by], COMPARE_BY, "grouping")
    if not paths:
        raise ValueError("Name at least one experiment folder to compare.")
    analyses = [experiment_analysis(p).record() for p in paths]
    first = analyses[0]
    for p, a in zip(paths[1:], analyses[1:], strict=True):
        if a["arch"] != first["arch"] and by != "backend":
            raise ValueError(
                f"{paths[0]} ({_arch_text(first['arch'])}) and {p} ({_arch_text(a['arch'])}) have "
                "different architectures; compare runs of one architecture, or group by backend "
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
            mu, lo, hi = stats.mean_ci(x) if x.size else (math.nan, math.nan, math.nan)
            row[k] = {"mean": mu, "ci": [lo, hi], "n": int(x.size), "values": xs}
        rows.append(row)
    return UpdatesComparison(by, [str(p) for p in paths], rows, curves)


def _arch_text(sig: dict[str, Any]) -> str:
    net = sig.get("net", {})
    sizes = net.get("hidden") or net.get("net_arch")
    return f"{sig.get('arch')} {sizes}"


__all__ = [
    "ANALYSIS_FILE",
    "COMPARE_BY",
    "RECOVERY_FRACTION",
    "UpdatesAnalysis",
    "UpdatesComparison",
    "analyze_experiment",
    "arch_signature",
    "compare_experiments",
    "experiment_analysis",
    "find_experiments",
    "steps_to_recover",
]
