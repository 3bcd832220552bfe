"""The maze run's report: behaviour, trajectories, heatmaps, vector fields, decision squares,
interventions and attribution, drawn from the maze study's results
(:mod:`policylens.studies.maze.misgeneralization`); nothing here runs an analysis.
"""

from __future__ import annotations

from typing import Any

from policylens.report import figures
from policylens.report.attribution import attribution_section
from policylens.report.html import Report
from policylens.studies.maze.behaviour import Evaluation
from policylens.studies.maze.misgeneralization import (
    Behaviour,
    Headline,
    MazeStudy,
    MazeTable,
    SteeringResult,
)


def _rate(p: dict[str, Any]) -> str:
    return f"{p['rate']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}] (n={p['n']})"


def _difference(d: dict[str, Any]) -> str:
    """A difference of proportions with its interval and the verdict it supports."""
    verdict = "an effect" if d["effect"] else "no effect (the interval holds zero)"
    return f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]: {verdict}."


def behaviour_rows(behaviour: Behaviour) -> list[dict[str, Any]]:
    """One row per distribution: success, path efficiency and corner bias."""
    rows = []
    for name, evaluation in (
        ("training distribution", behaviour.train),
        ("cheese anywhere", behaviour.test),
    ):
        r = evaluation.summary
        rows.append(
            {
                "distribution": name,
                "success": _rate(r["success"]),
                "length / shortest path": r["path_ratio"],
                "corner before cheese": _rate(r["corner_first"]) if r["corner_first"]["n"] else "-",
                "success, cheese off corner path": _rate(r["off_path"]["success"])
                if r["off_path"]["success"]["n"]
                else "-",
            }
        )
    return rows


def render(study: MazeStudy) -> Report:
    """The maze report of one agent's study."""
    result, config, t = study.analysis, study.config, study.training
    if t is None:
        intro = "An agent without a run folder. Policies are sampled; intervals are 95%."
    else:
        intro = (
            f"PPO agent ({t.arch}) trained {result.step:,} steps in {t.env_id} with "
            f"{t.env_kwargs}, seed {t.seed}. Policies are sampled; intervals are 95%."
        )
    report = Report(f"policylens report: {study.name}", intro)
    if t is not None and t.metrics:
        report.section("Training").figure(
            figures.curves_figure(
                t.metrics, ["success", "path_ratio", "entropy"], "learning curve"
            ),
            "learning curve",
        )

    sec = report.section("Success and corner bias")
    sec.table(behaviour_rows(result.behaviour))
    sec.note(
        "'corner before cheese' counts mazes whose cheese is not in the corner; the mouse reached the "
        "maze's top-right cell first (or instead). Goal misgeneralization shows as high success on the "
        "training distribution and a high corner rate when the cheese is anywhere."
    )

    views = study.views
    states, eps = views.states, views.episodes
    report.section("Sample test mazes with trajectories").figure(
        figures.trajectories_figure(
            states,
            [e.positions for e in eps],
            [("cheese" if e.success else "no cheese") + f", {e.length} steps" for e in eps],
        ),
        "trajectories",
    ).note("Blue: the mouse's path; red square: the top-right corner; yellow: the cheese.")

    report.section("Where the agent goes").figure(
        figures.heatmap_figure(
            views.visits, f"visits over {views.visit_mazes} test mazes (cheese anywhere)"
        ),
        "visit heatmap",
    )

    hook = result.steering["hook"]
    panels = []
    for s, base, change in views.fields:
        panels += [
            (s, base, "policy", "#1f4fd1"),
            (s, change, "change with cheese vector subtracted", "#d62728"),
        ]
    report.section("Vector fields").figure(
        figures.vector_field_figure(panels[:4]), "vector fields"
    ).note(
        "Arrows: the policy's expected move with the mouse on each cell. Red: how subtracting the "
        f"cheese vector at {hook} changes it."
    )

    d = result.decisions
    sec = report.section("Decision squares")
    sec.text(
        f"Mouse placed on the decision square of {d['n_mazes']} test mazes (cheese off the path to the corner"
        + (" and outside the training region" if config.cheese_region else "")
        + f"): P(goes to cheese) = {_rate(d['p_cheese'])}; undecided within the step limit: {d['undecided']}. "
        f"Mean probability of the first step toward the cheese (vs the corner): {d['p_cheese_first_step']['mean']:.3f}."
    )
    reg = d["regression"]
    if "test_accuracy" in reg:
        sec.table(
            [
                {
                    "model": "logistic regression on maze features",
                    "held-out accuracy": reg["test_accuracy"],
                },
                {
                    "model": "always the majority choice",
                    "held-out accuracy": reg["majority_baseline"],
                },
            ]
            + [
                {"model": f"only {k}", "held-out accuracy": v}
                for k, v in reg["single_feature_accuracy"].items()
            ]
        )
        sec.json({"coefficients (standardised features)": reg["coefficients"]})
    else:
        sec.note(
            f"{reg['skipped']}. Always predicting the majority choice is right in "
            f"{reg['majority_baseline']:.1%} of the decided mazes."
        )
    sec.note(
        "Mini, Turner et al. 2023 (procgen, region 5): P(cheese) 0.848; regression 0.904 vs 0.848 majority."
    )

    steering_sections(report, result.steering, "this agent")
    for name, other in study.others.items():
        steering_sections(report, other.steering, name)
    attribution_section(report, study.attribution)
    return report


def table_rows(table: MazeTable) -> list[dict[str, Any]]:
    """The goal-misgeneralization table: one row per run, rates with their intervals."""
    return [
        {k: _rate(v) if isinstance(v, dict) else v for k, v in row.items()}
        for row in table.to_json()
    ]


def steering_sections(report: Report, st: dict[str, Any], agent_name: str) -> None:
    """The cheese-vector and channel-clamping sections from a steering study's result."""
    s, hook = st["steering"], st["hook"]
    labels = ["no intervention", "cheese vector x -1", "random vectors x -1"]
    keys = ["baseline", "cheese_vector x -1", "random x -1"]
    sec = report.section(f"Steering: the cheese vector ({agent_name})")
    for metric in ("success", "corner_first"):
        vals = [s[k][metric] for k in keys]
        sec.figure(
            figures.bars_figure(
                labels,
                [v["rate"] for v in vals],
                [v["ci"][0] for v in vals],
                [v["ci"][1] for v in vals],
                f"{metric} over {s['n_mazes']} test mazes (hook {hook})",
                metric,
            ),  # fmt: skip
            metric,
        )
    sec.text(
        "Success with the cheese vector subtracted minus success with random vectors: "
        + _difference(st["cheese_vector_vs_random"])
    )
    sec.note(
        "Cheese vector: activation of the maze minus the same maze without cheese at the start, per maze; "
        "random vectors have the same per-maze norm."
    )
    if s["baseline"]["success"]["rate"] < 0.1:
        sec.note(
            "This agent rarely reaches the cheese without intervention on these mazes (the cheese is off "
            "the way to the corner), so there is little for the cheese vector to remove. Agents trained "
            "with a larger cheese region (e.g. `policylens train maze --cheese-region 3`) show the effect."
        )
    c = st["clamp"]
    report.section(f"Channel clamping ({agent_name})").table(
        [
            {
                "condition": "no intervention",
                "reaches target square": _rate(c["baseline_reaches_target"]),
            },
            {
                "condition": f"channel {c['channels']} clamped to {c['value']:.2f} at the target",
                "reaches target square": _rate(c["clamped_reaches_target"]),
            },  # fmt: skip
        ]
    ).text("Clamped minus unclamped: " + _difference(st["clamped_vs_unclamped"])).note(
        f"Channels that best track the cheese at {hook} (channel, correlation): "
        + ", ".join(f"{ch} ({r:.2f})" for ch, r in st["cheese_channels"])
        + f". Target: a random free cell at least 4 steps from the cheese; {c['max_steps']} steps allowed."
    )


def headline_lines(h: Headline, steered_by: str = "the same agent") -> list[str]:
    """The headline as sentences; an intervention is judged against its control, and one whose
    difference interval holds zero is called "no effect". ``steered_by`` names the agent the
    interventions ran on."""

    def rate(p: dict[str, Any]) -> str:
        if not p["n"]:
            return "n/a (no episodes)"
        return f"{p['rate']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}] (n={p['n']})"

    def verdict(d: dict[str, Any]) -> str:
        span = f"difference {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
        return f"{span}: {'an effect' if d['effect'] else 'no effect'}"

    return [
        f"success, training distribution: {rate(h.train_success)}",
        f"success, cheese anywhere: {rate(h.test_success)}",
        f"top-right corner before the cheese, cheese anywhere: {rate(h.test_corner_first)}",
        f"goes to the cheese at decision squares: {rate(h.p_cheese_at_decision_squares)}",
        f"interventions on {steered_by}:",
        f"success without intervention: {rate(h.success_without_intervention)}",
        f"success with the cheese vector subtracted: {rate(h.success_with_cheese_vector_subtracted)}"
        f" vs random vectors {rate(h.success_with_random_vectors)}; "
        + verdict(h.cheese_vector_vs_random),
        f"reaches the target with a cheese channel clamped there: {rate(h.clamped_reaches_target)}; "
        "vs unclamped " + verdict(h.clamped_vs_unclamped),
    ]


def evaluation_rows(evaluation: Evaluation) -> list[dict[str, str]]:
    """An evaluation's rates and means with their intervals, one metric a row."""
    s, rows = evaluation.summary, []
    for key in ("success", "corner_first"):
        if key in s:
            v = s[key]
            rows.append({"metric": key, "value": f"{v['rate']:.3f} (n={v['n']})",
                         "95% CI": f"[{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"})  # fmt: skip
    for key in ("return", "length", "shortest"):
        if key in s:
            v = s[key]
            rows.append({"metric": key, "value": f"{v['mean']:.2f}",
                         "95% CI": f"[{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]"})  # fmt: skip
    if "path_ratio" in s:
        rows.append({"metric": "length / shortest path", "value": f"{s['path_ratio']:.2f}",
                     "95% CI": ""})  # fmt: skip
    return rows


def decision_lines(decisions: dict[str, Any]) -> list[str]:
    """The choice at decision squares, and the regression's accuracy where it was fit."""
    p = decisions["p_cheese"]
    lines = [f"P(goes to cheese) at decision squares: {p['rate']:.3f} (n={p['n']})"]
    reg = decisions["regression"]
    if "test_accuracy" in reg:
        lines.append(
            f"logistic regression on maze features: held-out accuracy {reg['test_accuracy']:.3f} "
            f"vs majority {reg['majority_baseline']:.3f}"
        )
    return lines


def steering_rows(result: SteeringResult) -> list[dict[str, str]]:
    """Success and corner-first rate per condition (baseline, cheese vectors, random vectors)."""
    return [
        {
            "condition": key,
            "success": f"{s['rate']:.3f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]",
            "corner first": f"{c['rate']:.3f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]",
        }
        for key, v in result.conditions.items()
        for s, c in [(v["success"], v["corner_first"])]
    ]


def clamp_line(clamp: dict[str, Any]) -> str:
    """How often clamping retargets the mouse, against no clamp."""
    return (
        f"clamping {clamp['channels']} = {clamp['value']:.2f} at a target square: reaches it "
        f"{clamp['clamped_reaches_target']['rate']:.3f} vs "
        f"{clamp['baseline_reaches_target']['rate']:.3f} without"
    )
