"""The "Understanding RL Vision" study on the hazard world: ``policylens features`` (for hazard
runs), ``policylens edit``, ``policylens dissect``, ``policylens hallucinations`` and
``policylens rl-vision-report``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from policylens.cli import command, console, err_console, open_run, print_json

HAZARDS = "policylens/Hazards-v0"


def is_hazard_run(path: Path) -> bool:
    """Whether ``path`` is a run trained in the hazard world (``features`` dispatches on it)."""
    from policylens.runs import Run

    return Run(path).config.get("trainer", {}).get("env_id") == HAZARDS


def hazard_features_cmd(
    run: Path, nmf: int, layer: str | None, n_steps: int, n_obs: int, step: int | None, seed: int,
    as_json: bool,
) -> None:  # fmt: skip
    """``policylens features`` on a hazard run: NMF features named by object masks."""
    from policylens.artifacts import write_json
    from policylens.report.rl_vision import legend_rows, save_feature_figures
    from policylens.studies.rl_vision.features import DEFAULT_LAYER, named_sentence, run_features

    r = open_run(run, HAZARDS)
    _, hf = run_features(
        r, n_frames=n_obs, k=nmf, layer=layer or DEFAULT_LAYER, n_steps=n_steps, seed=seed,
        step=step,
    )  # fmt: skip
    summary = hf.summary()
    summary["files"] = save_feature_figures(hf, r.analysis_dir)
    write_json(r.analysis_dir / "rl_vision_features.json", summary)
    if as_json:
        print_json(summary)
        return
    _print(legend_rows(summary), f"{r.name}: NMF features of the value at {hf.layer}")
    console.print(f"NMF explains {hf.nmf.explained:.1%} of the squared attribution.")
    console.print(named_sentence(summary))
    on = summary["attribution_on_objects"]
    console.print(
        "|attribution| per cell on each object / elsewhere: "
        + ", ".join(f"{k} x{v['ratio']:.1f}" for k, v in on.items())
    )
    for kind, path in summary["files"].items():
        console.print(f"{kind}: {path}")


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
    layer: str = typer.Option(None, help="Layer (default hook_relu; its reader is edited)."),
    seed: int = typer.Option(0, min=0, help="Seed of frames and NMF (levels: 10,000 + seed)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Project one NMF feature's direction out of the next layer's weights; save the edited agent,
    and with --levels compare failure tables with the invisible-hazard and random controls."""
    from policylens.artifacts import check_writable, write_json
    from policylens.errors import check_known
    from policylens.report.rl_vision import edit_rows
    from policylens.studies.hazards.failures import FAILURE_CAUSES
    from policylens.studies.rl_vision import editing
    from policylens.studies.rl_vision.features import (
        DEFAULT_LAYER,
        OBJECTS,
        hazard_env_kwargs,
        object_direction,
        run_features,
    )

    r = open_run(run, HAZARDS)
    check_writable(out, "--out run folder")
    if (out / "config.json").exists():
        raise ValueError(f"--out {out} already holds a run; pick a new folder.")
    layer = layer or DEFAULT_LAYER
    editing.reader_of(layer)  # a layer without a single reader fails before any work
    check_known([direction], ("nmf", "object"), "--direction")
    if direction == "object" and feature not in OBJECTS:
        raise ValueError(f"--direction object needs --feature one of {', '.join(OBJECTS)}.")
    agent, hf = run_features(r, n_frames=n_obs, k=nmf, layer=layer, seed=seed)
    index = hf.feature_for(feature)
    label = hf.nmf.labels[index]
    if direction == "object":
        v = object_direction(agent, hf.frames, layer, feature)
        label = {"label": feature, "correlation": float("nan"), "correlations": {}}
    else:
        v = hf.direction(index)
    edit = {"source": str(r.path), "layer": layer, "reader": editing.reader_of(layer),
            "direction_from": direction, "feature": index if direction == "nmf" else None,
            "requested": feature, "label": label["label"],
            "alignment": label["correlations"].get(feature, label["correlation"]),
            "direction": v.tolist(), "nmf_seed": seed}  # fmt: skip
    edited = editing.save_edited(editing.edit_agent(agent, layer, v), r, out, edit)
    result: dict[str, Any] = {"edit": edit, "out": str(edited.path)}
    if levels:
        name = feature if not feature.isdigit() else label["label"]
        exp = editing.edit_experiment(
            agent, layer, {name: v}, hazard_env_kwargs(r), levels, random_controls=random,
            seed=10_000 + seed, log=lambda m: err_console.print(m),
            cache=r.analysis_dir / "failure_tables",
        )  # fmt: skip
        if name in FAILURE_CAUSES:
            exp["verdict"] = editing.edit_verdict(exp, name)
        exp["edit"] = {k: v for k, v in edit.items() if k != "direction"}
        write_json(edited.analysis_dir / "edit_experiment.json", exp)
        result["experiment"] = exp
    if as_json:
        print_json(result)
        return
    console.print(f"{editing.edit_description(edit)} Edited agent: {edited.path}")
    if levels:
        _print(edit_rows(result["experiment"]), f"failure table on {levels} unseen levels")
        if "verdict" in result["experiment"]:
            console.print(editing.verdict_sentence(result["experiment"]["verdict"]))


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
    from policylens.artifacts import write_json
    from policylens.report.rl_vision import dissection_rows, save_dissection_figures
    from policylens.studies.rl_vision.dissection import dissect
    from policylens.studies.rl_vision.features import hazard_env_kwargs, run_features

    r = open_run(run, HAZARDS)
    agent, hf = run_features(r, n_frames=256, step=step)
    trainer = r.config.get("trainer", {})
    summary, failed = dissect(
        agent, hazard_env_kwargs(r), levels, window=window, seed=seed,
        gamma=float(trainer.get("gamma", 0.99)), gae_lambda=float(trainer.get("gae_lambda", 0.95)),
    )  # fmt: skip
    summary["files"] = save_dissection_figures(agent, hf, failed, r.analysis_dir)
    write_json(r.analysis_dir / "rl_vision_dissection.json", summary)
    if as_json:
        print_json(summary)
        return
    _print(dissection_rows(summary), f"{r.name}: {summary['failed']} of {levels} levels failed")
    for kind, path in summary["files"].items():
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
    from policylens.artifacts import write_json
    from policylens.studies.rl_vision.features import resize_masks, run_features
    from policylens.studies.rl_vision.hallucinations import (
        find_hallucinations,
        hallucination_sentence,
        intervention_check,
    )

    r = open_run(run, HAZARDS)
    agent, hf = run_features(r, n_frames=n_obs, k=nmf, seed=seed)
    maps = hf.nmf.maps
    masks = resize_masks(hf.frames.masks, maps.shape[1:3])
    found, counts = find_hallucinations(maps, masks, hf.nmf.labels)
    check = intervention_check(agent, hf.frames.obs, maps, hf.layer, found, limit=limit, seed=seed)
    result = {"layer": hf.layer, "frames": len(maps), "counts": counts, "check": check,
              "examples": [vars(h) for h in found[:10]]}  # fmt: skip
    write_json(r.analysis_dir / "rl_vision_hallucinations.json", result)
    if as_json:
        print_json(result)
        return
    rows = [{"feature": c["feature"], "label": c["label"], "cells": c["cells"],
             "frames with one": f"{c['frames']['rate']:.3f} [{c['frames']['ci'][0]:.3f}, "
             f"{c['frames']['ci'][1]:.3f}]"} for c in counts.values()]  # fmt: skip
    if rows:
        _print(rows, f"{r.name}: hallucinations at {hf.layer}")
    console.print(hallucination_sentence(result))


def _print(rows: list[dict], title: str) -> None:
    if not rows:
        return
    table = Table(*rows[0].keys(), title=title)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@command("rl-vision-report")
def rl_vision_report_cmd(
    run: Path = typer.Argument(..., help="Hazard-world run folder (after features/dissect/...)."),
    edit: list[Path] = typer.Option([], help="An edited run from `policylens edit --levels N`."),
    sweep: Path = typer.Option(
        None, help="A diversity sweep folder (`policylens sweep --world hazards ...`) to include."
    ),
    out: Path = typer.Option(None, help="HTML file (default RUN/analysis/rl_vision_report.html)."),
) -> None:
    """One HTML page of the study from what the commands wrote: legend, overlays, failures,
    hallucinations, failure tables before and after editing."""
    from policylens.report.rl_vision import write_rl_vision_report

    r = open_run(run, HAZARDS)
    path = write_rl_vision_report(
        r.analysis_dir, out or r.analysis_dir / "rl_vision_report.html", edit, sweep
    )
    console.print(f"report: {path}")
