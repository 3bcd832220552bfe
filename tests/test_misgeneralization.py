"""Maze behaviour analyses, interventions and the report, checked with scripted agents whose
answers are known: a cheese seeker (BFS to the cheese) and a corner seeker (BFS to the corner).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch import nn

from policylens import worlds
from policylens.agents import HookedAgent, build_agent
from policylens.envs.maze import MazeBatch, MazeConfig, bfs_field, generate_level
from policylens.lenses import interventions as iv
from policylens.rollout.stats import wilson
from policylens.studies.maze import steering as st
from policylens.studies.maze.behaviour import evaluate, visit_counts
from policylens.studies.maze.decisions import decision_square_analysis
from policylens.studies.maze.vector_fields import move_probabilities, vector_field
from policylens.worlds.maze import run_episodes_from_states

CONFIG = MazeConfig(max_steps=60)
MAZE = worlds.get("maze").env_id


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
        seeker("cheese"), 60, MAZE, {"cheese_region": None, "max_steps": 60}, greedy=True
    ).summary
    assert result["success"]["rate"] == 1.0
    assert result["path_ratio"] == pytest.approx(1.0)
    assert result["off_path"]["corner_first"]["rate"] == 0.0


def test_corner_seeker_shows_corner_bias():
    result = evaluate(
        seeker("corner"), 60, MAZE, {"cheese_region": None, "max_steps": 60}, greedy=True
    ).summary
    assert result["off_path"]["corner_first"]["rate"] == 1.0
    assert result["off_path"]["success"]["rate"] == 0.0
    # Trained setting: the cheese is in the corner, so the corner seeker solves every maze.
    train = evaluate(
        seeker("corner"), 40, MAZE, {"cheese_region": 1, "max_steps": 60}, greedy=True
    ).summary
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


def expected_probs(moves: np.ndarray, cells) -> np.ndarray:
    """A seeker's move probabilities from its BFS moves alone: logits +-20 make a chosen move
    certain (to ~1e-17); with no move (the mouse on the target) all four logits tie at 1/4."""
    out = np.full((len(cells), 4), 0.25)
    for i, cell in enumerate(cells):
        if moves[cell] >= 0:
            out[i] = np.eye(4)[moves[cell]]
    return out


def test_vector_field_difference_is_what_changes_between_two_agents():
    state = generate_level(3, CONFIG)
    state = state.copy(cheese=state.start)  # away from the top-right corner, where it spawns
    cheese, corner = (vector_field(seeker(goal), state, CONFIG) for goal in ("cheese", "corner"))
    rows, cols = np.nonzero(~state.walls)
    top_right = (int(rows.min()), int(cols[rows == rows.min()].max()))
    want_cheese = expected_probs(bfs_field(state.walls, state.cheese)[1], cheese.cells)
    want_corner = expected_probs(bfs_field(state.walls, top_right)[1], corner.cells)
    assert np.allclose(cheese.probs, want_cheese, atol=1e-6)
    assert np.allclose(corner.probs, want_corner, atol=1e-6)
    diff = cheese - corner
    assert diff.cells == cheese.cells == corner.cells
    assert diff.probs.shape == (len(cheese.cells), 4)
    assert np.allclose(diff.probs, want_cheese - want_corner, atol=1e-6)
    # The two goals disagree somewhere (+1 at the cheese move, -1 at the corner move) and agree
    # somewhere (0 everywhere): the difference is neither all zero nor all nonzero.
    disagree = np.abs(diff.probs).max(axis=1) > 0.5
    assert disagree.any() and not disagree.all()
    assert np.allclose(diff.probs.sum(axis=1), 0, atol=1e-6)
    other = vector_field(seeker("cheese"), generate_level(4, CONFIG), CONFIG)
    with pytest.raises(ValueError, match="different mazes"):
        cheese - other


def test_procgen_action_probabilities_fold_into_moves():
    logits = torch.full((1, 15), -30.0)
    logits[0, [0, 1, 2]] = 0.0  # the three LEFT buttons
    p = move_probabilities(logits)
    assert p[0, 2] == pytest.approx(1.0, abs=1e-6)


def test_visit_counts_cover_every_trajectory_cell():
    states = st.test_levels(CONFIG, 5, seed=1)
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
    obs = np.stack([MazeBatch(CONFIG, 1).observe(s) for s in st.test_levels(CONFIG, 4, seed=5)])
    v = iv.contrast_vector(agent, obs, st.without_cheese(obs, CONFIG), "res1.hook_out")
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
    res = st.maze_steering_experiment(
        agent, CONFIG, "res1.hook_out", coefs=(0.0, -1.0), n_mazes=30, n_random=2
    )
    # Adding 0 x the vector leaves every activation bit-identical; with the same mazes and the
    # same sampling seed, the episodes (so every count) must be those of the baseline.
    assert res["cheese_vector x 0"] == res["baseline"]
    assert res["random x 0"]["per_vector_success"] == [res["baseline"]["success"]["rate"]] * 2
    for key, n in (("baseline", 30), ("cheese_vector x -1", 30), ("random x -1", 60)):
        success = res[key]["success"]
        lo, hi = success["ci"]
        assert success["n"] == n and res[key]["corner_first"]["n"] == n  # all off the path
        assert 0 <= lo <= success["rate"] <= hi <= 1 and lo < hi
        assert round(success["rate"] * n) == pytest.approx(success["rate"] * n)  # k / n
    assert len(res["random x -1"]["per_vector_success"]) == 2
    assert np.mean(res["random x -1"]["per_vector_success"]) == pytest.approx(
        res["random x -1"]["success"]["rate"]
    )
    clamp = st.maze_clamp_experiment(agent, CONFIG, "res1.hook_out", [0], 3.0, n_mazes=20)
    assert clamp["clamped_reaches_target"]["n"] == clamp["baseline_reaches_target"]["n"] == 20


class Retargetable(nn.Module):
    """Heads for the brightest cell of the cheese channel, or for the top-right corner when that
    channel is empty. Its input passes through ``eye`` (hook ``eye.hook_out``), so a steering
    vector or a clamp there edits what it sees; every batch it sees is kept in ``seen``."""

    def __init__(self):
        super().__init__()
        self.eye = nn.Identity()
        self.scale = nn.Parameter(torch.tensor(20.0))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor):
        x = self.eye(x)
        self.seen.append(x.detach().clone())
        logits = torch.full((x.shape[0], 4), -1.0)
        for b in range(x.shape[0]):
            walls = x[b, 0].numpy() > 0.5
            mouse = np.unravel_index(int(x[b, 1].argmax()), walls.shape)
            if x[b, 2].max() > 0.5:
                target = np.unravel_index(int(x[b, 2].argmax()), walls.shape)
            else:
                rows, cols = np.nonzero(~walls)
                target = (int(rows.min()), int(cols[rows == rows.min()].max()))
            move = bfs_field(walls, target)[1][mouse]
            if move >= 0:
                logits[b, move] = 1.0
        return logits * self.scale, torch.zeros(x.shape[0])


def retargetable() -> HookedAgent:
    return HookedAgent.from_module(Retargetable(), (3, 9, 9), 4, obs_kind="grid")


def wilson_at_one(n: int) -> list[float]:
    """Wilson 95% interval of n successes in n, by hand: centre - half = n / (n + z^2)."""
    return [n / (n + NormalDist().inv_cdf(0.975) ** 2), 1.0]


def test_steering_a_scripted_agent_gives_known_rates():
    # At the input, the cheese vector is the cheese channel (norm 1); x -1 erases the cheese, so
    # the agent walks to the corner, which (cheese off the corner path) it reaches first. Random
    # vectors of norm 1 spread over 243 inputs move no input across 0.5: behaviour unchanged.
    n = 30
    res = st.maze_steering_experiment(
        retargetable(), CONFIG, "eye.hook_out", coefs=(0.0, 1.0, -1.0), n_mazes=n, n_random=2
    )
    assert res["n_mazes"] == n
    assert res["vector_norm"]["mean"] == pytest.approx(1.0) and res["vector_norm"]["n"] == n
    base = res["baseline"]
    assert base["success"]["rate"] == 1.0 and base["success"]["n"] == n
    assert base["success"]["ci"] == pytest.approx(wilson_at_one(n), abs=1e-6)
    assert base["corner_first"]["rate"] == 0.0 and base["corner_first"]["n"] == n
    # x 0 adds nothing; x 1 doubles the cheese, the same brightest cell: both are the baseline.
    assert res["cheese_vector x 0"] == base and res["cheese_vector x 1"] == base
    erased = res["cheese_vector x -1"]
    assert erased["corner_first"]["rate"] == 1.0 and erased["corner_first"]["n"] == n
    assert erased["corner_first"]["ci"] == pytest.approx(wilson_at_one(n), abs=1e-6)
    rand = res["random x -1"]
    assert rand["success"]["rate"] == 1.0 and rand["success"]["n"] == 2 * n
    assert rand["corner_first"]["rate"] == 0.0 and rand["per_vector_success"] == [1.0, 1.0]


def test_clamping_a_scripted_agent_retargets_it_exactly_where_the_maze_allows():
    # Clamping the cheese channel to 3 at the target cell (and 0 elsewhere) hides the real
    # cheese and shows one at the target: the agent walks there unless the real cheese lies on
    # the way (the episode ends there). Without the clamp it reaches the target only if it lies
    # on the way to the cheese. Counted from BFS distances in the mazes the agent was shown.
    n, agent = 25, retargetable()
    res = st.maze_clamp_experiment(agent, CONFIG, "eye.hook_out", [2], 3.0, n_mazes=n)
    first = [x for x in agent.net.seen if x.shape[0] == n]
    plain = next(x for x in first if x[:, 2].max() == 1.0)  # first step, no clamp
    clamped = next(x for x in first if x[:, 2].max() == 3.0)  # first step, clamped
    assert torch.equal(plain[:, :2], clamped[:, :2])  # same mazes, same start, same order
    on_way_to_cheese = reaches_clamped = 0
    for b in range(n):
        walls = plain[b, 0].numpy() > 0.5
        cells = [np.unravel_index(int(x[b, c].argmax()), walls.shape) for x, c in
                 ((plain, 1), (plain, 2), (clamped, 2))]  # fmt: skip
        start, cheese, target = (tuple(int(v) for v in p) for p in cells)
        to_cheese = bfs_field(walls, cheese)[0]
        to_target = bfs_field(walls, target)[0]
        on_way_to_cheese += to_cheese[start] == to_target[start] + to_cheese[target]
        cheese_in_way = to_target[start] == to_cheese[start] + to_target[cheese]
        reaches_clamped += not cheese_in_way and to_target[start] <= res["max_steps"]
    assert res["baseline_reaches_target"]["n"] == res["clamped_reaches_target"]["n"] == n
    assert res["baseline_reaches_target"]["rate"] == pytest.approx(on_way_to_cheese / n)
    assert res["clamped_reaches_target"]["rate"] == pytest.approx(reaches_clamped / n)
    assert reaches_clamped > on_way_to_cheese  # the clamp does retarget


@pytest.mark.parametrize(
    "call, msg",
    [
        (
            lambda a, o: iv.patch_activations(a, o, o, ["res9.hook_out"]),
            "Unknown hook .res9.hook_out.",
        ),
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
