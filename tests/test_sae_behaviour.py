"""SAEs judged by behaviour: the behaviour-keeping objectives, spliced-in metrics first in
`sae eval`, ground-truth concepts of latents, and dead latents against agent quality."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from policylens.agents import HookedAgent, build_agent
from policylens.agents.sae import SITE_FILE, SAEConfig, build_sae, load_sae, save_sae, splice
from policylens.lenses.sae import Downstream, _batches, train_sae
from policylens.rollout.engine import Policy
from policylens.studies.rook_sae.concepts import match_concepts
from policylens.studies.rook_sae.data import PlaySetting, gather_activations
from policylens.studies.rook_sae.evaluation import compare_outputs
from policylens.studies.rook_sae.quality import pick_checkpoints, relation
from policylens.studies.rook_sae.runs import SAESpec, train_agent_sae

CHESS = "policylens/RookEndgame-v0"
MAZE = "policylens/Maze-v0"


def exact_sae(d_in: int):
    """relu(x) - relu(-x) == x: latent j is x_j (j < d_in), latent d_in + j is -x_j."""
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=2 * d_in, arch="relu"))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def identity_agent(obs_shape: tuple[int, ...], num_actions: int) -> HookedAgent:
    """An agent whose first hook (``0.hook_out``) is its observation, as float."""
    c = obs_shape[0]
    first: nn.Module = nn.Linear(c, c) if len(obs_shape) == 1 else nn.Conv2d(c, c, 1)
    with torch.no_grad():
        first.weight.copy_(torch.eye(c).reshape(first.weight.shape))
        first.bias.zero_()
    head = nn.Linear(int(np.prod(obs_shape)), num_actions)
    net = nn.Sequential(first, nn.Flatten(), head)
    return HookedAgent.from_module(net, obs_shape, num_actions, output="q")


def test_a_behaviour_objective_needs_the_agent_and_sees_whole_observations() -> None:
    cfg = SAEConfig(d_in=4, d_sae=8, arch="topk", k=2, objective="kl", batch_size=12, seed=3)
    with pytest.raises(ValueError, match="keeps the agent's behaviour, so it needs the agent"):
        train_sae(torch.randn(30, 4), cfg)
    with pytest.raises(ValueError, match="Unknown SAE objective 'kld'. Did you mean"):
        SAEConfig(d_in=4, d_sae=8, objective="kld")
    data = torch.arange(10 * 3 * 4, dtype=torch.float32).reshape(30, 4)  # 10 obs x 3 positions
    batches = _batches(data, cfg, positions=3)
    for _ in range(5):  # across an epoch boundary
        x, rows = next(batches)
        assert rows is not None and len(rows) == 4  # 12 vectors // 3 positions
        want = torch.cat([data[3 * r : 3 * r + 3] for r in rows.tolist()])
        assert torch.equal(x, want)


def test_downstream_gradient_is_the_behaviour_terms_gradient() -> None:
    """Downstream runs the agent with the reconstruction at the hook; its gradient is autograd's."""
    agent = build_agent("mlp", (75,), 24, head="q", hidden=[16, 16], seed=1)
    chess = PlaySetting(CHESS, greedy=True)
    data = gather_activations(agent, "layers.0.hook_act", chess, steps=64, seed=0)
    cfg = SAEConfig(d_in=16, d_sae=32, objective="kl", temperature=0.5)
    down = Downstream(agent, data.site, data.obs, data.logits, cfg)
    rows = torch.arange(8)
    recon = data.acts[:8] + 0.3 * torch.randn(8, 16)
    loss, grad = down.loss_and_grad(recon, rows, weight=2.0)
    leaf = recon.clone().requires_grad_(True)
    logits = agent.net.q_head(agent.net.layers[1](leaf))
    lp_o = torch.log_softmax(data.logits[:8] / 0.5, -1)
    want = 2.0 * (lp_o.exp() * (lp_o - torch.log_softmax(logits / 0.5, -1))).sum(-1).mean()
    want.backward()
    assert loss == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(grad, leaf.grad)
    # the exact activations give no behaviour term; a Q-network's default temperature is its gap
    zero, _ = down.loss_and_grad(data.acts[:8], rows, weight=2.0)
    assert zero == pytest.approx(0.0, abs=1e-6)
    q_cfg = SAEConfig(d_in=16, d_sae=32, objective="kl")
    top = data.logits.topk(2, -1).values
    gap = float((top[:, 0] - top[:, 1]).median())
    assert Downstream(agent, data.site, data.obs, data.logits, q_cfg).temperature == gap


@pytest.mark.slow
def test_the_kl_objective_keeps_greedy_actions_that_reconstruction_alone_changes() -> None:
    """At the same budget and sparsity, an SAE trained with the kl objective agrees with a
    Q-network's greedy actions more often than one trained on reconstruction alone."""
    agent = build_agent("mlp", (75,), 24, head="q", hidden=[64, 64], seed=0)
    hook = "layers.1.hook_act"
    chess = PlaySetting(CHESS, greedy=True)
    data = gather_activations(agent, hook, chess, steps=3000, seed=0)
    fresh = gather_activations(agent, hook, chess, steps=1000, seed=1)
    agreement = {}
    for objective in ("mse", "kl"):
        spec = SAESpec("topk", 2, k=8, objective=objective, samples=200_000, batch_size=256,
                       lr=3e-3)  # fmt: skip
        cfg = spec.config(data.site)
        sae, history, summary = train_agent_sae(data, cfg, agent=agent)
        assert summary["objective"] == objective and ("behaviour" in history[-1]) == (
            objective == "kl"
        )
        out = compare_outputs(agent, fresh.obs, [splice(sae, data.site)], Policy(greedy=True))
        agreement[objective] = out.action_agreement
    assert agreement["kl"] > agreement["mse"] + 0.02, agreement


def test_latents_are_matched_to_the_concepts_they_are() -> None:
    """An SAE whose latents are the input planes finds each piece's square; shuffled
    observations set a low chance level."""
    agent = identity_agent((75,), 24)
    data = gather_activations(agent, "0.hook_out", PlaySetting(CHESS, greedy=True), steps=600)
    assert data.labels["black_king_pos"].shape == (600, 2)
    result = match_concepts(exact_sae(75), data)
    assert result["live"] == 75 and result["chance"] < 0.3 and result["above_chance"] == 1.0
    bk = result["latents"][2 * 25 + 3 * 5 + 1]  # plane 2 (black king), square (3, 1)
    assert bk["concept"] == "black king on (3, 1)" and bk["r"] == pytest.approx(1.0, abs=1e-4)
    assert bk["precision"] == 1.0 and bk["recall"] == 1.0
    assert result["by_concept"]["black king on (3, 1)"]["latent"] == 2 * 25 + 3 * 5 + 1
    names = set(result["concepts"])
    assert {"rook attacked (en prise)", "kings in opposition", "black king on the edge"} <= names


def test_per_position_latents_are_matched_to_squares_of_the_maze() -> None:
    agent = identity_agent((3, 9, 9), 4)
    data = gather_activations(agent, "0.hook_out", PlaySetting(MAZE), steps=200, seed=0)
    assert data.site.layout == "channels"
    result = match_concepts(exact_sae(3), data)
    mouse = result["latents"][1]  # channel 1 is the mouse
    assert mouse["concept"] == "mouse here" and mouse["r"] == pytest.approx(1.0, abs=1e-4)
    assert "mouse at a decision square" in result["concepts"] + result["constant"]
    assert not set(result["constant"]) & set(result["by_concept"])  # nothing to match there


def test_relation_reports_r2_interval_and_permutation_p() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 100, 30)
    groups = np.repeat(np.arange(6), 5)
    strong = relation(x, 0.01 * x + rng.normal(0, 0.05, 30), groups, resamples=500)
    assert strong["r2"] > 0.8 and strong["p_permutation"] < 0.01 and strong["groups"] == 6
    lo, hi = strong["r2_ci"]
    assert lo <= strong["r2"] <= hi and strong["slope"] == pytest.approx(0.01, rel=0.2)
    none = relation(x, rng.normal(0, 1, 30), resamples=500)
    assert none["p_permutation"] > 0.05 and none["r2_ci"][0] < 0.05
    with pytest.raises(ValueError, match="at least 3"):
        relation([1, 2], [3, 4])
    assert pick_checkpoints([0, 10, 40, 100, 1000], (0.0, 0.04, 0.1, 1.0)) == [0, 40, 100, 1000]


@pytest.mark.slow
def test_cli_eval_reports_behaviour_first_and_dead_latents_over_runs(tmp_path) -> None:
    from policylens.cli import app
    from policylens.runs import Run

    def silent(agent: HookedAgent) -> HookedAgent:
        """``agent`` with ``layers.1.hook_act`` = tanh(0) = 0 on every observation: an SAE trained
        there sees only zeros, starts at b_dec = their mean (0) and b_enc = 0, so no latent ever
        has a positive pre-activation (and zero inputs give no gradient): all are dead."""
        with torch.no_grad():
            agent.net.layers[1].linear.weight.zero_()
            agent.net.layers[1].linear.bias.zero_()
        return agent

    runs = []
    for seed in (0, 1):
        agent = build_agent("mlp", (75,), 24, head="q", hidden=[16, 16], seed=seed)
        later = build_agent("mlp", (75,), 24, head="q", hidden=[16, 16], seed=9)
        if seed == 1:  # run 1's agents are silent at the hook
            agent, later = silent(agent), silent(later)
        run = Run.create(tmp_path / f"run{seed}", {"kind": "dqn", "trainer": {"env_id": CHESS,
                         "seed": seed}, "agent": agent.config})  # fmt: skip
        run.save_checkpoint(agent, 0)
        run.save_checkpoint(later, 10)
        runs.append(run)
    runner = CliRunner()
    sae_dir = tmp_path / "sae"
    res = runner.invoke(app, [
        "sae", "train", str(runs[0].path), "--hook", "layers.1.hook_act", "--expansion", "2",
        "--k", "4", "--samples", "4000", "--steps", "300", "--batch-size", "128",
        "--out", str(sae_dir), "--quiet",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "objective kl" in res.output  # the default keeps behaviour
    args = ["sae", "eval", str(runs[0].path), str(sae_dir), "--episodes", "8", "--steps", "200"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["objective"] == "kl"
    for cond in ("original", "spliced", "zero_ablation", "mean_ablation"):
        lo, hi = result[cond]["success_rate_ci"]
        assert lo <= result[cond]["success_rate"] <= hi and result[cond]["episodes"] == 8
    assert {"offline_action_agreement", "kl", "regret", "margin_kept"} <= set(result["spliced"])
    # an SAE set by hand over the same site: latents 0-15 are x_j + 2 (tanh keeps x_j above -1,
    # so they always fire) decoded back exactly through b_dec = -2; latents 16-31 have an encoder
    # bias no input overcomes: exactly those 16 are dead, and the agent is unchanged
    trained = load_sae(sae_dir)
    assert trained.config.d_in == 16 and trained.config.d_sae == 32
    sae = build_sae(SAEConfig(d_in=16, d_sae=32, arch="relu", objective="kl"))
    eye, rng = torch.eye(16), torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, torch.randn(16, 16, generator=rng)], 1))
        sae.W_dec.copy_(torch.cat([eye, torch.randn(16, 16, generator=rng)], 0))
        sae.b_enc.copy_(torch.cat([torch.zeros(16), torch.full((16,), -1e4)]))
        sae.b_dec.fill_(-2.0)
    hand = tmp_path / "hand_sae"
    hand.mkdir()
    shutil.copy(sae_dir / SITE_FILE, hand / SITE_FILE)
    save_sae(sae, hand)
    res = runner.invoke(app, ["sae", "eval", str(runs[0].path), str(hand), "--episodes", "8",
                              "--steps", "200", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    by_hand = json.loads(res.stdout)
    rec = by_hand["reconstruction"]
    assert rec["dead_latents"] == 16 and rec["dead_fraction"] == 0.5 and rec["l0"] == 16.0
    assert rec["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert by_hand["spliced"]["offline_action_agreement"] == 1.0
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.output.index("Behaviour") < res.output.index("Reconstruction")
    out = tmp_path / "dead.json"
    res = runner.invoke(app, [
        "sae", "dead-latents", *(str(r.path) for r in runs), "--hook", "layers.1.hook_act",
        "--fractions", "0,1", "--k", "4", "--samples", "3000", "--steps", "200",
        "--episodes", "5", "--out", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    dead = json.loads(out.read_text())
    assert [r["checkpoint_step"] for r in dead["rows"]] == [0, 10, 0, 10]
    assert all(r["d_sae"] == 64 for r in dead["rows"])
    silent_rows = [r for r in dead["rows"] if r["seed"] == 1]
    assert [r["dead_latents"] for r in silent_rows] == [64, 64]
    # in training a latent is dead once it has not fired for a whole dead_window (200,000
    # samples by default), which 3,000 training samples never reach
    assert all(r["dead_in_training"] == 0 for r in dead["rows"])
    # run 0's agents give their SAEs something to read: not every latent dies there
    assert all(r["dead_latents"] < 64 for r in dead["rows"] if r["seed"] == 0)
    assert dead["relations"]["success_rate"]["groups"] == 2 and "R^2" in res.output
