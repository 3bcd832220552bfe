"""The ``policylens`` command line: each command is a thin shell around one public function."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="policylens: mechanistic interpretability for reinforcement-learning agents.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def command(name: str | None = None, typer_app: typer.Typer = app) -> Callable:
    """Register a command whose user errors end in one clear sentence, not a traceback."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (ValueError, FileNotFoundError, KeyError) as e:
                message = e.args[0] if isinstance(e, KeyError) and e.args else e
                err_console.print(f"[bold red]error:[/] {message}", highlight=False)
                raise typer.Exit(2) from None

        return typer_app.command(name)(run)

    return wrap


def print_json(data: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=lambda v: v.tolist()) + "\n")


@command("envs")
def envs_cmd() -> None:
    """List the registered worlds with a one-line description each."""
    from policylens.envs import WORLDS

    table = Table("world", "description", show_header=True)
    for env_id, description in WORLDS.items():
        table.add_row(env_id, description)
    console.print(table)


@command("gallery")
def gallery_cmd(
    out: Path = typer.Option(Path("maze_gallery.png"), help="PNG file to write."),
    n: int = typer.Option(12, min=1, help="Number of levels."),
    seed: int = typer.Option(0, help="First level seed."),
    world_size: int = typer.Option(9, help="World side in cells (odd)."),
) -> None:
    """Render a gallery of maze levels with their shortest paths."""
    from policylens.envs.maze import MazeConfig
    from policylens.report.gallery import maze_gallery

    stats = maze_gallery(out, MazeConfig(world_size=world_size, maze_sizes=(5, world_size)), n, seed)
    console.print(f"wrote {stats['path']} ({n} levels, mean shortest path {stats['mean_shortest_path']:.1f})")


@command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo's outputs."),
) -> None:
    """The end-to-end demo (the README's main job)."""
    from policylens.demo import run_demo

    run_demo(out, console=console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
