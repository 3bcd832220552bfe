"""DuPlessie's rook endgame (rules="duplessie") against a port of his environment, and a Q-network
in his encoding loaded with load_agent.

The reference below restates the rules of ``envs/chess_env.py`` in
github.com/ColemanDuPlessie/Simple-Chess-RL-SAE (pieces as ``(x, y)``, one-hot index
``x + y * size``, planes wRook, wKing, bKing, actions as his ``_action_to_direction``), written
from his code, independently of policylens's board tables.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from policylens import load_agent
from policylens.envs.chess import (
    RookEndgameConfig,
    RookEndgameEnv,
    ScriptedEndgamePlayer,
    action_names,
    get_tablebase,
    position_from_obs,
    rules_actions,
)
from policylens.rollout.engine import EpisodeOptions, Policy, run_episodes

SIZE = 5
CHESS = "policylens/RookEndgame-v0"


def his_actions(size: int = SIZE) -> list[tuple[str, tuple[int, int]]]:
    """His ``_action_to_direction``: (piece, (dx, dy)) per action."""
    king = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]
    out = [("wKing", d) for d in king]
    for dx, dy in ((1, 0), (0, 1), (-1, 0), (0, -1)):
        out += [("wRook", (dx * k, dy * k)) for k in range(1, size)]
    return out


def threatened(p: dict, c: tuple[int, int]) -> bool:
    wk, wr = p["wKing"], p["wRook"]
    ans = abs(wk[0] - c[0]) <= 1 and abs(wk[1] - c[1]) <= 1
    ans = ans or (
        wr[0] == c[0] and not (wk[0] == c[0] and min(c[1], wr[1]) < wk[1] < max(c[1], wr[1]))
    )
    return ans or (
        wr[1] == c[1] and not (wk[1] == c[1] and min(c[0], wr[0]) < wk[0] < max(c[0], wr[0]))
    )


def his_step(p: dict, action: int, size: int = SIZE) -> tuple[float, bool, list | None]:
    """His step up to black's reply: (reward, done, black's candidate replies or None)."""
    piece, (dx, dy) = his_actions(size)[action]
    new = (p[piece][0] + dx, p[piece][1] + dy)
    if not (min(new) >= 0 and max(new) < size):
        return -100.0, True, None
    if piece == "wRook":
        mag = max(abs(dx), abs(dy))
        ux, uy = dx // mag, dy // mag
        for i in range(mag):
            space = (new[0] - ux * i, new[1] - uy * i)
            if space in (p["wKing"], p["bKing"]):
                return -100.0, True, None
    elif new == p["wRook"]:
        return -100.0, True, None
    p = {**p, piece: new}
    wk, wr, bk = p["wKing"], p["wRook"], p["bKing"]
    if abs(wk[0] - bk[0]) <= 1 and abs(wk[1] - bk[1]) <= 1:
        return -100.0, True, None  # black could take the king
    if (
        abs(wr[0] - bk[0]) <= 1
        and abs(wr[1] - bk[1]) <= 1
        and (abs(wk[0] - wr[0]) > 1 or abs(wk[1] - wr[1]) > 1)
    ):
        return -100.0, True, None  # black could take the undefended rook
    moves = [
        (bk[0] + i, bk[1] + j)
        for i in (-1, 0, 1)
        for j in (-1, 0, 1)
        if (i, j) != (0, 0)
        and 0 <= bk[0] + i < size
        and 0 <= bk[1] + j < size
        and not threatened(p, (bk[0] + i, bk[1] + j))
    ]
    if not moves:
        return (100.0 if threatened(p, bk) else -100.0), True, None

    def d2(a: tuple, b: tuple) -> float:
        return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2

    best = min(d2(m, wr) for m in moves)
    near = [m for m in moves if d2(m, wr) == best]
    centre = ((size - 1) / 2, (size - 1) / 2)
    best = min(d2(m, centre) for m in near)
    return -1.0, False, [{**p, "bKing": m} for m in near if d2(m, centre) == best]


def his_obs(p: dict, size: int = SIZE) -> np.ndarray:
    out = np.zeros(3 * size * size)
    for plane, key in enumerate(("wRook", "wKing", "bKing")):
        x, y = p[key]
        out[plane * size * size + x + y * size] = 1
    return out


def to_rc(p: dict) -> tuple:
    """His (x, y) pieces as policylens (row, col) = (y, x): white king, rook, black king."""
    return tuple((p[k][1], p[k][0]) for k in ("wKing", "wRook", "bKing"))


def from_rc(pos: tuple) -> dict:
    return {k: (c, r) for k, (r, c) in zip(("wKing", "wRook", "bKing"), pos, strict=True)}


def test_every_move_from_many_positions_follows_his_rules() -> None:
    env = RookEndgameEnv(rules="duplessie")
    rng = np.random.default_rng(0)
    for _ in range(150):
        obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
        p = from_rc(env.position)
        assert np.array_equal(obs, his_obs(p))
        for a in range(env.config.num_actions):
            env.reset(options={"position": to_rc(p)})
            obs, reward, terminated, truncated, info = env.step(a)
            want_r, want_done, replies = his_step(p, a)
            assert (reward, terminated, truncated) == (want_r, want_done, False), (p, a)
            if not want_done:
                assert any(np.array_equal(obs, his_obs(q)) for q in replies), (p, a)
                assert position_from_obs(obs, "duplessie") == env.position


def test_whole_games_follow_his_rules_and_the_move_limit_loses() -> None:
    env = RookEndgameEnv(rules="duplessie", opponent="chase")
    player = ScriptedEndgamePlayer("random_legal", seed=3, rules="duplessie")
    rng = np.random.default_rng(1)
    timeouts = 0
    for game in range(60):
        obs, info = env.reset(seed=game)
        done, steps = False, 0
        while not done:
            p = from_rc(env.position)
            legal = np.flatnonzero(info["safe_actions"] & ~info["mate_actions"])
            a = int(rng.choice(legal)) if len(legal) else player.act(info)
            obs, reward, terminated, truncated, info = env.step(a)
            steps += 1
            want_r, want_done, replies = his_step(p, a)
            done = terminated or truncated
            if steps == 50 and not want_done:  # his _move_timer reaching 50: -100 and done
                want_r, want_done = -100.0, True
                timeouts += 1
                assert info["outcome"] == "truncated"
            assert (reward, terminated, truncated) == (want_r, want_done, False)
            if not done:
                assert any(np.array_equal(obs, his_obs(q)) for q in replies)
    assert timeouts > 0  # never mating on purpose reaches the limit


def test_starts_are_drawn_as_his_reset_draws_them() -> None:
    """His reset draws the rook, then the king, then the black king on an unattacked square, so
    the number of such squares averages over (rook, king) pairs; a start uniform over positions
    weighs each pair by that number instead."""
    squares = [(x, y) for y in range(SIZE) for x in range(SIZE)]

    def free(wk: tuple, wr: tuple) -> int:
        return sum(not threatened({"wKing": wk, "wRook": wr}, s) for s in squares)

    counts = np.array([free(wk, wr) for wr in squares for wk in squares if wk != wr], float)
    want = {"duplessie": counts.mean(), "policylens": (counts**2).sum() / counts.sum()}
    assert want["policylens"] - want["duplessie"] > 0.3  # 11.73 vs 12.07 squares
    for rules, expected in want.items():
        env = RookEndgameEnv(rules=rules)
        env.reset(seed=0)
        drawn = []
        for _ in range(4000):
            env.reset()
            p = from_rc(env.position)
            drawn.append(free(p["wKing"], p["wRook"]))
        assert abs(np.mean(drawn) - expected) < 0.12, rules  # 4 standard errors


def test_rules_set_their_defaults_and_number_actions_his_way() -> None:
    his = RookEndgameConfig(rules="duplessie")
    assert (his.opponent, his.blunder_rule, his.timeout_reward) == ("chase", "hanging", -100.0)
    ours = RookEndgameConfig()
    assert (ours.opponent, ours.blunder_rule, ours.timeout_reward) == ("random", "capture", None)
    assert RookEndgameConfig(rules="duplessie", opponent="random").opponent == "random"
    names = action_names(5, "duplessie")
    assert names[:3] == ("king_e", "king_se", "king_s") and names[7] == "king_ne"
    assert names[8:12] == tuple(f"rook_right_{k}" for k in range(1, 5))
    assert names[20:24] == tuple(f"rook_up_{k}" for k in range(1, 5))
    assert sorted(rules_actions(5, "duplessie")) == list(range(24))
    with pytest.raises(ValueError, match="Unknown rook endgame rules 'duplesie'. Did you mean"):
        RookEndgameConfig(rules="duplesie")


def optimal_targets() -> tuple[np.ndarray, np.ndarray]:
    """Every position with a forced mate, as his observation, and the mating moves in his
    numbering (the tablebase's, mapped through the duplessie world's numbering)."""
    env = RookEndgameEnv(rules="duplessie")
    tablebase, his = get_tablebase(SIZE), rules_actions(SIZE, "duplessie")
    obs, targets = [], []
    for pos in tablebase._positions:
        if tablebase.mate_distance_of(pos) > 0:
            obs.append(env.observe(*(divmod(s, SIZE) for s in pos)))
            targets.append(tablebase.optimal_actions_of(pos)[his])
    return np.stack(obs).astype(np.float32), np.stack(targets)


@pytest.mark.slow
def test_a_network_trained_in_his_encoding_loads_and_mates(tmp_path) -> None:
    obs, targets = optimal_targets()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(75, 96), nn.ReLU(), nn.Linear(96, 24))
    x, y = torch.from_numpy(obs), torch.from_numpy(targets).float()
    y /= y.sum(1, keepdim=True)  # imitate the tablebase: mass spread over its best moves
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        loss = -(y * torch.log_softmax(net(x), 1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        best = net(x).argmax(1)
    assert targets[np.arange(len(best)), best.numpy()].mean() > 0.95  # it learned his numbering
    path = tmp_path / "qnet.pt"
    torch.save(net.state_dict(), path)

    agent = load_agent(path)
    assert agent.hook_names()[:2] == ["layers.0.hook_linear", "layers.0.hook_act"]
    assert agent.num_actions == 24 and agent.obs_shape == (75,)
    with torch.no_grad():
        torch.testing.assert_close(agent(obs[:64])[0], net(x[:64]))
    policy = Policy(greedy=True)
    options = EpisodeOptions(seed=0, policy=policy)
    his_world = run_episodes(agent, 200, CHESS, {"rules": "duplessie"}, options)
    ours = run_episodes(agent, 200, CHESS, {"opponent": "chase"}, options)
    mate_his = np.mean([e.success for e in his_world])
    mate_ours = np.mean([e.success for e in ours])
    assert mate_his > 0.75 and mate_ours < 0.5 * mate_his  # the encoding is his, not ours


def test_linear_chain_loader_reads_fc_names_and_refuses_other_state_dicts(tmp_path) -> None:
    fc = {"fc1.weight": torch.randn(16, 75), "fc1.bias": torch.randn(16),
          "fc3.weight": torch.randn(24, 16), "fc3.bias": torch.randn(24)}  # fmt: skip
    torch.save(fc, tmp_path / "one_layer.pt")  # his single-hidden-layer CheckmateQnet
    agent = load_agent(tmp_path / "one_layer.pt")
    obs = torch.rand(3, 75)
    want = torch.relu(obs @ fc["fc1.weight"].T + fc["fc1.bias"]) @ fc["fc3.weight"].T
    torch.testing.assert_close(agent(obs)[0], want + fc["fc3.bias"])
    broken = dict(fc, **{"fc3.weight": torch.randn(24, 8)})  # widths do not chain
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="not an IMPALA maze checkpoint"):
        load_agent(tmp_path / "broken.pt")
