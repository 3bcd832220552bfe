"""``policylens explore RUN``: the explorer, a local web app on one run."""

from __future__ import annotations

from pathlib import Path

import typer

from policylens.commands.framework import command, console


@command("explore")
def explore_cmd(
    run: Path = typer.Argument(..., help="Run folder to explore."),
    port: int = typer.Option(
        0, min=0, max=65535, help="Port on 127.0.0.1 (default: a random free one)."
    ),
    no_browser: bool = typer.Option(
        False, "--no-browser", help="Only print the URL; do not open a browser."
    ),
    threads: int = typer.Option(1, min=1, max=64, help="Torch threads for the agent."),
    data: Path = typer.Option(
        None,
        help="A decision transformer's trajectory store for its patching view (default: the "
        "store it trained on; a zoo DT ships without it: `policylens dt collect`).",
    ),
) -> None:
    """Explore a run in the browser: scrub episodes, overlays, activations, the maze editor,
    interventions, SAE features. Serves only this run, on 127.0.0.1, behind a per-launch token."""
    from policylens.explorer import serve

    serve(run, port=port, open_browser=not no_browser, threads=threads, data=data,
          say=lambda m: console.print(m, highlight=False, soft_wrap=True))  # fmt: skip
