"""One home per world: everything world-specific above the env itself (recipe, ground truth,
drawing, action names, concepts, sweep metrics), looked up by name or by a run's env id.

A new world is one module here with a :class:`~policylens.worlds.base.World` subclass, listed in
:data:`WORLDS`, beside its env in ``envs/``; nothing else names world ids. Lenses never import a
world: its masks and concepts reach them as arguments.
"""

from __future__ import annotations

from policylens.errors import check_known
from policylens.runs import Run
from policylens.worlds.base import World, run_world
from policylens.worlds.hazards import HazardsWorld
from policylens.worlds.lunar import LunarWorld
from policylens.worlds.maze import MazeWorld
from policylens.worlds.minigrid import MiniGridWorld
from policylens.worlds.procgen import ProcgenWorld
from policylens.worlds.rook import RookWorld

WORLDS: dict[str, type[World]] = {
    w.name: w for w in (MazeWorld, HazardsWorld, RookWorld, LunarWorld, ProcgenWorld, MiniGridWorld)
}
"""Name -> world."""


def get(name: str) -> type[World]:
    """The world called ``name`` (one sentence naming the closest ones if there is none)."""
    check_known([name], WORLDS, "world")
    return WORLDS[name]


def for_env(env_id: str) -> type[World]:
    """The world behind ``env_id``; the generic :class:`World` for any other registered env."""
    return next((w for w in WORLDS.values() if w.serves(env_id)), World)


def of_run(run: Run) -> World:
    """The world a run was trained in, bound to the run's world options and acting policy."""
    return for_env(run_world(run)["env_id"])(run)


def recipe(name: str) -> type:
    """The recipe (options class) of the world called ``name``; a world without one is refused
    in one sentence."""
    world = get(name)
    if world.recipe is None:
        raise ValueError(f"the {name} world has no training recipe.")
    return world.recipe


__all__ = ["WORLDS", "World", "for_env", "get", "of_run", "recipe", "run_world"]
