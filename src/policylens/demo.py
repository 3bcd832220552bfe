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

from policylens.envs.maze import MazeConfig, MazeSolver, MazeVecEnv
from policylens.report.gallery import maze_gallery


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


def run_demo(
    out: str | Path,
    console: Console | None = None,
    budget: DemoBudget = FULL,
    precision: str = "auto",
) -> dict[str, Any]:
    """Gallery -> train -> analyse -> report; prints the headline and the report's path.

    ``precision`` is PPO's (``auto`` trains in bf16 only on a CPU with native bf16).
    """
    from policylens.report.maze import write_maze_report
    from policylens.runs import config_json
    from policylens.studies.maze.misgeneralization import analyse_maze_run, headline
    from policylens.train.recipes import maze_recipe

    console = console or Console()
    out = Path(out)
    recipe = maze_recipe(total_steps=budget.steps, precision=precision)
    steering_recipe = maze_recipe(
        cheese_region=STEERING_REGION, total_steps=budget.steering_steps, precision=precision
    )
    steering_dir = out / "steering_agent"
    for folder, wanted in ((out, recipe), (steering_dir, steering_recipe)):
        check_reusable(folder, config_json(asdict(wanted)))
    out.mkdir(parents=True, exist_ok=True)
    config = MazeConfig()
    gallery = maze_gallery(out / "analysis" / "maze_gallery.png", config, n=12, seed=0)
    solved = solve_levels(config, episodes=200, seed=0)
    console.print(
        f"[bold]1. world[/]: {gallery['levels']} mazes -> {gallery['path']}; the BFS solver solved "
        f"{solved['solved']}/{solved['episodes']} optimally: {solved['optimal']}"
    )
    run = train_or_reuse(out, recipe, "2. agent", "cheese in the top-right corner", console)
    steering_run = train_or_reuse(
        steering_dir, steering_recipe, "2b. steering agent",
        f"cheese in the top-right {STEERING_REGION}x{STEERING_REGION} region", console,
    )  # fmt: skip

    console.print(
        "[bold]3. analysis[/]: behaviour, decision squares, cheese vector, channel clamping"
    )
    log = lambda m: console.print(f"   {m}")  # noqa: E731
    report = write_maze_report(
        run, episodes=budget.episodes, n_mazes=budget.n_mazes, n_obs=budget.n_obs,
        steering_runs=[steering_run], log=log,
    )  # fmt: skip
    numbers = headline(
        analyse_maze_run(run, episodes=budget.episodes, n_mazes=budget.n_mazes, log=log),
        analyse_maze_run(steering_run, episodes=budget.episodes, n_mazes=budget.n_mazes, log=log),
    )
    console.print("[bold]4. headline[/] (95% intervals)")
    steered_by = f"the agent trained with cheese region {STEERING_REGION} ({steering_dir})"
    for line in headline_lines(numbers, steered_by):
        console.print(f"   {line}", highlight=False)
    console.print(f"[bold]report[/]: {report.resolve()}")
    console.print(
        f"[bold]explore it[/]: policylens explore {shlex.quote(str(out))}", highlight=False
    )
    return {"gallery": gallery, "solver": solved, "headline": numbers, "report": str(report)}


STEERING_REGION = 3
"""Cheese region of the steering agent: large enough that it goes for the cheese off the corner
path (measured: 35% of test mazes at 1M steps), small enough to train in about a minute."""


def check_reusable(folder: Path, trainer: dict[str, Any]) -> None:
    """One sentence when ``folder`` holds an agent trained with other settings than ``trainer``."""
    from policylens.runs import Run

    if (folder / "config.json").exists():
        trained = Run(folder).config["trainer"]
        if trained != trainer:
            raise ValueError(
                f"{folder} holds an agent trained with other settings "
                f"({trained['total_steps']:,} steps, precision {trained['precision']}); "
                "pass another --out or delete the folder"
            )


def train_or_reuse(folder: Path, recipe: Any, label: str, what: str, console: Console) -> Any:
    """The run in ``folder``: reused when finished, resumed when killed, else trained."""
    from policylens.runs import Run
    from policylens.train.ppo import train_ppo

    if (folder / "config.json").exists() and Run(folder).done:
        console.print(f"[bold]{label}[/]: reusing the trained agent in {folder}")
        return Run(folder)
    resume = (folder / "resume.pt").exists()
    console.print(
        f"[bold]{label}[/]: {'resuming' if resume else 'training'} PPO "
        f"({recipe.total_steps:,} steps, {what}) -> {folder}"
    )
    return train_ppo(recipe, folder, resume=resume)


def headline_lines(h: dict[str, Any], steered_by: str = "the same agent") -> list[str]:
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
        f"success, training distribution: {rate(h['train_success'])}",
        f"success, cheese anywhere: {rate(h['test_success'])}",
        f"top-right corner before the cheese, cheese anywhere: {rate(h['test_corner_first'])}",
        f"goes to the cheese at decision squares: {rate(h['p_cheese_at_decision_squares'])}",
        f"interventions on {steered_by}:",
        f"success without intervention: {rate(h['success_without_intervention'])}",
        f"success with the cheese vector subtracted: {rate(h['success_with_cheese_vector_subtracted'])}"
        f" vs random vectors {rate(h['success_with_random_vectors'])}; "
        + verdict(h["cheese_vector_vs_random"]),
        f"reaches the target with a cheese channel clamped there: {rate(h['clamped_reaches_target'])}; "
        "vs unclamped " + verdict(h["clamped_vs_unclamped"]),
    ]


def solve_levels(config: MazeConfig, episodes: int, seed: int) -> dict:
    """Run the BFS solver through the batched env and check it is optimal on every level."""
    env = MazeVecEnv(num_envs=1, **config.__dict__)
    env.reset(seed=seed)
    solver = MazeSolver(config.procgen_actions)
    lengths, optimal = [], True
    for _ in range(episodes):
        state = env.get_state(0)
        shortest = len(solver.solve(state)) - 1
        steps = 0
        while True:
            _, _, terminated, truncated, _ = env.step([solver.act(env.get_state(0))])
            steps += 1
            if terminated[0] or truncated[0]:
                break
        lengths.append(steps)
        optimal &= bool(terminated[0]) and steps == shortest
    return {
        "episodes": episodes,
        "solved": len(lengths),
        "mean_length": sum(lengths) / len(lengths),
        "optimal": optimal,
    }
