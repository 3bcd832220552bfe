"""The "Understanding RL Vision" study on the hazard world: ``policylens edit``,
``policylens dissect``, ``policylens hallucinations`` and ``policylens rl-vision-report``
(``policylens features`` on a hazard run is the study's too: see the attribution commands)."""

from __future__ import annotations

from pathlib import Path

import typer

from policylens.commands.framework import (
    command,
    console,
    err_console,
    open_run,
    overwrite_option,
    print_json,
)


@command("edit")
def edit_cmd(
    run: Path = typer.Argument(..., help="Hazard-world run folder."),
    feature: str = typer.Option(
        ..., help="Object whose best-aligned feature to remove (saw, enemy, ...) or its index."
    ),
    out: Path = typer.Option(..., help="Run folder to write the edited agent to."),
    levels: int = typer.Option(
        0, min=0, max=1_000_000, help="Also measure the failure table on this many unseen levels."
    ),
    random: int = typer.Option(3, min=0, max=100, help="Random-direction controls."),
    direction: str = typer.Option(
        "nmf",
        help="nmf: the best-aligned NMF feature's direction (the paper); object: the object's "
        "mean activation minus the rest, from the masks (the best one direction can do).",
    ),
    nmf: int = typer.Option(8, min=1, max=64, help="NMF features."),
    n_obs: int = typer.Option(512, min=8, max=100_000, help="Frames for the NMF."),
    layer: str = typer.Option(
        None,
        help="Layer (default: hook_relu, or hook_pool2 for pixel agents; its reader is edited).",
    ),
    seed: int = typer.Option(0, min=0, help="Seed of frames and NMF (levels: 10,000 + seed)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Project one NMF feature's direction out of the next layer's weights; save the edited agent,
    and with --levels compare failure tables with the invisible-hazard and random controls."""
    from policylens.report.hazards import rows_table
    from policylens.report.rl_vision import edit_description, edit_rows, verdict_sentence
    from policylens.studies.rl_vision.editing import EditOptions, run_edit
    from policylens.studies.rl_vision.features import FeatureOptions

    features = FeatureOptions(n_obs=n_obs, nmf=nmf, layer=layer, seed=seed)
    options = EditOptions(
        feature, out, levels=levels, random_controls=random, direction=direction, features=features
    )
    result = run_edit(open_run(run), options, log=lambda m: err_console.print(m))
    if as_json:
        print_json(result.to_json())
        return
    console.print(f"{edit_description(result.edit)} Edited agent: {result.out}")
    exp = result.experiment
    if exp is not None:
        console.print(rows_table(edit_rows(exp), f"failure table on {levels} unseen levels"))
        if exp.verdict is not None:
            console.print(verdict_sentence(exp.verdict))


@command("dissect")
def dissect_cmd(
    run: Path = typer.Argument(..., help="Hazard-world run folder."),
    levels: int = typer.Option(256, min=1, max=1024, help="Unseen levels to play."),
    window: int = typer.Option(8, min=1, max=100, help="Last steps kept of each failure."),
    seed: int = typer.Option(10_000, min=0, help="Seed of the levels and sampling."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Failed levels' last steps (frames with the NMF overlay, value, advantage), each death
    classified as hazard seen and ignored / occluded / not in view from ground-truth flags."""
    from policylens.report.hazards import rows_table
    from policylens.report.rl_vision import dissection_rows, save_dissection_figures
    from policylens.studies.rl_vision.dissection import DissectOptions, run_dissection
    from policylens.studies.rl_vision.features import FeatureOptions

    r = open_run(run)
    features = FeatureOptions(n_obs=256, step=step)
    options = DissectOptions(levels=levels, window=window, seed=seed, features=features)
    result = run_dissection(r, options)
    files = save_dissection_figures(result, r.analysis_dir)
    if as_json:
        print_json({**result.to_json(), "files": files})
        return
    title = f"{r.name}: {result.failed} of {levels} levels failed"
    console.print(rows_table(dissection_rows(result), title))
    for kind, path in files.items():
        console.print(f"{kind}: {path}")


@command("hallucinations")
def hallucinations_cmd(
    run: Path = typer.Argument(..., help="Hazard-world run folder."),
    n_obs: int = typer.Option(512, min=8, max=100_000, help="Frames from unseen levels."),
    nmf: int = typer.Option(8, min=1, max=64, help="NMF features."),
    limit: int = typer.Option(64, min=1, max=10_000, help="Hallucinations checked by patching."),
    seed: int = typer.Option(0, min=0, help="Seed of frames, NMF and controls."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Where named features fire with no such object in the labels, and the value change when
    that region is patched from a clean frame (vs the same patch elsewhere)."""
    from policylens.report.hazards import rows_table
    from policylens.report.rl_vision import hallucination_rows, hallucination_sentence
    from policylens.studies.rl_vision.features import FeatureOptions
    from policylens.studies.rl_vision.hallucinations import HallucinationOptions, run_hallucinations

    r = open_run(run)
    features = FeatureOptions(n_obs=n_obs, nmf=nmf, seed=seed)
    result = run_hallucinations(r, HallucinationOptions(features=features, limit=limit))
    if as_json:
        print_json(result.to_json())
        return
    rows = hallucination_rows(result, places=3)
    if rows:
        console.print(rows_table(rows, f"{r.name}: hallucinations at {result.layer}"))
    console.print(hallucination_sentence(result))


@command("rl-vision-report")
def rl_vision_report_cmd(
    run: Path = typer.Argument(..., help="Hazard-world run folder (after features/dissect/...)."),
    edit: list[Path] = typer.Option([], help="An edited run from `policylens edit --levels N`."),
    sweep: Path = typer.Option(
        None, help="A diversity sweep folder (`policylens sweep --world hazards ...`) to include."
    ),
    out: Path = typer.Option(None, help="HTML file (default RUN/analysis/rl_vision_report.html)."),
    overwrite: bool = overwrite_option(),
) -> None:
    """One HTML page of the study from what the commands wrote: legend, overlays, failures,
    hallucinations, failure tables before and after editing."""
    from policylens.artifacts import check_output
    from policylens.report.rl_vision import render
    from policylens.studies.rl_vision.summary import SummaryOptions, run_summary

    if out is not None:
        check_output(out, overwrite)
    r = open_run(run)
    summary = run_summary(r, SummaryOptions(tuple(edit), sweep))
    path = render(summary, out or r.analysis_dir / "rl_vision_report.html")
    console.print(f"report: {path}")
