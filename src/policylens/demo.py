"""The end-to-end demo behind the README's first command: train (or reuse) the default maze
agent and measure its goal misgeneralization; train (or reuse) a second agent with a larger
cheese region, which does go for the cheese, and steer both; write the report.

The cheese vector can only remove cheese-seeking an agent has: the default agent (cheese in the
top-right corner) almost never goes for the cheese off the corner path, so its steering result
is "no effect" by construction; the region-3 agent shows what the vector does.

Rerunning reuses every finished step: a trained run is not retrained (an interrupted one
resumes), and saved analyses are reused while the checkpoint is unchanged. ``quick`` runs the
same steps on a small budget (CI runs it, so the main command cannot break silently).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from policylens.report import gallery as gallery_report
from policylens.report import maze as maze_report
from policylens.runs import Run, config_json
from policylens.studies.maze import gallery as levels
from policylens.studies.maze import misgeneralization
from policylens.train.ppo import PPOConfig, train_ppo
from policylens.worlds.maze import MazeRecipe


@dataclass(frozen=True)
class DemoBudget:
    """How much the demo trains and measures."""

    steps: int | None
    """PPO environment steps of the main agent (None: the maze recipe's default)."""
    steering_steps: int
    """PPO environment steps of the steering agent (cheese region 3)."""
    episodes: int
    """Episodes per distribution for the behaviour figures."""
    n_mazes: int
    """Test mazes per decision-square and intervention experiment."""
    n_obs: int
    """Observations for the attribution, NMF and clustering sections."""


FULL = DemoBudget(steps=None, steering_steps=1_000_000, episodes=500, n_mazes=200, n_obs=128)
QUICK = DemoBudget(steps=100_000, steering_steps=50_000, episodes=100, n_mazes=100, n_obs=32)
"""A budget that runs every step in about a minute; its agent is barely trained."""


@dataclass(frozen=True)
class DemoResult:
    """What the demo made: the gallery, the solver check, the headline and the report."""

    gallery: dict[str, Any]
    """The gallery's figures and its PNG (``path``)."""
    solver: levels.SolverCheck
    headline: misgeneralization.Headline
    report: Path

    def to_json(self) -> dict[str, Any]:
        return {"gallery": self.gallery, "solver": self.solver.to_json(),
                "headline": self.headline.to_json(), "report": str(self.report)}  # fmt: skip


def run_demo(
    out: str | Path,
    console: Console | None = None,
    budget: DemoBudget = FULL,
    precision: str = "auto",
) -> DemoResult:
    """Gallery -> train -> analyse -> report; prints the headline and the report's path.

    ``precision`` is PPO's (``auto`` trains in bf16 only on a CPU with native bf16).
    """
    console = console or Console()
    out = Path(out)
    recipe = MazeRecipe(total_steps=budget.steps, precision=precision).config()
    steering_recipe = MazeRecipe(
        cheese_region=STEERING_REGION, total_steps=budget.steering_steps, precision=precision
    ).config()
    steering_dir = out / "steering_agent"
    for folder, wanted in ((out, recipe), (steering_dir, steering_recipe)):
        check_reusable(folder, config_json(asdict(wanted)))
    out.mkdir(parents=True, exist_ok=True)
    shown = levels.GalleryOptions(n=12, seed=0)
    solutions = levels.run(shown)
    png = gallery_report.render(solutions, out / "analysis" / "maze_gallery.png")
    drawn = {"path": str(png), **solutions.to_json()}
    solved = levels.solve_levels(shown.config, episodes=200, seed=0)
    console.print(
        f"[bold]1. world[/]: {shown.n} mazes -> {png}; the BFS solver solved "
        f"{solved.episodes}/{solved.episodes} optimally: {solved.optimal}"
    )
    run = train_or_reuse(out, recipe, "2. agent", "cheese in the top-right corner", console)
    steering_run = train_or_reuse(
        steering_dir, steering_recipe, "2b. steering agent",
        f"cheese in the top-right {STEERING_REGION}x{STEERING_REGION} region", console,
    )  # fmt: skip

    console.print(
        "[bold]3. analysis[/]: behaviour, decision squares, cheese vector, channel clamping"
    )
    analysis = misgeneralization.AnalysisOptions(episodes=budget.episodes, n_mazes=budget.n_mazes)
    options = misgeneralization.StudyOptions(
        analysis, n_obs=budget.n_obs, steering_runs=(steering_run.path,)
    )
    study = misgeneralization.study(run, options, log=lambda m: console.print(f"   {m}"))
    report = maze_report.render(study).write(run.analysis_dir / "report.html")
    (steered,) = study.others.values()
    numbers = misgeneralization.headline(study.analysis, steered)
    console.print("[bold]4. headline[/] (95% intervals)")
    steered_by = f"the agent trained with cheese region {STEERING_REGION} ({steering_dir})"
    for line in maze_report.headline_lines(numbers, steered_by):
        console.print(f"   {line}", highlight=False)
    console.print(f"[bold]report[/]: {report.resolve()}")
    console.print(
        f"[bold]explore it[/]: policylens explore {shlex.quote(str(out))}", highlight=False
    )
    return DemoResult(drawn, solved, numbers, report)


STEERING_REGION = 3
"""Cheese region of the steering agent: large enough that it goes for the cheese off the corner
path (measured: 35% of test mazes at 1M steps), small enough to train in about a minute."""


def check_reusable(folder: Path, trainer: dict[str, Any]) -> None:
    """One sentence when ``folder`` holds an agent trained with other settings than ``trainer``."""
    if (folder / "config.json").exists():
        trained = Run(folder).config["trainer"]
        if trained != trainer:
            raise ValueError(
                f"{folder} holds an agent trained with other settings "
                f"({trained['total_steps']:,} steps, precision {trained['precision']}); "
                "pass another --out or delete the folder"
            )


def train_or_reuse(folder: Path, recipe: PPOConfig, label: str, what: str, console: Console) -> Run:
    """The run in ``folder``: reused when finished, resumed when killed, else trained."""
    if (folder / "config.json").exists() and Run(folder).done:
        console.print(f"[bold]{label}[/]: reusing the trained agent in {folder}")
        return Run(folder)
    resume = (folder / "resume.pt").exists()
    console.print(
        f"[bold]{label}[/]: {'resuming' if resume else 'training'} PPO "
        f"({recipe.total_steps:,} steps, {what}) -> {folder}"
    )
    return train_ppo(recipe, folder, resume=resume)
