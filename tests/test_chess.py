"""Tests of the rook-checkmate world (policylens.envs.chess)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policylens.envs import register_world
from policylens.envs.chess import (
    ACTION_NAMES,
    NO_POS,
    RookEndgameEnv,
    ScriptedEndgamePlayer,
    evaluate_player,
    get_tablebase,
)

ENV_ID = "policylens/RookEndgame-v0"
A = {name: i for i, name in enumerate(ACTION_NAMES)}


def play(env: RookEndgameEnv, position, action: str | int):
    env.reset(seed=0, options={"position": position})
    return env.step(A[action] if isinstance(action, str) else action)


# -- a naive reference implementation of the rules, written independently of the env ----------
def _near(a, b) -> bool:
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) <= 1


def _on(p, n=5) -> bool:
    return 0 <= p[0] < n and 0 <= p[1] < n


def _rook_hits(rook, target, blockers) -> bool:
    """Does a rook on ``rook`` attack ``target`` with ``blockers`` in the way?"""
    if rook == target or (rook[0] != target[0] and rook[1] != target[1]):
        return False
    dr = (target[0] > rook[0]) - (target[0] < rook[0])
    dc = (target[1] > rook[1]) - (target[1] < rook[1])
    p = (rook[0] + dr, rook[1] + dc)
    while p != target:
        if p in blockers:
            return False
        p = (p[0] + dr, p[1] + dc)
    return True


def _naive_white_result(wk, wr, bk, action):
    """The position after white's move, or None if it is illegal."""
    if action < 8:
        dr, dc = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)][action]
        t = (wk[0] + dr, wk[1] + dc)
        if not _on(t) or t == wr or _near(t, bk):
            return None
        return t, wr, bk
    d, k = divmod(action - 8, 4)
    k += 1  # distance 1..4
    dr, dc = [(-1, 0), (1, 0), (0, -1), (0, 1)][d]
    path = [(wr[0] + dr * i, wr[1] + dc * i) for i in range(1, k + 1)]
    if not all(_on(p) for p in path) or any(p in (wk, bk) for p in path):
        return None
    return wk, path[-1], bk


def _naive_black(wk, wr, bk):
    """(in check, legal black king targets) with black to move."""
    check = _rook_hits(wr, bk, {wk})
    moves = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            t = (bk[0] + dr, bk[1] + dc)
            if (dr, dc) == (0, 0) or not _on(t) or _near(t, wk):
                continue
            if t != wr and _rook_hits(wr, t, {wk}):  # the black king does not shield itself
                continue
            moves.append(t)
    return check, moves


@pytest.fixture
def env() -> RookEndgameEnv:
    return RookEndgameEnv()


# -- contract ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"opponent": "greedy", "obs_mode": "planes", "obs_dtype": "float32"},
        {"opponent": "chase", "board_size": 4, "blunder_rule": "hanging", "tablebase_labels": True},
        {"board_size": 6},
    ],
)
def test_check_env_passes(options):
    env = RookEndgameEnv(**options)
    check_env(env, skip_render_check=True)
    n = env.config.board_size
    assert env.action_space.n == 8 + 4 * (n - 1)
    expected_shape = (3 * n * n,) if env.config.obs_mode == "flat" else (3, n, n)
    assert env.observation_space.shape == expected_shape


def test_gymnasium_make_and_vector_env():
    if ENV_ID not in gym.registry:
        register_world(ENV_ID, "rook endgame", entry_point="policylens.envs.chess:RookEndgameEnv")
    env = gym.make(ENV_ID, opponent="greedy")
    obs, info = env.reset(seed=3)
    assert obs.shape == (75,) and env.action_space.n == 24
    assert env.unwrapped.config.opponent == "greedy"
    obs, reward, *_ = env.step(int(np.flatnonzero(info["safe_actions"])[0]))
    assert reward == -1.0
    vec = gym.make_vec(ENV_ID, num_envs=3, vectorization_mode="sync")
    obs, infos = vec.reset(seed=0)
    assert obs.shape == (3, 75)
    assert infos["legal_actions"].shape == (3, 24) and infos["legal_actions"].dtype == bool
    vec.close()


def test_standard_action_layout():
    assert len(ACTION_NAMES) == 24
    assert ACTION_NAMES[:8] == tuple(
        f"king_{d}" for d in ("n", "ne", "e", "se", "s", "sw", "w", "nw")
    )
    assert ACTION_NAMES[8] == "rook_up_1" and ACTION_NAMES[23] == "rook_right_4"


# -- outcomes and rewards on hand-made positions ---------------------------------------------
def test_checkmate_in_the_corner(env):
    # Black king in the corner, white king two squares below, rook swings up to the top row.
    obs, reward, terminated, truncated, info = play(env, ((2, 0), (4, 4), (0, 0)), "rook_up_4")
    assert (reward, terminated, truncated) == (100.0, True, False)
    assert info["outcome"] == "checkmate" and info["in_check"]
    assert info["white_rook_pos"] == (0, 4) and info["black_king_pos"] == (0, 0)
    assert obs[25 + 4] == 1 and obs.sum() == 3


def test_mate_actions_label_predicts_checkmate(env):
    _, info = env.reset(options={"position": ((2, 0), (4, 4), (0, 0))})
    assert info["can_mate"] and info["mate_actions"][A["rook_up_4"]]
    assert not info["mate_actions"][A["rook_left_3"]]  # that one stalemates


def test_stalemate(env):
    # Rook to the b-file: the king on a corner square has no move and is not in check.
    _, reward, terminated, _, info = play(env, ((2, 0), (4, 4), (0, 0)), "rook_left_3")
    assert (reward, terminated, info["outcome"]) == (-100.0, True, "stalemate")
    assert not info["in_check"] and info["white_rook_pos"] == (4, 1)


@pytest.mark.parametrize(
    ("position", "action"),
    [
        (((0, 2), (4, 4), (3, 0)), "king_n"),  # off the board
        (((2, 2), (4, 4), (0, 2)), "king_n"),  # next to the black king
        (((2, 2), (2, 3), (0, 0)), "king_e"),  # onto its own rook
        (((2, 2), (2, 4), (0, 0)), "rook_left_3"),  # through its own king
        (((2, 2), (2, 4), (0, 0)), "rook_left_2"),  # onto its own king
        (((2, 2), (1, 4), (4, 0)), "rook_up_2"),  # off the board
    ],
)
def test_illegal_moves_end_the_episode(env, position, action):
    _, info0 = env.reset(options={"position": position})
    assert not info0["legal_actions"][A[action]]
    obs, reward, terminated, _, info = env.step(A[action])
    assert (reward, terminated, info["outcome"]) == (-100.0, True, "illegal")
    assert (info["white_king_pos"], info["white_rook_pos"], info["black_king_pos"]) == position
    with pytest.raises(ValueError, match="reset"):
        env.step(0)


def test_normal_move_costs_one_and_labels_check(env):
    obs, reward, terminated, truncated, info = play(env, ((4, 2), (2, 4), (1, 0)), "rook_down_1")
    assert (reward, terminated, truncated, info["outcome"]) == (-1.0, False, False, "")
    assert not info["in_check"]
    # Rook to the top row checks the king on (0, 1); it must step down to row 1.
    _, reward, _, _, info = play(env, ((4, 2), (2, 4), (0, 1)), "rook_up_2")
    assert reward == -1.0 and info["in_check"]
    assert info["black_king_pos"][0] == 1  # escaped the rook's row


def test_greedy_opponent_takes_a_hanging_rook():
    env = RookEndgameEnv(opponent="greedy")
    for seed in range(5):
        _, info0 = env.reset(seed=seed, options={"position": ((4, 4), (0, 3), (2, 2))})
        assert not info0["safe_actions"][A["rook_down_1"]]
        obs, reward, terminated, _, info = env.step(A["rook_down_1"])  # rook to (1, 3), undefended
        assert (reward, terminated, info["outcome"]) == (-100.0, True, "blunder")
        assert info["white_rook_pos"] == NO_POS and info["black_king_pos"] == (1, 3)
        assert obs[25:50].sum() == 0 and obs.sum() == 2 and info["in_check"] is False


def test_random_opponent_sometimes_spares_the_rook_unless_blunder_rule_is_hanging():
    outcomes = set()
    env = RookEndgameEnv(opponent="random")
    for seed in range(40):
        env.reset(seed=seed, options={"position": ((4, 4), (0, 3), (2, 2))})
        outcomes.add(env.step(A["rook_down_1"])[4]["outcome"])
    assert outcomes == {"", "blunder"}
    hanging = RookEndgameEnv(opponent="random", blunder_rule="hanging")
    hanging.reset(options={"position": ((4, 4), (0, 3), (2, 2))})
    _, reward, terminated, _, info = hanging.step(A["rook_down_1"])
    assert (reward, terminated, info["outcome"]) == (-100.0, True, "blunder")
    assert info["white_rook_pos"] == (1, 3) and info["rook_en_prise"]


def test_defended_rook_is_not_taken():
    env = RookEndgameEnv(opponent="greedy")
    # Rook to (1, 3) next to the black king, but defended by the white king on (2, 4).
    _, info = env.reset(options={"position": ((2, 4), (4, 3), (0, 2))})
    assert info["safe_actions"][A["rook_up_3"]]
    _, reward, _, _, info = env.step(A["rook_up_3"])
    assert (reward, info["outcome"]) == (-1.0, "")
    assert info["white_rook_pos"] == (1, 3) and info["black_king_pos"] == (0, 1)


def test_greedy_opponent_heads_for_the_centre():
    env = RookEndgameEnv(opponent="greedy")
    for seed in range(5):
        env.reset(seed=seed, options={"position": ((4, 4), (4, 0), (0, 1))})
        _, _, _, _, info = env.step(A["king_n"])  # a quiet move; black on the top edge replies
        assert info["black_king_pos"] == (1, 2)  # the only neighbour nearest the centre (2, 2)


def test_truncation_after_max_steps():
    env = RookEndgameEnv(max_steps=3, opponent="greedy")
    _, info = env.reset(seed=0)
    for step in range(1, 4):
        quiet = np.flatnonzero(info["safe_actions"] & ~info["mate_actions"])
        assert len(quiet) > 0
        _, reward, terminated, truncated, info = env.step(int(quiet[0]))
        assert info["steps"] == step and not terminated and truncated == (step == 3)
    assert reward == -1.0 and info["outcome"] == "truncated"
    with pytest.raises(ValueError, match="reset"):
        env.step(0)


# -- observations, seeding, labels ------------------------------------------------------------
def test_observation_is_one_hot_over_three_planes():
    env = RookEndgameEnv(obs_mode="planes", obs_dtype="float32")
    obs, info = env.reset(options={"position": ((1, 2), (3, 4), (4, 0))})
    assert obs.dtype == np.float32 and obs.shape == (3, 5, 5) and obs.sum() == 3
    assert obs[0, 1, 2] == 1 and obs[1, 3, 4] == 1 and obs[2, 4, 0] == 1
    flat = RookEndgameEnv()
    for seed in range(20):
        o, info = flat.reset(seed=seed)
        assert o.dtype == np.uint8 and o.sum() == 3
        planes = o.reshape(3, 5, 5)
        for plane, key in enumerate(("white_king_pos", "white_rook_pos", "black_king_pos")):
            assert tuple(np.argwhere(planes[plane])[0]) == info[key]


def test_same_seed_same_game_and_different_seeds_differ():
    def trajectory(seed):
        env = RookEndgameEnv(opponent="random")
        obs, info = env.reset(seed=seed)
        player = ScriptedEndgamePlayer("random_legal", seed=1)
        out = [obs.tobytes()]
        for _ in range(10):
            obs, _, te, tr, info = env.step(player.act(info))
            out.append(obs.tobytes())
            if te or tr:
                break
        return out

    assert trajectory(7) == trajectory(7)
    starts = {trajectory(s)[0] for s in range(10)}
    assert len(starts) > 5


def test_starts_are_legal_and_do_not_depend_on_play():
    env = RookEndgameEnv()
    env.reset(seed=11)
    firsts = []
    for _ in range(30):
        _, info = env.reset()
        wk, wr, bk = info["white_king_pos"], info["white_rook_pos"], info["black_king_pos"]
        assert len({wk, wr, bk}) == 3 and not _near(wk, bk)
        assert not _naive_black(wk, wr, bk)[0]  # black not in check with white to move
        firsts.append((wk, wr, bk))
    other = RookEndgameEnv()
    other.reset(seed=11)
    seconds = []
    for _ in range(30):
        _, info = other.reset()
        seconds.append((info["white_king_pos"], info["white_rook_pos"], info["black_king_pos"]))
        other.step(int(np.flatnonzero(info["legal_actions"])[0]))  # play differs, starts do not
    assert firsts == seconds


def test_attack_and_edge_labels(env):
    _, info = env.reset(options={"position": ((2, 2), (3, 4), (4, 1))})
    attacked = info["attacked"].reshape(5, 5)
    king = {(1, 1), (1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2), (3, 3)}
    rook = {(0, 4), (1, 4), (2, 4), (4, 4), (3, 3), (3, 2), (3, 1), (3, 0)}
    assert {tuple(p) for p in np.argwhere(attacked)} == king | rook
    assert info["num_attacked"] == len(king | rook) == 13
    assert info["black_king_edge_distance"] == 0
    _, info = env.reset(options={"position": ((0, 0), (4, 4), (2, 2))})
    assert info["black_king_edge_distance"] == 2
    _, info = env.reset(options={"position": ((0, 0), (4, 4), (1, 3))})
    assert info["black_king_edge_distance"] == 1


def test_labels_match_a_naive_rules_implementation():
    """legal, mating and safe moves, and black's mobility, for a sample of all starts."""
    env = RookEndgameEnv()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(400):
        _, info = env.reset()
        if rng.random() < 0.5:  # also cover positions reached in play
            _, _, te, tr, info = env.step(int(rng.choice(np.flatnonzero(info["safe_actions"]))))
            if te or tr:
                continue
        wk, wr, bk = info["white_king_pos"], info["white_rook_pos"], info["black_king_pos"]
        assert info["black_king_moves"] == len(_naive_black(wk, wr, bk)[1])
        assert info["rook_en_prise"] == (_near(wr, bk) and not _near(wr, wk))
        for a in range(24):
            after = _naive_white_result(wk, wr, bk, a)
            assert info["legal_actions"][a] == (after is not None), (wk, wr, bk, ACTION_NAMES[a])
            if after is None:
                continue
            check, moves = _naive_black(*after)
            assert info["mate_actions"][a] == (check and not moves)
            assert info["safe_actions"][a] == ((check or bool(moves)) and after[1] not in moves)


def test_legal_mask_agrees_with_step_results():
    env = RookEndgameEnv(opponent="greedy")
    env.reset(seed=5)
    for _ in range(150):
        _, info = env.reset()
        position = (info["white_king_pos"], info["white_rook_pos"], info["black_king_pos"])
        for a in range(24):
            env.reset(options={"position": position})
            _, _, terminated, _, after = env.step(a)
            assert (after["outcome"] == "illegal") == (not info["legal_actions"][a])
            assert (after["outcome"] == "checkmate") == bool(info["mate_actions"][a])
            if info["safe_actions"][a]:
                assert after["outcome"] in ("", "checkmate")  # greedy takes any hanging rook


def test_action_masks_method(env):
    _, info = env.reset(seed=4)
    np.testing.assert_array_equal(env.action_masks(), info["legal_actions"])


# -- validation ------------------------------------------------------------------------------
def test_unknown_option_names_close_ones():
    with pytest.raises(ValueError, match="'oponent'.*opponent"):
        RookEndgameEnv(oponent="greedy")


def test_bad_option_values():
    with pytest.raises(
        ValueError,
        match="Unknown opponent 'gredy'. Did you mean 'greedy'.*Available: random, greedy, chase",
    ):
        RookEndgameEnv(opponent="gredy")
    with pytest.raises(ValueError, match="board_size"):
        RookEndgameEnv(board_size=9)
    with pytest.raises(ValueError, match="max_steps"):
        RookEndgameEnv(max_steps=0)


@pytest.mark.parametrize("action", [24, -1, 1.5, "3", None])
def test_action_out_of_range(env, action):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"0\.\.23"):
        env.step(action)


@pytest.mark.parametrize(
    ("position", "message"),
    [
        (((0, 0), (0, 0), (4, 4)), "share a square"),
        (((2, 2), (0, 0), (3, 3)), "adjacent"),
        (((0, 0), (4, 1), (2, 1)), "in check"),
        (((0, 0), (5, 1), (2, 3)), "off the 5x5 board"),
        (((0, 0), (4, 1)), "position must be"),
    ],
)
def test_illegal_positions_are_refused(env, position, message):
    with pytest.raises(ValueError, match=message):
        env.reset(options={"position": position})


def test_set_position_and_reset_options(env):
    env.reset(seed=0)
    obs, info = env.set_position((2, 0), (4, 4), (0, 0))
    assert env.position == ((2, 0), (4, 4), (0, 0)) and info["can_mate"]
    np.testing.assert_array_equal(obs, env.observe((2, 0), (4, 4), (0, 0)))
    obs2, _ = env.reset(
        options={"position": {"white_king": (2, 0), "white_rook": (4, 4), "black_king": (0, 0)}}
    )
    np.testing.assert_array_equal(obs, obs2)
    with pytest.raises(ValueError, match="only option is 'position'"):
        env.reset(options={"postion": ((2, 0), (4, 4), (0, 0))})


def test_render_modes():
    text = RookEndgameEnv(render_mode="ansi")
    text.reset(options={"position": ((2, 0), (4, 4), (0, 0))})
    assert text.render().splitlines()[0] == "k . . . ."
    assert text.render().splitlines()[4] == ". . . . R"
    image = RookEndgameEnv(render_mode="rgb_array")
    image.reset(seed=0)
    frame = image.render()
    assert frame.shape == (240, 240, 3) and frame.dtype == np.uint8
    with pytest.raises(ValueError, match="render_mode"):
        RookEndgameEnv(render_mode="human")


# -- tablebase and scripted players ---------------------------------------------------------
def test_tablebase_distances():
    tb = get_tablebase(5)
    d = tb.distances()
    assert (d >= 1).all()  # on 5x5 every legal start is a forced win
    assert tb.mate_distance((2, 0), (4, 4), (0, 0)) == 1
    env = RookEndgameEnv(tablebase_labels=True)
    env.reset(seed=0)
    for _ in range(200):
        _, info = env.reset()
        assert (info["mate_distance"] == 1) == info["can_mate"]
        if info["mate_distance"] == 1:
            np.testing.assert_array_equal(info["optimal_actions"], info["mate_actions"])
        assert info["optimal_actions"].any()
        assert not (info["optimal_actions"] & ~info["safe_actions"]).any()


def _naive_mate_in(wk, wr, bk, k: int) -> bool:
    """Can white force mate within ``k`` moves? (plain AND-OR search on the naive rules)"""
    for a in range(24):
        after = _naive_white_result(wk, wr, bk, a)
        if after is None:
            continue
        check, moves = _naive_black(*after)
        if not moves:
            if check:
                return True
            continue
        rook_safe = after[1] not in moves
        if k > 1 and rook_safe and all(_naive_mate_in(after[0], after[1], m, k - 1) for m in moves):
            return True
    return False


def test_tablebase_agrees_with_a_naive_search():
    tb = get_tablebase(5)
    env = RookEndgameEnv(tablebase_labels=True)
    env.reset(seed=2)
    seen = set()
    for _ in range(60):
        _, info = env.reset()
        d = info["mate_distance"]
        pos = (info["white_king_pos"], info["white_rook_pos"], info["black_king_pos"])
        assert tb.mate_distance(*pos) == d
        assert _naive_mate_in(*pos, 1) == (d == 1)
        assert _naive_mate_in(*pos, 2) == (d <= 2)
        seen.add(min(d, 3))
    assert seen == {1, 2, 3}


@pytest.mark.parametrize("opponent", ["random", "greedy", "chase"])
def test_tablebase_player_mates_within_the_mate_distance(opponent):
    env = RookEndgameEnv(opponent=opponent, tablebase_labels=True)
    player = ScriptedEndgamePlayer("tablebase", seed=0)
    env.reset(seed=1)
    for _ in range(40):
        _, info = env.reset()
        bound = info["mate_distance"]
        done = False
        while not done:
            before = info["mate_distance"]
            _, reward, terminated, truncated, info = env.step(player.act(info))
            done = terminated or truncated
            if not done:
                assert 1 <= info["mate_distance"] <= before - 1
        assert info["outcome"] == "checkmate" and reward == 100.0
        assert info["steps"] <= bound


def test_one_ply_player_never_loses_material_and_beats_random_play():
    one_ply = evaluate_player(
        ScriptedEndgamePlayer("one_ply", seed=0), 60, seed=0, opponent="greedy"
    )
    assert one_ply["blunder"] == one_ply["stalemate"] == one_ply["illegal"] == 0.0
    vs_random_one = evaluate_player(ScriptedEndgamePlayer("one_ply", seed=0), 60, seed=0)
    vs_random_rand = evaluate_player(ScriptedEndgamePlayer("random_legal", seed=0), 60, seed=0)
    assert vs_random_one["checkmate"] > vs_random_rand["checkmate"] + 0.2
    with pytest.raises(ValueError, match="Did you mean 'tablebase'.*Available: one_ply, tablebase"):
        ScriptedEndgamePlayer("tablebse")
