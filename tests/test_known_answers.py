"""Known-answer tests: each study result checked against an answer the code under test did not
compute: a level replayed by hand with the world's own gymnasium env, a hand-built agent whose
features are known by construction, a recursion written out here, numpy on a hand-set SAE, or
the peer library (SAELens) loading what policylens exports."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import policylens  # noqa: F401  (registers the worlds)
from policylens.agents.agent import HookedAgent
from policylens.envs.hazards import ACTION_NAMES, CHANNELS

HAZARDS = "policylens/Hazards-v0"
SYMBOLIC = (len(CHANNELS), 13, 13)


# -- hazard failure tables: a blind scripted agent, replayed by hand ------------------------------
BLIND_PROBS = np.zeros(len(ACTION_NAMES))
for _name, _p in (("right", 0.45), ("right+jump", 0.35), ("jump", 0.1), ("left", 0.1)):
    BLIND_PROBS[ACTION_NAMES.index(_name)] = _p


class _Blind(nn.Module):
    """Fixed action probabilities whatever it sees (value 0): its actions are the sampling
    policy's random numbers alone."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "logits", torch.tensor(np.log(np.maximum(BLIND_PROBS, 1e-300)), dtype=torch.float32)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits.expand(len(x), -1).clone(), torch.zeros(len(x))


def blind_agent() -> HookedAgent:
    return HookedAgent.from_module(_Blind(), SYMBOLIC, len(ACTION_NAMES), obs_kind="grid")


def replay_by_hand(n: int, env_kwargs: dict, seed: int) -> list[dict]:
    """Each of ``n`` levels played with ``gymnasium.make`` and a step loop: env ``i`` is reset
    with ``seed + i`` (one wave), its action at step t is the inverse CDF of the blind agent's
    probabilities at uniform ``U_t[0, i]``, the uniforms drawn (2, n) per step from a torch
    generator seeded ``seed`` (the sampling policy's documented contract)."""
    max_steps = env_kwargs["max_steps"]
    gen = torch.Generator().manual_seed(seed)
    uniforms = np.stack([torch.rand(2, n, generator=gen)[0].numpy() for _ in range(max_steps)])
    cdf = np.cumsum(BLIND_PROBS)
    out = []
    for i in range(n):
        env = gym.make(HAZARDS, **env_kwargs, masks=False)
        obs, _ = env.reset(seed=seed + i)
        seen, rewards = [obs], []
        for t in range(max_steps):
            action = int(np.searchsorted(cdf, uniforms[t, i] * cdf[-1]))
            obs, reward, terminated, truncated, info = env.step(action)
            seen.append(obs)
            rewards.append(reward)
            if terminated or truncated:
                break
        out.append({"cause": info["death_cause"], "side": info["enemy_side"], "length": t + 1,
                    "success": bool(info["success"]), "terminated": terminated,
                    "obs": np.stack(seen), "rewards": np.array(rewards)})  # fmt: skip
        env.close()
    return out


@pytest.fixture(scope="module")
def blind_tables():
    from policylens.studies.hazards.failures import failure_table

    env = {"layout": "path", "max_difficulty": 1, "max_steps": 60, "start_level": 500}
    agent = blind_agent()
    shown = failure_table(agent, 40, env, seed=7)
    hidden = failure_table(agent, 40, {**env, "invisible_saws": True, "invisible_enemies": True},
                           seed=7)  # fmt: skip
    return env, shown, hidden


def test_failure_table_of_a_blind_agent_is_its_levels_replayed_by_hand(blind_tables) -> None:
    from policylens.studies.hazards.failures import FAILURE_CAUSES

    env, shown, _ = blind_tables
    played = replay_by_hand(40, env, seed=7)
    causes = [p["cause"] for p in played]
    # the example reaches several endings, so the counts below tell causes apart
    assert {"saw", "enemy", "timeout"} <= set(causes), causes
    assert shown.episodes == 40
    assert shown.completion["rate"] == sum(p["success"] for p in played) / 40
    for cause in FAILURE_CAUSES:
        assert shown.deaths(cause) == causes.count(cause), cause
        failed = [c for c, p in zip(causes, played, strict=True) if not p["success"]]
        assert shown.failures[cause]["of_failures"]["rate"] == pytest.approx(
            failed.count(cause) / len(failed)
        )
    sides = [p["side"] for p in played if p["cause"] == "enemy"]
    assert shown.enemy_sides == {s: sides.count(s) for s in ("front", "back", "above")}
    assert sum(shown.enemy_sides.values()) == causes.count("enemy")
    assert shown.length["mean"] == pytest.approx(np.mean([p["length"] for p in played]))


def test_hiding_hazards_from_a_blind_agent_changes_nothing(blind_tables) -> None:
    from policylens.studies.hazards.failures import hidden_vs_shown

    _, shown, hidden = blind_tables
    assert hidden.env_kwargs["invisible_saws"] and hidden.env_kwargs["invisible_enemies"]
    assert (hidden.completion, hidden.failures, hidden.enemy_sides, hidden.length) == (
        shown.completion, shown.failures, shown.enemy_sides, shown.length,
    )  # fmt: skip
    for cause, d in hidden_vs_shown(hidden, shown).items():
        assert d["diff"] == 0.0 and not d["effect"], cause


# -- RL vision: an agent whose value reads the saw and coin planes only ------------------------------
SAW_CH, COIN_CH = CHANNELS.index("saw"), CHANNELS.index("coin")


class _SawCoinValue(nn.Module):
    """A 1x1 conv copying the saw plane to channel 0 and half the coin plane to channel 1; the
    value is the sum of both after the ReLU (so its integrated gradients at the ReLU are those
    maps exactly); it acts as the blind agent does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(len(CHANNELS), 2, 1, bias=False)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, SAW_CH] = 1.0
            self.conv.weight[1, COIN_CH] = 0.5
        self.register_buffer("logits", torch.tensor(np.log(np.maximum(BLIND_PROBS, 1e-300)),
                                                    dtype=torch.float32))  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.relu(self.conv(x))
        return self.logits.expand(len(x), -1).clone(), a.sum((1, 2, 3))


@pytest.fixture(scope="module")
def saw_features():
    from policylens.studies.rl_vision.features import hazard_features
    from policylens.worlds.hazards import collect_frames

    agent = HookedAgent.from_module(_SawCoinValue(), SYMBOLIC, len(ACTION_NAMES), obs_kind="grid")
    env = {"layout": "path", "max_difficulty": 1, "max_steps": 60, "start_level": 900}
    frames = collect_frames(agent, env, 96, episodes=32, every=2, seed=3)
    return agent, hazard_features(agent, frames, layer="relu.hook_out", k=2, n_steps=2)


def test_a_value_reading_the_saw_plane_has_a_saw_feature_and_its_score_by_hand(saw_features):
    from policylens.worlds.hazards import OBJECTS

    _, hf = saw_features
    frames = hf.frames
    assert frames.masks["saw"].any() and frames.masks["coin"].any()
    result = hf.result()
    saw, coin = hf.feature_for("saw"), hf.feature_for("coin")
    assert saw != coin
    assert hf.nmf.labels[saw]["label"] == "saw" and hf.nmf.labels[saw]["correlation"] > 0.9
    assert hf.nmf.labels[coin]["label"] == "coin"
    assert result.best_alignment["saw"] > 0.9 and result.hazards_named["saw"]

    # by hand: the features' maps are the planes the value reads, so each feature's alignment is
    # the best Pearson correlation of its plane with an object mask, and the score their mean
    def best(plane: np.ndarray) -> float:
        return max(
            np.corrcoef(plane.ravel(), frames.masks[name].ravel().astype(float))[0, 1]
            for name in OBJECTS
            if frames.masks[name].std() > 0
        )

    planes = frames.obs[:, SAW_CH].astype(float), frames.obs[:, COIN_CH].astype(float)
    hand = np.mean([best(p) for p in planes])
    assert result.interpretability_score == pytest.approx(hand, abs=1e-4)
    # the feature maps are the planes themselves, up to scale
    for i, plane in ((saw, planes[0]), (coin, planes[1])):
        assert np.corrcoef(hf.nmf.maps[..., i].ravel(), plane.ravel())[0, 1] == pytest.approx(
            1.0, abs=1e-6
        )


def test_a_value_reading_the_saw_plane_hallucinates_nothing(saw_features):
    from policylens.studies.rl_vision.hallucinations import find_hallucinations
    from policylens.worlds.hazards import masks_at

    _, hf = saw_features
    maps = hf.nmf.maps
    found, counts = find_hallucinations(maps, masks_at(hf.frames.masks, maps.shape[1:3]),
                                        hf.nmf.labels)  # fmt: skip
    assert found == []
    checked = {c["label"]: c["cells"] for c in counts.values()}
    assert checked == {"saw": 0, "coin": 0}  # both features were checked, and found clean


# -- GAE of the dissection's failed levels: the last step, ended or cut off ------------------------
WALL_CH = CHANNELS.index("wall")


class _WallCounter(nn.Module):
    """Acts as the blind agent; its value is 1 + 0.01 x the wall tiles in view."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(np.log(np.maximum(BLIND_PROBS, 1e-300)),
                                                    dtype=torch.float32))  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits.expand(len(x), -1).clone(), 1.0 + 0.01 * x[:, WALL_CH].sum((1, 2))


def hand_gae(rewards, values, last_next_value, gamma, lam) -> list[float]:
    """A_t = delta_t + gamma lam A_t+1, delta_t = r_t + gamma V_t+1 - V_t, V_T = last_next_value."""
    out, following, nxt = [], 0.0, last_next_value
    for r, v in zip(reversed(rewards), reversed(values), strict=True):
        following = r + gamma * nxt - v + gamma * lam * following
        out.append(following)
        nxt = v
    return out[::-1]


def test_dissection_advantages_end_without_bootstrap_or_from_the_final_observation() -> None:
    from policylens.studies.rl_vision.dissection import failed_episodes

    agent = HookedAgent.from_module(_WallCounter(), SYMBOLIC, len(ACTION_NAMES), obs_kind="grid")
    env = {"layout": "path", "max_difficulty": 1, "max_steps": 60, "start_level": 500}
    gamma, lam, window = 0.9, 0.8, 4
    n, found = failed_episodes(agent, env, 40, window=window, seed=7, gamma=gamma,
                               gae_lambda=lam)  # fmt: skip
    played = replay_by_hand(40, env, seed=7)

    def value(obs: np.ndarray) -> float:
        return 1.0 + 0.01 * float(obs[WALL_CH].sum())

    assert n == 40 and [e.episode for e in found] == [
        i for i, p in enumerate(played) if not p["success"]
    ]
    endings = set()
    for ep in found:
        p = played[ep.episode]
        assert ep.cause == p["cause"]
        acted = p["obs"][:-1][-window:]  # the last `window` observations acted on
        v = [value(o) for o in acted]
        np.testing.assert_allclose(ep.values, v, rtol=1e-6)
        # ended by a hazard: nothing follows; cut off by the step limit: the final observation's
        # value follows the last step (the observation the env returned, not the next level's)
        follow = 0.0 if p["terminated"] else value(p["obs"][-1])
        expected = hand_gae(p["rewards"][-window:], v, follow, gamma, lam)
        np.testing.assert_allclose(ep.advantages, expected, rtol=1e-5, atol=1e-6)
        endings.add(p["terminated"])
    assert endings == {True, False}  # both endings checked


# -- SAEs: evaluate_sae by numpy, and the SAELens export read by SAELens itself -------------------
def hand_set_sae(arch: str = "relu"):
    """A 3 -> 4 SAE set by hand: latent 3 has a bias no input overcomes (dead by construction)."""
    from policylens.agents.sae import SAEConfig, build_sae

    sae = build_sae(SAEConfig(d_in=3, d_sae=4, arch=arch, k=2))
    w_enc = np.array([[1.0, 0.0, 0.5, 0.1], [0.0, 1.0, -0.5, 0.1], [0.5, 0.5, 0.0, 0.1]])
    w_dec = np.array([[0.8, 0.0, 0.6], [0.0, 0.6, 0.8], [0.6, -0.8, 0.0], [1.0, 0.0, 0.0]])
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor(w_enc))
        sae.W_dec.copy_(torch.tensor(w_dec))
        sae.b_enc.copy_(torch.tensor([0.0, -0.2, 0.1, -100.0]))
        sae.b_dec.copy_(torch.tensor([0.1, 0.0, -0.1]))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.tensor([0.3, 0.3, 0.05, 0.3]))
    return sae


X = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0], [2.0, 0.0, 0.5], [-1.0, -1.0, -1.0],
              [0.5, 0.5, 0.5]])  # fmt: skip


def test_evaluate_sae_is_the_numpy_computation_of_each_metric() -> None:
    from policylens.lenses.sae import evaluate_sae

    sae = hand_set_sae()
    W_enc, W_dec = sae.W_enc.detach().double().numpy(), sae.W_dec.detach().double().numpy()
    b_enc, b_dec = sae.b_enc.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    z = np.maximum((X - b_dec) @ W_enc + b_enc, 0)
    recon = z @ W_dec + b_dec
    err = ((recon - X) ** 2).sum()
    expected = {
        "mse": err / X.size,
        "explained_variance": 1 - err / ((X - X.mean(0)) ** 2).sum(),
        "l0": (z != 0).sum() / len(X),
        "l1": np.abs(z).sum() / len(X),
        "dead_fraction": 0.25,  # latent 3 only, by construction
    }
    assert ((z != 0).any(0) == [True, True, True, False]).all()
    for batch_size in (8192, 2):  # in one batch and in batches (the mean is the whole set's)
        got = evaluate_sae(sae, torch.tensor(X, dtype=torch.float32), batch_size=batch_size)
        assert got.keys() == expected.keys()
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (k, batch_size)


@pytest.mark.slow  # importing sae_lens takes seconds
@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_saelens_loads_the_export_and_encodes_and_decodes_as_policylens(arch, tmp_path) -> None:
    from oracles import require

    from policylens.agents.sae import export_saelens

    sae_lens = require("sae_lens")
    sae = hand_set_sae(arch)
    peer = sae_lens.SAE.load_from_disk(export_saelens(sae, tmp_path / arch))
    assert peer.cfg.d_in == 3 and peer.cfg.d_sae == 4
    x = torch.tensor(np.concatenate([X, np.random.default_rng(0).normal(0, 2, (64, 3))]),
                     dtype=torch.float32)  # fmt: skip
    with torch.no_grad():
        z = sae.encode(x)
        assert (z != 0).any() and (z == 0).any()  # some latents on, some off: a real comparison
        torch.testing.assert_close(peer.encode(x), z, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(peer.decode(z), sae.decode(z), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(peer(x), sae(x)[0], rtol=1e-6, atol=1e-6)
