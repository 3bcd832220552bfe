"""The end-to-end demo behind the README's first command: train (or reuse) the default maze
agent, measure its goal misgeneralization, steer it, and write the report.

Rerunning reuses every finished step: a trained run is not retrained (an interrupted one
resumes), and saved analyses are reused while the checkpoint is unchanged.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from policylens.envs.maze import MazeConfig, MazeSolver, MazeVecEnv
from policylens.report.gallery import maze_gallery


def run_demo(
    out: str | Path, console: Console | None = None, total_steps: int | None = None
) -> dict:
    """Gallery -> train -> analyse -> report; prints the headline numbers and the report's path."""
    from policylens.analysis.misgeneralization import headline
    from policylens.report.maze import write_maze_report
    from policylens.train.ppo import train_ppo
    from policylens.train.recipes import maze_recipe
    from policylens.train.runs import Run

    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = MazeConfig()
    gallery = maze_gallery(out / "analysis" / "maze_gallery.png", config, n=12, seed=0)
    solved = solve_levels(config, episodes=200, seed=0)
    console.print(
        f"[bold]1. world[/]: {gallery['levels']} mazes -> {gallery['path']}; the BFS solver solved "
        f"{solved['solved']}/{solved['episodes']} optimally: {solved['optimal']}"
    )

    run_dir = out  # the demo's folder is the agent's run folder
    recipe = maze_recipe(total_steps=total_steps)
    if (run_dir / "DONE").exists():
        console.print(f"[bold]2. agent[/]: reusing the trained agent in {run_dir}")
    else:
        resume = (run_dir / "resume.pt").exists()
        console.print(
            f"[bold]2. agent[/]: {'resuming' if resume else 'training'} PPO ({recipe.total_steps:,} steps, "
            f"cheese in the top-right corner) -> {run_dir}"
        )
        train_ppo(recipe, run_dir, resume=resume)
    run = Run(run_dir)

    console.print(
        "[bold]3. analysis[/]: behaviour, decision squares, cheese vector, channel clamping"
    )
    report = write_maze_report(run, log=lambda m: console.print(f"   {m}"))
    from policylens.analysis.misgeneralization import analyse_maze_run

    numbers = headline(analyse_maze_run(run, log=lambda *_: None))
    console.print("[bold]4. headline[/]")
    for key, value in numbers.items():
        console.print(f"   {key.replace('_', ' ')}: {value:.3f}")
    console.print(f"[bold]report[/]: {report.resolve()}")
    return {"gallery": gallery, "solver": solved, "headline": numbers, "report": str(report)}


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
