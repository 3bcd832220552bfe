"""CLI smoke tests for the commands the other CLI tests leave out: envs, gallery, a tiny
successful `train maze`, behaviour, report and table, each checked through `--json` against the
Python function it wraps or an independent oracle.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from policylens.cli import app
from policylens.envs.maze import MazeConfig, bfs_distances, generate_level
from policylens.runs import Run
from policylens.studies.maze.decisions import decision_square_analysis
from policylens.studies.maze.misgeneralization import behaviour_study
from policylens.worlds.maze import maze_config

runner = CliRunner()


def invoke(*args) -> dict | list:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_envs_lists_every_registered_world():
    worlds = invoke("envs", "--json")
    assert {"policylens/Maze-v0", "policylens/RookEndgame-v0"} <= set(worlds)
    for env_id in worlds:
        assert env_id in gym.registry  # each listed world can be made
    plain = runner.invoke(app, ["envs"])
    assert plain.exit_code == 0 and "policylens/Maze-v0" in plain.stdout


def test_gallery_draws_each_level_with_its_shortest_path(tmp_path):
    out = tmp_path / "g.png"
    data = invoke("gallery", "--out", out, "--n", 5, "--seed", 3, "--json")
    config = MazeConfig()
    levels = [generate_level(s, config) for s in range(3, 8)]
    assert data["shortest_path_lengths"] == [
        int(bfs_distances(s.walls, s.cheese)[s.start]) for s in levels
    ]
    width, height = Image.open(out).size
    assert width > 4 * height  # five levels in one row


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny maze runs trained through the CLI (regions 1 and none)."""
    root = tmp_path_factory.mktemp("cli")
    runs = {}
    for region in ("1", "none"):
        out = root / f"region_{region}"
        threads = 1 if region == "none" else 2
        summary = invoke("train", "maze", "--out", out, "--steps", 8192, "--cheese-region",
                         region, "--world-size", 7, "--threads", threads, "--quiet",
                         "--json")  # fmt: skip
        runs[region] = (out, summary)
    return runs


def test_train_maze_completes_a_tiny_run(tiny):
    out, summary = tiny["1"]
    assert summary["steps"] == 8192 and summary["done"] and summary["checkpoints"] >= 2
    assert summary["env_kwargs"]["cheese_region"] == 1 and summary["env_kwargs"]["world_size"] == 7
    assert Run(out).load_agent().obs_shape == (3, 7, 7)
    assert tiny["none"][1]["env_kwargs"]["cheese_region"] is None
    threads = [Run(tiny[r][0]).config["trainer"]["threads"] for r in ("1", "none")]
    assert threads == [2, 1]  # --threads reaches the trainer


def test_behaviour_json_is_the_python_analysis(tiny):
    out, _ = tiny["1"]
    data = invoke("behaviour", out, "--episodes", 30, "--n-mazes", 20, "--json")
    run = Run(out)
    agent, config = run.load_agent(), maze_config(run)
    expected = behaviour_study(agent, config, 30).to_json()
    expected_decisions = decision_square_analysis(agent, config, 20, exclude_region=1)
    assert data["train"]["success"] == expected["train"]["success"]
    assert data["test"]["corner_first"] == expected["test"]["corner_first"]
    assert data["decisions"]["p_cheese"] == expected_decisions["p_cheese"]
    assert data["train"]["episodes"] == data["test"]["episodes"] == 30


@pytest.mark.slow
def test_report_and_table(tiny, tmp_path):
    out, _ = tiny["1"]
    html = tmp_path / "r.html"
    data = invoke("report", out, "--out", html, "--episodes", 20, "--n-mazes", 100, "--json")
    assert data["report"] == str(html) and "Decision squares" in html.read_text()
    # the table reuses the report's analyses and computes the other run's
    rows = invoke("table", out, tiny["none"][0], "--episodes", 20, "--n-mazes", 100, "--json")
    assert [r["cheese_region"] for r in rows] == [1, None]
    assert all(r["steps"] == 8192 for r in rows)
    saved = json.loads((out / "analysis" / "maze.json").read_text())
    assert rows[0]["test success"] == saved["behaviour"]["test"]["success"]
    assert (
        rows[0]["off-path corner first"] == saved["behaviour"]["test"]["off_path"]["corner_first"]
    )
    assert np.isfinite(rows[0]["test success"]["rate"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "Invalid value for '--steps'"),
        (["--resume"], "holds no run to continue (no config.json); drop --resume"),
    ],
)
def test_train_maze_refuses_zero_steps_and_resuming_nothing(tmp_path, args, message):
    r = runner.invoke(app, ["train", "maze", "--out", str(tmp_path / "new"), "--quiet", *args])
    output = " ".join(r.output.replace("│", " ").split())  # typer boxes and wraps its errors
    assert r.exit_code == 2 and message in output and "Traceback" not in output
    assert not (tmp_path / "new" / "checkpoints").exists()  # refused before any work
