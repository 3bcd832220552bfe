"""Attribution: agreement with Captum, completeness, speed-up paths equal the plain algorithm,
occlusion against brute force, targets, bad input, and the ``attribute`` command."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from oracles import require
from torch import nn
from typer.testing import CliRunner

from policylens.agents import HookedAgent, build_agent
from policylens.envs.maze import MazeBatch, MazeConfig
from policylens.lenses.attribution import (
    Gradient,
    GradXInput,
    IntegratedGradients,
    Occlusion,
    Saliency,
    attribute,
    integration_rule,
    is_cut,
    layer_activation,
    method_from_name,
    parse_target,
)


@pytest.fixture(scope="module")
def obs() -> np.ndarray:
    batch = MazeBatch(MazeConfig(world_size=9, cheese_region=None), 6)
    for i in range(6):
        batch.load(i, batch.level(100 + i))
    return batch.obs.copy()  # (6, 3, 9, 9) real maze observations


@pytest.fixture(scope="module")
def agent64() -> HookedAgent:
    return build_agent("maze_cnn", (3, 9, 9), 4, seed=3).double()


def _f(agent, which="value", action=2):
    if which == "value":
        return lambda x: agent.forward_input(x)[1]
    return lambda x: agent.forward_input(x)[0][:, action]


# ----------------------------------------------------------------------------- Captum agreement
@pytest.mark.parametrize("integration", ["gausslegendre", "riemann_trapezoid"])
def test_ig_agrees_with_captum(agent64, obs, integration):
    captum = require("captum.attr")
    x = agent64.preprocess(obs)
    base = torch.full_like(x, 0.25)
    for target, f, tgt in (("value", _f(agent64), None), ("logit:2", _f(agent64, "logit"), None)):
        ref = captum.IntegratedGradients(f).attribute(
            x, baselines=base, n_steps=24, method=integration, target=tgt
        )
        ig = IntegratedGradients(baseline=base[0], n_steps=24, integration=integration)
        ours = attribute(agent64, obs, ig, target)
        assert (ours.attributions - ref).abs().max().item() < 1e-5
        plain = attribute(agent64, obs, replace(ig, fast=False), target)
        assert (plain.attributions - ref).abs().max().item() < 1e-5


def test_ig_agrees_with_captum_through_max_pooling_ties():
    """IMPALA max-pools over flat image regions, where exact ties decide which pixel gets the
    gradient; the first-layer speed-up must break them as Captum's plain IG does."""
    captum = require("captum.attr")
    impala = build_agent("impala", (32, 32, 3), 15, seed=1).double()
    cfg = MazeConfig(world_size=9, obs_mode="rgb", rgb_size=32, cheese_region=None)
    batch = MazeBatch(cfg, 2)
    for i in range(2):
        batch.load(i, batch.level(7 + i))
    x = impala.preprocess(batch.obs.copy())  # flat floor and wall tiles: many exact ties
    ref = captum.IntegratedGradients(_f(impala)).attribute(
        x, baselines=torch.zeros_like(x), n_steps=12
    )
    ours = attribute(impala, x, IntegratedGradients(n_steps=12), "value", preprocessed=True)
    assert "affine_first_layer" in ours.info
    assert (ours.attributions - ref).abs().max().item() < 1e-5


def test_saliency_agrees_with_captum(agent64, obs):
    captum = require("captum.attr")
    x = agent64.preprocess(obs)
    ref = captum.Saliency(lambda t: agent64.forward_input(t)[0]).attribute(x, target=1)
    assert (attribute(agent64, obs, Saliency(), 1).attributions - ref).abs().max().item() < 1e-5
    ref = captum.Saliency(_f(agent64)).attribute(x, abs=False)
    assert (attribute(agent64, obs, Gradient(), "value").attributions - ref).abs().max() < 1e-5


@pytest.mark.parametrize("layer", ["res1.hook_out", "res1.hook_conv1"])  # a cut and a non-cut
def test_layer_ig_agrees_with_captum(agent64, obs, layer):
    captum = require("captum.attr")
    x = agent64.preprocess(obs)
    module = agent64.hook_dict[layer]
    ref = captum.LayerIntegratedGradients(_f(agent64), module).attribute(
        x, baselines=torch.zeros_like(x), n_steps=16
    )
    ig = IntegratedGradients(baseline="zero_input", n_steps=16, internal_batch_size=20)
    ours = attribute(agent64, obs, ig, "value", layer)
    assert ours.attributions.shape == ref.shape
    assert (ours.attributions - ref).abs().max().item() < 1e-5
    assert ours.info["cut_layer"] == (layer == "res1.hook_out")
    # the outputs at the baseline: each row's input with the layer set to a zero input's
    # activation; at a cut that is the zero observation's output for every row
    base_act = layer_activation(agent64, torch.zeros_like(x), layer)
    with agent64.hooks([(layer, lambda act, hook: base_act)]):
        base_logits, base_value = agent64.forward_input(x)
    assert torch.allclose(ours.baseline_outputs, base_value, atol=1e-5)
    assert (base_value.std() < 1e-6) == (layer == "res1.hook_out")  # a skip carries each input
    actions = np.arange(len(x)) % base_logits.shape[1]
    per_action = attribute(agent64, obs, IntegratedGradients(baseline="zero_input", n_steps=4),
                           "action", layer, actions=actions)  # fmt: skip
    expected = torch.log_softmax(base_logits, -1)[torch.arange(len(x)), actions]
    assert torch.allclose(per_action.baseline_outputs, expected, atol=1e-5)


# ----------------------------------------------------------------------------- correctness
def test_cut_detection(agent64, obs):
    x = agent64.preprocess(obs)
    assert is_cut(agent64, "hook_conv", x) and is_cut(agent64, "hook_fc", x)
    assert not is_cut(agent64, "res1.hook_relu1", x)  # the residual skip goes around it


def test_ig_exact_for_an_affine_network(obs):
    net = nn.Sequential(nn.Flatten(), nn.Linear(243, 5)).double()
    agent = HookedAgent.from_module(net, (3, 9, 9), 4, obs_kind="grid",
                                    output=lambda out: (out[:, :4], out[:, 4]))  # fmt: skip
    r = attribute(agent, obs, IntegratedGradients(baseline="blurred", n_steps=3), "value")
    assert r.completeness.max_abs_error < 1e-10
    w = net[1].weight[4].view(3, 9, 9)
    x = agent.preprocess(obs)
    assert torch.allclose(r.attributions, (x - r.baselines) * w, atol=1e-12)


def test_completeness_improves_with_steps(obs):
    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=5).double()
    # Zero biases make a ReLU net homogeneous (IG from 0 is then exact), so start elsewhere.
    errs = [
        attribute(
            agent, obs, IntegratedGradients(baseline=0.5, n_steps=n), "value", "res1.hook_out"
        ).completeness.mean_abs_error
        for n in (2, 64)
    ]
    assert errs[0] > 1e-4
    assert errs[1] < errs[0]
    r = attribute(agent, obs, IntegratedGradients(baseline=0.5, n_steps=8), "value")
    # Oracle 1: the network run directly on the input and on the baseline (all 0.5).
    x = agent.preprocess(obs)
    base = torch.full_like(x, 0.5)
    with torch.no_grad():
        f_x, f_base = agent.forward_input(x)[1], agent.forward_input(base)[1]
    torch.testing.assert_close(r.outputs.detach(), f_x, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.baseline_outputs.detach(), f_base, atol=1e-12, rtol=0)
    # Oracle 2: Captum's convergence delta, sum(IG) - (f(x) - f(baseline)), same quadrature.
    captum = require("captum.attr")
    _, captum_delta = captum.IntegratedGradients(_f(agent)).attribute(
        x, baselines=base, n_steps=8, method="gausslegendre",
        return_convergence_delta=True,
    )  # fmt: skip
    assert r.delta.shape == (len(obs),)
    torch.testing.assert_close(r.delta.detach(), captum_delta, atol=1e-8, rtol=0)
    assert r.delta.abs().max() > 1e-6  # 8 steps from 0.5 leave a gap: a non-trivial check


def test_internal_batching_does_not_change_results(agent64, obs):
    full = attribute(agent64, obs, IntegratedGradients(n_steps=7), "action", "res1.hook_out")
    for rows in (1, 5, 13):
        ig = IntegratedGradients(n_steps=7, internal_batch_size=rows)
        small = attribute(agent64, obs, ig, "action", "res1.hook_out")
        assert torch.allclose(small.attributions, full.attributions, atol=1e-12)


def test_grad_x_input_and_action_target(agent64, obs):
    x = agent64.preprocess(obs).requires_grad_(True)
    actions = np.array([0, 1, 2, 3, 0, 1])
    logp = torch.log_softmax(agent64.forward_input(x)[0], -1)[torch.arange(6), actions]
    (g,) = torch.autograd.grad(logp.sum(), x)
    r = attribute(agent64, obs, GradXInput(), "action", actions=actions)
    assert torch.allclose(r.attributions, g * x.detach(), atol=1e-12)
    custom = attribute(agent64, obs, Gradient(), lambda logits, value: logits[:, 1] - value)
    assert custom.attributions.shape == (6, 3, 9, 9) and custom.target == "<lambda>"


def test_occlusion_matches_brute_force(agent64, obs):
    r = attribute(agent64, obs[:2], Occlusion(window=2, stride=2), "value")
    x = agent64.preprocess(obs[:2])
    with torch.no_grad():
        v0 = agent64.forward_input(x)[1]
        occ = x.clone()
        occ[:, :, 7:, 7:] = 0  # the last window, moved back to fit, is the only one on (8, 8)
        drop = v0 - agent64.forward_input(occ)[1]
    assert torch.allclose(r.spatial()[:, 8, 8], drop, atol=1e-10)
    layer = attribute(agent64, obs[:2], Occlusion(), "value", "res1.hook_out")
    assert layer.attributions.shape == (2, 16, 9, 9)


def test_integration_rules():
    a, w = integration_rule(5, "gausslegendre")
    assert np.isclose(w.sum(), 1) and np.isclose((w * a**9).sum(), 0.1)  # exact for degree 9
    a, w = integration_rule(4, "riemann_trapezoid")
    assert np.allclose(a, [0, 1 / 3, 2 / 3, 1]) and np.isclose(w.sum(), 1.0 - 0.25)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors(agent64, obs):
    with pytest.raises(ValueError, match="Action 7 does not exist.*4 actions"):
        attribute(agent64, obs, IntegratedGradients(), "logit:7")
    with pytest.raises(ValueError, match="Action 7 does not exist"):
        parse_target(7, 4)
    with pytest.raises(ValueError, match="without spatial dimensions"):
        attribute(agent64, obs, Occlusion(), "value", "hook_fc")
    with pytest.raises(ValueError, match="IntegratedGradients.n_steps must be an integer >= 1"):
        IntegratedGradients(n_steps=0)
    with pytest.raises(ValueError, match=r"Baseline of shape \(3, 5, 5\) does not fit"):
        attribute(agent64, obs, IntegratedGradients(baseline=np.zeros((3, 5, 5))), "value")
    with pytest.raises(ValueError, match="Did you mean 'res1.hook_out'"):
        attribute(agent64, obs, IntegratedGradients(), "value", "res1.hook_ou")
    with pytest.raises(ValueError, match="Unknown method 'igg'"):
        method_from_name("igg")
    with pytest.raises(ValueError, match="method_from_name"):
        attribute(agent64, obs, "ig")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown action 'upp'.*Did you mean 'up'"):
        parse_target("logit:upp", 4, ("up", "down", "left", "right"))


def test_methods_validate_options_on_construction_and_map_from_names():
    """Each bad option fails when the method is built, in one sentence naming the field; a name
    maps to its method with the options it takes (the others' are ignored, unknown ones fail)."""
    bad = [
        (lambda: IntegratedGradients(integration="simpson"), "IntegratedGradients.integration"),
        (lambda: IntegratedGradients(n_steps=1, integration="riemann_trapezoid"), "n_steps must"),
        (lambda: IntegratedGradients(internal_batch_size=0), "internal_batch_size must be"),
        (lambda: IntegratedGradients(memory_mb=0), "IntegratedGradients.memory_mb must be > 0"),
        (lambda: IntegratedGradients(baseline="zero"), "Unknown IntegratedGradients.baseline"),
        (lambda: Occlusion(baseline=True), "Occlusion.baseline must be"),
        (lambda: Occlusion(blur_sigma=0.0), "Occlusion.blur_sigma must be > 0"),
        (lambda: Occlusion(window=0), "Occlusion.window must be an integer >= 1"),
        (lambda: Occlusion(stride=(1, 2, 3)), "Occlusion.stride must be"),
    ]
    for build, message in bad:
        with pytest.raises(ValueError, match=message):
            build()
    ig = method_from_name("integrated_gradients", n_steps=7, baseline="mean", window=3)
    assert ig == IntegratedGradients(n_steps=7) and ig.baseline == "mean"  # tensors: not compared
    assert method_from_name("saliency", n_steps=7) == Saliency()
    assert method_from_name("occlusion", window=2).window == 2
    with pytest.raises(ValueError, match="Unknown method option 'n_step'"):
        method_from_name("ig", n_step=7)


# ----------------------------------------------------------------------------- CLI
def _run(tmp_path):
    from policylens.runs import Run

    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=1)
    trainer = {"env_id": "policylens/Maze-v0", "env_kwargs": {"cheese_region": 1, "max_steps": 100}}
    run = Run.create(tmp_path / "run", {"kind": "ppo", "trainer": trainer, "agent": agent.config})
    run.save_checkpoint(agent, 0)
    return run


def test_attribute_command(tmp_path):
    from policylens.cli import app

    run = _run(tmp_path)
    res = CliRunner().invoke(app, ["attribute", str(run.path), "--layer", "res1.hook_out",
                                   "--n-steps", "8", "--n-obs", "8", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["shape"] == [8, 16, 9, 9] and data["completeness"]["max_abs_error"] < 0.05
    assert (run.analysis_dir / "attribution_ig_value_res1.hook_out.png").is_file()
    bad = CliRunner().invoke(app, ["attribute", str(run.path), "--target", "logit:7"])
    assert bad.exit_code == 2 and "Action 7 does not exist" in bad.output


def test_layer_ig_runs_only_the_network_above_a_cut_layer():
    """The tail built by torch.fx gives the hook-based result exactly, keeps later hooks firing,
    and is refused inside a residual block (the skip connection reads from below the layer)."""
    from policylens.lenses.attribution import _TAILS, tail_network

    agent = build_agent("impala", (64, 64, 3), 15, seed=0).eval()
    layer = "embedder.block2.res2.hook_out"
    tail = tail_network(agent, layer)
    assert tail is not None
    assert tail_network(agent, "embedder.block2.res2.hook_relu1") is None  # inside a residual
    obs = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    x = agent.preprocess(obs)
    with torch.no_grad():
        act = layer_activation(agent, x, layer)
        fired = []
        with agent.hooks([("embedder.hook_fc", lambda a, h: fired.append(a.shape))]):
            logits, value = agent.heads(tail(act))
        ref_logits, ref_value = agent.forward_input(x)
    assert fired == [(3, 256)]
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(value, ref_value)
    fast = attribute(agent, obs, IntegratedGradients(n_steps=8), "value", layer)
    assert fast.info["cut_layer"]
    _TAILS[agent] = {layer: None}  # the hook-based path, for comparison
    slow = attribute(agent, obs, IntegratedGradients(n_steps=8), "value", layer)
    torch.testing.assert_close(fast.attributions, slow.attributions)
