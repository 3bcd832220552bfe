"""Grad-CAM and guided backprop: equal to Captum's ``LayerGradCam`` (and its
``LayerAttribution.interpolate`` upsampling), tdhook's ``GradCAM`` and Captum's
``GuidedBackprop``; defaults, bad options, and ``policylens attribute --method gradcam``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import LayerAttribution, LayerGradCam
from tdhook.attribution.grad_cam import DimsConfig
from tdhook.attribution.grad_cam import GradCAM as TdhookGradCAM
from tensordict import TensorDict
from test_lrp import Joined, small_agent
from typer.testing import CliRunner

from policylens.agents import build_agent
from policylens.lenses.attribution import Gradient, attribute, method_from_name
from policylens.lenses.cam import GradCAM, GuidedBackprop


@pytest.fixture(scope="module")
def impala():
    agent = build_agent("impala", (32, 32, 3), 15, seed=0).double()
    obs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    return agent, agent.preprocess(obs)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(1), b.detach().flatten(1)).min())


@pytest.mark.parametrize("layer", ["embedder.block2.res2.hook_out", "embedder.hook_relu3"])
@pytest.mark.parametrize("upsample", [None, "nearest", "bilinear"])
def test_grad_cam_equals_captum(impala, layer, upsample):
    agent, x = impala
    value = lambda t: agent.forward_input(t)[1]  # noqa: E731
    ref = LayerGradCam(value, agent.hook_dict[layer]).attribute(x, relu_attributions=True)
    if upsample is not None:
        ref = LayerAttribution.interpolate(ref, tuple(x.shape[-2:]), upsample)
    ours = attribute(agent, x, GradCAM(upsample=upsample), "value", layer, preprocessed=True)
    assert ours.attributions.shape == ref.shape
    assert cosine(ours.attributions, ref) >= 0.999
    torch.testing.assert_close(ours.attributions, ref.detach(), rtol=1e-9, atol=1e-12)


def test_grad_cam_equals_tdhook_and_captum_signed_on_maze(impala):
    """tdhook's GradCAM has no ReLU: the signed map (``relu=False``), at a logit target."""
    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=2).double()
    x = torch.rand(5, 3, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    layer = "res1.hook_out"

    def target(t, _):
        return TensorDict(out=t["output"][..., 2], batch_size=t.batch_size)

    dims = {f"net.{layer}": DimsConfig(weight_pooling_dims=(2, 3), feature_sum_dims=(1,))}
    with TdhookGradCAM(dims, init_attr_targets=target).prepare(Joined(agent.net)) as hooked:
        ref = hooked(TensorDict({"input": x}, batch_size=[len(x)]))["attr", f"net.{layer}"]
    ours = attribute(agent, x, GradCAM(relu=False), "logit:2", layer, preprocessed=True)
    torch.testing.assert_close(ours.attributions[:, 0], ref.detach(), rtol=1e-9, atol=1e-12)
    logit = lambda t: agent.forward_input(t)[0]  # noqa: E731
    captum = LayerGradCam(logit, agent.hook_dict[layer]).attribute(x, target=2)
    torch.testing.assert_close(ours.attributions, captum.detach(), rtol=1e-9, atol=1e-12)


def test_grad_cam_defaults_to_the_last_conv_layer_and_validates(impala):
    agent, x = impala
    r = attribute(agent, x, method_from_name("grad_cam"), "value", preprocessed=True)
    assert r.layer == "embedder.hook_relu3" and r.attributions.shape == (4, 1, 4, 4)
    assert (r.attributions >= 0).all()
    with pytest.raises(ValueError, match="Unknown GradCAM.upsample mode 'bilinaer'"):
        GradCAM(upsample="bilinaer")
    with pytest.raises(ValueError, match="without spatial dimensions; Grad-CAM needs"):
        attribute(agent, x, GradCAM(), "value", "embedder.hook_fc", preprocessed=True)
    mlp = build_agent("mlp", (6,), 3, seed=0)
    with pytest.raises(ValueError, match="no spatial \\(conv\\) layers, which Grad-CAM needs"):
        attribute(mlp, np.zeros((2, 6), np.float32), GradCAM(), "value")


def test_guided_backprop_equals_captum():
    """Captum clamps the backward of ``nn.ReLU`` modules, which the small net uses."""
    net, agent = small_agent()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for index, target in ((4, "value"), (0, "logit:0")):
        ref = CaptumGuidedBackprop(net).attribute(x.clone(), target=index)
        ours = attribute(agent, x, GuidedBackprop(), target, preprocessed=True).attributions
        torch.testing.assert_close(ours, ref.detach(), rtol=1e-9, atol=1e-12)
        assert cosine(ours, ref) >= 0.999
        plain = attribute(agent, x, Gradient(), target, preprocessed=True).attributions
        assert not torch.allclose(ours, plain)  # the clamping matters here


def test_guided_backprop_sees_functional_relus_and_layers(impala):
    """The built-in networks call ``F.relu``: every ReLU still clamps the backward, so above the
    last ReLU's input the result matches the hand-clamped gradient; at a layer too."""
    agent, x = impala
    layer = "embedder.hook_fc"  # fc -> ReLU -> heads: guided = relu-clamped chain by hand
    ours = attribute(agent, x, GuidedBackprop(), "value", layer, preprocessed=True).attributions
    with torch.no_grad():
        active = (agent.net.embedder(x) > 0).double()  # the embedder ends in that ReLU
    torch.testing.assert_close(ours, agent.net.fc_value.weight[0].clamp(min=0) * active)
    r = attribute(agent, x, GuidedBackprop(), "logit:3", preprocessed=True)
    assert r.attributions.shape == x.shape and torch.isfinite(r.attributions).all()


def test_attribute_command_with_grad_cam(tmp_path):
    from policylens.cli import app
    from policylens.runs import Run

    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=1)
    trainer = {"env_id": "policylens/Maze-v0", "env_kwargs": {"cheese_region": 1, "max_steps": 100}}
    run = Run.create(tmp_path / "run", {"kind": "ppo", "trainer": trainer, "agent": agent.config})
    run.save_checkpoint(agent, 0)
    for method in ("gradcam", "guided_backprop"):
        res = CliRunner().invoke(
            app, ["attribute", str(run.path), "--method", method, "--n-obs", "4", "--json"]
        )
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert data["method"] == method
    assert data["shape"] == [4, 3, 9, 9]
    assert (run.analysis_dir / "attribution_gradcam_value_hook_relu.png").is_file()
