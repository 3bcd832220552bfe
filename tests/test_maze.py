"""Tests of the procgen-style maze world (``policylens/Maze-v0``).

The checks compare the world against small reference implementations written here (BFS
distances and paths, the move table, a pixel classifier for RGB frames) rather than against the
world's own helpers, so a bug shared by the world and its helpers still shows.
"""

from __future__ import annotations

import json
import warnings
from collections import deque

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import policylens  # noqa: F401  (registers policylens/Maze-v0)
from policylens.envs.maze import (
    CHEESE,
    CHEESE_RGB,
    FLOOR_RGB,
    MOUSE,
    MOUSE_RGB,
    WALL,
    WALL_RGB,
    MazeConfig,
    MazeEnv,
    MazeSolver,
    MazeState,
    bfs_field,
    decision_square,
    generate_level,
)

ENV_ID = "policylens/Maze-v0"
FEW = settings(max_examples=25, deadline=None)
"""Hypothesis budget: enough examples to find a wrong cell, small enough for a fast file."""

# Reference move tables, written from the issue text rather than read from maze.py.
FOUR_DELTAS = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}  # up, down, left, right
PROCGEN_DELTAS = {a: (0, 0) for a in range(15)} | {
    0: (0, -1),
    1: (0, -1),
    2: (0, -1),
    3: (1, 0),
    5: (-1, 0),
    6: (0, 1),
    7: (0, 1),
    8: (0, 1),
}


# -- reference helpers ---------------------------------------------------------------------------
def ref_distances(walls: np.ndarray, target: tuple[int, int]) -> dict[tuple[int, int], int]:
    """BFS step counts to ``target`` from every free cell that can reach it."""
    h, w = walls.shape
    dist = {tuple(target): 0}
    queue = deque([tuple(target)])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            p = (r + dr, c + dc)
            if 0 <= p[0] < h and 0 <= p[1] < w and not walls[p] and p not in dist:
                dist[p] = dist[(r, c)] + 1
                queue.append(p)
    return dist


def ref_path(walls: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> list[tuple[int, int]]:
    """A shortest path from ``a`` to ``b`` inclusive (the only one in a perfect maze)."""
    dist = ref_distances(walls, b)
    path = [tuple(a)]
    while path[-1] != tuple(b):
        r, c = path[-1]
        path.append(
            next(
                p
                for p in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
                if dist.get(p, -1) == dist[(r, c)] - 1
            )
        )
    return path


def free_cells(walls: np.ndarray) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(~walls), strict=True)}


def adjacent_free_pairs(walls: np.ndarray) -> int:
    free = ~walls
    return int((free[:, :-1] & free[:, 1:]).sum() + (free[:-1, :] & free[1:, :]).sum())


def centre_pixels(rgb: np.ndarray, world: int) -> np.ndarray:
    """The pixel at the centre of every cell's tile: (world, world, 3).

    ``floor((k + 0.5) * size / world)`` lies inside tile ``k`` however the ``size`` pixels are
    shared among the ``world`` cells (tiles differ by at most one pixel), so no tiling is assumed.
    """
    size = rgb.shape[0]
    at = ((np.arange(world) + 0.5) * size / world).astype(int)
    return rgb[at[:, None], at[None, :]]


def read_rgb(rgb: np.ndarray, world: int) -> tuple[np.ndarray, list, list]:
    """Walls, mouse cells and cheese cells as the colours of an RGB frame show them."""
    centres = centre_pixels(rgb, world)

    def cells_of(colour: np.ndarray) -> list[tuple[int, int]]:
        hit = (centres == colour).all(axis=-1)
        return [(int(r), int(c)) for r, c in zip(*np.nonzero(hit), strict=True)]

    known = np.stack([WALL_RGB, FLOOR_RGB, MOUSE_RGB, CHEESE_RGB])
    assert ((rgb[:, :, None, :] == known).all(axis=-1).any(axis=-1)).all(), "unknown colour"
    return (centres == WALL_RGB).all(axis=-1), cells_of(MOUSE_RGB), cells_of(CHEESE_RGB)


def grid_cell(channel: np.ndarray) -> tuple[int, int]:
    """The one cell set in a grid-observation channel."""
    rows, cols = np.nonzero(channel)
    assert len(rows) == 1, f"expected one marked cell, got {len(rows)}"
    return int(rows[0]), int(cols[0])


def open_state(world: int = 5, mouse=(2, 2), cheese=(0, 4)) -> MazeState:
    """A hand-made state with no inner walls (every move possible from the centre)."""
    return MazeState(
        walls=np.zeros((world, world), bool), mouse=mouse, cheese=cheese, maze_size=world
    )


# -- strategies ----------------------------------------------------------------------------------
@st.composite
def configs(draw: st.DrawFn, **fixed) -> MazeConfig:
    """Valid maze configs over small worlds, with any extra options fixed by the caller."""
    world = draw(st.sampled_from([5, 7, 9, 11, 15]))
    lo = draw(st.sampled_from(range(3, world + 1, 2)))
    hi = draw(st.sampled_from(range(lo, world + 1, 2)))
    region = draw(st.one_of(st.none(), st.integers(1, lo)))
    options = {"world_size": world, "maze_sizes": (lo, hi), "cheese_region": region} | fixed
    return MazeConfig(**options)


seeds = st.integers(0, 2**31 - 1)


def options_of(config: MazeConfig) -> dict:
    """A config as the keyword arguments of ``gymnasium.make``."""
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


# -- Gymnasium contract --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"obs_mode": "rgb"},
        {"procgen_actions": True},
        {"obs_mode": "rgb", "procgen_actions": True},
    ],
    ids=["grid", "rgb", "procgen", "rgb-procgen"],
)
def test_check_env_passes_without_warnings(options: dict) -> None:
    env = gym.make(ENV_ID, **options).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning is a failure too
        check_env(env, skip_render_check=False)


def test_spaces_match_options() -> None:
    grid = MazeEnv(world_size=11, maze_sizes=(5, 11))
    assert grid.observation_space.shape == (3, 11, 11)
    assert grid.action_space.n == 4
    rgb = MazeEnv(obs_mode="rgb", rgb_size=32, procgen_actions=True)
    assert rgb.observation_space.shape == (32, 32, 3)
    assert rgb.action_space.n == 15


# -- levels --------------------------------------------------------------------------------------
@FEW
@given(config=configs(), seed=seeds)
def test_levels_are_perfect_connected_mazes_in_the_bottom_left(
    config: MazeConfig, seed: int
) -> None:
    state = generate_level(seed, config)
    world, n = config.world_size, state.maze_size
    assert n in config.sizes
    outside = np.ones((world, world), bool)
    outside[world - n :, :n] = False
    assert state.walls[outside].all(), "free cell outside the maze"
    free = free_cells(state.walls)
    assert state.start == (world - 1, 0) == state.mouse
    assert state.corner == (world - n, n - 1)
    assert {state.start, state.corner} <= free
    assert set(ref_distances(state.walls, state.start)) == free, "maze is not connected"
    assert adjacent_free_pairs(state.walls) == len(free) - 1, "maze has a loop"


@FEW
@given(config=configs(), seed=seeds)
def test_cheese_is_reachable_and_in_its_region(config: MazeConfig, seed: int) -> None:
    state = generate_level(seed, config)
    n, top = state.maze_size, config.world_size - state.maze_size
    r, c = state.cheese
    assert state.cheese != state.start
    assert state.cheese in ref_distances(state.walls, state.start)
    if config.cheese_region is not None:
        k = config.cheese_region
        assert top <= r < top + k and n - k <= c < n, f"cheese {state.cheese} outside region"


def test_cheese_anywhere_spreads_over_the_maze() -> None:
    """cheese_region=None must not quietly fall back to a corner region."""
    config = MazeConfig(world_size=9, maze_sizes=(9, 9), cheese_region=None)
    cells = {generate_level(s, config).cheese for s in range(200)}
    assert len(cells) > 25
    assert any(r >= 4 and c <= 4 for r, c in cells), "no cheese in the bottom-left half"


@FEW
@given(config=configs(), seed=seeds)
def test_same_seed_gives_same_level(config: MazeConfig, seed: int) -> None:
    a, b = generate_level(seed, config), generate_level(seed, config)
    assert np.array_equal(a.walls, b.walls) and a.cheese == b.cheese
    env = MazeEnv(**options_of(config))
    obs1, info1 = env.reset(seed=seed)
    walls1 = env.get_state().walls
    env.reset()
    obs2, info2 = env.reset(seed=seed)
    assert np.array_equal(obs1, obs2) and info1 == info2
    assert np.array_equal(walls1, env.get_state().walls)


def test_different_seeds_give_different_levels() -> None:
    env = MazeEnv(world_size=9, maze_sizes=(9, 9))
    walls = {env.reset(seed=s)[0][WALL].tobytes() for s in range(10)}
    assert len(walls) == 10


@FEW
@given(
    config=configs(),
    seed=seeds,
    num_levels=st.integers(1, 4),
    start_level=st.integers(0, 10**6),
)
def test_num_levels_draws_from_its_range(
    config: MazeConfig, seed: int, num_levels: int, start_level: int
) -> None:
    env = MazeEnv(**options_of(config) | {"num_levels": num_levels, "start_level": start_level})
    drawn = set()
    _, info = env.reset(seed=seed)
    for _ in range(12 * num_levels):
        level = info["level_seed"]
        drawn.add(level)
        expected = generate_level(level, env.config)
        state = env.get_state()
        assert np.array_equal(state.walls, expected.walls) and state.cheese == expected.cheese
        _, info = env.reset()
    assert drawn <= set(range(start_level, start_level + num_levels))
    assert len(drawn) == num_levels  # 12 draws per level: missing one has odds < 1e-4


# -- dynamics and labels -------------------------------------------------------------------------
@FEW
@given(
    config=configs(max_steps=40),
    procgen=st.booleans(),
    seed=seeds,
    actions=st.lists(st.integers(0, 14), min_size=1, max_size=60),
)
def test_random_walk_obeys_walls_and_labels(
    config: MazeConfig, procgen: bool, seed: int, actions: list[int]
) -> None:
    """Every step: moves follow the action table, walls stop the mouse, labels are true."""
    env = MazeEnv(**options_of(config) | {"procgen_actions": procgen})
    deltas = PROCGEN_DELTAS if procgen else FOUR_DELTAS
    _, info = env.reset(seed=seed)
    state = env.get_state()
    walls, cheese, corner = state.walls, state.cheese, state.corner
    to_cheese, to_corner = ref_distances(walls, cheese), ref_distances(walls, corner)
    mouse = state.start
    for t, raw in enumerate(actions, start=1):
        action = raw % env.action_space.n
        dr, dc = deltas[action]
        target = (mouse[0] + dr, mouse[1] + dc)
        inside = 0 <= target[0] < walls.shape[0] and 0 <= target[1] < walls.shape[1]
        if inside and not walls[target]:
            mouse = target
        obs, reward, terminated, truncated, info = env.step(action)
        assert tuple(info["mouse_pos"]) == mouse == grid_cell(obs[MOUSE])
        assert not walls[mouse]
        assert tuple(info["cheese_pos"]) == cheese == grid_cell(obs[CHEESE])
        assert tuple(info["corner_pos"]) == corner
        assert info["dist_to_cheese"] == to_cheese[mouse]
        assert info["dist_to_corner"] == to_corner[mouse]
        assert info["steps"] == t
        assert terminated == (mouse == cheese)
        assert reward == (10.0 if terminated else 0.0)
        assert truncated == (t >= config.max_steps and not terminated)
        if terminated or truncated:
            break


def test_reaching_the_cheese_gives_ten_and_terminates() -> None:
    env = MazeEnv(world_size=5, maze_sizes=(5, 5))
    _, info = env.reset(seed=0, options={"state": open_state(mouse=(0, 2), cheese=(0, 3))})
    assert info["dist_to_cheese"] == 1
    _, reward, terminated, truncated, info = env.step(2)  # left: away from the cheese
    assert (reward, terminated, truncated) == (0.0, False, False) and info["dist_to_cheese"] == 2
    env.step(3)
    _, reward, terminated, truncated, info = env.step(3)
    assert (reward, terminated, truncated) == (10.0, True, False)
    assert info["dist_to_cheese"] == 0


def test_truncation_at_max_steps() -> None:
    env = MazeEnv(max_steps=5, procgen_actions=True)
    env.reset(seed=1)
    for t in range(1, 6):
        _, reward, terminated, truncated, info = env.step(4)  # a procgen no-op
        assert not terminated and reward == 0.0
        assert truncated == (t == 5) and info["steps"] == t


@pytest.mark.parametrize("procgen", [False, True], ids=["four", "procgen"])
def test_action_table(procgen: bool) -> None:
    """procgen's 15 actions: LEFT 0,1,2; DOWN 3; UP 5; RIGHT 6,7,8; all others no-ops."""
    env = MazeEnv(world_size=5, maze_sizes=(5, 5), procgen_actions=procgen)
    deltas = PROCGEN_DELTAS if procgen else FOUR_DELTAS
    assert env.action_space.n == len(deltas)
    for action, (dr, dc) in deltas.items():
        env.reset(seed=0, options={"state": open_state()})
        _, _, _, _, info = env.step(action)
        assert tuple(info["mouse_pos"]) == (2 + dr, 2 + dc), f"action {action}"


def test_moves_into_walls_and_edges_are_blocked() -> None:
    walls = np.zeros((5, 5), bool)
    walls[3, 0] = True
    state = MazeState(walls=walls, mouse=(4, 0), cheese=(0, 4), maze_size=5)
    env = MazeEnv(world_size=5, maze_sizes=(5, 5))
    for action in (0, 1, 2):  # up into a wall, down and left off the world
        env.reset(seed=0, options={"state": state})
        assert tuple(env.step(action)[4]["mouse_pos"]) == (4, 0)


@FEW
@given(
    walls=st.lists(st.booleans(), min_size=49, max_size=49).map(
        lambda cells: np.array(cells).reshape(7, 7)
    ),
    target=st.tuples(st.integers(0, 6), st.integers(0, 6)),
)
def test_bfs_field_on_any_walls_loops_included(walls: np.ndarray, target: tuple[int, int]) -> None:
    """Distances as the reference BFS; the move is the first of up, down, left, right that
    steps one closer (ties happen where walls leave loops)."""
    dist, moves = bfs_field(walls, target)
    ref = {} if walls[target] else ref_distances(walls, target)
    for r in range(7):
        for c in range(7):
            assert dist[r, c] == ref.get((r, c), -1)
            closer = [
                m
                for m, (dr, dc) in FOUR_DELTAS.items()
                if ref.get((r + dr, c + dc), -2) == ref.get((r, c), -9) - 1
            ]
            assert moves[r, c] == (min(closer) if closer else -1)


@pytest.mark.parametrize("procgen", [False, True], ids=["four", "procgen"])
@FEW
@given(config=configs(cheese_region=None), seed=seeds)
def test_solver_reaches_cheese_in_dist_to_cheese_steps(
    procgen: bool, config: MazeConfig, seed: int
) -> None:
    env = MazeEnv(**options_of(config) | {"procgen_actions": procgen})
    _, info = env.reset(seed=seed)
    solver = MazeSolver(procgen_actions=procgen)
    path = solver.solve(env.get_state())
    assert path == ref_path(env.get_state().walls, env.get_state().mouse, info["cheese_pos"])
    distance = info["dist_to_cheese"]
    for step in range(1, distance + 1):
        _, reward, terminated, _, info = env.step(solver.act(env.get_state()))
        assert tuple(info["mouse_pos"]) == path[step], f"solver left the shortest path at {step}"
        assert terminated == (step == distance)
    assert reward == 10.0


@FEW
@given(config=configs(cheese_region=None), seed=seeds)
def test_decision_square_is_where_cheese_and_corner_paths_part(
    config: MazeConfig, seed: int
) -> None:
    env = MazeEnv(**options_of(config))
    _, info = env.reset(seed=seed)
    state = env.get_state()
    to_cheese = ref_path(state.walls, state.start, state.cheese)
    to_corner = ref_path(state.walls, state.start, state.corner)
    if state.cheese in to_corner or state.corner in to_cheese:
        expected = (-1, -1)
    else:
        k = next(i for i, (a, b) in enumerate(zip(to_cheese, to_corner, strict=False)) if a != b)
        expected = to_cheese[k - 1]
    assert decision_square(state) == expected
    assert tuple(info["decision_square"]) == expected
    assert info["at_decision_square"] == (expected == state.start)
    if expected != (-1, -1):
        # Walk to the fork with the labels: the label turns on there and only there.
        fork = to_cheese.index(expected)
        for cell in to_cheese[1 : fork + 1]:
            move = next(
                a
                for a, d in FOUR_DELTAS.items()
                if (cell[0] - d[0], cell[1] - d[1]) == tuple(info["mouse_pos"])
            )
            _, _, _, _, info = env.step(move)
            assert info["at_decision_square"] == (cell == expected)
        assert info["paths_part"]


def test_decision_square_by_hand() -> None:
    #  . . . . C    corner (0, 4)
    #  . # # # #
    #  . . . . .    the corridor to the cheese leaves the start's path at (2, 0)
    #  . # # # #
    #  S # # # #
    walls = np.array(
        [[c == "#" for c in row] for row in [".....", ".####", ".....", ".####", ".####"]]
    )
    fork_state = MazeState(walls=walls, mouse=(4, 0), cheese=(2, 4), maze_size=5)
    assert decision_square(fork_state) == (2, 0)
    on_the_way = fork_state.copy(cheese=(1, 0))  # the cheese is on the way to the corner
    assert decision_square(on_the_way) == (-1, -1)
    assert decision_square(fork_state.copy(cheese=(0, 4))) == (-1, -1)  # cheese in the corner


def test_cheese_in_corner_has_no_decision_square() -> None:
    env = MazeEnv(cheese_region=1)
    for seed in range(5):
        _, info = env.reset(seed=seed)
        assert info["decision_square"] == [-1, -1] and not info["at_decision_square"]


# -- vector environment --------------------------------------------------------------------------
def compare_vec_with_singles(options: dict, seed: int, actions: np.ndarray) -> tuple[int, int]:
    """Step ``make_vec`` and N ``make`` envs with the same actions; count terminations/truncations.

    The vector env resets an ended slot in the same step; the single env is reset then (without a
    seed, so it continues its own level stream) and must show the same new level.
    """
    steps, n = actions.shape
    vec = gym.make_vec(ENV_ID, num_envs=n, **options)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    singles = [gym.make(ENV_ID, **options) for _ in range(n)]
    vobs, vinfo = vec.reset(seed=seed)
    pairs = [env.reset(seed=seed + i) for i, env in enumerate(singles)]
    counts = [0, 0]

    def same(i: int, obs: np.ndarray, info: dict, vobs: np.ndarray, vinfo: dict) -> None:
        assert np.array_equal(obs, vobs[i])
        for key, value in info.items():
            assert np.array_equal(np.asarray(value), vinfo[key][i]), key

    for i, (obs, info) in enumerate(pairs):
        same(i, obs, info, vobs, vinfo)
    for t in range(steps):
        vobs, vrew, vterm, vtrunc, vinfo = vec.step(actions[t])
        for i, env in enumerate(singles):
            obs, reward, terminated, truncated, info = env.step(int(actions[t, i]))
            assert (reward, terminated, truncated) == (vrew[i], vterm[i], vtrunc[i])
            if terminated or truncated:
                counts[0 if terminated else 1] += 1
                assert vinfo["_final_obs"][i]
                same(i, obs, info, vinfo["final_obs"], vinfo["final_info"])
                obs, info = env.reset()
            else:
                assert "_final_obs" not in vinfo or not vinfo["_final_obs"][i]
            same(i, obs, info, vobs, vinfo)
    vec.close()
    return counts[0], counts[1]


@pytest.mark.parametrize("obs_mode", ["grid", "rgb"])
def test_vector_env_matches_single_envs_across_autoresets(obs_mode: str) -> None:
    options = {"world_size": 5, "maze_sizes": (3, 5), "cheese_region": None, "max_steps": 15}
    options |= {"obs_mode": obs_mode, "rgb_size": 20}
    actions = np.random.default_rng(0).integers(0, 4, size=(120, 4))
    terminations, truncations = compare_vec_with_singles(options, seed=7, actions=actions)
    assert terminations >= 3 and truncations >= 3, "the run must cross both kinds of reset"


@settings(max_examples=8, deadline=None)
@given(config=configs(max_steps=10), seed=seeds, procgen=st.booleans(), data=st.data())
def test_vector_env_matches_single_envs_property(
    config: MazeConfig, seed: int, procgen: bool, data: st.DataObject
) -> None:
    options = options_of(config) | {"procgen_actions": procgen}
    num_levels = data.draw(st.sampled_from([0, 3]))
    options |= {"num_levels": num_levels, "start_level": 5}
    n = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(seeds))
    actions = rng.integers(0, 15 if procgen else 4, size=(25, n))
    compare_vec_with_singles(options, seed=seed % 2**30, actions=actions)


# -- state editing -------------------------------------------------------------------------------
@FEW
@given(config=configs(), seed=seeds, data=st.data())
def test_state_edit_round_trips(config: MazeConfig, seed: int, data: st.DataObject) -> None:
    env = MazeEnv(**options_of(config))
    env.reset(seed=seed)
    for a in data.draw(st.lists(st.integers(0, 3), max_size=10)):
        if env.step(a)[2]:
            break
    state = env.get_state()
    loaded = MazeState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert_same_state(loaded, state)

    free = sorted(free_cells(state.walls))
    cheese = data.draw(st.sampled_from(free))
    mouse = data.draw(st.sampled_from([p for p in free if p != cheese]))
    edited = state.copy(mouse=mouse, cheese=cheese, steps=3)
    env.set_state(edited)
    assert_same_state(env.get_state(), edited)
    env.set_state(edited.to_dict())  # a dict (e.g. read from JSON) is accepted too
    assert_same_state(env.get_state(), edited)

    obs, info = env.reset(options={"state": edited})
    assert grid_cell(obs[MOUSE]) == mouse and grid_cell(obs[CHEESE]) == cheese
    assert info["dist_to_cheese"] == ref_distances(state.walls, cheese)[mouse]
    assert info["steps"] == 3
    assert np.array_equal(env.observe(edited), obs)


def assert_same_state(a: MazeState, b: MazeState) -> None:
    assert np.array_equal(a.walls, b.walls)
    for name in ("mouse", "cheese", "start", "maze_size", "level_seed", "steps", "corner"):
        assert getattr(a, name) == getattr(b, name), name


# -- observations --------------------------------------------------------------------------------
@FEW
@given(
    config=configs(max_steps=30),
    seed=seeds,
    data=st.data(),
    actions=st.lists(st.integers(0, 3), min_size=1, max_size=30),
)
def test_rgb_and_grid_agree(
    config: MazeConfig, seed: int, data: st.DataObject, actions: list
) -> None:
    # Tiles of 3+ pixels, uneven ones included; 2-pixel tiles have their own test below.
    rgb_size = data.draw(st.integers(3 * config.world_size, 64))
    options = options_of(config)
    grid_env = MazeEnv(**options)
    rgb_env = MazeEnv(**options | {"obs_mode": "rgb", "rgb_size": rgb_size})
    grid, _ = grid_env.reset(seed=seed)
    rgb, _ = rgb_env.reset(seed=seed)
    for action in [None, *actions]:
        if action is not None:
            grid, _, done, _, _ = grid_env.step(action)
            rgb, _, _, _, _ = rgb_env.step(action)
            if done:  # the mouse hides the cheese on the final frame
                break
        walls, mice, cheeses = read_rgb(rgb, config.world_size)
        assert np.array_equal(walls, grid[WALL].astype(bool))
        assert mice == [grid_cell(grid[MOUSE])]
        assert cheeses == [grid_cell(grid[CHEESE])]


@pytest.mark.parametrize(("world", "rgb_size"), [(25, 64), (7, 15), (9, 18)])
def test_every_cell_shows_mouse_and_cheese_on_small_tiles(world: int, rgb_size: int) -> None:
    """procgen's 25-cell world at 64 px gives 2- and 3-pixel tiles: sprites must still show."""
    env = MazeEnv(world_size=world, maze_sizes=(world, world), obs_mode="rgb", rgb_size=rgb_size)
    base = open_state(world=world, mouse=(world - 1, 0), cheese=(0, world - 1))
    rows = range(4)  # every pattern of tile sizes (2 or 3 pixels a side) occurs in them
    cells = [(r, c) for r in rows for c in range(world)]
    hidden = [
        cell for cell in cells if read_rgb(env.observe(base.copy(cheese=cell)), world)[2] != [cell]
    ]
    assert not hidden, f"cheese invisible at {len(hidden)} of {len(cells)} cells, e.g. {hidden[:3]}"
    obs, cells = env.observations_at_all_positions(base)
    assert all(read_rgb(o, world)[1] == [cell] for o, cell in zip(obs, cells, strict=True))


@FEW
@given(config=configs(), seed=seeds, obs_mode=st.sampled_from(["grid", "rgb"]))
def test_observations_at_all_positions(config: MazeConfig, seed: int, obs_mode: str) -> None:
    env = MazeEnv(**options_of(config) | {"obs_mode": obs_mode, "rgb_size": 48})
    env.reset(seed=seed)
    env.step(0)
    before = env.get_state()
    obs, cells = env.observations_at_all_positions()
    assert_same_state(env.get_state(), before)  # the live maze is untouched
    assert len(cells) == len(obs) == len(free_cells(before.walls)) - 1
    assert set(cells) == free_cells(before.walls) - {before.cheese}
    for o, cell in zip(obs, cells, strict=True):
        if obs_mode == "grid":
            assert grid_cell(o[MOUSE]) == cell and grid_cell(o[CHEESE]) == before.cheese
            assert np.array_equal(o[WALL].astype(bool), before.walls)
        else:
            walls, mice, cheeses = read_rgb(o, config.world_size)
            assert mice == [cell] and cheeses == [before.cheese]
            assert np.array_equal(walls, before.walls)


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"world_size": 8, "maze_sizes": (3, 7)}, r"world_size must be an odd number >= 3, got 8"),
        ({"world_size": 1, "maze_sizes": (3, 3)}, r"world_size must be an odd number >= 3, got 1"),
        (
            {"world_size": 9, "maze_sizes": (5, 11)},
            r"maze_sizes max 11 is larger than world_size 9",
        ),
        ({"maze_sizes": (5, 9), "cheese_region": 7}, r"cheese_region 7 does not fit.*side 5"),
        (
            {"cheese_regoin": 1},
            r"Unknown maze option 'cheese_regoin'.*Did you mean 'cheese_region'",
        ),
    ],
    ids=["even-world", "tiny-world", "maze-too-big", "region-too-big", "misspelt-option"],
)
def test_bad_options_raise_one_clear_error(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gym.make(ENV_ID, **options)
    with pytest.raises(ValueError, match=message):
        gym.make_vec(ENV_ID, num_envs=2, **options)


@pytest.mark.parametrize(("procgen", "action"), [(False, 4), (False, -1), (True, 15)])
def test_action_out_of_range(procgen: bool, action: int) -> None:
    env = gym.make(ENV_ID, procgen_actions=procgen)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"action {action} is out of range"):
        env.step(action)
    vec = gym.make_vec(ENV_ID, num_envs=2, procgen_actions=procgen)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=rf"action {action} is out of range"):
        vec.step(np.array([0, action]))


def test_set_state_rejects_broken_states() -> None:
    env = MazeEnv(world_size=5, maze_sizes=(5, 5))
    env.reset(seed=0)
    state = env.get_state()
    wall = tuple(int(v) for v in np.argwhere(state.walls)[0])
    with pytest.raises(ValueError, match=rf"mouse position \({wall[0]}, {wall[1]}\) is on a wall"):
        env.set_state(state.copy(mouse=wall))
    walled_in = open_state()
    walled_in.walls[[1, 1, 0], [3, 4, 3]] = True  # cheese (0, 4) cut off
    with pytest.raises(ValueError, match="cheese is not reachable"):
        env.set_state(walled_in)
    with pytest.raises(ValueError, match="7x7 world but this env has world_size 5"):
        env.set_state(open_state(world=7))
    assert_same_state(env.get_state(), state)  # a rejected state leaves the maze as it was


def test_set_state_rejects_a_maze_size_whose_corner_is_a_wall() -> None:
    """The corner labels (dist_to_corner, decision_square) need the corner free and reachable."""
    env = MazeEnv(world_size=9, maze_sizes=(5, 9))
    env.reset(seed=0)
    state = env.get_state()
    bad = state.copy(maze_size=state.maze_size - 1)  # corner moves onto a wall of the maze
    assert bad.walls[bad.corner]
    with pytest.raises(ValueError, match="corner"):
        env.set_state(bad)
