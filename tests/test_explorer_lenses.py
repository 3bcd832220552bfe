"""The explorer's observation view draws every map-drawing lens: each map it serves equals the
library's attribution of the same frame, called here directly."""

from __future__ import annotations

import numpy as np
import pytest
from test_explorer import build_maze_run, client_for, explorer_of, get

from policylens.explorer.tensors import unpack
from policylens.lenses.attribution import attribute, method_from_name

LAYER = "res1.hook_out"


@pytest.fixture(scope="module")
def maze(tmp_path_factory):
    client = client_for(build_maze_run(tmp_path_factory.mktemp("explorer-lenses")))
    yield client
    client.app.app.state.explorer.jobs.close()


@pytest.mark.parametrize(
    ("method", "layer", "target"),
    [
        ("lrp", None, "value"),
        ("lrp", None, "logit:2"),
        ("guided_backprop", None, "value"),
        ("guided_backprop", None, "logprob:1"),
        ("gradcam", LAYER, "value"),
        ("gradcam", LAYER, "logprob:3"),
    ],
)
def test_each_map_is_the_librarys_attribution_of_the_frame(maze, method, layer, target):
    ex = explorer_of(maze)
    frames, _ = unpack(get(maze, "/api/episode?seed=3").content)
    obs = frames["obs"][2:3].copy()
    query = f"/api/frame/attribution?seed=3&t=2&method={method}&target={target}"
    r = get(maze, query + (f"&layer={layer}" if layer else ""))
    assert r.status_code == 200, r.text
    amap, meta = unpack(r.content)
    direct = attribute(ex.agent(ex.step(None)), obs, method_from_name(method), target, layer)
    want = direct.spatial()[0].numpy()
    assert amap["map"].shape == want.shape and np.abs(want).max() > 0
    np.testing.assert_allclose(amap["map"], want, rtol=1e-5, atol=1e-7)
    assert meta["target"] == target


def test_lrp_explains_the_logit_where_a_log_probability_is_asked(maze):
    ex = explorer_of(maze)
    frames, _ = unpack(get(maze, "/api/episode?seed=3").content)
    amap, meta = unpack(
        get(maze, "/api/frame/attribution?seed=3&t=1&method=lrp&target=logprob:2").content
    )
    assert meta["target"] == "logit:2"
    agent = ex.agent(ex.step(None))
    direct = attribute(agent, frames["obs"][1:2].copy(), method_from_name("lrp"), "logit:2")
    np.testing.assert_allclose(amap["map"], direct.spatial()[0].numpy(), rtol=1e-5, atol=1e-7)
    c = meta["completeness"]  # conservation: the relevance sums to what the map shows
    assert c["sum_attributions_mean"] == pytest.approx(float(amap["map"].sum()), rel=1e-4)


def test_grad_cam_without_a_layer_is_refused_in_one_sentence(maze):
    r = get(maze, "/api/frame/attribution?seed=3&t=1&method=gradcam&target=value")
    assert r.status_code == 400 and r.json()["error"].startswith("gradcam draws a map at a conv")
    r = get(maze, "/api/frame/attribution?seed=3&t=1&method=lrpp&target=value")
    assert r.status_code in (400, 422)
