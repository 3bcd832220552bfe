"""The MiniGrid worlds: ground truth in ``info`` against minigrid's own grid (known answers), the
planner reaching the goal, the trajectory store round trip (replaying stored actions from the
stored seed gives the stored observations again), and the world's registration."""

from __future__ import annotations

import numpy as np
import pytest

from policylens import worlds
from policylens.envs import make
from policylens.envs.minigrid import (
    FORWARD,
    LEFT,
    RIGHT,
    GridPlanner,
    action_costs,
    distances_to,
    play_planner,
)
from policylens.rollout.store import Store
from policylens.worlds.minigrid import (
    MEMORY_ID,
    OBSTACLES_ID,
    MiniGridWorld,
    PolicySpec,
    collect_trajectories,
    view_image,
)


def obstacles_env():
    return make(OBSTACLES_ID).unwrapped


def test_obstacles_ground_truth_matches_minigrids_grid():
    env = obstacles_env()
    obs, info = env.reset(seed=3)
    inner = env.env
    assert obs.shape == (7, 7, 3) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, inner.gen_obs()["image"])  # minigrid's own view
    assert tuple(info["agent_pos"]) == (1, 1) and info["agent_dir"] == 0  # top left, east
    assert tuple(info["goal_pos"]) == (6, 6)
    assert inner.grid.get(6, 6).type == "goal"  # minigrid indexes (x, y) = (col, row)
    assert info["obstacle_pos"].shape == (4, 2)
    for r, c in info["obstacle_pos"]:
        assert inner.grid.get(c, r).type == "ball"
        assert info["blocked"][r, c]
    blocked = info["blocked"]
    assert blocked[0].all() and blocked[-1].all() and blocked[:, 0].all() and blocked[:, -1].all()
    assert blocked.sum() == 28 + 4  # the 8x8 wall ring and four balls
    assert not blocked[6, 6] and not info["success"] and info["outcome"] == ""


def _put_ball(env, row: int, col: int) -> None:
    """Move obstacle 0 to ``(row, col)`` and clear the others from around the agent."""
    inner = env.env
    for i, ball in enumerate(inner.obstacles):
        x, y = ball.cur_pos
        inner.grid.set(x, y, None)
        target = (col, row) if i == 0 else (6, 1 + i)  # far column, away from the agent
        inner.grid.set(*target, ball)
        ball.cur_pos = target


def test_walking_into_a_ball_or_a_wall_costs_minus_one():
    env = obstacles_env()
    env.reset(seed=0)
    _put_ball(env, 1, 2)  # straight ahead of the agent at (1, 1) facing east
    info = env._info()
    assert info["obstacle_ahead"]
    assert np.isinf(action_costs(info)[FORWARD])  # the planner never walks into it
    _, reward, terminated, truncated, info = env.step(FORWARD)
    assert (reward, terminated, truncated) == (-1.0, True, False)
    assert info["outcome"] == "collision" and not info["success"]
    with pytest.raises(ValueError, match="reset"):
        env.step(LEFT)
    env.reset(seed=0)
    env.step(LEFT)  # now facing north, into the wall
    _, reward, terminated, _, info = env.step(FORWARD)
    assert reward == -1.0 and terminated and info["outcome"] == "collision"


def test_reaching_the_goal_pays_minigrids_reward():
    env = obstacles_env()
    env.reset(seed=0)
    _put_ball(env, 3, 6)
    inner = env.env
    inner.agent_pos = np.array((5, 6))  # (x, y): left of the goal, facing east
    inner.agent_dir = 0
    _, reward, terminated, _, info = env.step(FORWARD)
    assert terminated and info["success"] and info["outcome"] == "goal"
    assert reward == pytest.approx(1 - 0.9 * 1 / 256)
    assert tuple(info["agent_pos"]) == (6, 6)


def test_distances_on_an_empty_room_are_known():
    blocked = np.zeros((4, 4), dtype=bool)
    dist = distances_to(blocked, (3, 3))
    assert dist[3, 3].tolist() == [0, 0, 0, 0]
    assert dist[3, 2, 0] == 1  # one step east
    assert dist[3, 2, 2] == 3  # turn, turn, step
    assert dist[0, 0, 0] == 7  # 3 east, turn, 3 south
    blocked[3, 2] = True
    assert dist[3, 1, 0] == 2 and distances_to(blocked, (3, 3))[3, 1, 0] > 2


def test_memory_ground_truth_matches_minigrids_grid():
    env = make(MEMORY_ID).unwrapped
    seen_kinds = set()
    for seed in range(12):
        _, info = env.reset(seed=seed)
        inner = env.env
        shown = inner.grid.get(1, 2)  # the start room's object, (x, y) = (1, height // 2 - 1)
        assert ("key", "ball")[info["instruction"]] == shown.type
        seen_kinds.add(shown.type)
        r, c = info["goal_pos"]
        assert (c, r) == tuple(inner.success_pos)
        # the matching object sits one square further from the middle row than the goal square
        beside = inner.grid.get(c, r - 1 if info["correct_side"] == 0 else r + 1)
        assert beside.type == shown.type
        fr, fc = info["failure_pos"]
        assert (fc, fr) == tuple(inner.failure_pos)
        assert info["correct_side"] == int(r > 3)
        assert info["agent_dir"] == 0 and info["agent_pos"][0] == 3
        assert info["instruction_seen"] == (info["agent_pos"][1] == 1)  # seen at once only there
    assert seen_kinds == {"key", "ball"}


def test_planner_reaches_the_goal_in_both_tasks():
    env = obstacles_env()
    planner = GridPlanner(seed=0)
    returns = []
    for seed in range(20):
        _, infos, actions, rewards, terminated, _ = play_planner(env, planner, seed)
        assert terminated and rewards[-1] > 0  # never a collision, never out of time
        returns.append(sum(rewards))
    assert np.mean(returns) > 0.9
    memory = make(MEMORY_ID).unwrapped
    for seed in range(10):
        _, infos, _, rewards, _, _ = play_planner(memory, GridPlanner(seed=seed), seed)
        assert rewards[-1] > 0.9
        assert infos[-1]["instruction_seen"]  # it looked before it left
        _, _, _, rewards, _, _ = play_planner(memory, GridPlanner(wrong_side=True), seed)
        assert rewards[-1] == 0  # the other object: nothing
    random = GridPlanner(epsilon=1.0, seed=1)
    assert np.mean([sum(play_planner(env, random, s)[3]) for s in range(10)]) < 0


def test_a_wandering_planner_is_slow_but_never_collides():
    """``wander=(low, high)`` takes that many safe random actions first: no collision, each return
    exactly what its length pays (1 - 0.9 * steps / max_steps, or 0 out of time), spread from 0
    up, and none of the fast returns a shortest path earns."""
    env = obstacles_env()
    planner = GridPlanner(wander=(24, 320), seed=3)
    returns = []
    for seed in range(40):
        _, infos, actions, rewards, terminated, truncated = play_planner(env, planner, seed)
        assert infos[-1]["outcome"] != "collision" and min(rewards) >= 0
        n = len(actions)
        expected = 1 - 0.9 * n / env.max_steps if terminated else 0.0
        assert sum(rewards) == pytest.approx(expected, abs=1e-6)
        assert truncated == (n == env.max_steps) and n > 24
        returns.append(sum(rewards))
    assert min(returns) < 0.2 and max(returns) > 0.6 and 0.2 < np.median(returns) < 0.8
    assert max(returns) < 1 - 0.9 * 25 / env.max_steps
    with pytest.raises(ValueError, match="wander must be"):
        GridPlanner(wander=(5, 2))


def test_trajectory_store_round_trip(tmp_path):
    mix = (PolicySpec(0.0), PolicySpec(0.3), PolicySpec(1.0))
    summary = collect_trajectories(tmp_path / "s", "obstacles", episodes=9, seed=4, mix=mix)
    store = Store(tmp_path / "s")
    assert store.meta["env_id"] == OBSTACLES_ID and store.meta["num_actions"] == 3
    assert [p["episodes"] for p in summary.policies] == [3, 3, 3]
    episode = store["episode"][:]
    assert sorted(set(episode.tolist())) == list(range(9)) and len(store) == summary.rows
    env = obstacles_env()
    for ep in range(9):
        rows = np.flatnonzero(episode == ep)
        assert rows.tolist() == list(range(rows[0], rows[-1] + 1))  # contiguous
        rewards = store["rewards"][rows]
        np.testing.assert_allclose(store["rtg"][rows], np.cumsum(rewards[::-1])[::-1], atol=1e-6)
        assert store["timestep"][rows].tolist() == list(range(len(rows)))
        assert store["done"][rows].tolist() == [False] * (len(rows) - 1) + [True]
        # replaying the stored actions from the stored reset gives the stored episode
        seeds = set(store["seed"][rows].tolist())
        assert len(seeds) == 1
        obs, info = env.reset(seed=seeds.pop())
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(obs, store["obs"][row])
            assert info["agent_dir"] == store["direction"][row]
            assert tuple(info["agent_pos"]) == tuple(store["labels/agent_pos"][row])
            obs, r, *_, info = env.step(int(store["actions"][row]))
            assert r == pytest.approx(float(rewards[i]))
    returns = [store["rtg"][np.flatnonzero(episode == e)[0]] for e in range(9)]
    assert min(returns) == -1.0 and max(returns) > 0.8  # the mix spans the range


def test_the_world_is_registered_for_both_tasks():
    assert worlds.for_env(OBSTACLES_ID) is MiniGridWorld
    assert worlds.for_env(MEMORY_ID) is MiniGridWorld
    assert worlds.get("minigrid") is MiniGridWorld
    assert MiniGridWorld.names_of_actions({}, 3) == ["left", "right", "forward"]
    img = view_image(np.zeros((7, 7, 3), dtype=np.uint8))
    assert img.shape == (56, 56, 3) and img.dtype == np.uint8
    with pytest.raises(ValueError, match="option"):
        make(OBSTACLES_ID, n_obstacle=3)
    with pytest.raises(ValueError, match="out of range"):
        env = obstacles_env()
        env.reset(seed=0)
        env.step(RIGHT + 5)
