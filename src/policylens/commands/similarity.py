"""``policylens similarity``: CKA between layers and checkpoints (and another run), and each
layer's intrinsic dimension."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from policylens.commands.framework import MAX_EPISODES, command, console, open_run, print_json


@command("similarity", flags={"rbf_fraction": "--rbf-fraction"})
def similarity_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    other: Path = typer.Option(None, help="Another run of the same world (e.g. another seed)."),
    kernel: str = typer.Option("linear", help="CKA kernel: linear or rbf."),
    unbiased: bool = typer.Option(
        False, "--unbiased", help="Unbiased HSIC (about 0 for unrelated layers)."
    ),
    rbf_fraction: float = typer.Option(
        0.8, help="RBF bandwidth as a fraction of the median distance."
    ),
    checkpoints: int = typer.Option(
        10, min=0, help="Checkpoints compared, spread over the run's (0: all)."
    ),
    hook: list[str] = typer.Option(None, help="Layer to compare; repeat (default: every hook)."),
    samples: int = typer.Option(1000, min=10, help="Distinct observations compared."),
    episodes: int = typer.Option(
        100, min=1, max=MAX_EPISODES, help="Episodes collected for the observations."
    ),
    seed: int = typer.Option(0, min=0, help="Seed of the episodes and the subsample."),
    no_dimension: bool = typer.Option(
        False, "--no-dimension", help="Skip the TwoNN intrinsic dimension."
    ),
    threads: int = typer.Option(None, min=1, help="Torch/BLAS threads (default: unchanged)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """CKA between every layer at every checkpoint (and another run's), and TwoNN dimensions."""
    from policylens.report.similarity import write_similarity_report
    from policylens.studies.similarity import SimilarityOptions, result_file, run_similarity

    r = open_run(run)
    if other is not None:
        open_run(other)
    options = SimilarityOptions(
        other=other, kernel=kernel, unbiased=unbiased, rbf_fraction=rbf_fraction,
        checkpoints=checkpoints, hooks=hook or None, samples=samples, episodes=episodes,
        seed=seed, dimension=not no_dimension,
    )  # fmt: skip
    log = (lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]"))
    if threads is not None:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)
    result = run_similarity(r, options, progress=log)
    saved = result_file(r, options)
    page = write_similarity_report(result, saved.with_suffix(".html"), f"{r.name}: similarity")
    result.meta["json"], result.meta["html"] = str(saved), str(page)
    if as_json:
        print_json(result.to_json())
        return
    table = Table("layer", *(f"step {s}" for s in result.steps), "TwoNN (last)",
                  title=f"{r.name}: CKA of each layer with its final self")  # fmt: skip
    for h, row in zip(result.hooks, result.to_final(), strict=True):
        dim = result.dimension.get(h, [float("nan")])[-1]
        table.add_row(h, *(f"{v:.2f}" for v in row), f"{dim:.1f}")
    console.print(table)
    cross = result.cross_layers()
    if cross is not None:
        same = ", ".join(f"{h} {cross[i, i]:.2f}" for i, h in enumerate(result.hooks))
        console.print(f"same layer across runs (last checkpoints): {same}")
    console.print(f"saved {saved}\nreport: {page}")


__all__ = ["similarity_cmd"]
