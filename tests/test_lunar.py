"""LunarLander reward variants: arithmetic against Gymnasium's own reward on real rollouts."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.box2d.lunar_lander import heuristic
from gymnasium.envs.registration import EnvSpec

from policylens.envs.lunar import (
    REWARD_VARIANTS,
    LunarRewardVariant,
    fuel_term,
    lunar_entry_point,
    make_lunar,
)

# The scaled_fuel variants pay the fuel term x 5 (the spec of the "isolating updates" experiment:
# fuel made five times as costly). A literal, not policylens.envs.lunar.FUEL_SCALE, so that a
# changed constant fails here instead of moving the expectation with it.
FUEL_SCALE = 5.0


def _rollout(variant: str, seed: int, steps: int, continuous: bool = False) -> list[tuple]:
    """(action, reward, terminated, info) per step of a seeded random policy, with resets."""
    env = make_lunar(variant, continuous=continuous)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    out = []
    for _ in range(steps):
        action = env.action_space.sample()
        _, reward, terminated, truncated, info = env.step(action)
        out.append((action, reward, terminated, info))
        if terminated or truncated:
            env.reset()
    env.close()
    return out


def test_variants_relate_step_by_step_on_a_seeded_random_policy() -> None:
    steps = 600  # several random episodes, crashes included
    runs = {v: _rollout(v, seed=3, steps=steps) for v in REWARD_VARIANTS}
    raw = gym.make("LunarLander-v3")
    raw.reset(seed=3)
    terminals = 0
    for t in range(steps):
        action, r_fuel, terminated, info = runs["fuel"][t]
        # Same seed -> same trajectory under every variant (the reward never feeds back).
        for v in REWARD_VARIANTS:
            assert runs[v][t][0] == action and runs[v][t][3]["fuel"] == info["fuel"]
        # The standard variant is Gymnasium's reward, bit for bit.
        _, r_raw, te_raw, tr_raw, _ = raw.step(action)
        assert r_fuel == r_raw and terminated == te_raw
        if te_raw or tr_raw:
            raw.reset()
        fuel = info["fuel"]
        r_no = runs["no_fuel"][t][1]
        assert r_no + fuel == r_fuel  # exact for discrete actions
        assert runs["only_fuel"][t][1] == fuel
        assert runs["only_scaled_fuel"][t][1] == FUEL_SCALE * fuel
        assert runs["scaled_fuel"][t][1] == r_no + FUEL_SCALE * fuel
        if terminated:
            terminals += 1
            assert fuel == 0.0 and abs(r_fuel) == 100.0  # the env charges no fuel on the last step
        else:
            assert fuel == {0: 0.0, 1: -0.03, 2: -0.30, 3: -0.03}[int(action)]
    assert terminals >= 3


def test_info_fields_track_fuel_and_crashes() -> None:
    env = make_lunar("no_fuel")
    _, info = env.reset(seed=0)
    assert info["fuel"] == 0.0 and info["fuel_used"] == 0.0 and info["landed"] is False
    total, main_fires = 0.0, 0
    for _ in range(1000):
        # Always fire the main engine: it charges 0.30 each step until the episode ends.
        _, reward, terminated, truncated, info = env.step(2)
        total -= info["fuel"]
        main_fires += not terminated
        assert info["fuel_used"] == pytest.approx(total)
        if terminated or truncated:
            break
    assert info["fuel_used"] == pytest.approx(0.30 * main_fires)
    # Full thrust flies out of the screen or crashes: the -100 terminal, never a landing.
    assert terminated and info["crashed"] and not info["landed"] and reward == -100.0
    _, info = env.reset(seed=1)
    assert info["fuel_used"] == 0.0


def test_heuristic_pilot_lands_and_is_labelled_landed() -> None:
    env = make_lunar("fuel")
    obs, _ = env.reset(seed=2)
    landed_steps = []
    for t in range(1000):
        obs, reward, terminated, truncated, info = env.step(heuristic(env.unwrapped, obs))
        if info["landed"]:
            landed_steps.append(t)
            assert reward == 100.0 and terminated and not info["crashed"]
            assert info["landed_on_pad"] == (abs(obs[0]) <= 0.2)
        if terminated or truncated:
            break
    assert landed_steps == [t]  # landed on, and only on, the terminal step
    assert info["fuel_used"] > 0


def test_continuous_actions_decompose_within_float_rounding() -> None:
    for action, reward, terminated, info in _rollout("fuel", seed=5, steps=300, continuous=True):
        assert info["reward_base"] + info["fuel"] == pytest.approx(reward, abs=1e-12)
        if not terminated:
            assert info["fuel"] == pytest.approx(fuel_term(action, continuous=True), abs=0)
    assert fuel_term(np.array([0.5, 0.0], np.float32), True) == pytest.approx(-0.30 * 0.75)
    assert fuel_term(np.array([-1.0, -0.8], np.float32), True) == pytest.approx(-0.03 * 0.8)
    assert fuel_term(np.array([-1.0, 0.4], np.float32), True) == 0.0


def test_gymnasium_entry_point_passes_variant_and_time_limit() -> None:
    spec = EnvSpec(
        "policylens-test/LunarLander-v0", entry_point=lunar_entry_point, max_episode_steps=1000
    )
    env = gym.make(spec, reward_variant="only_fuel")
    _, info = env.reset(seed=0)
    _, reward, *_ = env.step(2)
    assert reward == -0.30 and env.spec.max_episode_steps == 1000
    assert isinstance(
        env.env, gym.Wrapper
    )  # checkers and TimeLimit sit outside the variant wrapper


def test_unknown_variant_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"Did you mean 'scaled_fuel'.*Available: no_fuel, fuel"):
        make_lunar("scaled_fuels")
    with pytest.raises(ValueError, match="Unknown LunarLander reward variant 'banana'"):
        lunar_entry_point(reward_variant="banana")


def test_wrapping_another_env_is_refused() -> None:
    with pytest.raises(ValueError, match="wraps Gymnasium's LunarLander"):
        LunarRewardVariant(gym.make("CartPole-v1"), "fuel")


class _NoMainEngine(gym.ActionWrapper):
    """Turns the main engine off: the variant wrapper outside it would charge fuel never burned."""

    def action(self, action: int) -> int:
        return 0 if action == 2 else action


def test_a_wrapper_that_changes_actions_inside_is_caught() -> None:
    env = LunarRewardVariant(_NoMainEngine(gym.make("LunarLander-v3")), "no_fuel")
    env.reset(seed=0)
    env.step(1)  # side engines pass through unchanged
    with pytest.raises(RuntimeError, match="alters actions or rewards"):
        env.step(2)
