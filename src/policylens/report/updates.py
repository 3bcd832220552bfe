"""The "isolating updates" report: evaluations, salvage, and the structure of the weight update.

:func:`render` draws an experiment's :class:`~policylens.studies.lunar_updates.UpdatesAnalysis`
as a self-contained HTML page; :func:`add_updates_section` adds the same content to an existing
:class:`Report` from the analysis's record, and :func:`render_comparison` draws an
:class:`~policylens.studies.lunar_updates.UpdatesComparison`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from policylens.report.figures import to_png  # noqa: E402
from policylens.report.html import Report  # noqa: E402

if TYPE_CHECKING:
    from policylens.studies.lunar_updates.analysis import UpdatesAnalysis, UpdatesComparison

MODEL_ORDER = (
    "initial",
    "pre",
    "post",
    "subtracted",
    "noise_subtracted",
    "noise_added",
    "control_post",
    "control_subtracted",
    "salvaged",
)
"""Models in the order the tables and bar charts show them."""


# ----------------------------------------------------------------------------- data helpers
def model_rows(analysis: dict[str, Any], variant: str) -> dict[str, dict[str, Any]]:
    """Model name -> aggregated evaluation, for phase-2 ``variant`` (control models included)."""
    ev = analysis["evaluation"]
    a = analysis["experiment"]["phase1"]
    out: dict[str, dict[str, Any]] = {}
    for model in MODEL_ORDER:
        if model in ("initial", "pre"):
            out[model] = ev[model]["*"]
        elif model.startswith("control_"):
            base = model.removeprefix("control_")
            if variant != a and a in ev.get(base, {}):
                out[model] = ev[base][a]
        elif variant in ev.get(model, {}):
            out[model] = ev[model][variant]
    return out


def _metric(entry: dict[str, Any], metric: str) -> dict[str, Any]:
    if metric.startswith("return:"):
        return entry["return"][metric.split(":", 1)[1]]
    return entry[metric]


def _fmt_ci(m: dict[str, Any], digits: int = 1) -> str:
    lo, hi = m["ci"]
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in (m["mean"], lo, hi)):
        return "-"
    return f"{m['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _mean_curve(curves: Sequence[Sequence[Sequence[float]]], points: int = 60):
    """Common step grid and the mean of the curves interpolated on it (NaN-free points only)."""
    usable = []
    for c in curves:
        a = np.asarray(c, dtype=float).reshape(-1, 3)
        ok = np.isfinite(a[:, 1])
        if ok.sum() >= 2:
            usable.append(a[ok, :2])
    if not usable:
        return None, None
    hi = min(u[-1, 0] for u in usable)
    lo = max(u[0, 0] for u in usable)
    if hi <= lo:
        return None, None
    grid = np.linspace(lo, hi, points)
    ys = np.stack([np.interp(grid, u[:, 0], u[:, 1]) for u in usable])
    return grid, ys.mean(0)


# ----------------------------------------------------------------------------- figures
def evaluation_figure(analysis: dict[str, Any], variant: str) -> bytes:
    """Bars (mean over seeds, 95% whiskers, one dot per seed) for each model and metric."""
    a = analysis["experiment"]["phase1"]
    rows = model_rows(analysis, variant)
    metrics = [f"return:{a}", f"return:{variant}"]
    if "fuel" not in (a, variant):
        metrics.append("return:fuel")
    metrics += ["fuel_used", "landed"]
    names = list(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.4), squeeze=False)
    colours = plt.cm.tab10(np.arange(len(names)) % 10)
    for ax, metric in zip(axes[0], metrics, strict=True):
        ms = [_metric(rows[n], metric) for n in names]
        mean = np.array([m["mean"] for m in ms], dtype=float)
        lo = np.array([m["ci"][0] for m in ms], dtype=float)
        hi = np.array([m["ci"][1] for m in ms], dtype=float)
        x = np.arange(len(names))
        err = np.array([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])
        ax.bar(x, mean, yerr=err, capsize=3, color=colours, alpha=0.75)
        for i, m in enumerate(ms):
            ps = m.get("per_seed", [])
            ax.scatter(np.full(len(ps), i) + np.linspace(-0.15, 0.15, max(len(ps), 1))[: len(ps)],
                       ps, s=8, color="k", zorder=3)  # fmt: skip
        ax.axhline(0, color="#888", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        title = metric.replace("return:", "return under ")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{a} -> {variant}: models over {analysis['experiment']['episodes']} episodes/seed",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return to_png(fig)


def curves_with_mean(
    curves: dict[str, Sequence[Sequence[float]]],
    title: str,
    reference: dict[str, Sequence[Sequence[float]]] | None = None,
    reference_label: str = "",
    hline: float | None = None,
) -> bytes:
    """One thin line per seed and a thick mean line (plus an optional reference mean)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.3))
    for seed, c in curves.items():
        a = np.asarray(c, dtype=float).reshape(-1, 3)
        ok = np.isfinite(a[:, 1])
        ax.plot(a[ok, 0], a[ok, 1], lw=0.8, alpha=0.45, label=f"seed {seed}")
    grid, mean = _mean_curve(list(curves.values()))
    if grid is not None:
        ax.plot(grid, mean, lw=2.4, color="k", label="mean")
    if reference:
        g, m = _mean_curve(list(reference.values()))
        if g is not None:
            ax.plot(g, m, lw=1.8, color="#d62728", ls="--", label=reference_label)
    if hline is not None and math.isfinite(hline):
        ax.axhline(hline, color="#2ca02c", lw=1, ls=":", label="pre (evaluation)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("training return")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    return to_png(fig)


def norms_figure(analysis: dict[str, Any]) -> bytes:
    """Per-tensor update norms, absolute and relative to the weights, per phase-2 variant."""
    units = analysis["experiment"]["phase2"] + (
        [analysis["experiment"]["phase1"]]
        if analysis["experiment"]["control"]
        and analysis["experiment"]["phase1"] not in analysis["experiment"]["phase2"]
        else []
    )
    updates = analysis["updates"]
    names = [t["name"] for t in next(iter(updates.values()))["tensors"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / max(len(units), 1)
    for k, (ax, field) in enumerate(zip(axes, ("norm", "rel_norm"), strict=True)):
        for j, v in enumerate(units):
            labs = [lab for lab in updates if lab.endswith(f"/{v}")]
            vals = np.array([[t[field] for t in updates[lab]["tensors"]] for lab in labs])
            x = np.arange(len(names)) + (j - (len(units) - 1) / 2) * width
            ax.bar(x, np.nanmean(vals, 0), width, label=v)
            for row in vals:
                ax.scatter(x, row, s=5, color="k", zorder=3)
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=6)
        ax.set_yscale("log")
        ax.set_title(["update norm per tensor", "update norm / weight norm"][k], fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)


def groups_figure(analysis: dict[str, Any]) -> bytes:
    """Share of each update's squared norm per group (stacked), beside the parameter shares."""
    updates = analysis["updates"]
    labels = list(updates)
    groups = [g for g in ("shared", "policy body", "policy head", "value body", "value head")
              if any(g in updates[lab]["groups"] for lab in labels)]  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * (len(labels) + 1)), 3.4))
    cols = labels + ["parameters"]
    bottom = np.zeros(len(cols))
    for g in groups:
        vals = [updates[lab]["groups"].get(g, {}).get("mass_share", 0.0) for lab in labels]
        vals.append(updates[labels[0]]["groups"].get(g, {}).get("param_share", 0.0))
        ax.bar(range(len(cols)), vals, bottom=bottom, label=g)
        bottom += np.asarray(vals, dtype=float)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("share of squared update norm")
    ax.set_title("where the update lands (last bar: share of parameters)", fontsize=9)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return to_png(fig)


def sparsity_figure(analysis: dict[str, Any], frac: str = "0.01") -> bytes:
    """Share of squared mass in the top entries: update vs its equal-norm noise, per tensor."""
    updates, noise = analysis["updates"], analysis["noise"]
    names = [t["name"] for t in next(iter(updates.values()))["tensors"]]
    up = np.array([[t["top_mass"][frac] for t in updates[lab]["tensors"]] for lab in updates])
    nz = np.array([[t["top_mass"][frac] for t in noise[lab]["tensors"]] for lab in noise])
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names)), 3.4))
    x = np.arange(len(names))
    ax.bar(x - 0.2, np.nanmean(up, 0), 0.4, label="update")
    ax.bar(x + 0.2, np.nanmean(nz, 0), 0.4, label="noise, same norm")
    for row in up:
        ax.scatter(x - 0.2, row, s=5, color="k", zorder=3)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"share of mass in top {float(frac):.0%} entries")
    ax.set_title("sparsity of the update (mean over updates, dots: each)", fontsize=9)
    ax.legend(fontsize=7)
    return to_png(fig)


def spectra_figure(analysis: dict[str, Any]) -> bytes:
    """Normalised singular values of each weight delta (all updates), log scale."""
    updates = analysis["updates"]
    mats = [t["name"] for t in next(iter(updates.values()))["tensors"] if t["singular_values"]]
    cols = min(len(mats), 4) or 1
    rows = -(-len(mats) // cols) if mats else 1
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, mats, strict=False):
        ax.axis("on")
        for lab, u in updates.items():
            t = next(t for t in u["tensors"] if t["name"] == name)
            s = np.asarray(t["singular_values"], dtype=float)
            if s.size and s[0] > 0:
                ax.semilogy(np.arange(1, s.size + 1), s / s[0], lw=0.8, alpha=0.7, label=lab)
        ax.set_title(name, fontsize=7)
        ax.set_xlabel("index", fontsize=7)
    if mats:
        axes.flat[0].legend(fontsize=5)
    fig.suptitle("singular values of each weight delta (divided by the largest)", fontsize=9)
    fig.tight_layout()
    return to_png(fig)


def heatmaps_figure(update: dict[str, Any], title: str) -> bytes:
    """Every tensor of one update: matrices as heatmaps (diverging), vectors as one-row maps."""
    names = list(update)
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        t = update[name].detach().float()
        m = t.reshape(t.shape[0], -1).numpy() if t.dim() >= 2 else t.reshape(1, -1).numpy()
        lim = float(np.abs(m).max()) or 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto",
                       interpolation="nearest")  # fmt: skip
        ax.set_title(name, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_png(fig)


def cosine_figure(labels: Sequence[str], matrix: Sequence[Sequence[float]], title: str) -> bytes:
    """Pairwise cosine similarities of updates as an annotated heatmap."""
    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 0.9 + 0.5 * n))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticklabels(labels, fontsize=7)
    if n <= 14:
        for i in range(n):
            for j in range(n):
                if math.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    return to_png(fig)


# ----------------------------------------------------------------------------- the page
def evaluation_table(analysis: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    """Rows of the evaluation table for phase-2 ``variant``."""
    a = analysis["experiment"]["phase1"]
    out = []
    for name, e in model_rows(analysis, variant).items():
        row = {"model": name, f"return ({a})": _fmt_ci(e["return"][a])}
        if variant != a:
            row[f"return ({variant})"] = _fmt_ci(e["return"][variant])
        if "fuel" not in (a, variant):
            row["return (fuel)"] = _fmt_ci(e["return"]["fuel"])
        row["fuel used"] = _fmt_ci(e["fuel_used"])
        row["landed"] = _fmt_ci(e["landed"], 2)
        row["interval"] = e["landed"]["ci_kind"]
        out.append(row)
    return out


def update_table(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per update: norms, sparsity vs noise, low rank, and the policy share."""
    rows = []
    for lab, u in analysis["updates"].items():
        mats = [t for t in u["tensors"] if t["singular_values"]]
        rows.append(
            {
                "update": lab,
                "norm": u["norm"],
                "norm / weights": u["rel_norm"],
                "top 1% mass": u["top_mass"]["0.01"],
                "noise top 1%": analysis["noise"][lab]["top_mass"]["0.01"],
                "top 10% mass": u["top_mass"]["0.1"],
                "mean top-1 singular energy": float(np.nanmean([t["top1_energy"] for t in mats]))
                if mats
                else math.nan,
                "policy share": sum(
                    s["mass_share"] for g, s in u["groups"].items() if g.startswith("policy")
                ),
                "value share": sum(
                    s["mass_share"] for g, s in u["groups"].items() if g.startswith("value")
                ),
            }
        )
    return rows


def add_updates_section(report: Report, analysis: dict[str, Any], root: str | Path | None = None):
    """Add the experiment's sections to ``report`` (figures, tables, consistency, salvage)."""
    from policylens.lenses import updates as U

    e = analysis["experiment"]
    a = e["phase1"]
    setup = report.section("Isolating updates: setup")
    setup.text(
        f"Phase 1 trains on reward '{a}' for {e['steps1']} steps (pre); phase 2 continues on "
        f"{', '.join(repr(v) for v in e['phase2'])} for {e['steps2']} steps (post). "
        f"Update = post - pre; subtracted = pre - update. Backend: {e['backend']}; seeds "
        f"{e['seeds']}; {e['episodes']} full episodes per model and seed "
        f"({'argmax' if e['greedy'] else 'sampled'} actions), the same episode seeds for every model."
    )
    setup.note(
        "Intervals: across seeds (normal approximation) when there are several seeds, else across "
        "the episodes of the one seed (Wilson for rates). Controls: noise with the update's norm "
        f"in every tensor, and a phase 2 that keeps reward '{a}' (control_*)."
    )
    setup.json({"architecture": analysis["arch"]})
    for v in e["phase2"]:
        sec = report.section(f"Behaviour: {a} -> {v}")
        sec.table(evaluation_table(analysis, v))
        sec.figure(evaluation_figure(analysis, v), f"evaluation of models for {v}")
    p1 = report.section("Phase 1 learning curves")
    p1.figure(curves_with_mean(analysis["phase1_curves"], f"phase 1 on {a}"), "phase 1 curves")
    sv = report.section("Salvage: retraining the subtracted model")
    rec = analysis["salvage"]["recovery"]
    rows = []
    for v, r in rec.items():
        for s, steps in r["steps_to_recover"].items():
            rows.append({"phase 2": v, "seed": s, "subtracted return": r["subtracted_return"][s],
                         "pre return": r["pre_return"][s], "steps to recover": steps,
                         "steps from scratch": r["scratch_steps"].get(s)})  # fmt: skip
    sv.text(
        f"Steps until the training return is {analysis['salvage']['fraction']:.0%} of the way back "
        "from the subtracted model's return to pre's (both from evaluation), against the steps "
        "phase 1 needed to come as far from the initial model."
    )
    sv.table(rows)
    for v, curves in analysis["salvage"]["curves"].items():
        pre_mean = float(np.mean(list(rec[v]["pre_return"].values()))) if v in rec else math.nan
        sv.figure(
            curves_with_mean(curves, f"salvage after {v}: retrain on {a}",
                             analysis["phase1_curves"], "phase 1 from scratch (mean)", pre_mean),
            f"salvage curves {v}",
        )  # fmt: skip
    up = report.section("The update: size, sparsity, rank, location")
    up.table(update_table(analysis))
    up.figure(norms_figure(analysis), "update norms per tensor")
    up.figure(groups_figure(analysis), "update mass per group")
    up.figure(sparsity_figure(analysis), "sparsity vs noise")
    up.figure(spectra_figure(analysis), "singular value spectra")
    if root is not None:
        first = next(iter(analysis["updates"]))
        seed, variant = first.split("/", 1)
        file = Path(root) / f"seed_{seed[1:]}" / variant / "models" / "update.safetensors"
        if file.is_file():
            up.figure(heatmaps_figure(U.load_state(file), f"update {first}"), f"heatmaps {first}")
    cs = report.section("Is there a consistent direction? Cosine similarity of updates")
    cs.figure(
        cosine_figure(analysis["cosine"]["labels"], analysis["cosine"]["matrix"], "all parameters"),
        "cosine matrix",
    )
    for g, m in analysis["cosine"]["by_group"].items():
        if len(analysis["cosine"]["labels"]) > 1:
            cs.figure(cosine_figure(analysis["cosine"]["labels"], m, g), f"cosine {g}")
    c = analysis["consistency"]
    rows = [{"comparison": f"across seeds: {v}", "mean cosine": x["mean"], "pairs": x["n"]}
            for v, x in c["across_seeds"].items()]  # fmt: skip
    rows += [{"comparison": f"same seed: {k}", "mean cosine": x["mean"], "pairs": x["n"]}
             for k, x in c["across_variants"].items()]  # fmt: skip
    rows += [{"comparison": f"across seeds: {v} minus control", "mean cosine": x["mean"],
              "pairs": x["n"]} for v, x in c.get("specific_across_seeds", {}).items()]  # fmt: skip
    cs.table(rows)
    cs.note(
        "Seeds start from different initialisations, so hidden units are not aligned across seeds "
        "(any permutation of them is the same network): a near-zero cosine across seeds does not "
        "rule out a shared function. Within a seed all updates start from the same pre weights."
    )
    return report


def render(analysis: UpdatesAnalysis, out: str | Path | None = None) -> Path:
    """Write the experiment's page to ``out`` (default ``<experiment>/report.html``)."""
    e = analysis.experiment
    root = Path(e["path"])
    report = Report(
        f"Isolating updates: {e['phase1']} -> {', '.join(e['phase2'])} ({e['backend']})",
        "Two-phase PPO in the lunar world: the weight update of a changed reward, subtracted, "
        "perturbed and retrained.",
    )
    add_updates_section(report, analysis.record(), root)
    return report.write(Path(out) if out is not None else root / "report.html")


def compare_figure(result: UpdatesComparison, keys: Sequence[str]) -> bytes:
    """One panel per statistic: a dot per seed and a mean line per group."""
    rows = result.rows
    keys = [k for k in keys if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.1 * len(keys), 3.3), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        for i, r in enumerate(rows):
            if k not in r:
                continue
            vals = np.asarray(r[k]["values"], dtype=float)
            ax.scatter(np.full(vals.size, i), vals, s=10, alpha=0.6)
            ax.hlines(r[k]["mean"], i - 0.3, i + 0.3, color="k", lw=2)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["group"] for r in rows], rotation=45, ha="right", fontsize=7)
        ax.set_title(k, fontsize=8)
    fig.tight_layout()
    return to_png(fig)


COMPARE_KEYS = (
    "fuel_used_pre",
    "fuel_used_post",
    "return_A_subtracted",
    "return_A_noise_subtracted",
    "update_rel_norm",
    "update_top1pct_mass",
    "policy_share",
    "cos_to_control",
    "salvage_steps",
)


def render_comparison(result: UpdatesComparison, out: str | Path) -> Path:
    """Write the comparison's page to ``out``."""
    report = Report(f"Comparing updates experiments by {result.by}", "")
    sec = report.section("Statistics per group (mean [95% CI] over seeds)")
    table = []
    for r in result.rows:
        row = {"group": r["group"], "experiments": r["experiments"]}
        for k in COMPARE_KEYS:
            if k in r:
                row[k] = _fmt_ci(r[k], 3)
        table.append(row)
    sec.table(table)
    sec.figure(compare_figure(result, COMPARE_KEYS), "comparison")
    sal = report.section("Salvage curves (mean line per group)")
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for g, curves in result.salvage_curves.items():
        grid, mean = _mean_curve(curves)
        if grid is not None:
            ax.plot(grid, mean, lw=2, label=g)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("training return")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    sal.figure(to_png(fig), "salvage by group")
    sec.json({"experiments": result.experiments})
    return report.write(out)


__all__ = [
    "add_updates_section",
    "compare_figure",
    "cosine_figure",
    "curves_with_mean",
    "evaluation_figure",
    "evaluation_table",
    "groups_figure",
    "heatmaps_figure",
    "model_rows",
    "norms_figure",
    "render",
    "render_comparison",
    "sparsity_figure",
    "spectra_figure",
    "update_table",
]
