"""Maze behaviour analyses, interventions and the report, checked with scripted agents whose
answers are known: a cheese seeker (BFS to the cheese) and a corner seeker (BFS to the corner).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from policylens.agents import HookedAgent, build_agent
from policylens.analysis import interventions as iv
from policylens.analysis.behaviour import evaluate, run_episodes_from_states, visit_counts
from policylens.analysis.decisions import decision_square_analysis
from policylens.analysis.stats import wilson
from policylens.analysis.vector_fields import move_probabilities, vector_field
from policylens.envs.maze import MazeBatch, MazeConfig, bfs_field, generate_level

CONFIG = MazeConfig(max_steps=60)


class Seeker(nn.Module):
    """Scores each move by BFS distance to the cheese (or the corner) read from the grid obs."""

    def __init__(self, goal: str):
        super().__init__()
        self.goal = goal
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor):
        logits = torch.full((x.shape[0], 4), -1.0)
        for b in range(x.shape[0]):
            walls = x[b, 0].numpy() > 0.5
            mouse = np.unravel_index(int(x[b, 1].argmax()), walls.shape)
            if self.goal == "cheese":
                target = np.unravel_index(int(x[b, 2].argmax()), walls.shape)
            else:
                rows, cols = np.nonzero(~walls)
                target = (int(rows.min()), int(cols[rows == rows.min()].max()))
            move = bfs_field(walls, target)[1][mouse]
            if move >= 0:
                logits[b, move] = 1.0
        return logits * self.scale, torch.zeros(x.shape[0])


def seeker(goal: str) -> HookedAgent:
    return HookedAgent.from_module(Seeker(goal), (3, 9, 9), 4, obs_kind="grid")


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson(85, 100)
    assert lo < 0.85 < hi and lo > 0.75 and hi < 0.92
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_cheese_seeker_is_perfect_and_never_goes_to_the_corner_first():
    result = evaluate(
        seeker("cheese"), 60, env_kwargs={"cheese_region": None, "max_steps": 60}, greedy=True
    )
    assert result["success"]["rate"] == 1.0
    assert result["path_ratio"] == pytest.approx(1.0)
    assert result["off_path"]["corner_first"]["rate"] == 0.0


def test_corner_seeker_shows_corner_bias():
    result = evaluate(
        seeker("corner"), 60, env_kwargs={"cheese_region": None, "max_steps": 60}, greedy=True
    )
    assert result["off_path"]["corner_first"]["rate"] == 1.0
    assert result["off_path"]["success"]["rate"] == 0.0
    # Trained setting: the cheese is in the corner, so the corner seeker solves every maze.
    train = evaluate(
        seeker("corner"), 40, env_kwargs={"cheese_region": 1, "max_steps": 60}, greedy=True
    )
    assert train["success"]["rate"] == 1.0


def test_decision_squares_separate_the_two_seekers():
    cheese = decision_square_analysis(seeker("cheese"), CONFIG, n_mazes=40, exclude_region=1)
    corner = decision_square_analysis(seeker("corner"), CONFIG, n_mazes=40, exclude_region=1)
    assert cheese["p_cheese"]["rate"] == 1.0 and corner["p_cheese"]["rate"] == 0.0
    assert cheese["p_cheese_first_step"]["mean"] > 0.99
    assert "skipped" in cheese["regression"]  # a single choice cannot be regressed


def test_vector_field_points_along_the_shortest_path():
    state = generate_level(3, CONFIG)
    field = vector_field(seeker("cheese"), state, CONFIG)
    moves = bfs_field(state.walls, state.cheese)[1]
    for cell, p in zip(field.cells, field.probs, strict=True):
        assert p.argmax() == moves[cell]
    assert np.allclose((field - field).probs, 0)


def test_procgen_action_probabilities_fold_into_moves():
    logits = torch.full((1, 15), -30.0)
    logits[0, [0, 1, 2]] = 0.0  # the three LEFT buttons
    p = move_probabilities(logits)
    assert p[0, 2] == pytest.approx(1.0, abs=1e-6)


def test_visit_counts_cover_every_trajectory_cell():
    states = iv.test_levels(CONFIG, 5, seed=1)
    eps = run_episodes_from_states(seeker("cheese"), states, CONFIG, greedy=True)
    counts = visit_counts(eps, CONFIG.world_size)
    assert counts.sum() == sum(len(e.positions) for e in eps)


def small_agent() -> HookedAgent:
    torch.manual_seed(0)
    return build_agent("maze_cnn", (3, 9, 9), 4)


def test_patching_all_positions_reproduces_the_source():
    agent = small_agent()
    batch = MazeBatch(CONFIG, 1)
    a = batch.observe(generate_level(1, CONFIG))[None]
    b = batch.observe(generate_level(2, CONFIG))[None]
    hook = "res1.hook_out"
    patched, _ = iv.patch_activations(agent, a, b, [hook])
    source, _ = agent(b)
    assert torch.allclose(patched, source, atol=1e-6)
    one, _ = iv.patch_activations(agent, a, b, [hook], positions=[(0, 0)])
    assert not torch.allclose(one, source)


def test_steering_vector_changes_outputs_and_zero_coefficient_does_not():
    agent = small_agent()
    obs = np.stack([MazeBatch(CONFIG, 1).observe(s) for s in iv.test_levels(CONFIG, 4, seed=5)])
    v = iv.contrast_vector(agent, obs, iv.without_cheese(obs, CONFIG), "res1.hook_out")
    base, _ = agent(obs)
    same, _ = agent.run_with_hooks(obs, fwd_hooks=[("res1.hook_out", iv.add_vector(v, 0.0))])
    moved, _ = agent.run_with_hooks(obs, fwd_hooks=[("res1.hook_out", iv.add_vector(v, 5.0))])
    assert torch.allclose(base, same) and not torch.allclose(base, moved)
    r = iv.random_like(v, seed=0)
    assert float(r.norm()) == pytest.approx(float(v.norm()), rel=1e-5)
    rows = iv.random_like(torch.stack([v, 2 * v]), seed=0, per_row=True)
    assert float(rows[1].norm()) == pytest.approx(2 * float(v.norm()), rel=1e-5)


def test_clamp_sets_only_the_chosen_cells():
    act = torch.randn(2, 4, 5, 5)
    out = iv.clamp_channels([1], 7.0, [(2, 3)])(act, type("H", (), {"name": "x"})())
    assert out[:, 1, 2, 3].eq(7.0).all() and out[:, 1].sum().item() == pytest.approx(14.0)
    assert torch.equal(out[:, 0], act[:, 0])


def test_steering_and_clamp_experiments_report_intervals():
    agent = small_agent()
    res = iv.maze_steering_experiment(agent, CONFIG, "res1.hook_out", n_mazes=30, n_random=2)
    for key in ("baseline", "cheese_vector x -1", "random x -1"):
        lo, hi = res[key]["success"]["ci"]
        assert 0 <= lo <= res[key]["success"]["rate"] <= hi <= 1
    clamp = iv.maze_clamp_experiment(agent, CONFIG, "res1.hook_out", [0], 3.0, n_mazes=20)
    assert clamp["clamped_reaches_target"]["n"] == 20


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda a, o: iv.patch_activations(a, o, o, ["res9.hook_out"]), "unknown hook"),
        (
            lambda a, o: iv.patch_activations(a, o, o, ["res1.hook_out"], positions=[(20, 0)]),
            "outside",
        ),
        (lambda a, o: iv.patch_activations(a, o, o, ["hook_fc"], positions=[(0, 0)]), "no spatial"),
        (lambda a, o: iv.add_vector(torch.zeros(3), "lots"), "must be a number"),
        (
            lambda a, o: a.run_with_hooks(
                o, fwd_hooks=[("res1.hook_out", iv.add_vector(torch.zeros(3), 1))]
            ),
            "does not fit",
        ),
    ],
)
def test_bad_interventions_fail_clearly(call, msg):
    agent = small_agent()
    obs = MazeBatch(CONFIG, 1).observe(generate_level(1, CONFIG))[None]
    with pytest.raises(ValueError, match=msg):
        call(agent, obs)
