"""Goal misgeneralization of a maze decision transformer (issue 29 item 6): the maze grid as the
DT's cells, the maze player on scripted policies of known behaviour (a corner-seeker scores
corner-first 1.0 where the cheese is off its path, a cheese-seeker success 1.0), and a tiny store,
DT and ``policylens dt maze-gm --json`` end to end."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from policylens.agents.dt import DTConfig, build_dt
from policylens.cli import app
from policylens.envs.maze import MOUSE, MazeConfig, bfs_field
from policylens.rollout.store import Store
from policylens.studies import maze_dt
from policylens.studies.maze_dt import Trace, dt_actor, dt_obs, dt_window, maze_states, play_mazes
from policylens.train.dt import DTTrainConfig, TrajectoryData, train_dt

runner = CliRunner()
ANYWHERE = MazeConfig(cheese_region=None, max_steps=40)


@pytest.fixture(autouse=True)
def _home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("POLICYLENS_HOME", str(tmp_path_factory.getbasetemp() / "home"))


def scripted(target: str):
    """A policy that walks the shortest path to the corner (then bumps into the wall above it)
    or to the cheese, as one-hot logits."""

    def act(traces: Sequence[Trace], obs: np.ndarray) -> torch.Tensor:
        logits = torch.full((len(traces), 4), -20.0)
        for i, (t, o) in enumerate(zip(traces, obs, strict=True)):
            goal = t.state.corner if target == "corner" else t.state.cheese
            _, moves = bfs_field(t.state.walls, goal)
            r, c = np.argwhere(o[MOUSE])[0]
            logits[i, max(int(moves[r, c]), 0)] = 20.0  # at the corner: up, into the wall
        return logits

    return act


def test_dt_obs_is_lossless_in_the_dt_cells():
    state = maze_states(ANYWHERE, 1, 3)[0]
    grid = np.stack([state.walls, np.zeros_like(state.walls), np.zeros_like(state.walls)])
    grid = grid.astype(np.uint8)
    grid[MOUSE][state.mouse] = 1
    cells = dt_obs(grid[None])
    assert cells.shape == (1, 9, 9, 3) and cells.dtype == np.uint8
    np.testing.assert_array_equal(np.moveaxis(cells[0], -1, 0), grid)
    # each channel's 0/1 picks a different column of the state embedding: the cell is recoverable
    model = build_dt(DTConfig(obs_shape=(9, 9, 3), num_actions=4, context=3, d_model=16,
                              n_heads=2, d_mlp=16, use_direction=False))  # fmt: skip
    other = grid.copy()
    other[2, 0, 0] = 1
    a, b = (model.embed_state(torch.from_numpy(dt_obs(g))) for g in (grid, other))
    assert not torch.allclose(a, b)


def test_a_corner_seeker_scores_corner_first_one_and_a_cheese_seeker_success_one():
    states = maze_states(ANYWHERE, 40, 100)
    corner_eps = [t.episode() for t in play_mazes(scripted("corner"), states, ANYWHERE)]
    cheese_eps = [t.episode() for t in play_mazes(scripted("cheese"), states, ANYWHERE)]
    corner, cheese = maze_dt.figures(corner_eps), maze_dt.figures(cheese_eps)
    off = corner["off_path"]
    assert off["corner_first"]["n"] > 0
    assert off["corner_first"]["rate"] == 1.0 and off["success"]["rate"] == 0.0
    # every maze with the cheese off the corner: the corner-seeker reaches the corner unless the
    # cheese lies on its way (then it eats it first)
    away = [e for e in corner_eps if e.cheese != e.corner]
    assert all(e.corner_first != e.success for e in away)
    assert cheese["success"]["rate"] == 1.0
    assert cheese["off_path"]["corner_first"]["rate"] == 0.0
    # the same mazes in both: the contrast of the two is exact where it must be
    d = maze_dt.contrasts({"dt_high": cheese, "ppo": corner, "dt_low": corner})
    assert d["dt_high_minus_ppo"]["off_path_corner_first"]["diff"] == -1.0
    assert d["dt_high_minus_ppo"]["off_path_corner_first"]["effect"]
    assert d["dt_high_minus_dt_low"]["success"]["diff"] > 0


def test_the_dt_window_counts_down_the_rtg_and_masks_the_start():
    states = maze_states(ANYWHERE, 3, 7)
    seen: list = []

    def act(traces, obs):
        seen.append(dt_window(traces, 4))
        return scripted("cheese")(traces, obs)

    traces = play_mazes(act, states, ANYWHERE, target_rtg=10.0)
    first, later = seen[0], seen[5]
    assert first.mask[:, :3].sum() == 0 and first.mask[:, 3].all()
    assert later.mask.all() and (later.timesteps[:, -1] == 5).all()
    assert torch.all(later.rtg == 10.0)  # no reward before the cheese
    for t in traces:
        assert t.terminated and t.rtg[0] == 10.0 and len(t.rtg) == len(t.actions)
        assert t.positions[-1] == t.state.cheese


@pytest.fixture(scope="module")
def tiny_dt(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("maze_dt")
    mp = pytest.MonkeyPatch()
    mp.setenv("POLICYLENS_HOME", str(tmp_path_factory.getbasetemp() / "home"))
    request.addfinalizer(mp.undo)
    summary = maze_dt.collect_maze_trajectories(
        root / "store", episodes=6, seed=1, temperatures=((1.0, 1.0), (32.0, 1.0))
    )
    config = DTTrainConfig(data=str(root / "store"), context=3, d_model=16, n_heads=2, d_mlp=16,
                           use_direction=False, total_steps=4, batch_size=8, log_every=2,
                           checkpoints=1)  # fmt: skip
    run = train_dt(config, root / "dt", progress=False)
    return summary, run


def test_the_store_is_a_trajectory_store_the_trainer_reads(tiny_dt):
    summary, run = tiny_dt
    assert summary.episodes == 6 and [p["episodes"] for p in summary.policies] == [3, 3]
    store = Store(summary.path)
    meta = store.meta
    assert meta["kind"] == "trajectories" and meta["obs_shape"] == [9, 9, 3]
    assert meta["env_kwargs"]["cheese_region"] == 1
    rtg, rewards, episode = store["rtg"][:], store["rewards"][:], store["episode"][:]
    for e in np.unique(episode):
        rows = episode == e
        assert rtg[rows][0] == pytest.approx(rewards[rows].sum())
        assert store["done"][:][rows][-1]
    # cheese in the corner, as in the agent's training
    np.testing.assert_array_equal(store["labels/cheese_pos"][:], store["labels/corner_pos"][:])
    data = TrajectoryData(summary.path)
    assert data.obs.shape[1:] == (9, 9, 3) and int(data.obs.max()) <= 1
    assert run.done and run.config["agent"]["obs_shape"] == [9, 9, 3]


def test_maze_gm_command_json(tiny_dt):
    _, run = tiny_dt
    r = runner.invoke(app, ["dt", "maze-gm", str(run.path), "--episodes", "6", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["env_kwargs"]["cheese_region"] is None
    [row] = out["runs"]
    assert row["high_rtg"] == 10.0 or row["high_rtg"] == 0.0  # the store's largest return
    assert row["low_rtg"] == 0.0
    for c in maze_dt.CONDITIONS:
        assert row[c]["success"]["n"] == 6 == out["pooled"][c]["success"]["n"]
    k = row["contrasts"]["dt_high_minus_ppo"]["corner_first"]
    assert k["diff"] == pytest.approx(
        row["dt_high"]["corner_first"]["rate"] - row["ppo"]["corner_first"]["rate"]
    )
    assert "dt_high_minus_ppo/corner_first" in out["pooled"]["across_seeds"]


def test_maze_gm_refuses_a_run_of_another_world(tiny_dt, tmp_path):
    r = runner.invoke(app, ["dt", "maze-gm", "zoo:maze-corner", "--episodes", "2"])
    assert r.exit_code == 2 and "not a decision-transformer run" in r.output


def test_dt_actor_plays_a_tiny_dt(tiny_dt):
    _, run = tiny_dt
    from policylens.train.dt import load_run_dt

    states = maze_states(ANYWHERE, 2, 0)
    traces = play_mazes(dt_actor(load_run_dt(run)), states, ANYWHERE, seed=3, target_rtg=10.0)
    again = play_mazes(dt_actor(load_run_dt(run)), states, ANYWHERE, seed=3, target_rtg=10.0)
    assert [t.actions for t in traces] == [t.actions for t in again]


def test_maze_gm_ppo_temperature_controls_and_table(tiny_dt, monkeypatch):
    from policylens.commands.framework import console

    monkeypatch.setattr(console, "width", 250)  # the table's labels untruncated
    _, run = tiny_dt
    args = ["dt", "maze-gm", str(run.path), "--episodes", "4", "--ppo-temperature", "4"]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["runs"][0]["ppo_T4"]["success"]["n"] == 4
    assert "dt_high_minus_ppo_T4" in out["pooled"]["contrasts"]
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "ppo_T4" in table.output and "dt_high - ppo" in table.output
    bad = runner.invoke(app, [*args[:-1], "0"])
    assert bad.exit_code == 2 and "ppo_temperature" in bad.output


def test_a_maze_dt_ships_in_the_zoo_with_its_own_headline(tiny_dt, tmp_path, monkeypatch):
    """A maze DT's zoo headline is its success at the data's best RTG on the trained
    distribution and with the cheese anywhere: the same count as its episodes played by hand
    (a maze episode ends early only at the cheese)."""
    from policylens import load_decision_transformer
    from policylens.agents import pretrained
    from policylens.studies.zoo import ExportOptions, export
    from policylens.train.dt import load_run_dt

    _, run = tiny_dt
    monkeypatch.setattr(pretrained, "ZOO", tmp_path / "zoo")
    options = ExportOptions(name="tiny-maze-dt", command="policylens train dt ...",
                            description="A tiny maze DT.", headline={"episodes": 5})  # fmt: skip
    entry = export(run, tmp_path / "zoo" / "tiny-maze-dt", options)
    metrics = entry.results["metrics"]
    assert list(metrics) == ["success_trained", "success_cheese_anywhere",
                             "corner_first_cheese_anywhere"]  # fmt: skip
    trained = MazeConfig.from_kwargs(run.config["trainer"]["env_kwargs"])
    played = play_mazes(dt_actor(load_run_dt(run)), maze_states(trained, 5, 50_000), trained,
                        50_000, target_rtg=10.0)  # fmt: skip
    assert metrics["success_trained"]["n"] == 5
    assert metrics["success_trained"]["rate"] == pytest.approx(
        np.mean([t.terminated for t in played])
    )
    model = load_decision_transformer("zoo:tiny-maze-dt")
    for p, q in zip(load_run_dt(run).parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)
    for command in ("eval", "calibrate"):  # they play MiniGrid DTs
        r = runner.invoke(app, ["dt", command, "zoo:tiny-maze-dt", "--episodes", "1"])
        assert r.exit_code == 2 and "play it with `policylens dt maze-gm`" in r.output


def test_the_explorer_refuses_to_play_a_maze_dt_in_one_sentence(tiny_dt):
    from policylens.explorer import Explorer

    _, run = tiny_dt
    explorer = Explorer(run.path)
    try:
        with pytest.raises(ValueError, match="play it with `policylens dt maze-gm`"):
            explorer.dt_rollout(explorer.step(None), 0, 10.0, False)
    finally:
        explorer.jobs.close()
