"""The end-to-end demo behind the README's first command."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from policylens.envs.maze import MazeConfig, MazeSolver, MazeVecEnv
from policylens.report.gallery import maze_gallery


def run_demo(out: str | Path, console: Console | None = None) -> dict:
    """Render a maze gallery, solve mazes with the BFS agent, and print what happened."""
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = MazeConfig()
    gallery = maze_gallery(out / "maze_gallery.png", config, n=12, seed=0)
    console.print(
        f"[bold]maze gallery[/]: {gallery['levels']} levels of sizes {sorted(set(gallery['maze_sizes']))} "
        f"in a {config.world_size}x{config.world_size} world -> {gallery['path']}"
    )
    solved = solve_levels(config, episodes=200, seed=0)
    console.print(
        f"[bold]shortest-path solver[/]: solved {solved['solved']}/{solved['episodes']} mazes, "
        f"mean path {solved['mean_length']:.1f} steps (optimal in every maze: {solved['optimal']})"
    )
    return {"gallery": gallery, "solver": solved}


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
