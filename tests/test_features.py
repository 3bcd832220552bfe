"""Feature maps, object masks, clustering and its scores, NMF recovery and labels, dataset
examples, feature visualisation, the report section and the ``features`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from policylens.agents import build_agent
from policylens.envs.maze import MazeConfig, generate_level
from policylens.lenses import features as fe
from policylens.lenses.nmf import attribution_nmf, label_features, split_sign
from policylens.report import features as rf
from policylens.worlds import maze as md

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def agent():
    return build_agent("maze_cnn", (3, 9, 9), 4, seed=0)


@pytest.fixture(scope="module")
def data():
    return md.maze_dataset(MazeConfig(world_size=9), 24, seed=1)


def test_dataset_and_masks(data):
    assert data.obs.shape == (24, 3, 9, 9)
    from_states = md.object_masks(data.states)
    from_obs = md.object_masks(obs=data.obs)
    for name in ("wall", "path", "mouse", "cheese", "corner"):
        assert np.array_equal(from_states[name], from_obs[name]), name
    assert (from_states["mouse"].sum((1, 2)) == 1).all()
    cat = md.categories(from_states)
    assert (cat[from_states["cheese"]] == md.CATEGORIES.index("cheese")).all()
    small = md.masks_at(from_states, (3, 3))
    assert small["mouse"].shape == (24, 3, 3) and (small["mouse"].sum((1, 2)) == 1).all()


def test_feature_maps_and_figure(agent, data):
    maps = fe.feature_maps(agent, data.obs, "res1.hook_out")
    _, cache = agent.run_with_cache(data.obs, names=["res1.hook_out"])
    assert np.allclose(maps, cache["res1.hook_out"].numpy())
    assert rf.feature_maps_figure(data.obs[0], maps[0]).startswith(PNG)
    with pytest.raises(ValueError, match="without spatial"):
        fe.feature_maps(agent, data.obs, "hook_fc")


def test_alignment_scores():
    truth = np.random.default_rng(0).integers(0, 4, size=(10, 9, 9))
    perfect = fe.alignment_scores(
        (truth + 1) % 4, truth, md.CATEGORIES
    )  # a relabelling is still perfect
    assert perfect["ami"] == pytest.approx(1.0) and perfect["purity"] == 1.0
    noise = fe.alignment_scores(np.random.default_rng(1).integers(0, 4, size=truth.shape), truth)
    assert abs(noise["ami"]) < 0.02


@pytest.mark.parametrize("method", ["kmeans", "average", "single"])
def test_clustering_recovers_planted_categories(data, method, tmp_path):
    masks = md.object_masks(data.states)
    truth = md.categories(masks)
    # channel vectors = one-hot category (x 3 channels) + small noise: clusters must find them
    rng = np.random.default_rng(0)
    acts = np.eye(4)[truth].transpose(0, 3, 1, 2).repeat(3, 1) + 0.01 * rng.random((24, 12, 9, 9))
    cl = fe.cluster_positions(acts, 4, method, seed=0, max_points=1000, layer="x")
    cl.scores = fe.alignment_scores(cl.labels, truth, md.CATEGORIES)
    assert cl.scores["ami"] > 0.99
    # new activations (frames not clustered) go to their nearest centre / clustered position
    assert np.array_equal(fe.assign_positions(cl, acts), cl.labels)
    new_truth = np.roll(truth, 1, axis=2)
    new = np.eye(4)[new_truth].transpose(0, 3, 1, 2).repeat(3, 1) + 0.01 * rng.random(acts.shape)
    cluster_of = np.array([np.bincount(cl.labels[truth == t]).argmax() for t in range(4)])
    assert np.array_equal(fe.assign_positions(cl, new[:4]), cluster_of[new_truth[:4]])
    with pytest.raises(ValueError, match="clustered layer"):
        fe.assign_positions(cl, new[:, :5])
    path = fe.save_clusters(tmp_path, cl)
    back = fe.load_clusters(path)
    assert np.array_equal(back.labels, cl.labels) and back.scores["ami"] == cl.scores["ami"]
    assert rf.cluster_figure(data.obs[:2], cl.labels[:2]).startswith(PNG)


def test_nmf_recovers_and_labels_planted_features(data):
    masks = md.object_masks(data.states)
    rng = np.random.default_rng(0)
    d_wall, d_cheese = rng.random(16), rng.random(16)
    # attributions: walls push the target up along d_wall, the cheese pushes it down along d_cheese
    attr = (
        masks["wall"][:, None] * d_wall[None, :, None, None]
        - 3.0 * masks["cheese"][:, None] * d_cheese[None, :, None, None]
    )
    attr = attr + 0.001 * rng.standard_normal(attr.shape)
    nmf = attribution_nmf(attr, k=2, seed=0)
    assert nmf.explained > 0.99
    nmf.labels = label_features(nmf.maps, masks)
    labels = {lab["label"]: i for i, lab in enumerate(nmf.labels)}
    assert set(labels) == {"wall", "cheese"}
    assert nmf.labels[labels["wall"]]["correlation"] > 0.95
    assert nmf.sign[labels["wall"]] > 0.9 and nmf.sign[labels["cheese"]] < 0.1
    assert np.allclose(nmf.transform(attr), nmf.maps, atol=0.05 * nmf.maps.max())
    assert nmf.names()[labels["wall"]].startswith(f"{labels['wall']} wall ")
    figure = rf.nmf_figure(data.obs[:2], nmf.maps[:2], nmf.colours, names=nmf.names())
    assert figure.startswith(PNG)
    x, shape = split_sign(attr)
    assert x.shape == (24 * 81, 32) and (x >= 0).all() and shape == (24, 9, 9)
    with pytest.raises(ValueError, match="k must be"):
        attribution_nmf(attr, k=0)


def test_value_features_is_ig_nmf_and_labels_in_one_call(agent, data):
    """The recipe equals its steps done by hand; parts reported to ``progress`` give the same
    features; masks at observation resolution are resized with the options' any-cover names."""
    from policylens.lenses.attribution import IntegratedGradients, attribute
    from policylens.lenses.nmf import ValueFeatureOptions, value_features

    masks = md.object_masks(data.states)
    options = ValueFeatureOptions(k=3, n_steps=6, seed=2, any_cover=md.ONE_CELL)
    found = value_features(agent, data.obs, masks, "res1.hook_out", options)
    attr = attribute(agent, data.obs, IntegratedGradients(n_steps=6), "value", "res1.hook_out")
    assert np.allclose(found.attribution.numpy(), attr.numpy(), atol=1e-6)
    nmf = attribution_nmf(attr.attributions, k=3, seed=2)
    assert np.allclose(found.nmf.maps, nmf.maps, atol=1e-4)
    assert found.nmf.labels == label_features(found.nmf.maps, md.masks_at(masks, (9, 9)))
    assert json.dumps(found.to_json())  # JSON-able
    assert found.to_json()["attribution_completeness"] == attr.completeness.to_json()
    said = []
    parts = value_features(
        agent, data.obs, masks, "res1.hook_out", options, lambda f, m: said.append((f, m))
    )
    assert (
        len(said) == 9
        and said[-1] == (0.8, "NMF")
        and [f for f, _ in said] == sorted(f for f, _ in said)
    )
    assert np.allclose(parts.attribution.numpy(), found.attribution.numpy(), atol=1e-6)
    assert parts.attribution.completeness.max_abs_error == pytest.approx(
        found.attribution.completeness.max_abs_error, abs=1e-6
    )
    assert not value_features(agent, data.obs, {}, "res1.hook_out", options).nmf.labels
    with pytest.raises(ValueError, match="without spatial dimensions"):
        value_features(agent, data.obs, masks, "hook_fc", options)
    with pytest.raises(ValueError, match="ValueFeatureOptions.k must be an integer >= 1"):
        ValueFeatureOptions(k=0)


def test_dataset_examples(agent, data):
    acts = fe.feature_maps(agent, data.obs, "res1.hook_out")
    ex = fe.dataset_examples(agent, data.obs, "res1.hook_out", 3, k=5, radius=2)
    values = [e.value for e in ex]
    assert values == sorted(values, reverse=True) and len({e.index for e in ex}) == 5
    assert values[0] == pytest.approx(float(acts[:, 3].max()), rel=1e-6)
    top = ex[0]
    r, c = top.position
    full = np.pad(data.obs[top.index], ((0, 0), (2, 2), (2, 2)))
    assert np.array_equal(top.crop[1:], full[1:, r : r + 5, c : c + 5])  # mouse, cheese layers
    direction = np.zeros(16)
    direction[3] = 2.0
    ex2 = fe.dataset_examples(agent, data.obs, "res1.hook_out", direction, k=5)
    assert [e.index for e in ex2] == [e.index for e in ex]
    assert rf.examples_figure([ex, ex2], ["ch 3", "2 x ch 3"]).startswith(PNG)
    with pytest.raises(ValueError, match="Channel 99 does not exist"):
        fe.dataset_examples(agent, data.obs, "res1.hook_out", 99)


def test_visualize_feature_increases_objective(agent):
    options = fe.VisualizationOptions(steps=15, lr=0.2, seed=0)
    v = fe.visualize_feature(agent, "hook_conv", 2, options)
    assert v.input.shape == (3, 9, 9) and v.input.min() >= 0 and v.input.max() <= 1
    assert v.history[-1] > v.history[0]
    again = fe.visualize_feature(agent, "hook_conv", 2, options)
    assert np.array_equal(v.input, again.input)


def _run(tmp_path):
    from policylens.runs import Run

    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=1)
    trainer = {"env_id": "policylens/Maze-v0", "env_kwargs": {"cheese_region": 1, "max_steps": 100}}
    run = Run.create(tmp_path / "run", {"kind": "ppo", "trainer": trainer, "agent": agent.config})
    run.save_checkpoint(agent, 0)
    return run


@pytest.mark.slow
def test_features_command_and_report_section(tmp_path):
    from policylens.cli import app
    from policylens.report.attribution import attribution_section
    from policylens.report.html import Report

    run = _run(tmp_path)
    res = CliRunner().invoke(app, ["features", str(run.path), "--nmf", "4", "--n-obs", "16",
                                   "--clusters", "3", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data["nmf"]["features"]) == 4
    assert {"label", "correlation", "iou"} <= set(data["nmf"]["features"][0])
    assert data["clusters"]["k"] == 3 and 0 <= data["clusters"]["purity"] <= 1
    assert fe.load_clusters(data["files"]["clusters"]).labels.shape == (16, 9, 9)
    bad = CliRunner().invoke(app, ["features", str(run.path), "--layer", "hook_fc"])
    assert bad.exit_code == 2 and "without spatial" in bad.output

    report = Report("t")
    from policylens.studies.maze.attribution import attribution_study
    from policylens.worlds.maze import maze_config

    study = attribution_study(
        run.load_agent(), maze_config(run), n_obs=16, k=3, clusters=3, log=lambda m: None
    )
    study.save(run.analysis_dir)
    attribution_section(report, study)
    out = study.to_json()
    assert len(report.sections) == 4 and out["completeness"]["layer_value"]["max_abs_error"] < 0.05
    assert (run.analysis_dir / "attribution.json").is_file()
    assert "<img" in report.render()


def test_generate_level_corner_matches_obs_derivation():
    cfg = MazeConfig(world_size=9, maze_sizes=(5, 7))
    states = [generate_level(s, cfg) for s in range(5)]
    from policylens.envs.maze import MazeBatch

    obs = np.stack([MazeBatch(cfg, 1).observe(s) for s in states])
    corners = md.object_masks(obs=obs)["corner"]
    for s, m in zip(states, corners, strict=True):
        assert m[s.corner] and m.sum() == 1


def test_examples_crop_many_plane_grids_around_the_peak():
    """A channels-first grid of any plane count (the hazard world's 9) is cropped around the
    peak with wall outside, as the maze's 3 planes are."""
    obs = np.zeros((2, 9, 13, 13), np.uint8)
    obs[1, 4, 1, 3] = 1  # a saw at (1, 3) in the second frame
    maps = np.zeros((2, 13, 13))
    maps[1, 1, 3] = 5.0
    (ex,) = fe.examples_from_maps(maps, obs, k=1, radius=2, outside_plane=0)
    assert ex.index == 1 and ex.position == (1, 3) and ex.value == 5.0
    assert ex.crop.shape == (9, 5, 5) and ex.crop[4, 2, 2] == 1  # the saw at the centre
    assert ex.crop[0, 0].all() and not ex.crop[0, 1:].any()  # above the grid's row 0: wall
    (bare,) = fe.examples_from_maps(maps, obs, k=1, radius=2)  # no wall plane: outside is empty
    assert not bare.crop[:, 0].any() and np.array_equal(bare.crop[:, 1:], ex.crop[:, 1:])
