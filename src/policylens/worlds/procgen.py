"""Procgen's games through envpool: any ``policylens/procgen-<Game>`` id, 64x64 frames, procgen's
15 actions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from policylens.envs.procgen import ACTIONS, PREFIX
from policylens.worlds.base import World


class ProcgenWorld(World):
    """One procgen game: frames drawn as they are, procgen's action names."""

    name = "procgen"
    env_id = PREFIX

    @classmethod
    def serves(cls, env_id: str) -> bool:
        return env_id.startswith(PREFIX)

    @classmethod
    def world_actions(cls, env_kwargs: Mapping[str, Any]) -> Sequence[str]:
        return ACTIONS
