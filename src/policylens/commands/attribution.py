"""``policylens attribute`` and ``policylens features``: attribution, NMF features and clusters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from policylens.cli import MAZE, command, console, open_run, print_json


@command("attribute")
def attribute_cmd(
    run: Path = typer.Argument(..., help="Maze run folder."),
    method: str = typer.Option(
        "ig", help="saliency, gradient, grad_x_input, ig (integrated gradients) or occlusion."
    ),
    target: str = typer.Option(
        "value", help="value, action (log-prob of the greedy action), logit:<a>, logprob:<a>."
    ),
    layer: str = typer.Option(None, help="Hook name to attribute to (default: the input)."),
    baseline: str = typer.Option("zeros", help="zeros, blurred, mean or zero_input."),
    n_steps: int = typer.Option(50, min=1, max=10_000, help="Integration steps (ig)."),
    integration: str = typer.Option("gausslegendre", help="gausslegendre or riemann_trapezoid."),
    n_obs: int = typer.Option(64, min=1, max=100_000, help="Maze observations to attribute."),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    seed: int = typer.Option(0, min=0, help="Seed of the observations."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Attribute the value or policy to the observation or a layer; saves a figure and the
    attributions under RUN/analysis/ and reports the IG completeness check."""
    import numpy as np

    from policylens.artifacts import atomic_path, write_bytes
    from policylens.envs.maze import ACTION_NAMES
    from policylens.lenses.attribution import attribute
    from policylens.report.attribution import attribution_rows_figure
    from policylens.studies.maze import dataset as md
    from policylens.studies.maze.misgeneralization import maze_config

    r = open_run(run, MAZE)
    agent = r.load_agent(step)
    names = ACTION_NAMES if agent.num_actions == 4 else None
    data = md.maze_dataset(maze_config(r), n_obs, seed=seed, agent=agent)
    result = attribute(
        agent, data.obs, method, target, layer, baseline=baseline, n_steps=n_steps,
        integration=integration, action_names=names,
    )  # fmt: skip
    stem = f"attribution_{method}_{target}_{layer or 'input'}".replace(":", "-").replace("/", "_")
    npz = r.analysis_dir / f"{stem}.npz"
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, attributions=result.numpy(), obs=data.obs)
    summary = result.to_dict()
    summary["files"] = {"attributions": str(npz)}
    if result.is_spatial:
        png = r.analysis_dir / f"{stem}.png"
        show = min(4, n_obs)
        fig = attribution_rows_figure(
            data.obs[:show], [result.spatial()[:show].numpy()], [f"{method} -> {target}"],
            [f"obs {i}" for i in range(show)],
        )  # fmt: skip
        write_bytes(png, fig)
        summary["files"]["figure"] = str(png)
    if as_json:
        print_json(summary)
        return
    table = Table(
        "quantity", "value", title=f"{r.name}: {method} -> {target} at {layer or 'input'}"
    )
    table.add_row("observations", str(n_obs))
    table.add_row("mean target", f"{summary['output_mean']:.4f}")
    table.add_row("mean |attribution|", f"{summary['mean_abs_attribution']:.4g}")
    c = summary["completeness"]
    if c:
        table.add_row("mean f(x) - f(baseline)", f"{c['output_difference_mean']:.4f}")
        table.add_row("mean sum of attributions", f"{c['sum_attributions_mean']:.4f}")
        table.add_row(
            "completeness error (mean, max)", f"{c['mean_abs_error']:.2g}, {c['max_abs_error']:.2g}"
        )
    for ch in summary.get("top_channels", [])[:5]:
        table.add_row(f"channel {ch['channel']}", f"{ch['attribution']:.4g}")
    console.print(table)
    for kind, path in summary["files"].items():
        console.print(f"{kind}: {path}")


@command("features")
def features_cmd(
    run: Path = typer.Argument(..., help="Maze or hazard-world run folder."),
    nmf: int = typer.Option(
        8, min=1, max=256, help="NMF features of the value attributions (Hilton)."
    ),
    layer: str = typer.Option(
        None, help="Conv hook name (default: a middle residual layer; hazards: hook_relu)."
    ),
    n_steps: int = typer.Option(
        10, min=1, max=10_000, help="IG steps from the layer's zero baseline."
    ),
    clusters: int = typer.Option(
        4, min=2, max=256, help="Clusters of per-position channel vectors."
    ),
    linkage: str = typer.Option("kmeans", help="kmeans, single, average or ward."),
    n_obs: int = typer.Option(
        256, min=8, max=100_000, help="Observations (maze) or frames (hazards)."
    ),
    step: int = typer.Option(None, help="Checkpoint step (default: latest)."),
    seed: int = typer.Option(0, min=0, help="Seed of observations, NMF and clustering."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """NMF features of a layer's value attributions, labelled by ground-truth objects, and
    clusters of its activations; figures, cluster labels and NMF results go to RUN/analysis/."""
    import numpy as np

    from policylens.artifacts import atomic_path, write_bytes, write_json
    from policylens.commands.rl_vision import hazard_features_cmd, is_hazard_run
    from policylens.lenses import features as fe
    from policylens.lenses.attribution import attribute, default_layer
    from policylens.lenses.nmf import attribution_nmf, label_features
    from policylens.report import features as rf
    from policylens.studies.maze import dataset as md
    from policylens.studies.maze.misgeneralization import maze_config

    if is_hazard_run(run):  # the hazard world: features named from its object masks
        return hazard_features_cmd(run, nmf, layer, n_steps, n_obs, step, seed, as_json)
    r = open_run(run, MAZE)
    agent = r.load_agent(step)
    layer = layer or default_layer(agent)
    data = md.maze_dataset(maze_config(r), n_obs, seed=seed, agent=agent)
    acts = fe.feature_maps(agent, data.obs, layer)  # checks the layer is spatial
    attr = attribute(agent, data.obs, "ig", "value", layer, baseline="zeros", n_steps=n_steps)
    result_nmf = attribution_nmf(attr.attributions, k=nmf, seed=seed)
    masks = md.resize_masks(md.object_masks(data.states), result_nmf.maps.shape[1:3])
    result_nmf.labels = label_features(result_nmf.maps, masks)
    cl = fe.cluster_positions(acts, clusters, linkage, seed=seed, layer=layer)
    truth = md.categories(md.resize_masks(md.object_masks(data.states), acts.shape[2:]))
    cl.scores = fe.alignment_scores(cl.labels, truth, md.CATEGORIES)
    out = r.analysis_dir
    cluster_file = fe.save_clusters(out, cl)
    stem = f"features_{layer}".replace("/", "_")
    show = min(4, n_obs)
    files = {"clusters": str(cluster_file)}
    for name, png in (
        ("nmf_figure", rf.nmf_figure(data.obs[:show], result_nmf.maps[:show], result_nmf.colours)),
        ("cluster_figure", rf.cluster_figure(data.obs[:show], cl.labels[:show])),
        ("feature_maps", rf.feature_maps_figure(data.obs[0], acts[0], title=layer)),
    ):
        path = out / f"{stem}_{name}.png"
        write_bytes(path, png)
        files[name] = str(path)
    npz = out / f"{stem}_nmf.npz"
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, maps=result_nmf.maps, components=result_nmf.components, residual=result_nmf.residual
        )
    files["nmf"] = str(npz)
    summary: dict[str, Any] = {
        "layer": layer,
        "n_obs": n_obs,
        "attribution_completeness": attr.completeness,
        "nmf": result_nmf.to_dict(),
        "clusters": cl.to_dict(),
        "files": files,
    }
    write_json(out / f"{stem}.json", summary)
    if as_json:
        print_json(fe.json_ready(summary))
        return
    table = Table("feature", "sign", "best label", "corr", "IoU", title=f"{r.name}: NMF at {layer}")
    for f in summary["nmf"]["features"]:
        sign = "+" if f["positive_share"] >= 0.5 else "-"
        table.add_row(
            str(f["feature"]), sign, f["label"], f"{f['correlation']:.2f}", f"{f['iou']:.2f}"
        )
    console.print(table)
    console.print(f"NMF explains {result_nmf.explained:.1%} of the squared attribution.")
    console.print(
        f"{linkage} clusters (k={clusters}): AMI {cl.scores['ami']:.3f}, purity "
        f"{cl.scores['purity']:.3f} vs wall/path/mouse/cheese"
    )
    for kind, saved in files.items():
        console.print(f"{kind}: {saved}")
