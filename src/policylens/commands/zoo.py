"""``policylens zoo``: the shipped agents (list, info) and a run exported into the zoo's layout."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from policylens.commands.framework import app, command, console, open_run, print_json

zoo_app = typer.Typer(help="Agents shipped with policylens, and exporting a run as one.")
app.add_typer(zoo_app, name="zoo")


@command("list", typer_app=zoo_app)
def zoo_list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every shipped agent: its world, training length and headline result."""
    from policylens.studies.zoo import entries

    found = entries()
    if as_json:
        print_json([e.to_json() for e in found])
        return
    table = Table("name", "world", "steps", "headline", title="policylens zoo (load as zoo:NAME)")
    for e in found:
        metrics = e.results.get("metrics", {})
        first = next(iter(metrics.items()), None)
        text = ""
        if first is not None:
            name, stat = first
            value = stat.get("rate", stat.get("mean"))
            text = f"{name} {value:.3f} [{stat['ci'][0]:.3f}, {stat['ci'][1]:.3f}]"
        table.add_row(e.name, e.world, f"{e.provenance.get('steps', 0):,}", text)
    console.print(table)


@command("info", typer_app=zoo_app)
def zoo_info_cmd(
    name: str = typer.Argument(..., help="A zoo agent's name (policylens zoo list)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print an agent's model card (its files checked against their sha256 first)."""
    from policylens.agents.pretrained import CARD_FILE
    from policylens.studies.zoo import read_entry

    entry = read_entry(name)
    if as_json:
        print_json(entry.to_json())
        return
    console.print((entry.folder / CARD_FILE).read_text(encoding="utf-8"), markup=False)


@command("export", typer_app=zoo_app)
def zoo_export_cmd(
    run: Path = typer.Argument(..., help="A finished run folder."),
    out: Path = typer.Argument(..., help="Empty folder to write the entry into."),
    name: str = typer.Option(..., help="The entry's name (letters, digits, '-')."),
    train_command: str = typer.Option(
        ..., "--command", help="The command that trained the run (the card's retraining line)."
    ),
    description: str = typer.Option("", help="A paragraph for the model card."),
    option: list[str] = typer.Option(
        None, help="NAME=VALUE for the world's headline evaluation (e.g. episodes=1000); repeat."
    ),
    attach: list[str] = typer.Option(
        None, help="A folder inside the run shipped beside the agent (e.g. an SAE); repeat."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what OUT holds."),
    unfinished: bool = typer.Option(
        False, "--unfinished", help="Ship a run still training (its latest checkpoint), said so."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Write a finished run as a zoo entry: weights, config with provenance and sha256, the
    headline results measured now, and a model card."""
    from policylens.studies.zoo import ExportOptions, export
    from policylens.sweeps.spec import parse_value

    settings = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option takes NAME=VALUE, got {item!r}.")
        settings[key.strip()] = parse_value(value)
    options = ExportOptions(
        name=name, command=train_command, description=description, headline=settings,
        attach=tuple(attach or ()), overwrite=overwrite, unfinished=unfinished,
    )  # fmt: skip
    entry = export(open_run(run), out, options)
    if as_json:
        print_json(entry.to_json())
        return
    console.print(f"wrote {entry.folder} (load it as a folder; in the zoo as zoo:{entry.name})")


__all__ = ["zoo_export_cmd", "zoo_info_cmd", "zoo_list_cmd"]
