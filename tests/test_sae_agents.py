"""SAEs on agents: hook sites, splicing, spliced-agent evaluation, latent ablation, dashboards, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from policylens.agents import build_agent
from policylens.agents.sae import (
    HookSite,
    SAEConfig,
    SparseAutoencoder,
    build_sae,
    export_saelens,
    hook_site,
    load_sae,
    read_site,
    remove_latent,
    save_sae,
    site_for_sae,
    splice,
)
from policylens.rollout.engine import Policy
from policylens.studies.rook_sae.data import PlaySetting, gather_activations
from policylens.studies.rook_sae.evaluation import compare_outputs, evaluate_spliced
from policylens.studies.rook_sae.latents import (
    AblationOptions,
    latent_ablation,
    latent_cards,
    survey_latents,
)
from policylens.studies.rook_sae.runs import (
    SAEDashboard,
    SAESpec,
    SAETrainOptions,
    train_agent_sae,
    train_run_sae,
)

CHESS = "policylens/RookEndgame-v0"
MAZE = "policylens/Maze-v0"
GREEDY_CHESS = PlaySetting(CHESS, greedy=True)
MLP_HOOK = "layers.0.hook_act"
CNN_HOOK = "res1.hook_out"


def chess_agent():
    return build_agent("mlp", (75,), 24, head="q")


def maze_agent():
    agent = build_agent("maze_cnn", (3, 9, 9), 4)
    with torch.no_grad():  # the PPO init leaves near-uniform logits; make the policy decisive
        agent.net.fc_policy.weight.mul_(300.0)
    return agent


def exact_sae(d_in: int) -> SparseAutoencoder:
    """relu(x) - relu(-x) == x: an SAE with 2 * d_in latents that reconstructs exactly."""
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=2 * d_in, arch="relu"))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))  # (d_in, 2 d_in)
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))  # (2 d_in, d_in)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


@pytest.fixture(scope="module")
def chess_data():
    agent = chess_agent()
    data = gather_activations(agent, MLP_HOOK, GREEDY_CHESS, steps=2000, seed=0)
    return agent, data


def test_hook_sites_map_conv_positions_and_mlp_vectors() -> None:
    cnn = maze_agent()
    site = hook_site(cnn, CNN_HOOK)
    assert (site.layout, site.shape, site.d_in, site.positions) == ("channels", (16, 9, 9), 16, 81)
    (_, _), cache = cnn.run_with_cache(torch.rand(2, 3, 9, 9), names=[CNN_HOOK])
    act = cache[CNN_HOOK]
    assert not act.is_contiguous()  # channels_last: a .view would scramble positions
    vec = site.to_vectors(act)
    assert vec.shape == (2 * 81, 16)
    torch.testing.assert_close(vec[81 + 4 * 9 + 7], act[1, :, 4, 7])  # row = b*H*W + h*W + w
    assert torch.equal(site.from_vectors(vec, 2), act)
    assert (
        hook_site(cnn, "hook_fc").shape == (256,) and hook_site(cnn, "hook_fc").layout == "vector"
    )
    assert hook_site(cnn, CNN_HOOK, layout="flat").d_in == 16 * 81
    mlp = hook_site(chess_agent(), MLP_HOOK)
    assert (mlp.layout, mlp.d_in, mlp.positions) == ("vector", 64, 1)
    with pytest.raises(ValueError, match="Did you mean 'layers.0.hook_act'"):
        hook_site(chess_agent(), "layers.0.hook_akt")
    with pytest.raises(ValueError, match="channels layout needs"):
        hook_site(chess_agent(), MLP_HOOK, layout="channels")


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_exact_sae_spliced_in_leaves_the_agent_unchanged(which: str) -> None:
    agent, hook = (chess_agent(), MLP_HOOK) if which == "mlp" else (maze_agent(), CNN_HOOK)
    site = hook_site(agent, hook)
    obs = torch.rand(16, *agent.obs_shape).round()
    logits, value = agent(obs)
    sae = exact_sae(site.d_in)
    lh, vh = agent.run_with_hooks(obs, fwd_hooks=[splice(sae, site)])
    torch.testing.assert_close(lh, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vh, value, atol=1e-5, rtol=1e-5)
    # Zeroing every latent leaves only b_dec (= 0): the same as zero-ablating the hook.
    everything = splice(sae, site, zero_latents=range(sae.config.d_sae))
    lz, _ = agent.run_with_hooks(obs, fwd_hooks=[everything])
    l0, _ = agent.run_with_hooks(obs, fwd_hooks=[(hook, lambda a, h: torch.zeros_like(a))])
    torch.testing.assert_close(lz, l0)
    assert not torch.allclose(lz, logits, atol=1e-3)


def test_an_sae_of_another_width_is_refused_clearly(chess_data) -> None:
    agent, data = chess_data
    sae = build_sae(SAEConfig(d_in=32, d_sae=64))
    msg = "SAE reads 32-wide vectors but the hook gives 64-wide vectors of 'layers.0.hook_act'"
    with pytest.raises(ValueError, match=msg):
        splice(sae, data.site)
    with pytest.raises(ValueError, match="reads 32-wide"):
        latent_ablation(agent, sae, data)
    cnn_site = hook_site(maze_agent(), CNN_HOOK)
    with pytest.raises(ValueError, match="16-wide channel vectors at 9x9 positions"):
        splice(sae, cnn_site)


@pytest.mark.slow
def test_trained_sae_keeps_the_agents_actions_and_zero_ablation_does_not(chess_data) -> None:
    agent, data = chess_data
    spec = SAESpec("relu", expansion=2, objective="mse", samples=60_000, batch_size=256,
                   lr=1e-2, l1_coeff=1e-6)  # fmt: skip
    sae, history, summary = train_agent_sae(data, spec.config(data.site), holdout=0.1)
    assert summary["explained_variance"] > 0.999 and summary["test_vectors"] == 200
    assert history[-1]["explained_variance"] > history[0]["explained_variance"]
    fresh = gather_activations(agent, MLP_HOOK, GREEDY_CHESS, steps=600, seed=1)
    result = evaluate_spliced(agent, sae, fresh, GREEDY_CHESS, episodes=40)
    conditions = result.conditions
    spliced, zero, mean = (conditions[c] for c in ("spliced", "zero_ablation", "mean_ablation"))
    assert spliced.held_out and zero.held_out and mean.held_out
    assert result.reconstruction["explained_variance"] > 0.999
    assert spliced.held_out.action_agreement > 0.97
    assert zero.held_out.action_agreement < 0.5 and mean.held_out.action_agreement < 0.5
    assert spliced.held_out.value_error < 0.1 * zero.held_out.value_error
    assert spliced.held_out.regret < 0.1 * zero.held_out.regret
    assert spliced.held_out.margin_kept > 0.9
    original = conditions["original"]
    assert original.action_agreement == 1.0 and original.value_error == 0
    assert original.held_out is None and spliced.success_kept is not None
    assert spliced.action_agreement > 0.95 > 0.5 > zero.action_agreement
    assert spliced.value_error < 0.1 * mean.value_error
    lo, hi = spliced.return_ci
    assert lo <= spliced.mean_return <= hi and spliced.episodes == 40
    lo, hi = spliced.success_rate_ci
    assert lo <= spliced.success_rate <= hi
    # The JSON form keeps the flat keys of every condition.
    as_json = result.to_json()
    assert as_json["spliced"]["offline_action_agreement"] == spliced.held_out.action_agreement
    assert as_json["spliced"]["return"] == spliced.mean_return and as_json["greedy"]
    assert "offline_action_agreement" not in as_json["original"]


def test_latent_ablation_matches_removing_that_latent_by_hand(chess_data) -> None:
    agent, data = chess_data
    data = data.take(slice(0, 300))
    sae = exact_sae(64)  # latent j < 64 is relu(x_j), latent 64 + j is relu(-x_j)
    ranking = latent_ablation(agent, sae, data, options=AblationOptions(greedy=True))
    assert [e["flip_all"] for e in ranking] == sorted(
        (e["flip_all"] for e in ranking), reverse=True
    )
    by_kl = latent_ablation(agent, sae, data, options=AblationOptions(greedy=False))
    assert [e["kl_all"] for e in by_kl] == sorted((e["kl_all"] for e in by_kl), reverse=True)
    fires = (data.acts > 0).float().mean(0)
    for entry in ranking[:3] + ranking[-2:]:
        j = entry["latent"]
        unit, sign = j % 64, (1.0 if j < 64 else -1.0)
        assert entry["frequency"] == pytest.approx(
            float(fires[unit] if sign > 0 else (data.acts[:, unit] < 0).float().mean())
        )
        rows = np.nonzero((sign * data.acts[:, unit] > 0).numpy())[0]

        def by_hand(act, hook, unit=unit, sign=sign):
            act = act.clone()
            act[:, unit] -= sign * torch.relu(sign * act[:, unit])
            return act

        with torch.no_grad():
            lo, vo = agent(data.obs[rows])
            lh, vh = agent.run_with_hooks(data.obs[rows], fwd_hooks=[(MLP_HOOK, by_hand)])
            live = remove_latent(sae, data.site, j)  # the same, encoding on the fly
            torch.testing.assert_close(
                agent.run_with_hooks(data.obs[rows], fwd_hooks=[live])[0], lh
            )
        np.testing.assert_allclose(entry["logit_change"], (lh - lo).mean(0), atol=1e-5)
        assert entry["value_change"] == pytest.approx(float((vh - vo).mean()), abs=1e-5)
        flips = float((lh.argmax(-1) != lo.argmax(-1)).float().mean())
        assert entry["flip"] == pytest.approx(flips)
    assert ranking[0]["kl"] > 0


@pytest.mark.slow
def test_maze_cnn_sae_per_position_training_cards_and_dashboard(tmp_path) -> None:
    from policylens.report.sae import render
    from policylens.worlds import for_env
    from policylens.worlds.maze import state_from_grid

    agent = maze_agent()
    data = gather_activations(agent, CNN_HOOK, PlaySetting(MAZE), steps=300, seed=0)
    assert data.vectors().shape == (300 * 81, 16)
    spec = SAESpec("topk", expansion=4, k=8, objective="mse", samples=40_000, batch_size=256,
                   lr=1e-2)  # fmt: skip
    sae, _, summary = train_agent_sae(data, spec.config(data.site))
    assert summary["explained_variance"] > 0.85 and summary["l0"] == pytest.approx(8, abs=0.05)
    options = AblationOptions(max_rows=96, greedy=False)
    survey = survey_latents(agent, sae, data, options)
    cards = latent_cards(agent, sae, data, top=2, n_examples=3, options=options, survey=survey)
    assert [c.latent for c in cards] == [e["latent"] for e in survey.ranking[:2]]
    again = latent_cards(agent, sae, data, top=2, n_examples=3, options=options)  # own survey
    assert [(c.latent, c.top_rows) for c in again] == [(c.latent, c.top_rows) for c in cards]
    card = cards[0]
    assert card.top_values == sorted(card.top_values, reverse=True) and len(card.top_obs) == 3
    r, c = card.top_positions[0]
    vec = data.site.to_vectors(data.acts[card.top_rows[0] : card.top_rows[0] + 1])
    assert float(sae.encode(vec)[r * 9 + c, card.latent].detach()) == pytest.approx(
        card.top_values[0]
    )
    assert (card.activations > 0).all() and card.activations.max() == pytest.approx(
        card.top_values[0]
    )
    # The grid observation is drawn as the maze it encodes.
    state = state_from_grid(data.obs[0])
    assert state.walls.tolist() == (data.obs[0][0] > 0).tolist()
    assert data.obs[0][1][state.mouse] == 1 and data.obs[0][2][state.cheese] == 1
    assert for_env(MAZE).picture(data.obs[0], {}).shape == (9 * 16, 9 * 16, 3)
    context = {"env_id": MAZE, "site": data.site.to_dict(), "d_sae": 64, "arch": "topk"}
    actions = for_env(MAZE).names_of_actions({}, 4)
    html = render(SAEDashboard(cards, context, actions), tmp_path / "dash")
    text = html.read_text()
    assert text.count("data:image/png;base64") == 2 and f"Latent {card.latent}" in text
    assert (tmp_path / "dash" / f"latent_{card.latent}.png").read_bytes()[:4] == b"\x89PNG"


def test_sae_folder_round_trip_and_store_source(tmp_path, chess_data) -> None:
    from policylens.rollout import CollectOptions, collect
    from policylens.runs import Run

    agent, data = chess_data
    sae = exact_sae(64)
    folder = save_sae(sae, tmp_path / "sae", data.site, {"run": "x"})
    export_saelens(sae, folder / "saelens", data.site)
    loaded, info = load_sae(folder), read_site(folder)
    assert info["hook"] == MLP_HOOK and info["layout"] == "vector" and info["run"] == "x"
    assert torch.equal(loaded.W_dec, sae.W_dec) and site_for_sae(agent, info) == data.site
    back, info2 = load_sae(folder / "saelens"), read_site(folder / "saelens")
    assert info2["hook"] == MLP_HOOK and torch.equal(back.W_dec, sae.W_dec)  # SAELens names it too
    assert read_site(tmp_path) == {}

    run = Run.create(tmp_path / "run", {"kind": "dqn", "trainer": {"env_id": CHESS},
                                         "agent": agent.config})  # fmt: skip
    run.save_checkpoint(agent, 0)
    store = collect(run.load_agent(), CHESS, None, tmp_path / "store",
                    CollectOptions(steps=400, hooks=[MLP_HOOK]),
                    meta={"run": str(run.path), "checkpoint_step": 0})  # fmt: skip
    spec = SAESpec("topk", k=8, expansion=2, samples=4000)
    trained = train_run_sae(store.path, SAETrainOptions(MLP_HOOK, spec, steps=300))
    assert trained.folder == run.path / "analysis" / "sae" / f"{MLP_HOOK}-topk-x2"
    summary = trained.to_json()
    assert summary["source"] == "store" and summary["steps_gathered"] == 300
    assert summary["sae_dir"] == str(trained.folder) and trained.run == str(run.path)
    assert read_site(trained.folder)["metrics"] == trained.metrics
    assert not (trained.folder / ".policylens.lock").exists()  # the lock is gone once written
    with pytest.raises(ValueError, match="Unknown hook in store .* Did you mean"):
        train_run_sae(store.path, SAETrainOptions("layers.1.hook_actt", out=tmp_path / "no"))


def _flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.mark.slow
def test_cli_train_eval_dashboard(tmp_path) -> None:
    from policylens.cli import app
    from policylens.runs import Run

    agent = chess_agent()
    run = Run.create(tmp_path / "run", {"kind": "dqn", "trainer": {"env_id": CHESS},
                                         "agent": agent.config})  # fmt: skip
    run.save_checkpoint(agent, 0)
    runner = CliRunner()
    sae_dir = tmp_path / "sae"
    res = runner.invoke(app, [
        "sae", "train", str(run.path), "--hook", MLP_HOOK, "--arch", "relu", "--l1-coeff", "1e-6",
        "--expansion", "2", "--samples", "30000", "--steps", "1000", "--batch-size", "256",
        "--lr", "1e-2", "--out", str(sae_dir), "--saelens", "--objective", "mse", "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["d_sae"] == 128 and info["metrics"]["explained_variance"] > 0.99
    assert {"config.json", "sae.safetensors", "site.json", "history.json", "saelens"} <= {
        p.name for p in sae_dir.iterdir()
    }
    res = runner.invoke(
        app, ["sae", "eval", str(run.path), str(sae_dir), "--episodes", "10", "--steps", "300",
              "--ablation-top", "3", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["greedy"] and result["objective"] == "mse"
    assert {"original", "spliced", "zero_ablation", "mean_ablation"} <= set(result)
    spliced, zero = result["spliced"], result["zero_ablation"]
    assert spliced["offline_action_agreement"] > zero["offline_action_agreement"]
    assert {"success_rate", "success_rate_ci", "success_kept", "action_agreement", "kl"} <= set(
        spliced
    )
    assert len(result["latent_ablation"]) == 3 and (sae_dir / "eval.json").is_file()
    res = runner.invoke(app, ["sae", "dashboard", str(run.path), str(sae_dir), "--latents", "0,3",
                              "--steps", "200", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (sae_dir / "dashboard" / "index.html").is_file()
    assert (sae_dir / "dashboard" / "latent_3.png").is_file()
    shown = json.loads(res.stdout)
    assert shown["html"] == str(sae_dir / "dashboard" / "index.html")
    assert [e["latent"] for e in shown["latents"]] == [0, 3]
    saved = json.loads((sae_dir / "dashboard" / "latents.json").read_text())
    assert [e["latent"] for e in saved["latents"]] == [0, 3] and "behaviour" in saved
    # Bad input: one clear sentence, exit code 2.
    res = runner.invoke(app, ["sae", "eval", str(run.path), str(sae_dir), "--hook", "hook_logits"])
    assert res.exit_code == 2 and "SAE reads 64-wide vectors" in _flat(res.output)
    res = runner.invoke(app, ["sae", "dashboard", str(run.path), str(sae_dir), "--latents", "a"])
    assert res.exit_code == 2 and "--latents must be comma-separated" in _flat(res.output)
    res = runner.invoke(app, ["sae", "dashboard", str(run.path), str(sae_dir), "--latents", "999"])
    assert res.exit_code == 2 and "do not exist; the SAE has 128 latents" in _flat(res.output)


def test_site_mismatch_with_the_trained_shape_is_refused(tmp_path) -> None:
    agent = chess_agent()
    wider = build_agent("mlp", (75,), 24, head="q", hidden=[32, 32])
    site = hook_site(agent, MLP_HOOK)
    assert isinstance(site, HookSite)
    with pytest.raises(ValueError, match=r"activations of shape \(64,\) but this agent's are"):
        site_for_sae(wider, {"hook": MLP_HOOK, "layout": "vector", "shape": [64]})
    obs = np.random.default_rng(0).integers(0, 2, (4, 75), dtype=np.uint8)
    out = compare_outputs(agent, obs, [], Policy(greedy=True))
    same = {"action_agreement": 1.0, "kl": 0.0, "regret": 0.0, "margin_kept": 1.0}
    assert {k: getattr(out, k) for k in same} == same and out.value_error == 0.0


def test_gathered_rows_are_the_agents_outputs_on_them(chess_data) -> None:
    agent, data = chess_data
    part = data.take(slice(0, 500))
    with torch.no_grad():
        (logits, values), cache = agent.run_with_cache(part.obs, names=[MLP_HOOK])
    torch.testing.assert_close(part.acts, cache[MLP_HOOK])
    torch.testing.assert_close(part.logits, logits)
    torch.testing.assert_close(part.values, values)
    assert part.legal is not None and part.legal.shape == (500, 24) and part.legal.any(1).all()
    again = gather_activations(agent, MLP_HOOK, GREEDY_CHESS, steps=300, seed=0)
    assert np.array_equal(again.obs, data.obs[:300])  # same seed, same rows
    other = gather_activations(agent, MLP_HOOK, GREEDY_CHESS, steps=300, seed=1)
    assert not np.array_equal(other.obs, data.obs[:300])


def test_spliced_episodes_compare_each_step_with_the_unhooked_agent() -> None:
    import copy

    from policylens.agents.sae import zero_ablation
    from policylens.rollout.engine import EpisodeOptions, run_episodes
    from policylens.studies.rook_sae.evaluation import play_spliced

    agent = maze_agent()
    hooks = [zero_ablation(hook_site(agent, "res1.hook_out"))]
    policy = Policy()  # sampled: agreement depends on the shared uniforms
    got = play_spliced(agent, PlaySetting(MAZE), 8, seed=3, fwd_hooks=hooks)
    # Oracle: the same episodes, the original's outputs from a copy of the agent that no hook
    # is attached to, its actions from the same uniforms.
    original = copy.deepcopy(agent).eval()
    tally = {"agree": 0, "steps": 0, "verr": 0.0}

    def on_step(step, active) -> None:
        with torch.no_grad():
            lo, vo = original(step.obs)
        a_o = policy.choose(lo, step.uniforms, step.legal).numpy()
        tally["agree"] += int((a_o == step.actions)[active].sum())
        tally["verr"] += float((step.values - vo)[torch.from_numpy(active)].abs().sum())
        tally["steps"] += int(active.sum())

    options = EpisodeOptions(seed=3, policy=policy)
    eps = run_episodes(agent, 8, MAZE, None, options, fwd_hooks=hooks, on_step=on_step)
    assert got["steps"] == tally["steps"] == sum(e.length for e in eps)
    assert got["action_agreement"] == tally["agree"] / tally["steps"]
    assert got["value_error"] == pytest.approx(tally["verr"] / tally["steps"])
    assert got["return"]["mean"] == pytest.approx(np.mean([e.ret for e in eps]))
    assert got["action_agreement"] < 1 and got["value_error"] > 0  # the hook changed the agent
    plain = play_spliced(agent, PlaySetting(MAZE), 8, seed=3)
    assert plain["action_agreement"] == 1.0 and plain["value_error"] == 0.0
