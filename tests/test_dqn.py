"""Tests of the DQN trainer (policylens.train.dqn) and the rook endgame commands."""

from __future__ import annotations

import json
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from policylens.agents import HookedAgent
from policylens.cli import app
from policylens.envs.chess import OUTCOMES
from policylens.train.dqn import (
    DQNConfig,
    ReplayBuffer,
    evaluate_q_agent,
    linear_schedule,
    td_targets,
    train_dqn,
)
from policylens.worlds.rook import ENV_ID as ROOK
from policylens.worlds.rook import ChessRecipe

CHESS = "policylens/RookEndgame-v0"


def tiny_config(**overrides) -> DQNConfig:
    """A run of a few thousand steps with a small network (a second or two)."""
    options = dict(
        env_id=ROOK,
        arch_kwargs={"hidden": [32], "activation": "relu"},
        total_steps=3_200,
        num_envs=8,
        buffer_size=1_000,
        batch_size=32,
        learning_starts=500,
        train_frequency=8,
        target_update=400,
        log_every=400,
        resume_every=1,
        checkpoints=3,
        reward_scale=0.01,
        n_step=2,
    )
    options.update(overrides)
    return DQNConfig(**options)


# -- pieces -------------------------------------------------------------------------------------
def test_linear_schedule():
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 100, 100) == pytest.approx(0.1)
    assert linear_schedule(1.0, 0.1, 100, 10_000) == pytest.approx(0.1)
    assert linear_schedule(1.0, 0.1, 0, 0) == 0.1  # no exploration phase


def test_double_dqn_targets_match_a_hand_calculation():
    returns = torch.tensor([1.0, -0.5, 2.0])
    discounts = torch.tensor([0.9, 0.81, 0.0])  # the last transition terminated
    q_target = torch.tensor([[1.0, 5.0, 3.0], [2.0, 0.0, -1.0], [7.0, 7.0, 7.0]])
    q_online = torch.tensor([[4.0, 0.0, 1.0], [0.0, 0.0, 9.0], [1.0, 2.0, 3.0]])
    # Double DQN: a* = argmax online = (0, 2, 2); values from the target: (1, -1, 7).
    double = td_targets(returns, discounts, q_target, q_online)
    assert double.tolist() == pytest.approx([1.0 + 0.9 * 1.0, -0.5 + 0.81 * -1.0, 2.0])
    # DQN: max over the target: (5, 2, 7).
    vanilla = td_targets(returns, discounts, q_target)
    assert vanilla.tolist() == pytest.approx([1.0 + 0.9 * 5.0, -0.5 + 0.81 * 2.0, 2.0])
    # Masks: row 0 may only take actions 1, 2 (online argmax -> 2, target value 3); row 1 has no
    # legal action and falls back to all actions; row 2 only action 0.
    masks = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    masked = td_targets(returns, discounts, q_target, q_online, masks)
    assert masked.tolist() == pytest.approx([1.0 + 0.9 * 3.0, -0.5 + 0.81 * -1.0, 2.0])
    masked_vanilla = td_targets(returns, discounts, q_target, None, masks)
    assert masked_vanilla.tolist() == pytest.approx([1.0 + 0.9 * 5.0, -0.5 + 0.81 * 2.0, 2.0])


def _add(buf: ReplayBuffer, t: int, terminated=(False, False), truncated=(False, False)):
    """Step ``t``: env e's obs is 10*t + e, its reward t + 100*e."""
    obs = np.array([[10 * t], [10 * t + 1]], dtype=np.int64)
    term, trunc = np.array(terminated), np.array(truncated)
    buf.add(obs, np.array([t, t]), np.array([t, t + 100.0]), obs + 1000, term, term | trunc)


def test_replay_buffer_wraps_around_and_keeps_time_order():
    buf = ReplayBuffer(rows=4, num_envs=2, obs_shape=(1,), obs_dtype=np.int64, num_actions=3)
    for t in range(6):
        _add(buf, t)
    assert (buf.pos, buf.filled, len(buf)) == (2, 4, 8)
    # Rows 0 and 1 were overwritten by steps 4 and 5; steps 2..5 remain.
    assert buf.obs[:, 0, 0].tolist() == [40, 50, 20, 30]
    gen = torch.Generator().manual_seed(0)
    b = buf.sample(500, n_step=1, gamma=0.9, generator=gen)
    assert set(b.obs[:, 0].tolist()) == {20, 21, 30, 31, 40, 41, 50, 51}
    np.testing.assert_array_equal(b.next_obs, b.obs + 1000)
    np.testing.assert_allclose(b.discounts, 0.9)
    # With n = 3 a window must fit in the stored steps: only starts at steps 2 and 3 qualify.
    b = buf.sample(500, n_step=3, gamma=0.5, generator=gen)
    starts = set((b.obs[:, 0] // 10).tolist())
    assert starts == {2, 3}
    env = b.obs[:, 0] % 10
    t0 = b.obs[:, 0] // 10
    expected = sum(0.5**k * (t0 + k + 100 * env) for k in range(3))
    np.testing.assert_allclose(b.returns, expected)
    np.testing.assert_array_equal(b.next_obs[:, 0], b.obs[:, 0] + 20 + 1000)  # bootstrap at t+2
    np.testing.assert_allclose(b.discounts, 0.5**3)


def test_n_step_returns_stop_at_episode_ends():
    buf = ReplayBuffer(rows=8, num_envs=2, obs_shape=(1,), obs_dtype=np.int64, num_actions=3)
    _add(buf, 0)
    _add(buf, 1, terminated=(True, False), truncated=(False, True))  # env 0 ends, env 1 truncated
    _add(buf, 2)
    _add(buf, 3)
    gen = torch.Generator().manual_seed(1)
    b = buf.sample(400, n_step=3, gamma=0.5, generator=gen)
    for obs, ret, nxt, disc in zip(
        b.obs[:, 0], b.returns, b.next_obs[:, 0], b.discounts, strict=True
    ):
        t, e = divmod(int(obs), 10)
        if t == 0:  # the window meets the episode end at step 1
            assert ret == pytest.approx(0 + 100 * e + 0.5 * (1 + 100 * e))
            assert nxt == 10 + e + 1000  # the final observation of step 1
            assert disc == pytest.approx(0.0 if e == 0 else 0.25)  # terminated vs truncated
        else:
            assert t == 1
            assert ret == pytest.approx(1 + 100 * e)
            assert disc == pytest.approx(0.0 if e == 0 else 0.5)


def test_replay_buffer_state_round_trip():
    buf = ReplayBuffer(rows=4, num_envs=2, obs_shape=(1,), obs_dtype=np.int64, num_actions=3)
    for t in range(3):
        _add(buf, t)
    other = ReplayBuffer(rows=4, num_envs=2, obs_shape=(1,), obs_dtype=np.int64, num_actions=3)
    other.load_state_dict(buf.state_dict())
    assert (other.pos, other.filled) == (3, 3)
    for name in ("obs", "next_obs", "actions", "rewards", "terminated", "done"):
        np.testing.assert_array_equal(getattr(other, name), getattr(buf, name))
    small = ReplayBuffer(rows=2, num_envs=2, obs_shape=(1,), obs_dtype=np.int64, num_actions=3)
    with pytest.raises(ValueError, match="does not fit"):
        small.load_state_dict(buf.state_dict())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_envs": 0}, "num_envs must be >= 1"),
        ({"gamma": 1.5}, "gamma must lie in"),
        ({"buffer_size": 16, "num_envs": 16, "n_step": 3}, "must hold more than n_step"),
        ({"arch_kwargs": {"head": "policy_value"}}, "head must be 'q'"),
        ({"checkpoint_spacing": "cubic"}, "checkpoint_spacing"),
        ({"tau": 0.0}, "tau must lie in"),
        ({"total_steps": 4, "num_envs": 8}, "smaller than one vector step"),
    ],
)
def test_bad_config_is_one_clear_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        DQNConfig(**{"env_id": ROOK, **options})


def test_architecture_without_q_head_and_masking_without_labels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Q head.*mlp"):
        train_dqn(tiny_config(arch="maze_cnn", arch_kwargs={}), tmp_path / "a", progress=False)
    maze = tiny_config(env_id="policylens/Maze-v0", mask_illegal=True)
    with pytest.raises(ValueError, match="legal_actions"):
        train_dqn(maze, tmp_path / "b", progress=False)


def test_from_module_wraps_a_plain_q_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(75, 16), nn.ReLU(), nn.Linear(16, 24))
    agent = HookedAgent.from_module(net, (75,), 24, output="q")
    obs = torch.rand(5, 75)
    (logits, value), cache = agent.run_with_cache(obs)
    torch.testing.assert_close(logits, net(obs))
    torch.testing.assert_close(value, net(obs).max(dim=1).values)
    assert agent.act(obs, greedy=True).tolist() == net(obs).argmax(dim=1).tolist()
    assert cache["1.hook_out"].shape == (5, 16)  # the ReLU, named by module path
    evaluated = evaluate_q_agent(agent, ROOK, episodes=8, env_kwargs={"max_steps": 5})
    assert evaluated["episodes"] == 8


class TablebaseQ(nn.Module):
    """A scripted Q-network on the flat 5x5 observation: Q = 1 on the tablebase's optimal moves
    (perfect play), 0 elsewhere; with ``illegal_first``, Q = 2 on a rook move off the board
    (up by row + 1, or down 1 from the bottom row), a move that is illegal in every position."""

    def __init__(self, illegal_first: bool):
        super().__init__()
        self.illegal_first = illegal_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from policylens.envs.chess import get_tablebase

        tb = get_tablebase(5)
        q = torch.zeros(x.shape[0], 24)
        for b, row in enumerate(x):
            if row.sum() != 3:  # not a position (e.g. a shape probe of zeros)
                continue
            wk, wr, bk = (divmod(int(plane.argmax()), 5) for plane in row.view(3, 25))
            q[b] = torch.from_numpy(tb.optimal_actions_of(tb.board.position(wk, wr, bk))).float()
            if self.illegal_first:
                q[b, 8 + wr[0] if wr[0] < 4 else 12] = 2.0
        return q


def test_evaluating_scripted_q_networks_gives_known_outcomes():
    z2 = NormalDist().inv_cdf(0.975) ** 2  # Wilson's interval for n of n is [n / (n + z^2), 1]
    # Perfect play mates from every 5x5 start (tablebase: at most 10 moves, within max_steps 50)
    # against any defence; each episode pays -1 per move but the last, then +100.
    perfect = HookedAgent.from_module(TablebaseQ(False), (75,), 24, output="q")
    ev = evaluate_q_agent(perfect, ROOK, episodes=30, seed=3)
    assert ev["episodes"] == 30 and ev["success"]["rate"] == 1.0 and ev["success"]["n"] == 30
    assert ev["success"]["ci"] == pytest.approx([30 / (30 + z2), 1.0], abs=1e-9)
    assert ev["outcomes"] == {"checkmate": {"rate": 1.0, "n": 30, "ci": ev["success"]["ci"]}}
    assert 1 <= ev["length"]["mean"] <= 10
    assert ev["return"]["mean"] == pytest.approx(101 - ev["length"]["mean"])
    # The same network preferring an always-illegal move: every episode ends at once, -100.
    blunderer = HookedAgent.from_module(TablebaseQ(True), (75,), 24, output="q")
    ev = evaluate_q_agent(blunderer, ROOK, episodes=30, seed=3)
    assert ev["success"]["rate"] == 0.0 and ev["success"]["ci"][0] == 0.0
    (illegal,) = ev["outcomes"].values()
    assert set(ev["outcomes"]) == {"illegal"} and illegal["rate"] == 1.0 and illegal["n"] == 30
    assert illegal["ci"] == pytest.approx([30 / (30 + z2), 1.0], abs=1e-9)
    assert ev["return"] == {"mean": -100.0, "n": 30, "ci": [-100.0, -100.0]}
    assert ev["length"] == {"mean": 1.0, "n": 30, "ci": [1.0, 1.0]}
    # Masking illegal moves leaves the perfect moves as the best: it mates again.
    ev = evaluate_q_agent(blunderer, ROOK, episodes=30, seed=3, mask_illegal=True)
    assert ev["success"]["rate"] == 1.0 and set(ev["outcomes"]) == {"checkmate"}


# -- training runs ------------------------------------------------------------------------------
def test_tiny_run_writes_a_complete_run_folder(tmp_path):
    config = tiny_config()
    run = train_dqn(config, tmp_path / "run", progress=False)
    assert run.config["kind"] == "dqn"
    assert run.config["trainer"]["reward_scale"] == 0.01
    assert run.config["agent"]["kwargs"]["head"] == "q"
    assert (run.path / "DONE").exists() and (run.path / "resume.pt").exists()
    steps = [s for s, _ in run.checkpoints()]
    assert steps[0] == 0 and steps[-1] == 3_200 and len(steps) >= 3
    agent = run.load_agent()
    assert isinstance(agent, HookedAgent) and agent.output == "q"
    obs = torch.zeros(4, 75)
    logits, value = agent(obs)
    torch.testing.assert_close(value, logits.max(dim=1).values)
    assert "layers.0.hook_act" in agent.hook_names()
    # Weights changed from the initial checkpoint: it learned something.
    first = run.load_agent(0)
    assert not torch.allclose(first(obs)[0], logits)
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == [400.0 * (i + 1) for i in range(8)]
    columns = set(metrics[-1])
    assert {
        "step",
        "return",
        "length",
        "success",
        "loss",
        "q_mean",
        "epsilon",
        "steps_per_s",
    } <= columns
    assert {o for o in OUTCOMES if o and o != "checkmate"} <= columns
    last = metrics[-1]
    assert last["episodes"] > 0 and np.isfinite(last["loss"]) and 0 <= last["success"] <= 1
    outcome_share = sum(last[o] for o in ("illegal", "blunder", "stalemate", "truncated"))
    assert outcome_share + last["success"] == pytest.approx(1.0, abs=1e-4)
    assert metrics[0]["epsilon"] > metrics[-1]["epsilon"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="already holds a run"):
        train_dqn(config, tmp_path / "run", progress=False)


@pytest.mark.slow
def test_resume_is_exact_with_a_world_that_saves_its_state(tmp_path):
    """Killed after 1,200 steps and resumed, a maze run ends exactly like an uninterrupted one."""
    config = tiny_config(env_id="policylens/Maze-v0", env_kwargs={"world_size": 7, "maze_sizes": [5, 7]}, total_steps=2_400, log_every=400, resume_every=1)  # fmt: skip
    whole = train_dqn(config, tmp_path / "whole", progress=False)
    part = train_dqn(config, tmp_path / "part", progress=False, stop_after_steps=1_300)
    assert not (part.path / "DONE").exists()
    resumed = train_dqn(config, tmp_path / "part", resume=True, progress=False)
    assert (resumed.path / "DONE").exists()
    a, b = whole.load_agent(), resumed.load_agent()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    keep = ("step", "episodes", "return", "length", "success", "loss", "q_mean", "epsilon")
    rows = lambda r: [{k: repr(m[k]) for k in keep} for m in r.metrics()]  # noqa: E731 (nan == nan)
    assert rows(whole) == rows(resumed)
    with pytest.raises(ValueError, match="another config"):
        train_dqn(tiny_config(total_steps=4_800), tmp_path / "part", resume=True, progress=False)


def test_resume_in_the_rook_endgame_keeps_the_buffer_and_finishes(tmp_path):
    config = tiny_config(total_steps=2_000)
    part = train_dqn(config, tmp_path / "run", progress=False, stop_after_steps=1_000)
    state = part.load_resume_state()
    assert state["buffer"]["filled"] == 800 // 8  # saved with the metrics row at step 800
    # next_obs is the following obs within an episode and the episode's final obs at its end
    # (with same-step autoreset the following row already holds the next episode's start).
    obs, nxt, done = (state["buffer"][k].numpy() for k in ("obs", "next_obs", "done"))
    same = (nxt[:-1] == obs[1:]).all(axis=-1)  # (rows - 1, envs)
    assert same[~done[:-1]].all()
    assert done[:-1].sum() > 20 and same[done[:-1]].mean() < 0.05
    resumed = train_dqn(config, tmp_path / "run", resume=True, progress=False)
    assert (resumed.path / "DONE").exists()
    assert [m["step"] for m in resumed.metrics()] == [400.0, 800.0, 1200.0, 1600.0, 2000.0]


def test_evaluation_with_masking_never_plays_an_illegal_move():
    net = nn.Sequential(nn.Flatten(), nn.Linear(75, 24))
    nn.init.zeros_(net[1].weight)
    nn.init.zeros_(net[1].bias)  # all Q equal: argmax always plays action 0 (king north)
    agent = HookedAgent.from_module(net, (75,), 24, output="q")
    plain = evaluate_q_agent(agent, ROOK, episodes=100, env_kwargs={"max_steps": 10})
    masked = evaluate_q_agent(
        agent, ROOK, episodes=100, env_kwargs={"max_steps": 10}, mask_illegal=True
    )
    assert plain["outcomes"]["illegal"]["rate"] > 0.5
    assert "illegal" not in masked["outcomes"]
    shares = sum(v["rate"] for v in masked["outcomes"].values())
    assert shares == pytest.approx(1.0)
    assert masked["success"]["rate"] == masked["outcomes"].get("checkmate", {"rate": 0.0})["rate"]


# -- recipe and CLI -----------------------------------------------------------------------------
def test_chess_recipe():
    dqn = ChessRecipe(opponent="greedy", total_steps=1_000, seed=3).config()
    assert isinstance(dqn, DQNConfig) and dqn.env_kwargs == {"opponent": "greedy"}
    assert (dqn.total_steps, dqn.seed) == (1_000, 3)
    assert type(ChessRecipe(algo="ppo").config()).__name__ == "PPOConfig"
    with pytest.raises(ValueError, match="Unknown opponent 'greddy'. Did you mean 'greedy'"):
        ChessRecipe(opponent="greddy")
    with pytest.raises(ValueError, match="algo"):
        ChessRecipe(algo="sac")


def test_cli_trains_and_evaluates_a_chess_run(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "chess", "--out", str(out), "--steps", "800", "--eval-episodes", "20", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["steps"] == 800
    assert [r["env_kwargs"]["opponent"] for r in data["evaluation"]] == ["random", "greedy"]
    assert all(r["episodes"] == 20 for r in data["evaluation"])
    result = runner.invoke(app, ["chess-eval", str(out), "--episodes", "10", "--opponent", "greedy", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    evals = json.loads(result.output)
    assert [r["epsilon"] for r in evals] == [0.0, 0.05]
    result = runner.invoke(app, ["chess-eval", str(out), "--episodes", "10"])
    assert result.exit_code == 0 and "random" in result.output and "greedy" in result.output


def test_cli_bad_options_end_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "chess", "--out", str(tmp_path / "x"), "--algo", "dqm"])
    assert result.exit_code == 2 and "Did you mean 'dqn'" in result.output
    result = runner.invoke(app, ["train", "chess", "--out", str(tmp_path / "x"), "--algo", "ppo", "--mask-illegal"])  # fmt: skip
    assert result.exit_code == 2 and "DQN only" in result.output
    result = runner.invoke(app, ["chess-eval", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not a policylens run" in result.output


def test_chess_eval_refuses_other_worlds_and_bad_options(tmp_path):
    from policylens import worlds
    from policylens.agents import build_agent
    from policylens.runs import Run
    from policylens.studies.rook_sae.play import ChessEvalOptions, evaluate_chess_run

    agent = build_agent("mlp", (8,), 4)
    run = Run.create(tmp_path / "lunar", {"kind": "ppo", "agent": agent.config,
                                          "trainer": {"env_id": worlds.get("lunar").env_id}})  # fmt: skip
    run.save_checkpoint(agent, 0)
    result = CliRunner().invoke(app, ["chess-eval", str(run.path)])
    assert result.exit_code == 2 and "a run of the lunar world" in " ".join(result.output.split())
    with pytest.raises(ValueError, match="not the rook endgame"):
        evaluate_chess_run(run, ChessEvalOptions(episodes=1))
    with pytest.raises(ValueError, match="Did you mean 'greedy'"):
        ChessEvalOptions(opponents=("greddy",))
    with pytest.raises(ValueError, match=r"epsilons must lie in \[0, 1\]"):
        ChessEvalOptions(epsilons=(1.5,))
