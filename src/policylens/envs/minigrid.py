"""MiniGrid worlds from the real ``minigrid`` package (Gymnasium's), with their ground truth in ``info``.

Two tasks, after Bloom et al.'s DecisionTransformerInterpretability:

- ``policylens/MiniGrid-DynamicObstacles-8x8-v0``: minigrid's ``DynamicObstaclesEnv`` (an empty
  8x8 room, the agent starting at the top left facing east, the goal at the bottom right, four
  balls moving at random each step). Reaching the goal pays ``1 - 0.9 * steps / max_steps``
  (max_steps 256); walking into a ball or a wall pays -1 and ends the episode.
- ``policylens/MiniGrid-MemoryS7-v0``: minigrid's ``MemoryEnv`` (size 7): a key or a ball shown in
  the start room; at the end of the hallway a key and a ball, one up and one down; walking next to
  the matching one pays ``1 - 0.9 * steps / max_steps`` (max_steps 245), next to the other one 0;
  either ends the episode.

Observation: the agent's egocentric 7x7 partial view, ``(7, 7, 3)`` uint8 per cell (object index,
colour index, state; minigrid's ``OBJECT_TO_IDX``...), exactly minigrid's ``obs["image"]``. The
agent always faces "up" in its own view, so its absolute direction is not in the picture; it is
``info["agent_dir"]`` (the decision transformer can read it as an extra state feature).

Actions: ``Discrete(3)``: 0 turn left, 1 turn right, 2 forward (both tasks need no others;
minigrid's Dynamic-Obstacles keeps the same three).

Coordinates are policylens's ``(row, col)``, row 0 at the top (minigrid's own are ``(x, y)`` =
``(col, row)``). Directions are minigrid's: 0 east, 1 south, 2 west, 3 north.

``info`` every step (reset included): ``agent_pos``, ``agent_dir``, ``goal_pos`` (the goal square;
in the memory task the square next to the matching object), ``blocked`` (``(H, W)`` bool: squares
the agent cannot enter: walls, balls, keys), ``steps``, ``outcome`` ("" while it goes on, then
"goal", "collision", "wrong_object" or "truncated") and ``success``; Dynamic-Obstacles adds
``obstacle_pos`` (``(n_obstacles, 2)``) and ``obstacle_ahead`` (the square in front holds a ball);
the memory task adds ``instruction`` (0 key, 1 ball: the object shown in the start room),
``correct_side`` (0 up, 1 down), ``failure_pos`` and ``instruction_seen`` (the agent has had the
start-room object in view this episode).

:class:`GridPlanner` is the reference agent: a breadth-first search over (square, direction) on the
true grid from ``info`` alone, avoiding every blocked square, acting with an epsilon of uniform
random actions and a softmax temperature over its path lengths, so datasets of every quality come
from one planner.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policylens.errors import check_known

ACTION_NAMES = ("left", "right", "forward")
"""Names of the three actions (minigrid's numbering)."""
LEFT, RIGHT, FORWARD = 0, 1, 2
DIR_NAMES = ("east", "south", "west", "north")
"""Names of minigrid's directions 0..3."""
DIR_VEC = ((0, 1), (1, 0), (0, -1), (-1, 0))
"""``(row, col)`` step of each direction."""
OUTCOMES = ("", "goal", "collision", "wrong_object", "truncated")
"""Values of ``info["outcome"]``; "" while the episode goes on."""
INSTRUCTIONS = ("key", "ball")
"""The memory task's ``info["instruction"]`` values, by index."""
SIDES = ("up", "down")
"""The memory task's ``info["correct_side"]`` values, by index."""
VIEW = 7
"""Side of the agent's partial view."""


class MiniGridWorldEnv(gym.Env):
    """A minigrid task behind policylens's conventions (see the module doc); subclasses name it."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, **options: Any) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")
        self.render_mode = render_mode
        self.env = self._make(render_mode, options)
        self.observation_space = spaces.Box(0, 255, (VIEW, VIEW, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(len(ACTION_NAMES))
        self.max_steps = int(self.env.max_steps)
        self._outcome = ""
        self._ended = True

    def _make(self, render_mode: str | None, options: dict[str, Any]) -> Any:
        raise NotImplementedError

    @staticmethod
    def _check_options(options: Mapping[str, Any], valid: tuple[str, ...], task: str) -> None:
        check_known(list(options), valid, f"{task} option")

    # -- the Gymnasium interface ----------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs, _ = self.env.reset(seed=seed)
        self._outcome, self._ended = "", False
        self._on_reset()
        return obs["image"], self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._ended:
            raise ValueError("The episode has ended; call reset() before step().")
        try:
            a = int(action)
            ok = a == action and 0 <= a < len(ACTION_NAMES)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"Action {action!r} is out of range; this world takes 0, 1 or 2.")
        obs, reward, terminated, truncated, _ = self._step(a)
        if terminated:
            self._outcome = self._end_outcome(float(reward))
        elif truncated:
            self._outcome = "truncated"
        self._ended = bool(terminated or truncated)
        return obs["image"], float(reward), bool(terminated), bool(truncated), self._info()

    def _step(self, action: int) -> tuple[Any, ...]:
        return self.env.step(action)

    def render(self) -> np.ndarray | None:
        return self.env.render() if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        self.env.close()

    # -- ground truth ----------------------------------------------------------------------------
    def _on_reset(self) -> None:
        pass

    def _end_outcome(self, reward: float) -> str:
        raise NotImplementedError

    def blocked(self) -> np.ndarray:
        """``(H, W)`` bool: squares the agent cannot enter (walls, balls, keys), row-major."""
        grid = self.env.grid
        out = np.zeros((grid.height, grid.width), dtype=bool)
        for x in range(grid.width):
            for y in range(grid.height):
                cell = grid.get(x, y)
                out[y, x] = cell is not None and not cell.can_overlap()
        return out

    @property
    def agent_pos(self) -> tuple[int, int]:
        x, y = self.env.agent_pos
        return int(y), int(x)

    def _info(self) -> dict[str, Any]:
        return {
            "agent_pos": np.array(self.agent_pos, dtype=np.int64),
            "agent_dir": int(self.env.agent_dir),
            "blocked": self.blocked(),
            "steps": int(self.env.step_count),
            "outcome": self._outcome,
            "success": self._outcome == "goal",
        }


class DynamicObstaclesEnv(MiniGridWorldEnv):
    """minigrid's Dynamic-Obstacles (default 8x8, four balls), three actions, ground truth in info.

    Options: ``size`` (5..16), ``n_obstacles``, ``max_steps`` (default ``4 * size**2``).
    """

    OPTIONS = ("size", "n_obstacles", "max_steps")

    def _make(self, render_mode: str | None, options: dict[str, Any]) -> Any:
        from minigrid.envs.dynamicobstacles import DynamicObstaclesEnv as Inner

        self._check_options(options, self.OPTIONS, "Dynamic-Obstacles")
        size = int(options.get("size", 8))
        if not 5 <= size <= 16:
            raise ValueError(f"size must be in 5..16, got {size}.")
        kwargs = {k: v for k, v in options.items() if k != "size" and v is not None}
        return Inner(size=size, render_mode=render_mode, **kwargs)

    def _end_outcome(self, reward: float) -> str:
        return "collision" if reward < 0 else "goal"

    def _info(self) -> dict[str, Any]:
        info = super()._info()
        env = self.env
        gx, gy = env.width - 2, env.height - 2
        obstacles = [(int(o.cur_pos[1]), int(o.cur_pos[0])) for o in env.obstacles]
        front = env.grid.get(*env.front_pos)
        info["goal_pos"] = np.array((gy, gx), dtype=np.int64)
        info["obstacle_pos"] = np.array(obstacles, dtype=np.int64).reshape(-1, 2)
        info["obstacle_ahead"] = front is not None and front.type == "ball"
        return info


class MemoryEnv(MiniGridWorldEnv):
    """minigrid's Memory task (default size 7), three actions, ground truth in info.

    Options: ``size`` (odd, >= 7), ``random_length`` (hallway length drawn per episode),
    ``max_steps`` (default ``5 * size**2``).
    """

    OPTIONS = ("size", "random_length", "max_steps")

    def _make(self, render_mode: str | None, options: dict[str, Any]) -> Any:
        from minigrid.envs.memory import MemoryEnv as Inner

        self._check_options(options, self.OPTIONS, "Memory")
        size = int(options.get("size", 7))
        if size < 7 or size % 2 == 0:
            raise ValueError(f"size must be odd and >= 7, got {size}.")
        kwargs = {k: v for k, v in options.items() if k != "size" and v is not None}
        self._seen = False
        return Inner(size=size, render_mode=render_mode, **kwargs)

    @property
    def instruction_square(self) -> tuple[int, int]:
        """``(row, col)`` of the object shown in the start room."""
        return self.env.height // 2 - 1, 1

    def _on_reset(self) -> None:
        self._seen = False
        self._look()

    def _step(self, action: int) -> tuple[Any, ...]:
        out = self.env.step(action)
        self._look()
        return out

    def _look(self) -> None:
        r, c = self.instruction_square
        self._seen = self._seen or bool(self.env.agent_sees(c, r))

    def _end_outcome(self, reward: float) -> str:
        return (
            "goal" if tuple(self.env.agent_pos) == tuple(self.env.success_pos) else "wrong_object"
        )

    def _info(self) -> dict[str, Any]:
        info = super()._info()
        env = self.env
        r, c = self.instruction_square
        shown = env.grid.get(c, r)
        sx, sy = env.success_pos
        fx, fy = env.failure_pos
        info["goal_pos"] = np.array((sy, sx), dtype=np.int64)
        info["failure_pos"] = np.array((fy, fx), dtype=np.int64)
        info["instruction"] = INSTRUCTIONS.index(shown.type)
        info["correct_side"] = int(sy > env.height // 2)
        info["instruction_seen"] = self._seen
        return info


# -- the planner ---------------------------------------------------------------------------------
def distances_to(blocked: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
    """Actions needed from every ``(row, col, dir)`` to stand on ``goal``: ``(H, W, 4)`` float,
    ``inf`` where it cannot be reached (a breadth-first search backwards from the goal over turns
    and forward steps into unblocked squares)."""
    h, w = blocked.shape
    dist = np.full((h, w, 4), np.inf)
    gr, gc = goal
    queue: deque[tuple[int, int, int]] = deque()
    for d in range(4):
        dist[gr, gc, d] = 0
        queue.append((gr, gc, d))
    while queue:
        r, c, d = queue.popleft()
        nxt = dist[r, c, d] + 1
        # turning: left from (d + 1) and right from (d - 1) lead to d
        for pd in ((d + 1) % 4, (d - 1) % 4):
            if dist[r, c, pd] == np.inf:
                dist[r, c, pd] = nxt
                queue.append((r, c, pd))
        # stepping forward in direction d from the square behind
        dr, dc = DIR_VEC[d]
        pr, pc = r - dr, c - dc
        if 0 <= pr < h and 0 <= pc < w and not blocked[pr, pc] and dist[pr, pc, d] == np.inf:
            dist[pr, pc, d] = nxt
            queue.append((pr, pc, d))
    return dist


def action_costs(info: Mapping[str, Any], goal: Any = None, reach: int = 0) -> np.ndarray:
    """Path length to ``goal`` (default ``info["goal_pos"]``) after each action: ``(3,)`` float;
    ``inf`` for a forward step into a blocked square (a collision) or toward nowhere.

    Moving obstacles (``info["obstacle_pos"]``) farther than ``reach`` squares (Chebyshev) from
    the agent are planned through: they move every step. Only the square ahead can be walked into.
    """
    walls = np.asarray(info["blocked"], dtype=bool)
    blocked = walls.copy()
    gr, gc = (int(v) for v in (info["goal_pos"] if goal is None else goal))
    blocked[gr, gc] = False
    r, c = (int(v) for v in info["agent_pos"])
    for orow, ocol in np.asarray(info.get("obstacle_pos", ()), dtype=np.int64).reshape(-1, 2):
        if max(abs(orow - r), abs(ocol - c)) > reach:  # it will have moved by the time we pass
            blocked[orow, ocol] = False
    dist = distances_to(blocked, (gr, gc))
    d = int(info["agent_dir"])
    dr, dc = DIR_VEC[d]
    fr, fc = r + dr, c + dc
    forward = dist[fr, fc, d] if not (walls[fr, fc] and (fr, fc) != (gr, gc)) else np.inf
    return np.array([dist[r, c, (d - 1) % 4], dist[r, c, (d + 1) % 4], forward]) + 1


@dataclass
class GridPlanner:
    """Breadth-first search on the true grid from ``info`` (see the module doc).

    ``epsilon``: chance of a uniformly random action (which may walk into a ball or a wall).
    ``temperature``: 0 takes a shortest path (ties broken at random); above 0, a softmax over
    minus the path length after each safe action. ``wrong_side`` (memory task): head for the other
    object. ``look_first`` (memory task): turn to see the start-room object before leaving (a
    planner that knows the answer without looking teaches nothing a viewer could copy).
    ``wander``: ``(low, high)``: at each episode's start, draw ``k`` uniformly from
    ``low..high`` and take ``k`` safe random actions (never into a ball or a wall, never onto the
    goal) before planning: a slow but careful agent, so that returns between 0 and the best come
    without collisions.
    """

    epsilon: float = 0.0
    temperature: float = 0.0
    wrong_side: bool = False
    look_first: bool = True
    wander: tuple[int, int] = (0, 0)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must lie in [0, 1], got {self.epsilon}.")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        low, high = self.wander
        if not 0 <= low <= high:
            raise ValueError(
                f"wander must be (low, high) with 0 <= low <= high, got {self.wander}."
            )
        self.rng = np.random.default_rng(self.seed)
        self.wander_left = 0

    def act(self, info: Mapping[str, Any]) -> int:
        """An action for the position ``info`` describes."""
        rng = self.rng
        if self.wander[1] and info["steps"] == 0:
            self.wander_left = int(rng.integers(self.wander[0], self.wander[1] + 1))
        if self.epsilon and rng.random() < self.epsilon:
            return int(rng.integers(len(ACTION_NAMES)))
        if self.look_first and "instruction_seen" in info and not info["instruction_seen"]:
            # face west (toward the start-room object), turning the short way
            d = int(info["agent_dir"])
            if d != 2:
                return RIGHT if d == 1 else LEFT
        goal = info["failure_pos"] if self.wrong_side and "failure_pos" in info else None
        costs = action_costs(info, goal)
        safe = np.isfinite(costs)
        if not safe.any():  # boxed in: turn (never walk into a ball)
            return int(rng.choice([LEFT, RIGHT]))
        if self.wander_left > 0:
            self.wander_left -= 1
            calm = safe & (costs > 1)  # a cost of 1 is the step onto the goal
            return int(rng.choice(np.flatnonzero(calm if calm.any() else safe)))
        if self.temperature == 0:
            best = np.flatnonzero(costs == costs[safe].min())
            return int(rng.choice(best))
        z = np.where(safe, -(costs - costs[safe].min()) / self.temperature, -np.inf)
        p = np.exp(z)
        return int(rng.choice(len(p), p=p / p.sum()))


def play_planner(
    env: MiniGridWorldEnv, planner: GridPlanner, seed: int
) -> tuple[list[np.ndarray], list[dict[str, Any]], list[int], list[float], bool, bool]:
    """One episode of ``planner`` in ``env``: the observations acted on, their infos, the actions,
    the rewards, and whether it ended terminated / truncated."""
    obs, info = env.reset(seed=seed)
    frames, infos, actions, rewards = [], [], [], []
    while True:
        a = planner.act(info)
        frames.append(obs)
        infos.append(info)
        actions.append(a)
        obs, r, terminated, truncated, info = env.step(a)
        rewards.append(r)
        if terminated or truncated:
            return frames, infos, actions, rewards, terminated, truncated
