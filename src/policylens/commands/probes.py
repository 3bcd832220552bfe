"""``policylens collect`` (rollout datasets) and ``policylens probe`` (linear probes)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from policylens.commands.framework import (
    MAX_EPISODES,
    MAX_STEPS,
    app,
    command,
    console,
    open_run,
    print_json,
)


def parse_env_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["cheese_region=null", "max_steps=100"]`` -> ``{"cheese_region": None, "max_steps": 100}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env-kwarg takes KEY=VALUE (VALUE as JSON), got {item!r}.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = None if raw.lower() == "none" else raw
    return out


@contextlib.contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Cap torch and BLAS threads (on a busy machine, one thread is often fastest)."""
    if threads is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


@command("collect")
def collect_cmd(
    run: Path = typer.Argument(..., help="Run folder whose agent plays."),
    out: Path = typer.Option(None, help="Store folder (default RUN/analysis/rollouts/step_<N>)."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    episodes: int = typer.Option(
        None, min=1, max=MAX_EPISODES, help="Whole episodes to store (default 100)."
    ),
    steps: int = typer.Option(
        None, min=1, max=MAX_STEPS, help="Or: exactly this many steps (rows)."
    ),
    hook: list[str] = typer.Option(None, help="Hook whose activations to store; repeat."),
    env_kwarg: list[str] = typer.Option(
        None, help="World option KEY=VALUE (JSON value, e.g. cheese_region=null); repeat."
    ),
    seed: int = typer.Option(0, min=0, help="Seed of the worlds and the action sampling."),
    num_envs: int = typer.Option(64, min=1, help="Environments stepped together."),
    chunk_size: int = typer.Option(8192, min=1, help="Rows per chunk file."),
    greedy: bool = typer.Option(False, "--greedy", help="Argmax actions instead of sampling."),
    float16: bool = typer.Option(
        False, "--float16", help="Store activations as float16 (half the disk)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a complete store at --out."),
    threads: int = typer.Option(None, min=1, help="Torch/BLAS threads (default: unchanged)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Run a run's agent and store observations, actions, labels and activations on disk."""
    from policylens.rollout import CollectOptions, collect_run

    if episodes is None and steps is None:
        episodes = 100
    if episodes is not None and steps is not None:
        raise ValueError("Pass --episodes or --steps, not both.")
    with thread_limit(threads):
        options = CollectOptions(
            episodes=episodes, steps=steps, hooks=hook or [], seed=seed, num_envs=num_envs,
            greedy=greedy, activation_dtype="float16" if float16 else "float32",
            chunk_size=chunk_size,
        )  # fmt: skip
        store = collect_run(
            run, options, out, step, parse_env_kwargs(env_kwarg), overwrite=overwrite
        )
    summary = {
        "store": str(store.path),
        "rows": len(store),
        "episodes": store.meta["episodes"],
        "chunks": len(store.chunk_rows),
        "bytes": store.nbytes,
        "seconds": store.meta["seconds"],
        "labels": store.labels,
        "hooks": store.hooks,
        "checkpoint_step": store.meta.get("checkpoint_step"),
    }
    if as_json:
        print_json(summary)
        return
    console.print(
        f"stored {summary['rows']:,} steps of {summary['episodes']} episodes "
        f"({summary['bytes'] / 2**20:,.1f} MiB, {summary['seconds']:.1f} s) in {store.path}\n"
        f"labels: {', '.join(store.labels)}\nactivations: {', '.join(store.hooks) or 'none'}"
    )


def _results_table(report, title: str) -> Table:
    table = Table("concept", "layer", "metric", "probe", "random-init net", "shuffled labels",
                  "constant guess", title=title)  # fmt: skip
    for r in report.results:
        table.add_row(
            r.label, r.hook, r.metric, f"{r.score:.3f}",
            *(f"{r.controls[c]:.3f}" if c in r.controls else "-" for c in ("random_init", "shuffled")),
            f"{r.baseline:.3f}",
        )  # fmt: skip
    return table


@command("probe")
def probe_cmd(
    target: Path = typer.Argument(..., help="Run folder, or a store from `policylens collect`."),
    label: list[str] = typer.Option(
        None, help="Label to probe (a key, or key\\[i] for one component); repeat."
    ),
    hook: list[str] = typer.Option(None, help="Hook to probe; repeat (default: a few layers)."),
    step: int = typer.Option(None, help="Checkpoint step for a run (default: latest)."),
    over_training: bool = typer.Option(
        False, "--over-training", help="Probe every checkpoint; plot score vs training step."
    ),
    episodes: int = typer.Option(
        200, min=1, max=MAX_EPISODES, help="Episodes collected for a run's probe data."
    ),
    env_kwarg: list[str] = typer.Option(
        None, help="World option for a run's probe data, KEY=VALUE; repeat."
    ),
    max_samples: int = typer.Option(
        None, min=10, help="Rows sampled (default 10000; 5000 over training)."
    ),
    seed: int = typer.Option(0, min=0, help="Seed of the data, split and controls."),
    no_controls: bool = typer.Option(
        False, "--no-controls", help="Skip the random-init and shuffled controls."
    ),
    raw_input: bool = typer.Option(
        False, "--raw-input", help="Also the raw-input control (the probe on the observation)."
    ),
    l1: bool = typer.Option(False, "--l1", help="Also L1 probes (beside the L2 ones)."),
    checkpoints: int = typer.Option(
        0, min=0, help="With --over-training: this many checkpoints, spread (0: all)."
    ),
    seed_run: list[Path] = typer.Option(
        None,
        help="With --over-training: another run of the same recipe (a seed); repeat. Adds "
        "emergence steps and best layers across the runs (what, when, where).",
    ),
    threads: int = typer.Option(None, min=1, help="Torch/BLAS threads (default: unchanged)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Linear probes for the world's concepts per layer, split by level, with controls."""
    from policylens.lenses.probes import DEFAULT_CONTROLS, ProbeOptions
    from policylens.rollout.store import is_store
    from policylens.runs import run_folder
    from policylens.studies.probes import (
        ConceptProbeOptions,
        probe_over_training,
        probe_run,
        probe_store,
        report_file,
    )

    target = run_folder(target)  # zoo:NAME and hf:// sources open as the runs they ship
    is_run = (target / "config.json").is_file()
    if not is_run and not is_store(target):
        raise FileNotFoundError(
            f"{target} is neither a run folder (config.json) nor a store (manifest.json); "
            "pass a run or a store from `policylens collect`."
        )
    if over_training and not is_run:
        raise ValueError("--over-training needs a run folder (it probes every checkpoint).")
    if seed_run and not over_training:
        raise ValueError("--seed-run needs --over-training (it compares runs over checkpoints).")
    controls = () if no_controls else DEFAULT_CONTROLS
    fit = ProbeOptions(
        (*controls, "raw_input") if raw_input else controls,
        max_samples or (5_000 if over_training else 10_000),
        seed=seed,
        penalties=("l2", "l1") if l1 else ("l2",),
    )
    options = ConceptProbeOptions(
        labels=label or None, hooks=hook or None, step=step, episodes=episodes,
        env_kwargs=parse_env_kwargs(env_kwarg), probe=fit, checkpoints=checkpoints,
    )  # fmt: skip
    log = (lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]"))
    with thread_limit(threads):
        if not is_run:
            report = probe_store(target, options, progress=log)
            if as_json:
                print_json(report.to_json())
            else:
                console.print(_results_table(report, f"linear probes on {target}"))
            return
        run = open_run(target)
        if seed_run:
            _timeline(run, [open_run(r) for r in seed_run], options, log, as_json)
            return
        if over_training:
            from policylens.report.probes import write_probe_curves

            curves = probe_over_training(run, options, progress=log)
            figure = write_probe_curves(
                curves,
                run.analysis_dir / "probes" / "probes_over_training.png",
                f"{run.name}: linear probes over training",
            )
            curves.meta["figure"] = str(figure)
            if as_json:
                print_json(curves.to_json())
                return
            n = len(curves.steps)
            shown = sorted({round(i) for i in np.linspace(0, n - 1, min(n, 6))})
            table = Table("concept", "layer", *(f"step {curves.steps[i]}" for i in shown),
                          "random-init", "shuffled",
                          title=f"{run.name}: probe score by checkpoint ({n} checkpoints)")  # fmt: skip
            for lab in curves.labels:
                for h in curves.hooks:
                    c = curves.controls[lab][h]
                    table.add_row(lab, h, *(f"{curves.scores[lab][h][i]:.2f}" for i in shown),
                                  *(f"{c[k]:.2f}" if k in c else "-"
                                    for k in ("random_init", "shuffled")))  # fmt: skip
            console.print(table)
            console.print(f"figure: {curves.meta['figure']}")
            return
        report = probe_run(run, options, progress=log)
        chosen = report.meta["checkpoint_step"]
        if as_json:
            print_json(report.to_json())
            return
        console.print(_results_table(report, f"{run.name} @ step {chosen}: linear probes"))
        console.print(f"saved {report_file(run, chosen)}")


def _interval(d: dict) -> str:
    lo, hi = d["range"]
    return f"{d['median']:,.0f} [{lo:,}-{hi:,}]"


def _timeline(run, others, options, log, as_json: bool) -> None:
    """Probes over training for ``run`` and ``others`` (seeds): what, when, where."""
    from policylens import worlds
    from policylens.report.probes import write_concept_heatmaps
    from policylens.studies.probes import concepts_over_training, timeline_file

    world = worlds.of_run(run).name
    for o in others:
        if worlds.of_run(o).name != world:
            raise ValueError(f"seed_run {o.path} is a run of another world than {run.path}")
    timeline = concepts_over_training([run, *others], options, progress=log)
    folder = timeline_file(run).parent
    for pen in timeline.summary:
        suffix = "" if pen == "l2" else f"_{pen}"
        png = write_concept_heatmaps(timeline, folder / f"concepts_over_training{suffix}.png",
                                     f"{run.name} and {len(others)} more", pen)  # fmt: skip
        timeline.meta[f"figure{suffix}"] = str(png)
    if as_json:
        print_json(timeline.to_json())
        return
    for pen, by_label in timeline.summary.items():
        table = Table("concept", "best layer (votes)", "final [95% CI]",
                      "emerges at: median [range]", "above chance", "rand. net", "shuffled",
                      "raw input", "largest jump* at (size)",
                      title=f"what, when, where over {len(others) + 1} runs ({pen.upper()} "
                      "probes; steps: median [range] over runs)")  # fmt: skip
        for label, s in by_label.items():
            f, c = s["final_score"], s["controls_at_best_layer"]
            cp = s["change_point_beyond_paper"]
            table.add_row(
                f"{label} ({s['metric']})",
                f"{s['best_layer']} ({s['best_layer_votes'][s['best_layer']]})",
                f"{f['mean']:.3f} [{f['ci'][0]:.3f}, {f['ci'][1]:.3f}]",
                _interval(s["emergence_step"]), _interval(s["emergence_step_above_chance"]),
                *(f"{c[k]['mean']:.3f}" if k in c else "-"
                  for k in ("random_init", "shuffled", "raw_input")),
                f"{_interval(cp['step'])} ({cp['jump']['mean']:+.3f})",
            )  # fmt: skip
        console.print(table)
    console.print("* the change point (largest jump between consecutive checkpoints) goes beyond "
                  "McGrath et al.'s what-when-where, which reports emergence only")  # fmt: skip
    console.print(f"saved {timeline_file(run)}")


__all__ = ["app", "collect_cmd", "parse_env_kwargs", "probe_cmd"]
