"""Isolating updates: update arithmetic and statistics, the two-phase protocol, both backends, CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from oracles import require
from torch import nn
from typer.testing import CliRunner

from policylens import worlds
from policylens.cli import app
from policylens.lenses import updates as U
from policylens.studies import lunar_updates as T

TINY = ["--num-envs", "4", "--num-steps", "64", "--hidden", "8"]


def _text(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _state(seed: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


SHAPES = {
    "layers.0.linear.weight": (16, 8),
    "layers.0.linear.bias": (16,),
    "policy_head.weight": (4, 16),
    "policy_head.bias": (4,),
    "value_head.weight": (1, 16),
    "value_head.bias": (1,),
}


# ----------------------------------------------------------------------------- arithmetic
def test_update_arithmetic_and_subtraction() -> None:
    pre, post = _state(0, SHAPES), _state(1, SHAPES)
    update = U.weight_delta(pre, post)
    back = U.apply_update(pre, update, 1.0)
    sub = U.apply_update(pre, update, -1.0)
    for k in SHAPES:
        torch.testing.assert_close(back[k], post[k])
        torch.testing.assert_close(sub[k], 2 * pre[k] - post[k])
    # integer buffers are not weights: copied, never differenced
    pre["steps"] = torch.tensor(3)
    post["steps"] = torch.tensor(9)
    assert "steps" not in U.weight_delta(pre, post)
    assert int(U.apply_update(pre, U.weight_delta(pre, post), -1.0)["steps"]) == 3


def test_noise_matches_per_tensor_norms_and_is_seeded() -> None:
    update = U.weight_delta(_state(0, SHAPES), _state(1, SHAPES))
    update["value_head.bias"] = torch.zeros(1)
    a, b, c = U.noise_like(update, 5), U.noise_like(update, 5), U.noise_like(update, 6)
    for k in SHAPES:
        assert float(a[k].norm()) == pytest.approx(float(update[k].norm()), rel=1e-5)
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["layers.0.linear.weight"], c["layers.0.linear.weight"])
    assert float(a["value_head.bias"].abs().sum()) == 0.0
    assert abs(U.cosine(update, a)) < 0.5


def test_incompatible_architectures_raise_one_clear_error() -> None:
    a = _state(0, SHAPES)
    b = _state(0, {**SHAPES, "layers.0.linear.weight": (32, 8)})
    with pytest.raises(ValueError, match="different architectures"):
        U.weight_delta(a, b)
    with pytest.raises(ValueError, match="different architectures"):
        U.cosine(a, b)
    with pytest.raises(ValueError, match="different architectures"):
        U.cosine_matrix({"x": a, "y": b})


# ----------------------------------------------------------------------------- statistics
def test_topk_mass_sparse_uniform_and_gaussian() -> None:
    one_hot = torch.zeros(1000)
    one_hot[17] = 3.0
    assert U.topk_mass(one_hot, 0.01) == pytest.approx(1.0)
    assert U.topk_mass(torch.ones(1000), 0.1) == pytest.approx(0.1)
    gauss = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    assert U.topk_mass(gauss, 0.01) == pytest.approx(0.0845, abs=0.005)
    assert U.topk_mass(gauss, 0.1) == pytest.approx(0.439, abs=0.01)
    assert math.isnan(U.topk_mass(torch.zeros(5), 0.1))


def test_low_rank_structure() -> None:
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(32, 1, generator=g), torch.randn(1, 16, generator=g)
    r1 = U.rank_stats(U.singular_values(u @ v))
    assert r1["top1_energy"] == pytest.approx(1.0, abs=1e-9)
    assert r1["stable_rank"] == pytest.approx(1.0, abs=1e-6)
    full = U.rank_stats(U.singular_values(torch.randn(32, 16, generator=g)))
    assert full["top1_energy"] < 0.3 and full["effective_rank"] > 8
    assert U.singular_values(torch.ones(5)).size == 0
    conv = U.singular_values(torch.randn(8, 3, 3, 3, generator=g))  # (out, in*k*k) view
    assert conv.shape == (8,)


def test_groups_cover_builtin_and_sb3_names() -> None:
    assert U.param_group("layers.1.linear.weight") == "shared"
    assert U.param_group("policy_head.bias") == "policy head"
    assert U.param_group("value_head.weight") == "value head"
    assert U.param_group("embedder.fc.weight") == "shared"
    assert U.param_group("fc_value.weight") == "value head"
    assert U.param_group("policy.mlp_extractor.policy_net.0.weight") == "policy body"
    assert U.param_group("policy.mlp_extractor.value_net.2.bias") == "value body"
    assert U.param_group("policy.action_net.weight") == "policy head"
    assert U.param_group("policy.value_net.weight") == "value head"
    update = {
        "layers.0.linear.weight": torch.full((2, 2), 1.0),
        "policy_head.weight": torch.full((1, 4), 2.0),
    }
    shares = U.group_shares(update)
    assert shares["shared"]["mass_share"] == pytest.approx(4 / 20)
    assert shares["policy head"]["mass_share"] == pytest.approx(16 / 20)
    assert shares["shared"]["param_share"] == pytest.approx(0.5)


def test_cosine_matrix() -> None:
    a = _state(0, SHAPES)
    neg = {k: -v for k, v in a.items()}
    labels, m = U.cosine_matrix({"a": a, "b": a, "neg": neg})
    assert labels == ["a", "b", "neg"]
    np.testing.assert_allclose(m, [[1, 1, -1], [1, 1, -1], [-1, -1, 1]], atol=1e-12)
    x = {"w": torch.tensor([1.0, 0.0])}
    y = {"w": torch.tensor([0.0, 2.0])}
    assert U.cosine(x, y) == pytest.approx(0.0)
    assert U.cosine({"policy_head.weight": torch.ones(2), "value_head.weight": torch.ones(2)},
                    {"policy_head.weight": torch.ones(2), "value_head.weight": -torch.ones(2)},
                    group="policy head") == pytest.approx(1.0)  # fmt: skip


# ----------------------------------------------------------------------------- protocol pieces
def test_settings_and_bad_input() -> None:
    assert T.parse_seeds("0-2,5") == (0, 1, 2, 5)
    assert T.parse_seeds("3") == (3,)
    for bad in ("a-b", "5-2", ""):
        with pytest.raises(ValueError, match="[Ss]eeds"):
            T.parse_seeds(bad)
    with pytest.raises(ValueError, match="Did you mean 'scaled_fuel'"):
        T.UpdatesConfig(phase2=("scaled_fule",))
    with pytest.raises(ValueError, match="phase-2 length must be positive"):
        T.UpdatesConfig(steps2=0)
    with pytest.raises(ValueError, match="shorter than one PPO rollout"):
        T.UpdatesConfig(steps2=1000)
    with pytest.raises(ValueError, match="Did you mean 'sb3'"):
        T.UpdatesConfig(backend="sb")
    c = T.UpdatesConfig(phase1="no_fuel", phase2=("scaled_fuel", "only_scaled_fuel"))
    assert c.units == ("scaled_fuel", "only_scaled_fuel", "no_fuel")
    assert T.UpdatesConfig.from_json(c.to_json()).to_json() == c.to_json()


def test_steps_to_recover() -> None:
    curve = [[100, -50, 4], [200, math.nan, 0], [300, 40, 4], [400, 95, 4], [500, 100, 4]]
    # smoothed over 3 updates (episode-weighted): 100:-50, 200:-50, 300:-5, 400:28.3, 500:78.3
    assert T.steps_to_recover(curve, start=-100, target=100, fraction=0.5) == 400
    assert T.steps_to_recover(curve, start=-100, target=100, fraction=0.9) is None
    assert T.steps_to_recover(curve, start=120, target=100) == 0.0


class _AlwaysMain(nn.Module):
    """Fires the main engine with probability ~1 (a fixed policy with a known fuel bill)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.tensor([-30.0, -30.0, 30.0, -30.0]).expand(x.shape[0], 4)
        return logits, torch.zeros(x.shape[0])


def test_lunar_episodes_count_fuel_and_score_every_variant() -> None:
    from policylens.agents import HookedAgent

    fuel_scale = 5.0  # scaled_fuel pays the fuel term x 5 (a literal from the spec, not the code)
    T.ensure_lunar_world()
    agent = HookedAgent.from_module(_AlwaysMain(), (8,), 4)
    eps = T.lunar_episodes(agent, episodes=3, seed=0)
    for length, fuel, trunc in zip(eps["length"], eps["fuel"], eps["truncated"], strict=True):
        charged = length if trunc else length - 1  # no fuel on the terminal step
        assert fuel == pytest.approx(-0.30 * charged)
    assert not any(eps["landed"])
    s = T.summarize_episodes(eps)
    base, fuel = np.array(eps["base"]), np.array(eps["fuel"])
    assert s["return"]["no_fuel"]["mean"] == pytest.approx(base.mean())
    assert s["return"]["scaled_fuel"]["mean"] == pytest.approx((base + fuel_scale * fuel).mean())
    assert s["return"]["only_fuel"]["mean"] == pytest.approx(fuel.mean())
    assert s["fuel_used"]["mean"] == pytest.approx(-fuel.mean())
    assert s["landed"]["rate"] == 0.0 and s["episodes"] == 3
    again = T.lunar_episodes(agent, episodes=3, seed=0)
    assert again == eps  # same seed, same episodes
    # Oracle: the same episodes played by hand in one plain env per slot (slot i is seeded i).
    from policylens.envs.lunar import make_lunar

    for i in range(3):
        env = make_lunar("fuel")
        env.reset(seed=i)
        base = fuel = 0.0
        length, terminated, truncated = 0, False, False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(2)
            base, fuel, length = base + info["reward_base"], fuel + info["fuel"], length + 1
        env.close()
        assert (eps["base"][i], eps["fuel"][i], eps["length"][i]) == (base, fuel, length)
        assert eps["crashed"][i] == info["crashed"] and eps["truncated"][i] == truncated


class _PrefersNoop(nn.Module):
    """Argmax is 'do nothing'; sampling fires an engine in about two steps of three."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.tensor([0.5, 0.0, 0.0, 0.0]).expand(x.shape[0], 4)
        return logits, torch.zeros(x.shape[0])


def test_lunar_episodes_greedy_takes_the_argmax() -> None:
    from policylens.agents import HookedAgent

    T.ensure_lunar_world()
    agent = HookedAgent.from_module(_PrefersNoop(), (8,), 4)
    greedy = T.lunar_episodes(agent, episodes=2, seed=0, greedy=True)
    assert greedy["fuel"] == [0.0, 0.0]  # never fires an engine
    sampled = T.lunar_episodes(agent, episodes=2, seed=0)
    assert all(f < 0 for f in sampled["fuel"])


def test_train_ppo_init_from_starts_from_given_weights(tmp_path: Path) -> None:
    from policylens.train.ppo import train_ppo
    from policylens.worlds.lunar import LunarRecipe

    T.ensure_lunar_world()
    config = LunarRecipe("no_fuel", total_steps=128, num_envs=2, num_steps=64, hidden=(8,)).config()
    src = _state(3, {"layers.0.linear.weight": (8, 8), "layers.0.linear.bias": (8,),
                     "value_layers.0.linear.weight": (8, 8), "value_layers.0.linear.bias": (8,),
                     "policy_head.weight": (4, 8), "policy_head.bias": (4,),
                     "value_head.weight": (1, 8), "value_head.bias": (1,)})  # fmt: skip
    U.save_state(src, tmp_path / "init.safetensors")
    run = train_ppo(
        config, tmp_path / "run", progress=False, init_from=tmp_path / "init.safetensors"
    )
    first = U.load_state(run.checkpoints()[0][1])
    for k, v in src.items():
        torch.testing.assert_close(first[k], v)
    assert not torch.equal(U.load_state(run.checkpoints()[-1][1])["policy_head.weight"],
                           src["policy_head.weight"])  # fmt: skip


def test_lunar_recipe() -> None:
    from policylens.worlds.lunar import LunarRecipe

    c = LunarRecipe("scaled_fuel", seed=4).config()
    assert c.env_kwargs == {"reward_variant": "scaled_fuel"} and c.arch == "mlp"
    assert c.batch_size % c.num_minibatches == 0 and c.batch_size // c.num_minibatches == 64
    assert c.seed == 4 and c.threads == 1
    with pytest.raises(ValueError, match="Did you mean"):
        LunarRecipe("nofuel")


# ----------------------------------------------------------------------------- SB3 backend
@pytest.mark.slow
def test_sb3_backend_run_layout_and_checkpoints(tmp_path: Path) -> None:
    require("stable_baselines3")
    from policylens.runs import Run
    from policylens.train.ppo import PPOConfig
    from policylens.train.sb3_backend import load_sb3_checkpoint, train_sb3
    from policylens.worlds.lunar import LunarRecipe

    T.ensure_lunar_world()
    config = LunarRecipe(
        "no_fuel", total_steps=256, num_envs=2, num_steps=64, hidden=(8, 8)
    ).config()
    run = train_sb3(config, tmp_path / "a")
    assert (run.path / "DONE").exists() and Run(run.path).config["kind"] == "sb3_ppo"
    steps = [s for s, _ in run.checkpoints()]
    assert steps[0] == 0 and steps[-1] == 256
    rows = run.metrics()
    assert [r["step"] for r in rows] == [128, 256]
    assert {"return", "episodes", "policy_loss", "value_loss", "entropy"} <= set(rows[0])
    assert math.isfinite(rows[-1]["value_loss"])
    # A checkpoint rebuilds as a HookedAgent whose outputs are SB3's own.
    agent = load_sb3_checkpoint(run.checkpoints()[-1][1], run.config["agent"])
    obs = torch.randn(5, 8)
    logits, value = agent(obs)
    policy = agent.net.policy
    with torch.no_grad():
        torch.testing.assert_close(logits, policy.get_distribution(obs).distribution.logits)
        torch.testing.assert_close(value, policy.predict_values(obs).squeeze(-1))
    assert "policy.mlp_extractor.policy_net.0.hook_out" in agent.hook_names()
    # init_from: the next run starts from these weights exactly.
    last = run.checkpoints()[-1][1]
    run2 = train_sb3(config, tmp_path / "b", init_from=last)
    first = U.load_state(run2.checkpoints()[0][1])
    for k, v in U.load_state(last).items():
        torch.testing.assert_close(first[k], v)
    with pytest.raises(ValueError, match="arch='mlp'"):
        train_sb3(PPOConfig(env_id=worlds.get("maze").env_id, arch="maze_cnn"), tmp_path / "c")


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("updates") / "exp"
    result = CliRunner().invoke(
        app,
        ["updates", "run", "--out", str(out), "--steps1", "512", "--steps2", "256",
         "--salvage-steps", "256", "--seeds", "0-1", "--episodes", "2", "--json", *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    json.loads(result.output)
    return out


@pytest.mark.slow
def test_experiment_folder_holds_the_protocol(experiment: Path) -> None:
    meta = json.loads((experiment / "experiment.json").read_text())
    assert meta["config"]["phase2"] == ["scaled_fuel"] and meta["config"]["backend"] == "builtin"
    for seed in (0, 1):
        sd = experiment / f"seed_{seed}"
        pre = U.load_state(sorted((sd / "phase1" / "checkpoints").glob("*.safetensors"),
                                  key=lambda p: int(p.stem[5:]))[-1])  # fmt: skip
        for variant in ("scaled_fuel", "no_fuel"):
            unit = sd / variant
            info = json.loads((unit / "update.json").read_text())
            assert info["control"] == (variant == "no_fuel")
            post = U.load_state(experiment / info["post"])
            update = U.load_state(unit / "models" / "update.safetensors")
            sub = U.load_state(unit / "models" / "subtracted.safetensors")
            noise = U.load_state(unit / "models" / "noise.safetensors")
            for k in update:
                torch.testing.assert_close(update[k], post[k] - pre[k])
                torch.testing.assert_close(sub[k], pre[k] - update[k])
                assert float(noise[k].norm()) == pytest.approx(float(update[k].norm()), rel=1e-4)
            assert float(U.flatten(update).norm()) > 0
            assert set(info["evaluations"]) == {"post", "subtracted", "noise_subtracted",
                                                "noise_added", "salvaged"}  # fmt: skip
            assert len(info["evaluations"]["post"]["episodes"]["base"]) == 2
            assert [row[0] for row in info["salvage"]["curve"]] == [256]
    analysis = json.loads((experiment / "analysis" / "updates.json").read_text())
    assert analysis["cosine"]["labels"] == ["s0/scaled_fuel", "s0/no_fuel", "s1/scaled_fuel",
                                           "s1/no_fuel"]  # fmt: skip
    m = np.asarray(analysis["cosine"]["matrix"])
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    assert analysis["consistency"]["across_variants"]["scaled_fuel vs no_fuel"]["n"] == 2
    shares = analysis["updates"]["s0/scaled_fuel"]["groups"]
    assert sum(g["mass_share"] for g in shares.values()) == pytest.approx(1.0)
    ev = analysis["evaluation"]
    assert ev["pre"]["*"]["return"]["no_fuel"]["ci_kind"] == "seeds"
    assert len(ev["post"]["scaled_fuel"]["fuel_used"]["per_seed"]) == 2
    html = (experiment / "report.html").read_text()
    assert html.count("<img") >= 8 and "Salvage" in html


@pytest.mark.slow
def test_cli_analyze_list_compare(experiment: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["updates", "analyze", str(experiment), "--json", "--no-report"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert "tensors" not in data["updates"]["s0/scaled_fuel"]
    assert data["analysis_file"] == str(experiment / "analysis" / "updates.json")
    saved = T.UpdatesAnalysis.from_record(json.loads(Path(data["analysis_file"]).read_text()))
    assert saved.to_json()["experiment"] == data["experiment"]
    root = experiment.parent
    res = runner.invoke(app, ["updates", "list", str(root), "--backend", "builtin", "--json"])
    assert [r["path"] for r in json.loads(res.output)] == [str(experiment)]
    res = runner.invoke(app, ["updates", "list", str(root), "--steps2", "999", "--json"])
    assert json.loads(res.output) == []
    out = tmp_path / "cmp.html"
    res = runner.invoke(app, ["updates", "compare", str(experiment), "--by", "steps",
                              "--out", str(out), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["rows"]
    assert rows[0]["group"] == "512 + 256 (scaled_fuel)"
    assert rows[0]["fuel_used_post"]["n"] == 2 and out.is_file()
    # An experiment with another architecture cannot be compared by variant.
    other = tmp_path / "other"
    shutil.copytree(experiment / "analysis", other / "analysis")
    shutil.copy(experiment / "experiment.json", other / "experiment.json")
    file = other / "analysis" / "updates.json"
    a = json.loads(file.read_text())
    a["arch"]["net"]["hidden"] = [256, 256]
    file.write_text(json.dumps(a))
    res = runner.invoke(app, ["updates", "compare", str(experiment), str(other)])
    assert res.exit_code == 2 and "different architectures" in _text(res)
    res = runner.invoke(app, ["updates", "compare", str(experiment), "--by", "seeds"])
    assert res.exit_code == 2 and "Did you mean 'steps'" in _text(res)


@pytest.mark.slow
def test_missing_phase_checkpoint_is_a_clear_error(experiment: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(experiment, broken)
    (broken / "seed_1" / "scaled_fuel" / "phase2" / "DONE").unlink()
    res = CliRunner().invoke(app, ["updates", "analyze", str(broken)])
    assert res.exit_code == 2
    assert "Missing the phase-2 (post, scaled_fuel) checkpoint of seed 1" in _text(res)
    shutil.rmtree(broken / "seed_0" / "phase1")
    with pytest.raises(
        FileNotFoundError, match=r"Missing the phase-1 \(pre\) checkpoint of seed 0"
    ):
        T.analyze_experiment(broken)
    res = CliRunner().invoke(app, ["updates", "analyze", str(tmp_path)])
    assert res.exit_code == 2 and "not an updates experiment" in _text(res)


@pytest.mark.slow
def test_rerun_reuses_finished_jobs_and_rejects_other_settings(experiment: Path) -> None:
    before = (experiment / "seed_0" / "scaled_fuel" / "update.json").stat().st_mtime_ns
    base = ["updates", "run", "--out", str(experiment), "--steps1", "512", "--salvage-steps",
            "256", "--seeds", "0-1", "--episodes", "2", "--no-report", "--json", *TINY]  # fmt: skip
    res = CliRunner().invoke(app, [*base, "--steps2", "256"])
    assert res.exit_code == 0, res.output
    assert (experiment / "seed_0" / "scaled_fuel" / "update.json").stat().st_mtime_ns == before
    res = CliRunner().invoke(app, [*base, "--steps2", "512"])
    assert res.exit_code == 2 and "other settings" in _text(res)


@pytest.mark.slow
def test_sb3_experiment_in_a_process_pool(tmp_path: Path) -> None:
    require("stable_baselines3")
    config = T.UpdatesConfig(
        phase1="no_fuel", phase2=("only_scaled_fuel",), steps1=256, steps2=128, salvage_steps=128,
        seeds=(0, 1), backend="sb3", episodes=2, control=False,
        recipe={"num_envs": 2, "num_steps": 64, "hidden": [8]},
    )  # fmt: skip
    ran = T.run_experiment(config, tmp_path / "sb3", workers=2)
    analysis = T.analyze_experiment(tmp_path / "sb3")
    assert analysis.arch is not None and analysis.arch["arch"] == "sb3_mlp"
    groups = analysis.updates["s0/only_scaled_fuel"]["groups"]
    assert set(groups) == {"policy body", "policy head", "value body", "value head"}
    jobs = json.loads((tmp_path / "sb3" / "analysis" / "jobs.json").read_text())
    assert sorted((j["kind"], j["seed"]) for j in jobs) == [
        ("phase1", 0), ("phase1", 1), ("phase2", 0), ("phase2", 1)]  # fmt: skip
    assert ran == jobs
