"""Rollout collection and the chunked on-disk store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from policylens.agents import build_agent
from policylens.rollout import CollectOptions, StoreWriter, collect, open_store, write_store
from policylens.rollout.store import MANIFEST

MAZE = "policylens/Maze-v0"
SMALL = {"cheese_region": None, "max_steps": 20}


@pytest.fixture(scope="module")
def agent():
    return build_agent("maze_cnn", (3, 9, 9), 4, seed=3)


@pytest.fixture(scope="module")
def maze_store(agent, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "maze"
    torch.set_num_threads(1)
    options = CollectOptions(
        episodes=20, hooks=["hook_conv", "hook_out"], seed=5, num_envs=8, chunk_size=64
    )
    return collect(agent, MAZE, SMALL, out, options)


# ------------------------------------------------------------------------------ collection
def test_episodes_are_whole_and_counted_exactly(maze_store):
    s = maze_store
    episode, step = s["episode"][:], s["step"][:]
    ended = s["terminated"][:] | s["truncated"][:]
    assert sorted(np.unique(episode)) == list(range(20)) and s.meta["episodes"] == 20
    for e in range(20):
        rows = np.nonzero(episode == e)[0]
        assert list(step[rows]) == list(range(len(rows)))  # steps 0..L-1, none missing
        assert ended[rows[-1]] and not ended[rows[:-1]].any()  # ends exactly once, at its end
        assert len(rows) <= SMALL["max_steps"]
        assert len(np.unique(s["labels/level_seed"][rows])) == 1
    assert len(s.chunk_rows) > 2  # streamed in several chunks


def test_labels_describe_the_stored_observation(maze_store):
    s = maze_store
    obs, mouse, cheese = s["obs"][:], s["labels/mouse_pos"][:], s["labels/cheese_pos"][:]
    idx = np.arange(len(s))
    assert obs[idx, 1, mouse[:, 0], mouse[:, 1]].all()  # mouse channel at the mouse label
    assert obs[idx, 2, cheese[:, 0], cheese[:, 1]].all()
    assert obs[:, 1].sum(axis=(1, 2)).max() == 1
    success = s["labels/success"][:]
    assert (s["rewards"][:] > 0).sum() == s["terminated"][:].sum()
    assert not success.any()  # a stored obs is never the final one (the cheese is eaten then)
    assert set(s.labels) >= {"dist_to_cheese", "move_to_cheese", "at_decision_square", "level_seed"}


def test_activations_logits_values_match_the_agent(agent, maze_store):
    s = maze_store
    rows = np.array([0, 5, 63, 64, 65, len(s) - 1])  # across chunk boundaries
    with torch.no_grad():
        (logits, values), cache = agent.run_with_cache(
            s["obs"][rows], names=["hook_conv", "hook_out"]
        )
    np.testing.assert_allclose(s["logits"][rows], logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(s["values"][rows], values.numpy(), atol=1e-5)
    conv = s["activations/hook_conv"]
    assert conv.shape == (len(s), 16, 9, 9) and conv.dtype == np.float32
    np.testing.assert_allclose(conv[rows], cache["hook_conv"].numpy(), atol=1e-5)
    np.testing.assert_allclose(
        s["activations/hook_out"][rows], cache["hook_out"].numpy(), atol=1e-5
    )


def test_collection_is_seeded(agent, tmp_path, maze_store):
    five, six = (
        CollectOptions(steps=100, seed=5, num_envs=8),
        CollectOptions(steps=100, seed=6, num_envs=8),
    )
    a = collect(agent, MAZE, SMALL, tmp_path / "a", five)
    b = collect(agent, MAZE, SMALL, tmp_path / "b", five)
    c = collect(agent, MAZE, SMALL, tmp_path / "c", six)
    assert len(a) == 100 and a.meta["steps_requested"] == 100
    for name in ("obs", "actions", "labels/level_seed"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    assert not np.array_equal(a["labels/level_seed"][:], c["labels/level_seed"][:])
    # The same seed in episode mode gives the same first rows as the module's store.
    np.testing.assert_array_equal(a["actions"][:8], maze_store["actions"][:8])


def test_chess_world_labels_are_converted_and_strings_skipped(tmp_path):
    agent = build_agent("mlp", (75,), 24, head="q")
    options = CollectOptions(steps=50, num_envs=4, hooks=["layers.0.hook_act"])
    s = collect(agent, "policylens/RookEndgame-v0", None, tmp_path / "c", options)
    assert len(s) == 50
    assert s["labels/white_king_pos"].shape == (50, 2)
    assert s["labels/attacked"].shape == (50, 25)
    assert "outcome" in s.meta["skipped_labels"] and "outcome" not in s.labels
    assert s["activations/layers.0.hook_act"].shape[0] == 50


def test_bad_collection_arguments(agent, tmp_path):
    with pytest.raises(ValueError, match="exactly one of episodes and steps"):
        CollectOptions()
    with pytest.raises(ValueError, match="CollectOptions.num_envs must be an integer >= 1"):
        CollectOptions(steps=10, num_envs=0)
    with pytest.raises(ValueError, match="CollectOptions.activation_dtype must be"):
        CollectOptions(steps=10, activation_dtype="bfloat16")
    with pytest.raises(ValueError, match="Unknown hook 'hook_cnov'.*'hook_conv'"):
        collect(agent, MAZE, SMALL, tmp_path / "x", CollectOptions(steps=10, hooks=["hook_cnov"]))
    with pytest.raises(ValueError, match="observations of shape"):
        world = {"world_size": 11, "maze_sizes": (5, 11)}
        collect(agent, MAZE, world, tmp_path / "x", CollectOptions(steps=5))


# ------------------------------------------------------------------------------ store
def test_lazy_reads_match_numpy_indexing(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.standard_normal((1000, 3, 2)).astype(np.float32)
    ids = np.arange(1000)
    s = write_store(tmp_path / "s", ({"x": full[i : i + 37], "id": ids[i : i + 37]}
                                     for i in range(0, 1000, 37)), chunk_size=128)  # fmt: skip
    x = s["x"]
    assert len(s.chunk_rows) == 8 and x.shape == (1000, 3, 2)
    fancy = rng.integers(0, 1000, 50)
    mask = rng.random(1000) < 0.1
    for key in (5, -1, slice(None), slice(120, 260), slice(990, 2000), slice(3, 900, 7), fancy,
                mask, (slice(100, 300), 1), (7, 2, 1), np.array([], dtype=int)):  # fmt: skip
        np.testing.assert_array_equal(x[key], full[key])
    with pytest.raises(IndexError):
        x[1000]
    got = np.concatenate([b["id"] for b in s.iter_batches(["id"], batch_size=300)])
    np.testing.assert_array_equal(got, ids)
    picked = np.concatenate([b["x"] for b in s.iter_batches(["x"], 7, rows=fancy)])
    np.testing.assert_array_equal(picked, full[fancy])


def test_writer_streams_chunks_and_manifest_comes_last(tmp_path):
    path = tmp_path / "s"
    w = StoreWriter(path, chunk_size=100)
    for _ in range(25):
        w.append({"a": np.ones((10, 4), np.float32)})
    assert len(list((path / "a").glob("*.npy"))) == 2  # flushed while appending
    assert w._pending_rows == 50 and not (path / MANIFEST).exists()
    with pytest.raises(ValueError, match="incomplete \\(no manifest\\).*collect again"):
        open_store(path)
    w.close({"note": "done"})
    s = open_store(path)
    assert len(s) == 250 and s.meta == {"note": "done"} and s.chunk_rows.tolist() == [100, 100, 50]


def test_interrupted_collection_is_refused_and_can_be_redone(agent, tmp_path, monkeypatch):
    out = tmp_path / "s"
    calls = {"n": 0}
    real_step = None

    def boom(self, actions):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_step(self, actions)

    from policylens.envs.maze import MazeVecEnv

    real_step = MazeVecEnv.step
    monkeypatch.setattr(MazeVecEnv, "step", boom)
    with pytest.raises(KeyboardInterrupt):
        collect(agent, MAZE, SMALL, out, CollectOptions(steps=1000, num_envs=8, chunk_size=8))
    assert any(out.rglob("*.npy")) and not (out / MANIFEST).exists()
    with pytest.raises(ValueError, match="is incomplete \\(no manifest\\): the collection was"):
        open_store(out)
    monkeypatch.setattr(MazeVecEnv, "step", real_step)
    s = collect(agent, MAZE, SMALL, out, CollectOptions(steps=40, num_envs=8, chunk_size=8))
    assert len(s) == 40  # the leftover of the interrupted run was cleared


def test_store_refuses_to_clobber(tmp_path):
    write_store(tmp_path / "s", {"a": np.zeros(3)})
    with pytest.raises(ValueError, match="already holds a complete store.*overwrite"):
        write_store(tmp_path / "s", {"a": np.zeros(3)})
    assert len(write_store(tmp_path / "s", {"a": np.zeros(5)}, overwrite=True)) == 5
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a policylens store"):
        write_store(tmp_path / "mine", {"a": np.zeros(3)}, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_store_schema_errors(tmp_path):
    w = StoreWriter(tmp_path / "s")
    w.append({"a": np.zeros((2, 3)), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        w.append({"a": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="rows of shape \\(4,\\)"):
        w.append({"a": np.zeros((2, 4)), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="same number of rows"):
        w.append({"a": np.zeros((2, 3)), "b": np.zeros(3)})
    s = w.close()
    with pytest.raises(ValueError, match="Unknown array .* 'bb'.*Did you mean 'b'"):
        s["bb"]


# ------------------------------------------------------------------------------ CLI
def make_run(path, agent, env_kwargs):
    from policylens.runs import Run

    run = Run.create(path, {"kind": "ppo", "agent": agent.config,
                            "trainer": {"env_id": MAZE, "env_kwargs": env_kwargs}})  # fmt: skip
    run.save_checkpoint(agent, 0)
    return run


def test_cli_collect_json(agent, tmp_path):
    from policylens.cli import app

    make_run(tmp_path / "run", agent, {"max_steps": 20})
    result = CliRunner().invoke(app, [
        "collect", str(tmp_path / "run"), "--episodes", "6", "--hook", "hook_out",
        "--env-kwarg", "cheese_region=null", "--num-envs", "4", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 6 and summary["hooks"] == ["hook_out"]
    s = open_store(summary["store"])
    assert s.meta["env_kwargs"] == {"max_steps": 20, "cheese_region": None}
    assert s.meta["checkpoint_step"] == 0 and len(s) == summary["rows"]
    bad = CliRunner().invoke(app, ["collect", str(tmp_path / "run"), "--hook", "nope"])
    assert bad.exit_code == 2 and "Unknown hook 'nope'" in bad.output
