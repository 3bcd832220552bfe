"""Linear probes: split by level, controls, bad input, probes over training, CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from policylens import worlds
from policylens.agents import build_agent
from policylens.lenses.probes import (
    ProbeData,
    ProbeOptions,
    default_hooks,
    group_split,
    probe,
    probe_checkpoints,
    probe_store_for_run,
    resolve_target,
)
from policylens.rollout import CollectOptions, StoreWriter, collect, write_store

MAZE = "policylens/Maze-v0"
SMALL = {"cheese_region": None, "max_steps": 25}


@pytest.fixture(scope="module")
def maze_store(tmp_path_factory):
    torch.set_num_threads(1)
    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=1)
    out = tmp_path_factory.mktemp("probe") / "maze"
    options = CollectOptions(episodes=40, hooks=["hook_conv", "hook_out"], seed=2, num_envs=20)
    return collect(agent, MAZE, SMALL, out, options)


def synthetic_store(path, n_levels=60, per_level=10, seed=0):
    """Activations that encode a binary and a continuous label linearly, plus noise."""
    rng = np.random.default_rng(seed)
    n = n_levels * per_level
    level = np.repeat(np.arange(n_levels), per_level)
    flag = rng.random(n) < 0.5
    depth = rng.normal(size=n)
    noise = rng.normal(size=(n, 12))
    acts = noise.copy()
    acts[:, 0] += 3 * flag
    acts[:, 1] += 2 * depth
    return write_store(path, {
        "episode": level, "labels/level_seed": level + 1000, "labels/flag": flag,
        "labels/depth": depth, "labels/const": np.zeros(n, dtype=np.int64),
        "labels/vec": np.stack([flag, ~flag], axis=1), "activations/layer": acts.astype(np.float32),
    }, meta={"env_id": "toy"})  # fmt: skip


def test_probe_recovers_linear_concepts_and_shuffled_control_is_at_chance(tmp_path):
    s = synthetic_store(tmp_path / "s")
    report = probe(s, ["flag", "depth", "vec[1]"], options=ProbeOptions(controls=("shuffled",)))
    flag, depth, vec = (report.get(k, "layer") for k in ("flag", "depth", "vec[1]"))
    assert flag.kind == "classification" and flag.metric == "balanced_accuracy"
    assert flag.score > 0.85 and abs(flag.controls["shuffled"] - 0.5) < 0.15
    assert depth.kind == "regression" and depth.metric == "r2"
    assert depth.score > 0.7 and depth.controls["shuffled"] < 0.1 and abs(depth.baseline) < 0.1
    assert vec.score > 0.85
    assert report.meta["split"] == "level_seed" and flag.n_train + flag.n_test == len(s)


def test_split_is_by_level_so_memorised_levels_do_not_leak(tmp_path):
    # Each level has its own random activation pattern and a random label: memorisable within a
    # level, but nothing generalises to unseen levels. A split by step would score near 1.
    rng = np.random.default_rng(1)
    n_levels, per = 80, 12
    level = np.repeat(np.arange(n_levels), per)
    label = np.repeat(rng.random(n_levels) < 0.5, per)
    acts = np.repeat(rng.normal(size=(n_levels, 120)), per, axis=0)
    acts += 0.05 * rng.normal(size=acts.shape)
    s = write_store(tmp_path / "s", {"episode": level, "labels/level_seed": level,
                                     "labels/y": label, "activations/h": acts})  # fmt: skip
    r = probe(s, ["y"], options=ProbeOptions(controls=())).get("y", "h")
    assert r.score < 0.7
    train, test = group_split(level, 0.25, seed=0)
    assert not set(level[train]) & set(level[test]) and test.sum() > 0
    # What a split by step would have reported (the leak the group split prevents):
    from sklearn.linear_model import LogisticRegression

    leaky = (
        LogisticRegression(max_iter=500).fit(acts[::2], label[::2]).score(acts[1::2], label[1::2])
    )
    assert leaky > 0.9


def test_maze_spatial_probe_and_random_net_control(maze_store):
    report = probe(maze_store, ["cheese_pos", "mouse_pos", "dist_to_corner"],
                   ["hook_conv", "hook_out"], options=ProbeOptions(max_samples=600))  # fmt: skip
    cheese = report.get("cheese_pos", "hook_conv")
    assert cheese.kind == "position" and cheese.metric == "localisation_accuracy"
    # The cheese is a channel of the input: a random CNN keeps it readable at its cell too.
    assert cheese.score > 0.9 and cheese.controls["random_init"] > 0.9
    assert cheese.controls["shuffled"] < 0.3 and cheese.baseline < 0.3
    flat = report.get("mouse_pos", "hook_out")
    assert flat.metric == "accuracy" and flat.score > flat.controls["shuffled"] + 0.2
    assert report.get("dist_to_corner", "hook_out").metric == "r2"


def test_probe_computes_activations_with_a_given_agent(maze_store):
    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=1)  # the collecting agent
    options = ProbeOptions(controls=(), max_samples=300)
    stored = probe(maze_store, ["mouse_pos"], ["hook_out"], options=options)
    computed = probe(maze_store, ["mouse_pos"], ["hook_out"], agent, options)
    assert stored.results[0].score == pytest.approx(computed.results[0].score, abs=1e-6)


def test_bad_input_errors(tmp_path, maze_store):
    s = synthetic_store(tmp_path / "s")
    with pytest.raises(ValueError, match="Unknown label .* 'flg'.*Did you mean 'flag'.*Available"):
        probe(s, ["flg"])
    bare = ProbeOptions(controls=())
    with pytest.raises(ValueError, match="'const' has a single class \\(all 0\\) in this data; "
                       "collect more episodes or choose another label"):  # fmt: skip
        probe(s, ["const"], options=bare)
    with pytest.raises(ValueError, match="probe one component with 'vec\\[i\\]'"):
        probe(s, ["vec"], options=bare)
    with pytest.raises(ValueError, match="Unknown ProbeOptions.controls value 'shuffle'"):
        ProbeOptions(controls=("shuffle",))
    with pytest.raises(ValueError, match="ProbeOptions.test_fraction must lie in"):
        ProbeOptions(test_fraction=1.0)
    with pytest.raises(ValueError, match="no activations for hook_conv"):
        probe(s, ["flag"], ["hook_conv"], options=bare)
    w = StoreWriter(tmp_path / "partial")
    w.append({"a": np.zeros(3)})
    w._flush(3)
    with pytest.raises(ValueError, match="incomplete \\(no manifest\\)"):
        probe(tmp_path / "partial")
    with pytest.raises(ValueError, match="'success' has a single class \\(all 0\\)"):
        probe(maze_store, ["success"], ["hook_out"], options=bare)
    rows = np.arange(len(maze_store))
    with pytest.raises(ValueError, match="at least 2"):
        group_split(np.zeros(10), 0.25, 0)
    assert resolve_target(maze_store, "move_to_cheese", rows).kind == "classification"


def test_default_hooks_span_input_to_output():
    agent = build_agent("maze_cnn", (3, 9, 9), 4)
    assert default_hooks(agent.hook_names()) == ["hook_conv", "res1.hook_out", "hook_out",
                                                 "hook_logits"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from policylens.train.ppo import PPOConfig, train_ppo

    torch.set_num_threads(1)
    config = PPOConfig(env_id=worlds.get("maze").env_id, total_steps=8192, num_envs=16, num_steps=64, checkpoints=3, threads=1,
                       env_kwargs={"max_steps": 30}, seed=0)  # fmt: skip
    return train_ppo(config, tmp_path_factory.mktemp("run") / "tiny", progress=False)


@pytest.mark.slow
def test_probes_over_training_save_curves_and_figure(tiny_run):
    anywhere = dict(worlds.get("maze").probe_options)  # the world's probe options
    store = probe_store_for_run(tiny_run, episodes=30, env_kwargs=anywhere)
    curves = probe_checkpoints(tiny_run, store, labels=["mouse_pos", "move_to_cheese"],
                               hooks=["hook_conv", "hook_out"],
                               options=ProbeOptions(max_samples=600))  # fmt: skip
    steps = [s for s, _ in tiny_run.checkpoints()]
    assert curves.steps == steps and len(steps) >= 3
    for label in curves.labels:
        for hook in curves.hooks:
            assert len(curves.scores[label][hook]) == len(steps)
            assert set(curves.controls[label][hook]) == {"random_init", "shuffled"}
    assert (
        curves.scores["mouse_pos"]["hook_conv"][-1]
        > curves.controls["mouse_pos"]["hook_conv"]["shuffled"]
    )
    out = tiny_run.path / "analysis" / "probes"
    from policylens.report.probes import write_probe_curves

    write_probe_curves(curves, out / "probes_over_training.png", "t")
    png = (out / "probes_over_training.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    saved = json.loads((out / "probes_over_training.json").read_text())
    assert saved["steps"] == steps
    # The probe data was collected in the maze with the cheese anywhere, and is reused.
    store_meta = json.loads((out / "rollouts" / "manifest.json").read_text())["meta"]
    assert store_meta["env_kwargs"]["cheese_region"] is None
    assert store_meta["checkpoint_step"] == steps[-1]


@pytest.mark.slow
def test_cli_probe_run_and_store_json(tiny_run, maze_store):
    from policylens.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["probe", str(tiny_run.path), "--label", "move_to_cheese",
                                 "--hook", "hook_out", "--episodes", "30", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (row,) = data["results"]
    assert row["label"] == "move_to_cheese" and set(row["controls"]) == {"random_init", "shuffled"}
    # One report for the chosen (default: latest) checkpoint, the same one that was printed.
    latest = tiny_run.checkpoints()[-1][0]
    saved = sorted((tiny_run.path / "analysis" / "probes").glob("probes_step_*.json"))
    assert [p.name for p in saved] == [f"probes_step_{latest}.json"]
    assert json.loads(saved[0].read_text()) == data
    assert data["meta"]["checkpoint_step"] == latest
    # The probe data is collected with the world's probe options (the maze: cheese anywhere).
    rollouts = tiny_run.path / "analysis" / "probes" / "rollouts" / "manifest.json"
    assert json.loads(rollouts.read_text())["meta"]["env_kwargs"]["cheese_region"] is None
    result = runner.invoke(app, ["probe", str(tiny_run.path), "--over-training", "--label",
                                 "move_to_cheese", "--hook", "hook_out", "--episodes", "30",
                                 "--max-samples", "300", "--no-controls", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    curves = json.loads(result.stdout)
    assert curves["steps"] == [s for s, _ in tiny_run.checkpoints()]
    assert curves["labels"] == ["move_to_cheese"] and curves["hooks"] == ["hook_out"]
    figure = tiny_run.path / "analysis" / "probes" / "probes_over_training.png"
    assert curves["meta"]["figure"] == str(figure) and figure.read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(app, ["probe", str(maze_store.path), "--label", "mouse_pos",
                                 "--hook", "hook_out", "--no-controls", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["metric"] == "accuracy"
    bad = runner.invoke(app, ["probe", str(maze_store.path), "--label", "cheese"])
    assert bad.exit_code == 2 and "Unknown label" in bad.output and "cheese_pos" in bad.output


def test_the_study_probes_the_worlds_concepts_by_default(maze_store):
    from policylens.studies.probes import ConceptProbeOptions, probe_store

    fit = ProbeOptions(controls=(), max_samples=300)
    report = probe_store(maze_store.path, ConceptProbeOptions(hooks=["hook_out"], probe=fit))
    concepts = [c for c in worlds.get("maze").concepts if c in maze_store.labels]
    assert [r.label for r in report.results] == concepts and len(concepts) >= 4
    asked = ConceptProbeOptions(labels=["dist_to_cheese"], hooks=["hook_out"], probe=fit)
    assert [r.label for r in probe_store(maze_store.path, asked).results] == ["dist_to_cheese"]


def test_probe_data_split_is_shared_across_labels(maze_store):
    data = ProbeData.from_store(maze_store, ["mouse_pos", "dist_to_cheese"], max_samples=200)
    assert len(data.rows) == 200 and (data.train ^ data.test).all()
    levels = maze_store["labels/level_seed"][data.rows]
    assert not set(levels[data.train]) & set(levels[data.test])


# ---------------------------------------------------------------------------------- what, when, where
def test_l1_probes_read_a_sparse_concept_and_regularise(tmp_path):
    s = synthetic_store(tmp_path / "s")
    data = ProbeData.from_store(s, ["flag", "depth"], max_samples=600)
    acts = s["activations/layer"][data.rows]
    flag = data.fit(acts, data.targets["flag"], penalty="l1")
    depth = data.fit(acts, data.targets["depth"], penalty="l1")
    assert flag["metric"] == "balanced_accuracy" and flag["score"] > 0.85
    assert depth["metric"] == "r2" and depth["score"] > 0.7
    # The lasso keeps the one informative unit: a fixed, strong penalty still reads depth.
    strong = data.fit(acts, data.targets["depth"], {"alpha": 0.3}, penalty="l1")
    assert strong["score"] > 0.5
    with pytest.raises(ValueError, match="Unknown penalty 'l3'"):
        data.fit(acts, data.targets["flag"], penalty="l3")
    with pytest.raises(ValueError, match="penalties must include l2"):
        ProbeOptions(penalties=("l1",))


def test_raw_input_control_reads_what_is_in_the_observation(maze_store):
    options = ProbeOptions(controls=("raw_input",), max_samples=300, penalties=("l2", "l1"))
    r = probe(maze_store, ["cheese_pos"], ["hook_out"], options=options).results[0]
    # The cheese's cell is a channel of the maze observation: the raw input reads it.
    assert r.controls["raw_input"] > 0.9 and set(r.controls) == {"raw_input"}
    assert 0 <= r.details["l1_score"] <= 1


def fake_curves(jump_at: int, final: float = 0.9, l1: bool = False):
    from policylens.lenses.probes import ProbeCurves

    steps = [0, 10, 100, 1000, 10000]
    rise = [0.5 if i < jump_at else final for i in range(len(steps))]
    flat = [0.5, 0.52, 0.55, 0.6, 0.62]
    scores = {"c": {"early": flat, "late": rise}}
    controls = {"c": {h: {"random_init": 0.5, "shuffled": 0.5, "raw_input": 0.6}
                      for h in ("early", "late")}}  # fmt: skip
    return ProbeCurves(steps, ["c"], ["early", "late"], {"c": "balanced_accuracy"}, scores,
                       {"c": 0.5}, controls, l1_scores=scores if l1 else {},
                       l1_controls=controls if l1 else {})  # fmt: skip


def test_timeline_finds_emergence_best_layer_and_change_point():
    from policylens.studies.probes import concept_timeline

    tl = concept_timeline([fake_curves(2), fake_curves(3), fake_curves(3)], ["a", "b", "c"])
    s = tl.summary["l2"]["c"]
    assert s["best_layer"] == "late" and s["best_layer_votes"] == {"late": 3}
    assert s["emergence_step"]["per_seed"] == [100, 1000, 1000]
    assert s["emergence_step"]["median"] == 1000 and s["emergence_step"]["range"] == [100, 1000]
    lo, hi = s["emergence_step"]["ci"]
    assert lo < s["emergence_step"]["geometric_mean"] < hi
    cp = s["change_point_beyond_paper"]
    assert cp["step"]["per_seed"] == [100, 1000, 1000] and cp["jump"]["mean"] == pytest.approx(0.4)
    assert s["final_score"]["mean"] == pytest.approx(0.9)
    assert s["controls_at_best_layer"]["raw_input"]["mean"] == pytest.approx(0.6)
    assert "l1" not in tl.summary and "beyond the paper" in tl.meta["change_point"]
    assert json.loads(json.dumps(tl.to_json()))["summary"]["l2"]["c"]["best_layer"] == "late"
    both = concept_timeline([fake_curves(2, l1=True)], ["a"])
    assert set(both.summary) == {"l2", "l1"}
    from policylens.report.probes import concept_heatmaps_figure

    png = concept_heatmaps_figure(tl, "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    with pytest.raises(ValueError, match="same labels and layers"):
        concept_timeline([fake_curves(2), dataclasses.replace(fake_curves(2), hooks=["x"])],
                         ["a", "b"])  # fmt: skip


@pytest.mark.slow
def test_cli_what_when_where_over_runs(tiny_run):
    from policylens.cli import app

    runner = CliRunner()
    args = ["probe", str(tiny_run.path), "--over-training", "--seed-run", str(tiny_run.path),
            "--label", "mouse_pos", "--hook", "hook_out", "--episodes", "30", "--max-samples",
            "300", "--no-controls", "--raw-input", "--l1", "--checkpoints", "2", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    steps = [s for s, _ in tiny_run.checkpoints()]
    assert data["meta"]["steps"] == [steps[0], steps[-1]] and data["meta"]["seeds"] == 2
    s = data["summary"]["l1"]["mouse_pos"]
    assert s["best_layer"] == "hook_out" and set(s["controls_at_best_layer"]) == {"raw_input"}
    assert s["emergence_step"]["per_seed"][0] == s["emergence_step"]["per_seed"][1]  # same run
    out = tiny_run.path / "analysis" / "probes"
    assert (out / "concepts_over_training.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "concepts_over_training_l1.png").is_file()
    assert (
        json.loads((out / "concepts_over_training.json").read_text())["summary"] == data["summary"]
    )
    bad = runner.invoke(app, ["probe", str(tiny_run.path), "--seed-run", str(tiny_run.path)])
    assert bad.exit_code == 2 and "--seed-run needs --over-training" in bad.output
