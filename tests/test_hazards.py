"""The hazard world: physics against procgen CoinRun's numbers, every cause of death, enemies,
occlusion labels, observations, the vector env, resuming, the recipe and the failure study."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import policylens  # noqa: F401  (registers policylens/Hazards-v0)
from policylens.envs.hazards import (
    AGENT,
    AGENT_HALF,
    CHANNELS,
    COIN,
    CRATE,
    ENEMY,
    ENEMY_HALF,
    HEIGHT,
    LAVA,
    MAX_ENEMIES,
    MAX_SAWS,
    SAW,
    WALL,
    WIDTH,
    HazardsConfig,
    HazardsEnv,
    HazardsState,
    HazardsVecEnv,
    generate_level,
    render_level,
)

ENV_ID = "policylens/Hazards-v0"
NOOP, LEFT, RIGHT, UP, RIGHT_UP = 4, 1, 7, 5, 8
GROUND = HEIGHT - 1  # the top row of height-1 ground; standing agents' feet are at this row
STAND = GROUND - AGENT_HALF[0]  # an agent's centre row when standing on that ground


def flat_level(coin_col: int = 40, **tiles_at) -> np.ndarray:
    """Height-1 ground from wall to wall, the coin at ``coin_col``."""
    tiles = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    tiles[GROUND, :] = WALL
    tiles[:, 0] = WALL
    tiles[:, coin_col + 1 :] = WALL
    tiles[GROUND - 1, coin_col] = COIN
    return tiles


def state(tiles, agent=(STAND, 3.5), velocity=(0.0, 0.0), enemies=(), dirs=()) -> HazardsState:
    return HazardsState(
        tiles=tiles, agent=agent, velocity=velocity,
        enemies=np.array(enemies, dtype=float).reshape(-1, 2), enemy_dirs=np.array(dirs),
    )  # fmt: skip


def env_at(s: HazardsState, **options) -> HazardsEnv:
    env = HazardsEnv(**options)
    env.reset(seed=0, options={"state": s})
    return env


def play(env: HazardsEnv, actions) -> list[tuple]:
    return [env.step(a) for a in actions]


# -- physics ---------------------------------------------------------------------------------------
def test_a_standing_jump_rises_6_4_tiles_and_lands_after_16_steps() -> None:
    env = env_at(state(flat_level()))
    rows = [info["agent_pos"][0] for *_, info in play(env, [UP] + [NOOP] * 20)]
    rise = STAND - min(rows)
    # vy = 1.5, 1.3, ..., 0.1 (no gravity on the jump step): 6.4 tiles, apex after 8 steps
    assert rise == pytest.approx(6.4, abs=1e-6)
    assert int(np.argmin(rows)) == 7
    landed = next(t for t, r in enumerate(rows) if abs(r - STAND) < 1e-6)
    assert landed == 15  # 16 steps in the air


def test_a_running_jump_carries_8_tiles() -> None:
    env = env_at(state(flat_level(), velocity=(0.0, 0.5)))
    start = env.get_state().agent[1]
    infos = [info for *_, info in play(env, [RIGHT_UP] + [RIGHT] * 16)]
    assert infos[15]["agent_pos"][0] == pytest.approx(STAND, abs=1e-6)  # down after 16 steps
    assert infos[15]["agent_pos"][1] - start == pytest.approx(8.0, abs=0.05)
    # grounded (jumpable) once the fall has been stopped: procgen's has_support needs vy == 0
    assert not infos[15]["on_ground"] and infos[16]["on_ground"]


def test_walking_reaches_top_speed_and_friction_stops_the_agent() -> None:
    env = env_at(state(flat_level()))
    speeds = [info["agent_vel"][1] for *_, info in play(env, [RIGHT] * 40)]
    assert speeds[0] == pytest.approx(0.1)  # vx <- 0.8 vx + 0.1 ax
    assert speeds[1] == pytest.approx(0.18)
    assert speeds[-1] == pytest.approx(0.5, abs=1e-3)
    coasting = [info["agent_vel"][1] for *_, info in play(env, [NOOP] * 12)]
    expected = [speeds[-1] * 0.8**k for k in range(1, 13)]
    stop = next(k for k, v in enumerate(expected) if v < 0.1)  # below mix * max speed: zero
    assert coasting[:stop] == pytest.approx(expected[:stop], abs=1e-9)
    assert coasting[stop:] == [0.0] * (12 - stop)


def test_air_control_is_weak() -> None:
    env = env_at(state(flat_level(), agent=(STAND - 5, 10.5)))  # in the air, at rest
    _, _, _, _, info = env.step(RIGHT)
    assert info["agent_vel"][1] == pytest.approx(0.015)  # vx <- 0.97 vx + 0.015 ax


def test_walls_and_crates_block_the_agent() -> None:
    tiles = flat_level()
    tiles[GROUND - 1, 6] = CRATE
    env = env_at(state(tiles))
    infos = [info for *_, info in play(env, [RIGHT] * 30)]
    assert infos[-1]["agent_pos"][1] == pytest.approx(6 - AGENT_HALF[1])  # flush against it
    assert infos[-1]["agent_vel"][1] == 0.0
    assert infos[-1]["death_cause"] == "none"


def test_fifteen_actions_extra_ones_do_nothing() -> None:
    env = env_at(state(flat_level(), velocity=(0.0, 0.5)))
    _, _, _, _, info = env.step(12)
    assert info["agent_vel"][1] == pytest.approx(0.4)  # like NOOP: friction only
    with pytest.raises(ValueError, match="15 actions"):
        env.step(15)


# -- enemies ---------------------------------------------------------------------------------------
def test_enemies_turn_at_ledges_and_walls() -> None:
    tiles = flat_level()
    tiles[GROUND - 1, 10:14] = WALL  # a platform of 4 tiles, top at row GROUND - 1
    tiles[GROUND - 4 : GROUND, 20] = WALL  # a wall further right
    on_platform = (GROUND - 1 - ENEMY_HALF[0], 12.5)
    before_wall = (GROUND - ENEMY_HALF[0], 18.5)
    env = env_at(state(tiles, enemies=[on_platform, before_wall], dirs=[1, 1]))
    cols, dirs = [], []
    for *_, info in play(env, [NOOP] * 60):
        cols.append(info["enemy_pos"][:2, 1].copy())
        dirs.append(info["enemy_dir"][:2].copy())
    cols, dirs = np.array(cols), np.array(dirs)
    half = ENEMY_HALF[1]
    assert cols[:, 0].min() >= 10 + half - 1e-9 and cols[:, 0].max() <= 14 - half + 1e-9
    assert cols[:, 1].max() <= 20 - half + 1e-9
    assert (np.diff(dirs[:, 0]) != 0).sum() >= 2  # turned at both ledges
    assert (dirs[:, 1] == -1).any()
    steps = np.abs(np.diff(cols[:, 0]))
    assert set(np.round(steps[steps > 0], 9)) == {0.15}


# -- causes of death -------------------------------------------------------------------------------
def _end(env: HazardsEnv, actions) -> dict:
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return {**info, "reward": reward, "terminated": terminated, "truncated": truncated}
    raise AssertionError("the episode did not end")


def test_the_coin_pays_ten_and_ends_the_level() -> None:
    end = _end(env_at(state(flat_level(coin_col=8))), [RIGHT] * 40)
    assert end["success"] and end["reward"] == 10.0 and end["death_cause"] == "none"


@pytest.mark.parametrize("hazard", ["saw", "lava", "fell", "enemy", "multiple"])
def test_each_cause_of_death(hazard: str) -> None:
    tiles = flat_level()
    enemies, dirs = [], []
    agent, actions = (STAND, 3.5), [RIGHT] * 60
    if hazard == "saw":
        tiles[GROUND - 1, 8] = SAW
    if hazard == "lava":
        tiles[GROUND, 8:11] = LAVA
    if hazard == "fell":
        tiles[GROUND, 8:11] = 0  # a chasm to the bottom of the map
    if hazard == "enemy":
        enemies, dirs = [(GROUND - ENEMY_HALF[0], 8.5)], [-1]
    if hazard == "multiple":  # dropped onto a saw and an enemy penned in with it by crates
        tiles[GROUND - 1, [7, 9]] = CRATE
        tiles[GROUND - 1, 8] = SAW
        enemies, dirs = [(GROUND - ENEMY_HALF[0], 8.5)], [1]
        agent, actions = (GROUND - 4, 8.5), [NOOP] * 60
    end = _end(env_at(state(tiles, agent=agent, enemies=enemies, dirs=dirs)), actions)
    assert end["terminated"] and not end["success"] and end["reward"] == 0.0
    assert end["death_cause"] == hazard


def test_enemy_side_says_where_the_agent_met_it() -> None:
    tiles = flat_level()
    walker = (GROUND - ENEMY_HALF[0], 8.5)
    front = _end(env_at(state(tiles, enemies=[walker], dirs=[-1])), [NOOP] * 60)
    back = _end(env_at(state(tiles, agent=(STAND, 12.5), enemies=[walker], dirs=[-1])), [LEFT] * 60)
    dropped = _end(
        env_at(state(tiles, agent=(STAND - 3, 8.5), enemies=[walker], dirs=[1])), [NOOP] * 60
    )
    assert (front["enemy_side"], back["enemy_side"], dropped["enemy_side"]) == (
        "front",
        "back",
        "above",
    )
    assert front["death_cause"] == back["death_cause"] == "enemy"


def test_the_step_limit_is_a_timeout() -> None:
    end = _end(env_at(state(flat_level()), max_steps=5), [NOOP] * 10)
    assert end["truncated"] and not end["terminated"] and end["steps"] == 5
    assert end["death_cause"] == "timeout"


# -- observations and labels -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["symbolic", "rgb"])
def test_an_enemy_in_front_of_a_saw_occludes_it(mode: str) -> None:
    tiles = flat_level()
    tiles[GROUND - 1, 6] = SAW
    over_saw = (GROUND - ENEMY_HALF[0], 6.5)
    env = env_at(state(tiles, enemies=[over_saw], dirs=[1]), obs_mode=mode)
    info = env._info()
    assert info["saw_in_view"][0] and info["saw_occluded"][0]
    assert info["enemy_in_view"][0] and not info["enemy_occluded"][0]
    assert not info["saw_in_view"][1:].any()  # empty slots
    seen = info["top_kind"][info["mask_saw"]]
    assert (seen == ENEMY).any()  # the enemy is on top where it covers the saw...
    assert info["mask_saw"].any() and info["mask_enemy"].any()  # ...and both masks stay whole
    assert (info["top_object"][info["top_kind"] == ENEMY] == 0).all()

    hidden = env_at(
        state(tiles, enemies=[over_saw], dirs=[1]), obs_mode=mode, invisible_enemies=True
    )
    info = hidden._info()
    assert not info["saw_occluded"][0]
    assert not (info["top_kind"] == ENEMY).any() and info["mask_enemy"].any()


def test_symbolic_view_is_agent_centred_one_hot() -> None:
    tiles = flat_level()
    tiles[GROUND - 1, 6] = SAW
    env = env_at(state(tiles, agent=(STAND, 3.5), velocity=(0.0, 0.5)))
    obs = env._batch.obs[0]
    assert obs.shape == (len(CHANNELS), 13, 13)
    assert obs[CHANNELS.index("agent"), 6, 6] == 1  # the agent's tile is the centre
    assert obs[CHANNELS.index("saw"), 6, 6 + 3] == 1
    assert obs[CHANNELS.index("wall"), 7, :].all()  # the ground under it
    assert obs[:8].sum(axis=0).max() == 1  # one kind per cell
    assert obs[CHANNELS.index("velocity"), 0, 0] == 8  # 0.5 tiles/step right, top of the scale
    still = env_at(state(tiles, velocity=(0.0, 0.5)), paint_vel_info=False)
    assert still._batch.obs[0, CHANNELS.index("velocity")].sum() == 0
    blind = env_at(state(tiles), invisible_saws=True)
    assert blind._batch.obs[0, CHANNELS.index("saw")].sum() == 0
    assert blind._info()["mask_saw"].sum() == 1


def test_enemies_face_their_direction_in_every_observation() -> None:
    tiles = flat_level()
    enemy = (GROUND - ENEMY_HALF[0], 6.5)
    sym = [env_at(state(tiles, enemies=[enemy], dirs=[d]))._batch.obs[0] for d in (-1, 1)]
    assert sym[0][CHANNELS.index("enemy_left"), 6, 9] == 1
    assert sym[1][CHANNELS.index("enemy_right"), 6, 9] == 1
    rgb = [
        env_at(state(tiles, enemies=[enemy], dirs=[d]), obs_mode="rgb")._batch.obs[0]
        for d in (-1, 1)
    ]
    assert not np.array_equal(rgb[0], rgb[1])  # the eye is on the side it walks toward
    flat = [
        env_at(state(tiles, enemies=[enemy], dirs=[d]), obs_mode="rgb", monochrome=True)._batch.obs[
            0
        ]
        for d in (-1, 1)
    ]
    assert np.array_equal(flat[0], flat[1]) and not np.array_equal(flat[0], rgb[0])


def test_salient_saws_are_a_dark_disc_with_a_light_hub_and_change_nothing_else() -> None:
    tiles = flat_level()
    tiles[GROUND - 1, 6] = SAW  # 3 tiles right of the agent: view tile (6, 9), pixels 24-27 x 36-39
    grey, dark = (env_at(state(tiles), obs_mode="rgb", salient_saws=on) for on in (False, True))
    a, b = grey._batch.obs[0], dark._batch.obs[0]
    tile = b[24:28, 36:40]
    ring = np.ones((4, 4), bool)
    ring[[0, 0, 3, 3], [0, 3, 0, 3]] = False  # the disc of radius 0.4 leaves the 4 corners
    hub = np.zeros((4, 4), bool)
    hub[1:3, 1:3] = True
    assert (tile[hub] == (235, 235, 245)).all() and (tile[ring & ~hub] == (60, 60, 72)).all()
    assert (tile[~ring] == (170, 210, 245)).all()  # sky
    assert (a[24:28, 36:40][ring] == (150, 150, 165)).all()  # the grey disc, no hub at 4 px
    changed = np.zeros(a.shape[:2], bool)
    changed[24:28, 36:40] = ring
    assert np.array_equal((a != b).any(-1), changed)  # the saw's pixels and nothing else
    for key in ("mask_saw", "top_kind", "top_object"):
        assert np.array_equal(grey._info()[key], dark._info()[key])
    from policylens.worlds.hazards import HazardsRecipe

    assert HazardsRecipe(obs_mode="rgb", salient_saws=True).config().env_kwargs["salient_saws"]
    assert "salient_saws" not in HazardsRecipe(obs_mode="rgb").config().env_kwargs
    with pytest.raises(ValueError, match="pixel obs_mode"):
        HazardsRecipe(salient_saws=True)


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({}, (9, 13, 13)),
        ({"obs_mode": "rgb", "render_mode": "rgb_array"}, (52, 52, 3)),
        ({"obs_mode": "rgb64", "masks": False}, (64, 64, 3)),
    ],
)
def test_check_env_passes_without_warnings(options: dict, shape: tuple) -> None:
    env = gym.make(ENV_ID, **options).unwrapped
    assert env.observation_space.shape == shape
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=False)


def test_labels_match_observation_resolution_and_are_consistent() -> None:
    envs = HazardsVecEnv(8, obs_mode="rgb64")
    _, infos = envs.reset(seed=3)
    for _ in range(20):
        _, _, _, _, infos = envs.step(np.full(8, RIGHT_UP))
    assert infos["mask_agent"].shape == (8, 64, 64)
    assert infos["saw_pos"].shape == (8, MAX_SAWS, 2)
    assert infos["enemy_pos"].shape == (8, MAX_ENEMIES, 2)
    assert (infos["top_kind"] == AGENT).any(axis=(1, 2)).all()  # the agent is always in view
    # an object's slot in top_object is a valid slot of its kind
    for kind, valid in ((SAW, infos["saw_valid"]), (ENEMY, infos["enemy_valid"])):
        env, rows, cols = np.nonzero(infos["top_kind"] == kind)
        assert valid[env, infos["top_object"][env, rows, cols]].all()
    assert not (infos["saw_in_view"] & ~infos["saw_valid"]).any()


# -- levels and the vector env ---------------------------------------------------------------------
def test_levels_are_deterministic_and_well_formed() -> None:
    for seed in range(60):
        s = generate_level(seed)
        again = generate_level(seed)
        assert np.array_equal(s.tiles, again.tiles) and np.array_equal(s.enemies, again.enemies)
        s.validate()
        row, col = s.agent
        assert s.tiles[int(row + AGENT_HALF[0] + 0.01), int(col)] == WALL  # starts on the ground
        for r, c in s.enemies:  # enemies stand on solid ground
            assert s.tiles[int(r + ENEMY_HALF[0] + 0.01), int(c)] in (WALL, CRATE)
    easy = [generate_level(s, HazardsConfig(distribution_mode="easy")) for s in range(40)]
    hard = [generate_level(s) for s in range(40)]
    assert sum(len(s.enemies) for s in easy) < sum(len(s.enemies) for s in hard)


def test_path_layout_puts_hazards_on_the_ground_in_every_level() -> None:
    classic = HazardsConfig()
    assert classic.layout == "classic"  # the default keeps earlier runs' levels
    path = [generate_level(seed, HazardsConfig(layout="path")) for seed in range(60)]
    for s in path:
        s.validate()
        assert len(s.saws) + len(s.enemies) + int((s.tiles == LAVA).any()) >= 1
        for r, c in s.saws:  # saws sit on the ground, a pit floor or a platform: to be jumped
            assert s.tiles[int(r) + 1, int(c)] == WALL
        for r, c in s.enemies:
            assert s.tiles[int(r + ENEMY_HALF[0] + 0.01), int(c)] in (WALL, CRATE)
    assert np.array_equal(generate_level(5, HazardsConfig(layout="path")).tiles, path[5].tiles)

    def hazards(layout: str, difficulty: int) -> float:
        cfg = HazardsConfig(layout=layout, max_difficulty=difficulty)
        levels = [generate_level(seed, cfg) for seed in range(60)]
        return float(np.mean([len(s.saws) + len(s.enemies) for s in levels]))

    assert hazards("path", 1) < hazards("path", 2) < hazards("path", 3)  # a difficulty scale
    assert hazards("path", 2) > 1.5 * hazards("classic", 2)
    with pytest.raises(ValueError, match="layout must be one of classic, path"):
        HazardsConfig(layout="corridor")


def run_blind(levels: list[HazardsState], max_steps: int = 150) -> np.ndarray:
    """A scripted agent blind to saws and enemies, on every level at once: it runs right and
    jumps only at walls, crates and gaps. Returns how each level ended ("coin" or the cause)."""
    from policylens.envs.hazards import CAUSES, HazardsBatch

    batch = HazardsBatch(HazardsConfig(masks=False, max_steps=max_steps), len(levels))
    for i, s in enumerate(levels):
        batch.load(i, s)
    solid = np.stack([(s.tiles == WALL) | (s.tiles == CRATE) for s in levels])
    ended = np.full(len(levels), "", dtype=object)
    idx = np.arange(len(levels))
    for _ in range(max_steps):
        row = np.clip(batch.pos[:, 0].astype(int), 0, HEIGHT - 2)
        ahead = np.minimum((batch.pos[:, 1] + 1.4).astype(int), WIDTH - 1)
        jump = solid[idx, row, ahead] | ~solid[idx, row + 1, ahead]
        _, terminated, truncated = batch.step(np.where(jump, RIGHT_UP, RIGHT))
        end = (terminated | truncated) & (ended == "")
        ended[end] = np.where(batch.success[end], "coin", np.array(CAUSES)[batch.cause[end]])
        if (ended != "").all():
            break
    return ended


def test_path_hazards_lie_on_the_way_a_blind_runner_takes() -> None:
    """Known answer from the world's ground truth: with its saws and enemies taken out, a path
    level is finished by a runner that ignores hazards; with them, they kill it far more often
    than on classic levels, where many runs hold none and pits may be empty."""

    def stripped(s: HazardsState) -> HazardsState:
        tiles = np.where(s.tiles == SAW, 0, s.tiles)
        return s.copy(tiles=tiles, enemies=np.zeros((0, 2)), enemy_dirs=np.zeros(0))

    def killed_by_hazards(layout: str) -> float:
        cfg = HazardsConfig(layout=layout, max_difficulty=2)
        levels = [generate_level(seed, cfg) for seed in range(100)]
        if layout == "path":
            assert np.mean(run_blind([stripped(s) for s in levels]) == "coin") >= 0.8
        return float(np.isin(run_blind(levels), ("saw", "enemy")).mean())

    path, classic = killed_by_hazards("path"), killed_by_hazards("classic")
    assert path >= 0.45 and path >= classic + 0.15, (path, classic)


def test_solver_finds_the_way_where_there_is_one() -> None:
    from policylens.envs.hazards import solve_level

    wall = flat_level()
    wall[GROUND - 8 : GROUND, 20] = WALL  # 8 tiles high: a jump rises 6.4
    assert solve_level(state(wall), max_steps=80, beam=32) is None
    saw = flat_level(coin_col=20)
    saw[GROUND - 1, 10] = SAW
    actions = solve_level(state(saw))
    assert actions is not None and RIGHT_UP in actions
    env = env_at(state(saw))
    *_, (_, reward, terminated, _, info) = play(env, actions)
    assert terminated and info["success"] and reward == 10.0


@pytest.mark.parametrize(
    "difficulty, seeds",
    [(1, range(2)), (3, range(3)), pytest.param(3, range(300), marks=pytest.mark.slow)],
)
def test_every_path_level_is_solvable(difficulty: int, seeds: range) -> None:
    """The solver's way through each level, played in the world, reaches the coin."""
    from policylens.envs.hazards import solve_level

    cfg = HazardsConfig(layout="path", max_difficulty=difficulty)
    for seed in seeds:
        s = generate_level(seed, cfg)
        actions = solve_level(s)
        assert actions is not None, f"no way found through path level {seed}"
        env = env_at(s, max_steps=len(actions) + 1, masks=False)
        *_, (_, _, terminated, _, info) = play(env, actions)
        assert terminated and info["success"], (seed, info["death_cause"])


def test_num_levels_and_start_level_choose_the_levels() -> None:
    envs = HazardsVecEnv(16, num_levels=3, start_level=100)
    _, infos = envs.reset(seed=0)
    assert set(infos["level_seed"]) <= {100, 101, 102}
    unseen = HazardsVecEnv(16, num_levels=0, start_level=103)
    _, infos = unseen.reset(seed=0)
    assert (infos["level_seed"] >= 103).all()


def test_vector_env_autoresets_with_final_labels() -> None:
    envs = gym.make_vec(ENV_ID, 16, max_steps=30)
    obs, _ = envs.reset(seed=1)
    rng = np.random.default_rng(0)
    causes = set()
    for _ in range(40):
        obs, _, terminated, truncated, infos = envs.step(rng.integers(0, 15, 16))
        ended = terminated | truncated
        if ended.any():
            assert infos["_final_obs"][ended].all()
            causes |= set(infos["final_info"]["death_cause"][ended])
            assert (infos["steps"][ended] == 0).all()  # the next level began
    assert "timeout" in causes and causes <= {
        "none",
        "saw",
        "enemy",
        "lava",
        "fell",
        "timeout",
        "multiple",
    }


def test_state_dict_resumes_exactly() -> None:
    def run(envs, n, seed=0):
        rng = np.random.default_rng(seed)
        return [envs.step(rng.integers(0, 15, 8))[0] for _ in range(n)]

    a = HazardsVecEnv(8, masks=False)
    a.reset(seed=5)
    run(a, 30)
    saved = a.state_dict()
    tail = run(a, 30, seed=1)
    b = HazardsVecEnv(8, masks=False)
    b.reset(seed=99)
    b.load_state_dict(saved)
    assert all(np.array_equal(x, y) for x, y in zip(tail, run(b, 30, seed=1), strict=True))


def test_state_round_trips_and_bad_input_is_one_sentence() -> None:
    s = generate_level(7)
    again = HazardsState.from_dict(s.to_dict())
    assert np.array_equal(again.tiles, s.tiles) and np.allclose(again.enemies, s.enemies)
    with pytest.raises(ValueError, match="Did you mean 'num_levels'"):
        HazardsEnv(num_level=3)
    with pytest.raises(ValueError, match="obs_mode"):
        HazardsEnv(obs_mode="pixels")
    with pytest.raises(ValueError, match="exactly one COIN"):
        HazardsEnv().reset(options={"state": state(np.zeros((HEIGHT, WIDTH), np.uint8))})


def test_render_level_outlines_hazards() -> None:
    s = generate_level(2)
    plain = render_level(s, tile_px=8, outline=False)
    outlined = render_level(s, tile_px=8)
    assert plain.shape == outlined.shape == (HEIGHT * 8, min(WIDTH, s.length + 2) * 8, 3)
    assert (plain != outlined).any()


# -- the recipe, the failure study and the commands, on a tiny run ---------------------------------
def test_recipe_network_can_be_deeper_or_wider(tmp_path) -> None:
    from typer.testing import CliRunner

    from policylens.agents import build_agent
    from policylens.cli import app
    from policylens.sweeps.spec import recipe_parameters
    from policylens.worlds.hazards import HazardsRecipe

    assert HazardsRecipe().config().arch_kwargs == {"channels": 16, "res_blocks": 0, "hidden": 256}
    deeper = HazardsRecipe(channels=8, res_blocks=1).config()
    agent = build_agent(deeper.arch, (9, 13, 13), 15, **deeper.arch_kwargs)
    assert "res1.hook_out" in agent.hook_dict and agent.net.conv.out_channels == 8
    assert {"channels", "res_blocks"} <= set(recipe_parameters(HazardsRecipe))  # sweepable
    with pytest.raises(ValueError, match="res_blocks >= 0"):
        HazardsRecipe(res_blocks=-1)
    r = CliRunner().invoke(app, ["train", "hazards", "--out", str(tmp_path / "x"),
                                 "--res-blocks", "9"])  # fmt: skip
    assert r.exit_code == 2 and "--res-blocks" in r.output and not (tmp_path / "x").exists()


def test_recipe_trains_a_pixel_agent_on_path_levels() -> None:
    from policylens.agents import build_agent
    from policylens.worlds.hazards import HazardsRecipe

    assert (
        "layout" not in HazardsRecipe().config().env_kwargs
    )  # earlier runs' configs stay as they were
    pixels = HazardsRecipe(
        layout="path", obs_mode="rgb", threads=1, init_weights="w.safetensors"
    ).config()
    assert pixels.env_kwargs["layout"] == "path" and pixels.env_kwargs["tile_px"] == 4
    assert pixels.arch == "clear_cnn" and pixels.threads == 1
    assert pixels.init_weights == "w.safetensors"
    env = HazardsVecEnv(2, **pixels.env_kwargs)
    obs, _ = env.reset(seed=0)
    agent = build_agent(pixels.arch, obs.shape[1:], 15, **pixels.arch_kwargs)
    _, cache = agent.run_with_cache(obs)
    assert obs.shape[1:] == (52, 52, 3) and cache["conv2b.hook_out"].shape == (2, 32, 13, 13)
    with pytest.raises(ValueError, match="res_blocks applies to the symbolic agent only"):
        HazardsRecipe(obs_mode="rgb", res_blocks=1)
    with pytest.raises(ValueError, match="layout must be one of"):
        HazardsRecipe(layout="corridor")


def test_failure_options_name_their_fields() -> None:
    from policylens.studies.hazards.failures import FailureOptions, FailureStudy

    with pytest.raises(ValueError, match="^levels must be >= 1, got 0"):
        FailureOptions(levels=0)
    with pytest.raises(ValueError, match="^Unknown invisible hazard 'lava'"):
        FailureOptions(invisible=("saws", "lava"))
    with pytest.raises(ValueError, match="not a failure study"):
        FailureStudy.from_json({"run": "x"})


@pytest.mark.slow
def test_failure_table_counts_every_level_once(tiny_hazard_run, tmp_path) -> None:
    """The tiny run's agent made to press noop whatever it sees: each level then ends as the world
    alone ends it, so its table is the levels replayed here by hand (gymnasium, noop until the
    level ends; level i of a table is reset with seed + i), hiding saws changes nothing."""
    import json
    import shutil

    import torch

    from policylens.envs.hazards import ACTION_NAMES
    from policylens.runs import Run
    from policylens.studies.hazards.failures import (
        FAILURE_CAUSES,
        FailureOptions,
        FailureStudy,
        run_failures,
    )

    noop = ACTION_NAMES.index("noop")
    path = tmp_path / "still"
    shutil.copytree(tiny_hazard_run.path, path, ignore=shutil.ignore_patterns("*.lock"))
    run = Run(path)
    agent = run.load_agent()
    with torch.no_grad():  # every other action's probability underflows to exactly 0
        agent.net.fc_policy.weight.zero_()
        agent.net.fc_policy.bias.fill_(-1e4)
        agent.net.fc_policy.bias[noop] = 0.0
    run.save_checkpoint(agent, run.checkpoint()[0])

    def by_hand(env_kwargs: dict) -> list[tuple[str, bool, int]]:
        played = []
        for i in range(12):
            env = gym.make(ENV_ID, **{**env_kwargs, "masks": False})
            env.reset(seed=3 + i)
            length, ended = 0, False
            while not ended:
                _, _, terminated, truncated, info = env.step(noop)
                length, ended = length + 1, terminated or truncated
            played.append((info["death_cause"], bool(info["success"]), length))
            env.close()
        return played

    result = run_failures(run, FailureOptions(12, ("saws",), seed=3))
    assert set(result.splits) == {"unseen", "training"}
    assert result.splits["unseen"].shown.env_kwargs["start_level"] == 20
    endings = set()
    for split in result.splits.values():
        played = by_hand(split.shown.env_kwargs)
        causes = [c for c, _, _ in played]
        endings |= set(causes)
        for table in (split.shown, split.hidden["saws"]):
            assert table.episodes == 12 and table.completion["n"] == 12
            assert table.completion["rate"] == sum(s for _, s, _ in played) / 12
            for cause in FAILURE_CAUSES:
                assert table.deaths(cause) == causes.count(cause), cause
                assert table.failures[cause]["of_levels"]["rate"] == causes.count(cause) / 12
            assert table.length["mean"] == pytest.approx(np.mean([n for _, _, n in played]))
        hidden, shown = split.hidden["saws"], split.shown
        assert hidden.env_kwargs["invisible_saws"] is True
        # an agent that sees nothing it acts on: hiding saws changes no level
        assert (hidden.completion, hidden.failures, hidden.length) == (
            shown.completion, shown.failures, shown.length,
        )  # fmt: skip
        assert split.hidden_vs_shown["saws"]["completion"]["diff"] == 0.0
    # standing still, every level runs out of time: timeouts are the levels, each counted once
    assert endings == {"timeout"}
    for split in result.splits.values():
        assert split.shown.deaths("timeout") == 12 and split.shown.completion["rate"] == 0.0
        assert split.shown.length["mean"] == split.shown.env_kwargs["max_steps"]
    assert FailureStudy.from_json(json.loads(json.dumps(result.to_json()))) == result


@pytest.mark.slow
def test_failures_command_and_bad_input(tiny_hazard_run) -> None:
    import json

    from typer.testing import CliRunner

    from policylens.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["failures", str(tiny_hazard_run.path), "--levels", "6", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["splits"]["training"]["shown"]["episodes"] == 6
    r = runner.invoke(
        app, ["failures", str(tiny_hazard_run.path), "--levels", "6", "--invisible", "lava"]
    )
    assert r.exit_code == 2 and "Unknown invisible hazard 'lava'" in r.output
    r = runner.invoke(app, ["train", "hazards", "--out", str(tiny_hazard_run.path.parent / "nothing"),
                            "--resume", "--steps", "8192"])  # fmt: skip
    assert r.exit_code == 2 and "no run to continue" in r.output


@pytest.mark.slow
def test_report_pictures(tiny_hazard_run) -> None:
    from policylens.report.hazards import episode_frames, frame_strip, gif_bytes, level_gallery
    from policylens.studies.hazards.episodes import play_levels

    gallery = level_gallery(4, config=HazardsConfig())
    assert gallery.ndim == 3 and gallery.shape[2] == 3
    [ep] = play_levels(
        tiny_hazard_run.load_agent(), tiny_hazard_run.config["trainer"]["env_kwargs"], 1, seed=4
    )
    assert len(ep.agent) >= 2 and ep.death_cause in (
        "none",
        "saw",
        "enemy",
        "lava",
        "fell",
        "timeout",
        "multiple",
    )
    assert np.array_equal(ep.agent[0], generate_level(ep.start.level_seed).agent)
    frames = episode_frames(ep, every=5)
    last = len(ep.agent) - 1
    assert len(frames) == len(range(0, last + 1, 5)) + (last % 5 != 0)  # the last step too
    assert frame_strip(ep, frames=3).shape[0] > frames[0].shape[0]
    assert gif_bytes(frames[:3])[:6] == b"GIF89a"


@pytest.mark.slow
def test_report_reuses_saved_failure_tables(tiny_hazard_run, tmp_path, monkeypatch) -> None:
    import dataclasses
    import json

    from typer.testing import CliRunner

    from policylens.cli import app
    from policylens.report.hazards import render
    from policylens.studies.hazards import failures
    from policylens.studies.hazards import overview as overview_module
    from policylens.studies.hazards.failures import FailureOptions, run_failures
    from policylens.studies.hazards.overview import OverviewOptions, run_overview

    tables = run_failures(tiny_hazard_run, FailureOptions(4, ("enemies",), seed=1))
    measured: list[FailureOptions] = []  # every measurement of failure tables from here on

    def counted(run, options):
        measured.append(options)
        return run_failures(run, options)

    monkeypatch.setattr(failures, "run_failures", counted)
    monkeypatch.setattr(overview_module, "run_failures", counted)
    logs: list[str] = []
    # without tables the overview measures them (the counter sees a run)...
    fresh = run_overview(
        tiny_hazard_run, OverviewOptions(FailureOptions(2), played=2), log=logs.append
    )
    assert len(measured) == 1 and fresh.failures.episodes == 2
    measured.clear()
    logs.clear()
    # ...with them, it measures nothing
    options = OverviewOptions(tables=tables, played=4)
    overview = run_overview(tiny_hazard_run, options, log=logs.append)
    assert overview.failures is tables and not any("failure tables" in m for m in logs)
    assert measured == []
    assert 1 <= len(overview.episodes) <= 4 and overview.split == "unseen"
    path = render(overview, tiny_hazard_run.analysis_dir, tmp_path / "r.html")
    page = path.read_text()
    assert "enemies invisible" in page and "data:image/gif;base64," in page
    assert (tiny_hazard_run.analysis_dir / "agent.gif").stat().st_size > 0
    other = dataclasses.replace(tables, run=str(tmp_path))
    with pytest.raises(ValueError, match="the failure tables given are of"):
        run_overview(tiny_hazard_run, OverviewOptions(tables=other), log=logs.append)
    # the command reads the tables `policylens failures --json` printed
    saved = tmp_path / "tables.json"
    saved.write_text(json.dumps(tables.to_json()))
    args = ["hazards-report", str(tiny_hazard_run.path), "--failures", str(saved)]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "c.html"), "--json"])
    assert r.exit_code == 0, r.output
    assert measured == []  # the command measured no tables either
    assert json.loads(r.stdout) == {"report": str(tmp_path / "c.html")}
    assert "enemies invisible" in (tmp_path / "c.html").read_text()


def test_action_names_say_which_way_the_agent_goes() -> None:
    from policylens.envs.hazards import ACTION_NAMES
    from policylens.worlds import for_env

    assert for_env("policylens/Hazards-v0").names_of_actions({}, 15) == list(ACTION_NAMES)
    cols = {}
    for name in ("left", "noop", "right"):
        envs = HazardsVecEnv(4, max_difficulty=1)
        envs.reset(seed=5)
        for _ in range(6):
            _, _, _, _, infos = envs.step(np.full(4, ACTION_NAMES.index(name)))
        cols[name] = infos["agent_pos"][:, 1]
    assert (cols["left"] < cols["noop"]).all() and (cols["noop"] < cols["right"]).all()
    envs = HazardsVecEnv(4, max_difficulty=1)
    _, infos = envs.reset(seed=5)
    row = infos["agent_pos"][:, 0].copy()
    _, _, _, _, infos = envs.step(np.full(4, ACTION_NAMES.index("jump")))
    for _ in range(2):
        _, _, _, _, infos = envs.step(np.full(4, ACTION_NAMES.index("noop")))
    assert (infos["agent_pos"][:, 0] < row).all()  # rows grow downward: a jump rises
