"""``policylens demo``: the README's main job."""

from __future__ import annotations

from pathlib import Path

import typer

from policylens.commands.framework import command, console, err_console, print_json


@command("demo")
def demo_cmd(
    out: Path = typer.Option(
        None, help="Folder for the demo's outputs (default runs/demo, or runs/demo-quick)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Every step on a small budget (under a minute; barely trained)."
    ),
    precision: str = typer.Option(
        "auto", help="Training precision: float32, bfloat16, or auto (bf16 where native)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Also print the headline as JSON."),
) -> None:
    """The end-to-end demo (the README's main job): two maze agents trained, analysed and
    steered, then a short section of every other research line on the zoo's agents; writes the
    maze report and an index page linking every section's page."""
    from policylens.artifacts import check_writable
    from policylens.demo import FULL, QUICK, check_demo_folder, run_demo

    out = out or Path("runs/demo-quick" if quick else "runs/demo")
    budget = QUICK if quick else FULL
    check_writable(out, "demo folder")
    check_demo_folder(out, budget, precision)  # another run there is refused before any work
    result = run_demo(out, console=err_console if as_json else console, budget=budget,
                      precision=precision)  # fmt: skip
    if as_json:
        print_json(result.to_json())
