"""``policylens attribute`` and ``policylens features``: attribution, NMF features and clusters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from policylens.commands.framework import command, console, open_run, print_json


@command("attribute")
def attribute_cmd(
    run: Path = typer.Argument(..., help="Maze run folder."),
    method: str = typer.Option(
        "ig",
        help="saliency, gradient, grad_x_input, ig (integrated gradients), occlusion, lrp, "
        "gradcam (default layer: the last conv) or guided_backprop.",
    ),
    target: str = typer.Option(
        "value", help="value, action (log-prob of the greedy action), logit:<a>, logprob:<a>."
    ),
    layer: str | None = typer.Option(None, help="Hook name to attribute to (default: the input)."),
    baseline: str = typer.Option("zeros", help="zeros, blurred, mean or zero_input."),
    n_steps: int = typer.Option(50, min=1, max=10_000, help="Integration steps (ig)."),
    integration: str = typer.Option("gausslegendre", help="gausslegendre or riemann_trapezoid."),
    rules: str = typer.Option(
        "epsilon", help="LRP composite: epsilon, zplus, gamma, epsilon_zplus_flat, ... (lrp)."
    ),
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
    from policylens.lenses.attribution import attribute, method_from_name
    from policylens.report.attribution import attribution_rows_figure
    from policylens.worlds import maze as md
    from policylens.worlds.maze import maze_config

    how = method_from_name(
        method, baseline=baseline, n_steps=n_steps, integration=integration, rules=rules
    )
    r = open_run(run, "maze")
    agent = r.load_agent(step)
    names = ACTION_NAMES if agent.num_actions == 4 else None
    data = md.maze_dataset(maze_config(r), n_obs, seed=seed, agent=agent)
    result = attribute(agent, data.obs, how, target, layer, action_names=names)
    layer = result.layer  # Grad-CAM picks one when none is given
    stem = f"attribution_{method}_{target}_{layer or 'input'}".replace(":", "-").replace("/", "_")
    npz = r.analysis_dir / f"{stem}.npz"
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, attributions=result.numpy(), obs=data.obs)
    summary = result.to_json()
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
    if c and result.method == "lrp":  # conservation: summed relevance vs the target
        table.add_row("mean sum of relevance", f"{c['sum_attributions_mean']:.4f}")
        table.add_row(
            "conservation error (mean, max)", f"{c['mean_abs_error']:.2g}, {c['max_abs_error']:.2g}"
        )
    elif c:
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
        None,
        help="Conv hook name (default: a middle residual layer; hazards: the study's layer, hook_relu or hook_pool2 for pixel agents).",
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

    from policylens import worlds
    from policylens.artifacts import atomic_path, write_bytes, write_json
    from policylens.lenses import features as fe
    from policylens.lenses.attribution import default_layer
    from policylens.lenses.nmf import ValueFeatureOptions, value_features
    from policylens.report import features as rf
    from policylens.report import rl_vision as rv
    from policylens.runs import Run
    from policylens.studies.rl_vision.features import FeatureOptions, run_features
    from policylens.worlds import maze as md
    from policylens.worlds.maze import maze_config

    if worlds.of_run(Run(run)).name == "hazards":  # features named from its object masks
        r = open_run(run)
        wanted = FeatureOptions(
            n_obs=n_obs, nmf=nmf, layer=layer, n_steps=n_steps, seed=seed,
            step=step,
        )  # fmt: skip
        hazard = run_features(r, wanted)
        files = rv.save_feature_figures(hazard, r.analysis_dir)
        if as_json:
            print_json({**hazard.to_json(), "files": files})
            return
        title = f"{r.name}: NMF features of the value at {hazard.layer}"
        for part in rv.features_console(hazard, title, files):
            console.print(part)
        return
    r = open_run(run, "maze")
    agent = r.load_agent(step)
    layer = layer or default_layer(agent)
    data = md.maze_dataset(maze_config(r), n_obs, seed=seed, agent=agent)
    acts = fe.feature_maps(agent, data.obs, layer)  # checks the layer is spatial
    options = ValueFeatureOptions(k=nmf, n_steps=n_steps, seed=seed, any_cover=md.ONE_CELL)
    found = value_features(agent, data.obs, md.object_masks(data.states), layer, options)
    result_nmf = found.nmf
    cl = fe.cluster_positions(acts, clusters, linkage, seed=seed, layer=layer)
    truth = md.categories(found.masks)  # the layer's resolution, as the clusters'
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
    summary: dict[str, Any] = {**found.to_json(), "clusters": cl.to_json(), "files": files}
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
