"""LunarLander with its fuel penalty split out, for the "isolating updates" experiment.

Gymnasium's ``LunarLander-v3`` reward per step is a shaping difference (distance, speed, tilt,
leg contact) minus a fuel charge: ``0.30 * m_power`` for the main engine and ``0.03 * s_power``
for a side engine (discrete actions: action 2 fires the main engine at power 1, actions 1 and 3 a
side engine at power 1). On the terminal step the env *replaces* the whole reward by -100 (crash or
out of bounds) or +100 (the lander came to rest), so no fuel is charged there.

:class:`LunarRewardVariant` recomputes the two parts independently, the shaping difference from
the env's own shaping potential and the fuel term from the action, checks every step that they add
up to the env's reward (bit for bit for discrete actions), and pays one of :data:`REWARD_VARIANTS`.

Labels in ``info`` at every step (and after ``reset``):

- ``fuel``: the fuel term charged this step, a reward (<= 0): -0.30, -0.03 or 0 for discrete actions.
- ``fuel_used``: the fuel charged so far this episode, a positive amount (``-sum(fuel)``).
- ``reward_base``: the reward without its fuel term (the ``no_fuel`` reward).
- ``reward_standard``: Gymnasium's own reward for the step (the ``fuel`` variant).
- ``success``: the same as ``landed`` (the name every policylens world uses for "episode won").
- ``landed``: True only on the terminal step of a successful landing, defined as Gymnasium's +100
  terminal bonus: the lander came to rest (Box2D put its body to sleep) without its hull touching
  the ground and inside the screen. It may rest anywhere on the ground, not only on the pad.
- ``landed_on_pad``: ``landed`` and the lander's centre is between the flags (``|x| <= 0.2``).
- ``crashed``: True on a terminal step with Gymnasium's -100 (hull touched ground, or ``|x| >= 1``).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d.lunar_lander import LunarLander

from policylens.errors import check_known

MAIN_ENGINE_COST = 0.30
"""Reward charged per frame at full main-engine power (Gymnasium's constant)."""
SIDE_ENGINE_COST = 0.03
"""Reward charged per frame at full side-engine power (Gymnasium's constant)."""
FUEL_SCALE = 5.0
"""Multiplier of the fuel term in the ``scaled_fuel`` variants."""
PAD_HALF_WIDTH = 0.2
"""Half the helipad's width in the observation's x units (the pad spans 8..12 of a 20-wide world)."""

REWARD_VARIANTS: dict[str, str] = {
    "no_fuel": "Gymnasium's reward without its fuel term (engines are free)",
    "fuel": "Gymnasium's standard reward, fuel term included (unchanged, bit for bit)",
    "only_fuel": "the fuel term alone (-0.30 main engine, -0.03 side engine per frame)",
    "scaled_fuel": f"the reward without fuel plus the fuel term x {FUEL_SCALE:g}",
    "only_scaled_fuel": f"the fuel term x {FUEL_SCALE:g} alone",
}

# variant -> (coefficient of the base reward, coefficient of the fuel term)
_COEFFS: dict[str, tuple[float, float]] = {
    "no_fuel": (1.0, 0.0),
    "fuel": (1.0, 1.0),
    "only_fuel": (0.0, 1.0),
    "scaled_fuel": (1.0, FUEL_SCALE),
    "only_scaled_fuel": (0.0, FUEL_SCALE),
}


def check_variant(variant: str) -> str:
    """Return ``variant`` if known; otherwise raise a ValueError naming the closest valid ones."""
    check_known([variant], REWARD_VARIANTS, "LunarLander reward variant")
    return variant


def fuel_term(action: Any, continuous: bool) -> float:
    """The fuel part of the reward Gymnasium charges for ``action`` (a reward, <= 0).

    Mirrors ``LunarLander.step``: discrete action 2 is the main engine (power 1), 1 and 3 a side
    engine (power 1); continuous main power is ``(clip(a0, 0, 1) + 1) / 2`` when ``a0 > 0`` and side
    power ``clip(|a1|, 0.5, 1)`` when ``|a1| > 0.5``, after clipping the action to [-1, 1] in
    float64. Same operations as the env, so each engine's charge matches it bit for bit.
    """
    m_power: Any = 0.0
    s_power: Any = 0.0
    if continuous:
        action = np.clip(action, -1, +1).astype(np.float64)  # as the env does first
        if action[0] > 0.0:
            m_power = (np.clip(action[0], 0.0, 1.0) + 1.0) * 0.5
        if np.abs(action[1]) > 0.5:
            s_power = np.clip(np.abs(action[1]), 0.5, 1.0)
    else:
        a = int(action)
        if a == 2:
            m_power = 1.0
        elif a in (1, 3):
            s_power = 1.0
    return -float(m_power * MAIN_ENGINE_COST) - float(s_power * SIDE_ENGINE_COST)


def _shaping(lander: LunarLander) -> float | None:
    """The lander's shaping potential after its last step; ``None`` right after reset.

    Gymnasium assigns ``prev_shaping`` a bare ``None`` first, so its inferred type is ``None``.
    """
    return lander.prev_shaping


class LunarRewardVariant(gym.Wrapper):
    """Pay one of :data:`REWARD_VARIANTS` and label fuel use and landing in ``info``.

    Wrap a Gymnasium LunarLander (any wrappers inside must leave actions and rewards unchanged,
    e.g. TimeLimit). Each step the wrapper splits the env's reward into ``base + fuel`` from the
    env's shaping potential and the action, and raises RuntimeError if they do not add up to the
    env's reward, so a changed Gymnasium reward cannot silently corrupt an experiment.
    """

    def __init__(self, env: gym.Env, variant: str = "fuel") -> None:
        super().__init__(env)
        if not isinstance(env.unwrapped, LunarLander):
            raise ValueError(
                f"LunarRewardVariant wraps Gymnasium's LunarLander, got {type(env.unwrapped).__name__}; "
                "pass gymnasium.make('LunarLander-v3')."
            )
        self.variant = check_variant(variant)
        self.base_coef, self.fuel_coef = _COEFFS[variant]
        self.continuous = bool(env.unwrapped.continuous)
        self.fuel_used = 0.0

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.fuel_used = 0.0
        info = dict(info)
        info.update(
            fuel=0.0,
            fuel_used=0.0,
            reward_base=0.0,
            reward_standard=0.0,
            landed=False,
            success=False,
            landed_on_pad=False,
            crashed=False,
        )
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        lander = self.env.unwrapped
        assert isinstance(lander, LunarLander)  # checked in __init__
        shaping_before = _shaping(lander)  # None on the first step after reset
        obs, reward, terminated, truncated, info = self.env.step(action)
        standard = float(reward)
        if terminated:
            # The env replaced the reward by +-100: no shaping difference, no fuel charged.
            base, fuel = standard, 0.0
        else:
            shaping_after = _shaping(lander)
            assert shaping_after is not None  # LunarLander.step always sets it
            base = 0.0 if shaping_before is None else float(shaping_after - shaping_before)
            fuel = fuel_term(action, self.continuous)
            # The env computes (base - main_cost) - side_cost; a discrete action has at most one
            # nonzero cost, so base + fuel is the same float. Continuous may differ in the last bit.
            total = base + fuel
            exact = total == standard
            if not exact and not (self.continuous and math.isclose(total, standard, abs_tol=1e-9)):
                raise RuntimeError(
                    f"LunarLander reward {standard!r} != base {base!r} + fuel {fuel!r}; Gymnasium's "
                    "reward changed or a wrapper inside LunarRewardVariant alters actions or rewards."
                )
        self.fuel_used -= fuel
        landed = bool(terminated and standard == 100.0)
        info = dict(info)
        info.update(
            fuel=fuel,
            fuel_used=self.fuel_used,
            reward_base=base,
            reward_standard=standard,
            landed=landed,
            success=landed,
            landed_on_pad=bool(landed and abs(float(obs[0])) <= PAD_HALF_WIDTH),
            crashed=bool(terminated and standard == -100.0),
        )
        # The standard variant returns the env's reward untouched.
        out = standard if self.variant == "fuel" else self.base_coef * base + self.fuel_coef * fuel
        return obs, out, terminated, truncated, info


def make_lunar(variant: str = "fuel", **kwargs: Any) -> LunarRewardVariant:
    """``gymnasium.make("LunarLander-v3", **kwargs)`` paying reward ``variant``."""
    check_variant(variant)
    return LunarRewardVariant(gym.make("LunarLander-v3", **kwargs), variant)


def lunar_entry_point(reward_variant: str = "fuel", **kwargs: Any) -> LunarRewardVariant:
    """Gymnasium entry point of ``policylens/LunarLander-v0``: a bare LunarLander, wrapped.

    ``gymnasium.make`` adds the TimeLimit (1000 steps) and checkers outside this wrapper.
    """
    check_variant(reward_variant)
    return LunarRewardVariant(LunarLander(**kwargs), reward_variant)


__all__ = [
    "FUEL_SCALE",
    "MAIN_ENGINE_COST",
    "REWARD_VARIANTS",
    "SIDE_ENGINE_COST",
    "LunarRewardVariant",
    "check_variant",
    "fuel_term",
    "lunar_entry_point",
    "make_lunar",
]
