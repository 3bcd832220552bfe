"""The maze run's report: behaviour, trajectories, heatmaps, vector fields, decision squares,
interventions and attribution, drawn from the maze study's results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from policylens.agents import HookedAgent
from policylens.envs.maze import MazeConfig
from policylens.report import figures
from policylens.report.attribution import attribution_section
from policylens.report.html import Report
from policylens.runs import Run
from policylens.studies.maze.attribution import attribution_study
from policylens.studies.maze.misgeneralization import analyse_maze_run, maze_config, maze_views


def _rate(p: dict[str, Any]) -> str:
    return f"{p['rate']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}] (n={p['n']})"


def _difference(d: dict[str, Any]) -> str:
    """A difference of proportions with its interval and the verdict it supports."""
    verdict = "an effect" if d["effect"] else "no effect (the interval holds zero)"
    return f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]: {verdict}."


def behaviour_rows(behaviour: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, r in (
        ("training distribution", behaviour["train"]),
        ("cheese anywhere", behaviour["test"]),
    ):
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


def write_maze_report(
    run: Run,
    out: str | Path | None = None,
    episodes: int = 500,
    n_mazes: int = 200,
    n_obs: int = 128,
    steering_runs: Sequence[Run] = (),
    log=print,
) -> Path:
    """Analyse (or reuse analyses of) a maze run and write ``analysis/report.html``.

    ``steering_runs``: other maze runs (e.g. trained with a larger cheese region, so they do go
    for the cheese) whose cheese-vector and clamping results are shown beside this agent's.
    """
    result = analyse_maze_run(run, episodes=episodes, n_mazes=n_mazes, log=log)
    also = {
        f"agent {r.name}, cheese region {r.config['trainer']['env_kwargs'].get('cheese_region')}": (
            analyse_maze_run(r, episodes=episodes, n_mazes=n_mazes, log=log)["steering"]
        )
        for r in steering_runs
    }
    trainer = run.config["trainer"]
    report = maze_report(
        run.load_agent(),
        maze_config(run),
        result,
        f"policylens report: {run.name}",
        f"PPO agent ({run.config['agent'].get('arch')}) trained {result['step']:,} steps in "
        f"{trainer['env_id']} with {trainer['env_kwargs']}, seed {trainer['seed']}. Policies are "
        "sampled; intervals are 95%.",
        metrics=run.metrics(),
        n_obs=n_obs,
        save_to=run.analysis_dir,
        also_steering=also,
        log=log,
    )
    return report.write(Path(out) if out else run.path / "analysis" / "report.html")


def maze_report(
    agent: HookedAgent,
    config: MazeConfig,
    result: dict[str, Any],
    title: str,
    intro: str,
    metrics: list[dict[str, Any]] | None = None,
    n_obs: int = 128,
    save_to: Path | None = None,
    also_steering: dict[str, dict[str, Any]] | None = None,
    log=print,
) -> Report:
    """The maze report of ``agent`` from its analyses (``analyse_maze_agent``'s result)."""
    report = Report(title, intro)
    if metrics:
        report.section("Training").figure(
            figures.curves_figure(metrics, ["success", "path_ratio", "entropy"], "learning curve"),
            "learning curve",
        )

    log("report figures ...")
    sec = report.section("Success and corner bias")
    sec.table(behaviour_rows(result["behaviour"]))
    sec.note(
        "'corner before cheese' counts mazes whose cheese is not in the corner; the mouse reached the "
        "maze's top-right cell first (or instead). Goal misgeneralization shows as high success on the "
        "training distribution and a high corner rate when the cheese is anywhere."
    )

    views = maze_views(agent, config, result["steering"]["hook"])
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

    hook = result["steering"]["hook"]
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

    d = result["decisions"]
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

    steering_sections(report, result["steering"], "this agent")
    for name, other in (also_steering or {}).items():
        steering_sections(report, other, name)
    log("attribution and features ...")
    study = attribution_study(agent, config, n_obs=n_obs, log=log)
    if save_to is not None:
        study.save(save_to)
    attribution_section(report, study)
    return report


def experiment_table(
    runs: list[Run], episodes: int = 500, n_mazes: int = 200
) -> list[dict[str, Any]]:
    """Success in/out of distribution and corner bias for several maze runs (e.g. regions 1, 3, None)."""
    rows = []
    for run in runs:
        result = analyse_maze_run(run, episodes=episodes, n_mazes=n_mazes, log=lambda *_: None)
        b = result["behaviour"]
        trainer = run.config["trainer"]
        rows.append(
            {
                "run": run.name,
                "cheese_region": trainer["env_kwargs"].get("cheese_region"),
                "seed": trainer["seed"],
                "steps": result["step"],
                "train success": _rate(b["train"]["success"]),
                "test success": _rate(b["test"]["success"]),
                "test corner first": _rate(b["test"]["corner_first"]),
                "off-path success": _rate(b["test"]["off_path"]["success"]),
                "off-path corner first": _rate(b["test"]["off_path"]["corner_first"]),
            }
        )
    return rows


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
