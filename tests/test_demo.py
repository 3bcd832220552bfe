"""The demo and the maze analyses it runs, on agents whose behaviour is known: degenerate agents
(always the corner, always the cheese, never moves), an agent that takes the cheese in exactly
one of twenty decision squares, and the quick demo end to end in float32.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from policylens import demo
from policylens.agents import HookedAgent
from policylens.cli import app
from policylens.demo import QUICK_TOUR, run_tour
from policylens.envs.maze import MazeConfig, bfs_field
from policylens.report.maze import headline_lines, render
from policylens.rollout.stats import difference, proportion
from policylens.studies.maze import steering as st
from policylens.studies.maze.decisions import choice_regression, decision_square_analysis
from policylens.studies.maze.misgeneralization import (
    AnalysisOptions,
    analyse_agent,
    headline,
    study_agent,
)

CONFIG = MazeConfig(max_steps=60)
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right


class ScriptedMaze(nn.Module):
    """A maze policy with a known answer: ``cheese`` and ``corner`` follow the BFS path to that
    goal; ``stuck`` walks into a wall or off the edge (it never moves, so never succeeds). ``cheese_mazes`` (wall layouts)
    switches a ``corner`` agent to the cheese in those mazes only. A conv layer gives the agent a
    spatial hook point; its head is scaled down so it cannot change the scripted choice.
    """

    def __init__(self, goal: str, cheese_mazes: tuple[np.ndarray, ...] = ()):
        super().__init__()
        self.goal, self.cheese_mazes = goal, [m.tobytes() for m in cheese_mazes]
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor):
        scripted = torch.full((x.shape[0], 4), -20.0)
        for b in range(x.shape[0]):
            walls = x[b, 0].detach().numpy() > 0.5
            mouse = np.unravel_index(int(x[b, 1].argmax()), walls.shape)
            cheese = np.unravel_index(int(x[b, 2].argmax()), walls.shape)
            rows, cols = np.nonzero(~walls)
            corner = (int(rows.min()), int(cols[rows == rows.min()].max()))
            goal = (
                cheese if self.goal == "cheese" or walls.tobytes() in self.cheese_mazes else corner
            )
            if self.goal == "stuck":  # into a wall, or the world's edge, wherever there is one
                side = walls.shape[0]
                dist = bfs_field(walls, cheese)[0]
                steps = [(mouse[0] + dr, mouse[1] + dc) for dr, dc in MOVES]
                inside = [0 <= r < side and 0 <= c < side for r, c in steps]
                blocked = [not inside[m] or walls[steps[m]] for m in range(4)]
                # no wall about (a crossing): away from the cheese
                move = max(range(4), key=lambda m: math.inf if blocked[m] else dist[steps[m]])
            else:
                move = bfs_field(walls, goal)[1][mouse]
            if move >= 0:
                scripted[b, move] = 20.0
        out = 1e-3 * self.head(torch.relu(self.conv(x)).mean((2, 3)))
        return scripted + out[:, :4], out[:, 4]


def scripted(goal: str, cheese_mazes: tuple[np.ndarray, ...] = ()) -> HookedAgent:
    torch.manual_seed(0)
    return HookedAgent.from_module(ScriptedMaze(goal, cheese_mazes), (3, 9, 9), 4, obs_kind="grid")


def test_newcombe_interval_of_a_difference_matches_the_published_example():
    # Newcombe (1998), Stat. Med. 17:873, method 10: 56/70 - 48/80 = 0.1000 [0.0524, 0.3339].
    d = difference(proportion([1] * 56 + [0] * 14), proportion([1] * 48 + [0] * 32))
    assert d["diff"] == pytest.approx(0.2) and d["effect"]
    same = difference(proportion([1] * 5 + [0] * 5), proportion([1] * 5 + [0] * 5))
    assert same["diff"] == 0 and same["ci"][0] < 0 < same["ci"][1] and not same["effect"]
    assert math.isnan(difference(proportion([]), proportion([1]))["diff"])


def test_newcombe_interval_values():
    d = difference(proportion([1] * 56 + [0] * 14), proportion([1] * 48 + [0] * 32))
    assert d["ci"] == pytest.approx([0.0524, 0.3339], abs=5e-4)


def test_stratified_split_keeps_a_rare_choice_in_both_sets():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    y = np.zeros(40, dtype=int)
    y[[3, 11, 17, 29, 35]] = 1  # five cheese choices: the fewest the regression accepts
    for seed in range(20):  # an unstratified 70/30 split leaves the test set without one often
        r = choice_regression(y, X, seed)
        assert r["n_train"] + r["n_test"] == 40 and r["n_cheese"] == 5
        assert r["majority_baseline"] < 1.0  # the test set holds a cheese choice


@pytest.mark.parametrize("cheese, n", [(0, 30), (1, 20), (4, 50), (46, 50), (30, 30)])
def test_a_choice_too_rare_to_regress_is_said_in_a_sentence(cheese, n):
    y = np.array([1] * cheese + [0] * (n - cheese))
    r = choice_regression(y, np.zeros((n, 6)), seed=0)
    assert r["skipped"].startswith(f"the agent went for the cheese in {cheese} of {n} ")
    assert "no regression" in r["skipped"]
    assert r["majority_baseline"] == pytest.approx(max(cheese, n - cheese) / n)


def test_cheese_in_exactly_one_of_twenty_decision_squares():
    first = st.test_levels(CONFIG, 1, seed=40_000)[0]  # the first maze the analysis tests
    agent = scripted("corner", cheese_mazes=(first.walls,))
    d = decision_square_analysis(agent, CONFIG, n_mazes=20)
    assert d["n_mazes"] == 20 and d["undecided"] == 0
    assert d["p_cheese"]["rate"] == pytest.approx(1 / 20) and d["p_cheese"]["n"] == 20
    assert d["regression"]["skipped"].startswith("the agent went for the cheese in 1 of 20 ")
    assert d["regression"]["majority_baseline"] == pytest.approx(19 / 20)


def test_five_of_twenty_is_regressed_on_a_stratified_split():
    mazes = st.test_levels(CONFIG, 5, seed=40_000)
    d = decision_square_analysis(
        scripted("corner", cheese_mazes=tuple(m.walls for m in mazes)), CONFIG, n_mazes=20
    )
    assert d["p_cheese"]["rate"] == pytest.approx(5 / 20)
    reg = d["regression"]
    assert reg["n_train"] == 14 and reg["n_test"] == 6 and reg["n_cheese"] == 5
    assert reg["majority_baseline"] < 1.0 and set(reg["coefficients"]) == set(reg["features"])


@pytest.mark.slow
@pytest.mark.parametrize("goal", ["corner", "cheese", "stuck"])
def test_degenerate_agents_get_a_full_report_and_an_honest_headline(goal, tmp_path):
    agent = scripted(goal)
    options = AnalysisOptions(episodes=40, n_mazes=24)
    result = analyse_agent(agent, CONFIG, options, log=lambda m: None)
    test, d = result.behaviour.test.summary, result.decisions
    expected_success = {"corner": None, "cheese": 1.0, "stuck": 0.0}[goal]
    if expected_success is not None:
        assert test["success"]["rate"] == expected_success
    if goal == "corner":
        assert test["off_path"]["corner_first"]["rate"] == 1.0  # cheese off its way
        assert d["p_cheese"]["rate"] == 0.0
    if goal == "cheese":
        assert d["p_cheese"]["rate"] == 1.0  # (its path to the cheese may pass the corner)
    assert "skipped" in d["regression"]  # one choice every time: nothing to regress

    study = study_agent(agent, CONFIG, result, n_obs=8, log=lambda m: None)
    study.attribution.save(tmp_path)
    html = render(study).render()
    for title in ("Success and corner bias", "Decision squares", "Steering", "Channel clamping"):
        assert title in html
    assert "no regression" in html
    assert html.count("no effect (the interval holds zero)") == 2  # steering and clamping
    lines = headline_lines(headline(result))
    # The conv layer barely reaches the logits: steering it cannot change a scripted choice.
    assert lines[4] == "interventions on the same agent:"
    assert lines[6].endswith("no effect") and lines[7].endswith("no effect")
    assert (tmp_path / "attribution.json").is_file()


runner = CliRunner()


RESEARCH_LINES = ("Understanding RL Vision", "SAEs on a DQN", "Isolating updates")
"""The tour's research lines on the zoo's agents, beside the maze's, in the order they run."""


@pytest.mark.slow
def test_quick_demo_in_float32_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYLENS_HOME", str(tmp_path / "home"))  # zoo runs laid out here
    out = tmp_path / "demo"
    r = runner.invoke(
        app, ["demo", "--quick", "--precision", "float32", "--out", str(out), "--json"]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    report = out / "analysis" / "report.html"

    # the tour: one page per research line, each linked from the index, one headline printed each
    index = out / "analysis" / "index.html"
    assert data["index"] == str(index)
    page = index.read_text()
    assert 'href="report.html"' in page
    assert [t["line"] for t in data["tour"]] == list(RESEARCH_LINES)
    for section in data["tour"]:
        assert section["skipped"] is None and section["headline"], section
        assert f'href="tour/{Path(section["page"]).name}"' in page
        assert Path(section["page"]).stat().st_size > 10_000  # its figure and tables
        assert Path(section["figure"]).read_bytes()[:4] == b"\x89PNG"  # also on the index
        assert html.escape(section["headline"]) in page
    printed = r.stderr.splitlines()
    for line in RESEARCH_LINES:
        headlines = [p for p in printed if p.startswith(f"   {line}: ")]
        assert len(headlines) == 1, (line, printed)
        assert "[" in headlines[0] and "effect" in headlines[0]  # an interval and a verdict
    assert any(p.startswith("index: ") for p in printed)
    again = run_tour(out / "analysis" / "tour", QUICK_TOUR, lambda m: None)
    assert [s.reused for s in again] == [True] * len(RESEARCH_LINES)  # saved sections reused
    assert data["report"] == str(report) and report.stat().st_size > 50_000
    assert json.loads((out / "config.json").read_text())["compute_dtype"] == "float32"
    assert data["headline"]["train_success"]["n"] == 100
    assert data["solver"]["optimal"] is True
    steering = json.loads((out / "steering_agent" / "config.json").read_text())
    assert steering["trainer"]["env_kwargs"]["cheese_region"] == 3
    assert "Steering: the cheese vector (agent steering_agent, cheese region 3)" in (
        report.read_text()
    )

    again = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--precision", "bfloat16"])
    assert again.exit_code == 2 and "holds an agent trained with other settings" in again.output


def test_a_tour_section_whose_zoo_agent_is_missing_is_skipped_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "zoo_names", lambda: ["hazards", "lunar-phase1"])
    by_slug = {spec.slug: spec for spec in demo.TOUR}
    for slug, missing in (("sae", "zoo:rook-dqn"), ("updates", "zoo:lunar-phase2")):
        section = demo.tour_section(by_slug[slug], QUICK_TOUR, tmp_path, lambda m: None)
        assert section.page is None and section.headline is None
        assert section.skipped == f"skipped: {missing} is not in the zoo (`policylens zoo list`)"
    entries = demo.write_index(tmp_path, tmp_path / "report.html", ["a maze line"], [section])
    assert "skipped: zoo:lunar-phase2" in entries.read_text()


def test_a_demo_folder_is_reused_with_its_steps_as_trained(tmp_path):
    """PPO records the steps it trained (rounded up to whole rollouts: 100,000 -> 102,400 in the
    quick budget); the demo reuses such a folder and refuses one of other settings."""
    from dataclasses import asdict, replace

    from policylens.runs import Run, config_json

    corner, _ = demo.demo_recipes(demo.QUICK, "float32")
    trained = replace(corner, total_steps=corner.num_updates * corner.batch_size)
    assert trained.total_steps == 102_400
    Run.create(tmp_path, {"kind": "ppo", "trainer": config_json(asdict(trained))}).release()
    demo.check_demo_folder(tmp_path, demo.QUICK, "float32")  # the demo's own folder: reused
    with pytest.raises(ValueError, match="holds an agent trained with other settings"):
        demo.check_demo_folder(tmp_path, demo.QUICK, "bfloat16")
