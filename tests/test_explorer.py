"""The explorer's API through FastAPI's test client on maze, rook-endgame and hazard-world runs:
what each route answers, the security checks (token, Host, Origin, no CORS, CSP, run files only),
label writes, and a hypothesis fuzz of the OpenAPI spec (no 5xx; no file outside the run)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policylens.agents.sae import load_sae
from policylens.explorer import Explorer, create_app
from policylens.explorer.app import free_socket
from policylens.explorer.security import loopback_hosts
from policylens.explorer.tensors import pack, unpack

CHESS = "policylens/RookEndgame-v0"
MAZE = "policylens/Maze-v0"
MLP_HOOK = "layers.0.hook_act"
TOKEN = "test-token-0123456789abcdef"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


def build_maze_run(root: Path) -> Path:
    """A maze run folder holding a seeded, untrained CNN made decisive (its policy weights scaled
    up, so vector fields and steering show), two checkpoints and two rows of metrics."""
    from policylens.agents import build_agent
    from policylens.runs import Run

    torch.manual_seed(0)
    agent = build_agent("maze_cnn", (3, 9, 9), 4)
    with torch.no_grad():
        agent.net.fc_policy.weight.mul_(300.0)
    trainer = {"env_id": MAZE, "env_kwargs": {"cheese_region": 1, "max_steps": 30},
               "gamma": 0.95, "gae_lambda": 0.9, "total_steps": 1000}  # fmt: skip
    run = Run.create(root / "maze", {"kind": "ppo", "agent": agent.config, "trainer": trainer})
    for step, success in ((0, 0.1), (1000, 0.4)):
        run.save_checkpoint(agent, step)
        run.append_metrics({"step": step, "success": success, "return": 10 * success})
    return run.path


def build_rook_run(root: Path) -> Path:
    """An (untrained) rook-endgame Q-network run with a small SAE on its first hidden layer."""
    from policylens.agents import build_agent
    from policylens.runs import Run
    from policylens.studies.rook_sae.runs import SAESpec, SAETrainOptions, train_run_sae

    torch.manual_seed(0)
    agent = build_agent("mlp", (75,), 24, head="q", hidden=[32, 32])
    run = Run.create(root / "rook", {"kind": "dqn", "agent": agent.config,
                                     "trainer": {"env_id": CHESS, "env_kwargs": {"max_steps": 12}}})  # fmt: skip
    run.save_checkpoint(agent, 0)
    spec = SAESpec(arch="topk", k=4, expansion=2, samples=4000)
    train_run_sae(run.path, SAETrainOptions(MLP_HOOK, spec, steps=300))
    return run.path


def client_for(run: Path) -> TestClient:
    app = create_app(Explorer(run), TOKEN, loopback_hosts(PORT))
    return TestClient(app, base_url=BASE)


def get(client: TestClient, path: str, **kw):
    """GET through the token, asking again while the answer is 202 (a job is running)."""
    for _ in range(600):
        r = client.get(f"/{TOKEN}{path}", **kw)
        if r.status_code != 202:
            return r
        time.sleep(0.05)
    raise AssertionError(f"{path} still pending")


def post(client: TestClient, path: str, body: dict, method: str = "POST"):
    for _ in range(600):
        r = client.request(method, f"/{TOKEN}{path}", json=body)
        if r.status_code != 202:
            return r
        time.sleep(0.05)
    raise AssertionError(f"{path} still pending")


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory) -> Path:
    return build_maze_run(tmp_path_factory.mktemp("explorer"))


@pytest.fixture(scope="module")
def maze(maze_run):
    client = client_for(maze_run)
    yield client
    client.app.app.state.explorer.jobs.close()


@pytest.fixture(scope="module")
def rook(tmp_path_factory):
    client = client_for(build_rook_run(tmp_path_factory.mktemp("explorer")))
    yield client
    client.app.app.state.explorer.jobs.close()


def explorer_of(client: TestClient) -> Explorer:
    return client.app.app.state.explorer


def check_intervention(client: TestClient, body: dict, hooks: list) -> tuple[dict, dict]:
    """``/api/intervene``'s answer is ``agent.run_with_hooks`` with ``hooks`` (written out by the
    test) on the episode's frame, and the episode replayed from its seed with those hooks."""
    arrays, meta = unpack(post(client, "/api/intervene", body).content)
    ex = explorer_of(client)
    step, seed, t = ex.step(None), body["episode"]["seed"], body["t"]
    ep = ex.episode(step, seed, None, False)
    agent = ex.agent(step)
    with torch.no_grad():
        logits, value = agent.run_with_hooks(ep.obs[t][None], fwd_hooks=hooks)
        base_logits, base_value = agent(ep.obs[t][None])
    np.testing.assert_allclose(arrays["probs"], torch.softmax(logits.float(), -1)[0].numpy(),
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    assert meta["value"] == pytest.approx(float(value[0]), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(arrays["base_probs"],
                               torch.softmax(base_logits.float(), -1)[0].numpy(), rtol=1e-5,
                               atol=1e-7)  # fmt: skip
    assert meta["base_value"] == pytest.approx(float(base_value[0]), rel=1e-5, abs=1e-6)
    played = ex.world.play(agent, seed, None, False, hooks)
    assert arrays["actions"].tolist() == played.actions.tolist()
    assert (meta["outcome"], meta["length"]) == (played.outcome, played.length)
    return arrays, meta


# -- the wire format ----------------------------------------------------------------------------------------
def test_tensor_messages_round_trip_narrowed_and_aligned():
    arrays = {"f": np.arange(6, dtype=np.float64).reshape(2, 3) / 3, "i": np.array([1, -2], np.int64),
              "b": np.array([True, False, True]), "u": np.arange(5, dtype=np.uint8)}  # fmt: skip
    message = pack(arrays, {"x": math.nan, "y": np.float32(2.5), "z": [np.int64(3)]})
    back, meta = unpack(message)
    assert meta == {"x": None, "y": 2.5, "z": [3]}  # NaN has no JSON form: it travels as null
    assert back["f"].dtype == np.float32 and back["i"].dtype == np.int32
    assert back["b"].dtype == np.uint8 and back["b"].tolist() == [1, 0, 1]
    np.testing.assert_allclose(back["f"], arrays["f"], rtol=1e-6)
    header_end = 8 + int.from_bytes(message[4:8], "little")
    assert header_end % 8 == 0
    offsets = json.loads(message[8:header_end])["tensors"]
    assert all(e["offset"] % 8 == 0 for e in offsets.values())  # typed arrays view them in place


def test_episode_advantages_are_ppos_gae_with_the_runs_discount(maze, rook):
    seen = set()
    # the maze run's trainer has gamma 0.95, lambda 0.9; the rook run's none: 0.99, lambda 0
    for client, gamma, lam in ((maze, 0.95, 0.9), (rook, 0.99, 0.0)):
        for seed in (1, 2):
            arrays, meta = unpack(get(client, f"/api/episode?seed={seed}").content)
            r, v, adv = arrays["rewards"], arrays["values"], arrays["advantages"]
            assert adv.shape == r.shape == (meta["length"],)
            truncated = meta["outcome"] == "truncated"
            seen.add(truncated)
            # the last step bootstraps from the final observation only when the step limit cut it
            last = r[-1] + (gamma * v[-1] if truncated else 0.0) - v[-2]
            np.testing.assert_allclose(adv[-1], last, rtol=1e-5, atol=1e-5)
            delta = r[:-1] + gamma * v[1:-1] - v[:-2]
            np.testing.assert_allclose(
                adv[:-1], delta + gamma * lam * adv[1:], rtol=1e-5, atol=1e-5
            )
    assert seen == {True, False}  # both endings checked


# -- security ---------------------------------------------------------------------------------------------
def test_every_request_needs_the_token(maze):
    assert maze.get(f"/{TOKEN}/api/run").status_code == 200
    for path in ("/api/run", "/", "/static/main.js", f"/{TOKEN[:-1]}/api/run",
                 f"/{TOKEN}x/api/run", f"/x/{TOKEN}/api/run", "/openapi.json"):  # fmt: skip
        r = maze.get(path)
        assert r.status_code == 403, path
        assert "token" in r.json()["error"]
    r = maze.get(f"/{TOKEN}", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"/{TOKEN}/"


def test_host_and_origin_checks_refuse_rebinding_and_cross_site_requests(maze):
    ok = f"/{TOKEN}/api/run"
    assert maze.get(ok, headers={"Host": f"localhost:{PORT}"}).status_code == 200
    for host in ("evil.test", f"evil.test:{PORT}", "127.0.0.1:1", "127.0.0.1"):
        r = maze.get(ok, headers={"Host": host})
        assert r.status_code == 403 and "Host" in r.json()["error"], host
    assert maze.get(ok, headers={"Origin": BASE}).status_code == 200
    for origin in ("http://evil.test", f"http://127.0.0.1:{PORT + 1}", "null"):
        assert maze.get(ok, headers={"Origin": origin}).status_code == 403, origin
    assert maze.get(ok, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    r = maze.put(f"/{TOKEN}/api/clusters/label", headers={"Origin": "http://evil.test"},
                 json={"layer": "res1.hook_out", "k": 3, "cluster": 0, "label": "x"})  # fmt: skip
    assert r.status_code == 403  # a cross-site page cannot write a label either


def test_no_cors_and_a_strict_content_security_policy(maze):
    r = maze.get(f"/{TOKEN}/", headers={"Origin": BASE})
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert not any(h.startswith("access-control-") for h in r.headers)
    pre = maze.options(f"/{TOKEN}/api/run", headers={"Origin": "http://evil.test",
                                                     "Access-Control-Request-Method": "GET"})  # fmt: skip
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
    assert "<script" not in get(maze, "/").text.split("</head>")[1]  # no inline script


def test_only_files_inside_the_run_are_served(maze, maze_run, tmp_path):
    report = maze_run / "analysis" / "report.html"
    report.parent.mkdir(exist_ok=True)
    report.write_text("<html><body>report</body></html>")
    secret = tmp_path / "secret.html"
    secret.write_text("secret")
    os.symlink(secret, maze_run / "analysis" / "link.html")
    os.symlink(tmp_path, maze_run / "analysis" / "linkdir")
    time.sleep(2.1)  # the file index is rebuilt after 2 s
    r = get(maze, "/files/analysis/report.html")
    assert r.status_code == 200 and r.text.endswith("report</body></html>")
    assert "sandbox" in r.headers["content-security-policy"]  # a report runs no script
    assert "analysis/report.html" in get(maze, "/api/run").json()["reports"]
    for path in ("/files/../config.json", "/files/%2e%2e/config.json", "/files/analysis/../../x",
                 f"/files/{secret}", "/files//etc/passwd", "/files/analysis/link.html",
                 "/files/analysis/linkdir/secret.html", "/files/checkpoints", "/files/resume.pt",
                 "/static/../app.py", "/static/%2e%2e%2fapp.py", "/static/nothing.js"):  # fmt: skip
        r = maze.get(f"/{TOKEN}{path}")
        assert r.status_code in (403, 404), path
        assert b"secret" not in r.content


# -- the API on a maze run -----------------------------------------------------------------------------------
def test_run_info_names_the_world_layers_and_checkpoints(maze, maze_run):
    info = get(maze, "/api/run").json()
    assert info["world"] == "maze" and info["editable"] and info["has_levels"]
    assert info["actions"] == ["up", "down", "left", "right"]
    assert info["default_layer"] == "res1.hook_out"
    assert {"name": "res1.hook_out", "shape": [16, 9, 9]} in info["layers"]
    assert info["checkpoints"][0] == 0 and info["step"] == info["checkpoints"][-1]
    table, meta = unpack(get(maze, "/api/metrics").content)
    assert "success" in meta["columns"] and table["table"].shape[1] == len(meta["columns"])


def test_episodes_are_reproducible_and_levels_are_the_worlds(maze):
    from policylens.envs.maze import generate_level

    a = get(maze, "/api/episode?seed=3").content
    assert get(maze, "/api/episode?seed=3").content == a
    arrays, meta = unpack(a)
    T = meta["length"]
    assert arrays["obs"].shape == (T + 1, 3, 9, 9) and arrays["actions"].shape == (T,)
    np.testing.assert_allclose(arrays["probs"].sum(1), 1, rtol=1e-5)
    assert meta["bookmarks"][-1] == {"t": T, "kind": "success" if meta["success"] else "end",
                                     "label": meta["outcome"]}  # fmt: skip
    assert (
        unpack(get(maze, "/api/episode?seed=4").content)[0]["obs"].tobytes()
        != arrays["obs"].tobytes()
    )
    level = unpack(get(maze, "/api/episode?seed=0&level=7").content)[0]
    ex = explorer_of(maze)
    walls = generate_level(7, ex.world.config).walls
    assert np.array_equal(level["obs"][0, 0] > 0, walls)


def test_frame_activations_and_attribution_match_the_lenses(maze):
    from policylens.lenses.attribution import IntegratedGradients, attribute

    ex = explorer_of(maze)
    arrays, _ = unpack(get(maze, "/api/episode?seed=3").content)
    acts, _ = unpack(get(maze, "/api/frame/activations?seed=3&t=2&layer=res1.hook_out").content)
    agent = ex.agent(ex.step(None))
    _, cache = agent.run_with_cache(arrays["obs"][2:3].copy(), names=["res1.hook_out"])
    np.testing.assert_allclose(acts["acts"], cache["res1.hook_out"][0].numpy(), rtol=1e-5)
    r = get(maze, "/api/frame/attribution?seed=3&t=2&method=ig&target=value")
    amap, meta = unpack(r.content)
    direct = attribute(agent, arrays["obs"][2:3].copy(), IntegratedGradients(), "value")
    np.testing.assert_allclose(amap["map"], direct.spatial()[0].numpy(), rtol=1e-4, atol=1e-6)
    c = meta["completeness"]  # IG's completeness: the map sums to f(x) - f(baseline)
    assert (
        abs(amap["map"].sum() - c["output_difference_mean"])
        < 0.05 * abs(c["output_difference_mean"]) + 1e-3
    )
    action = unpack(get(maze, "/api/frame/attribution?seed=3&t=2&target=action").content)[1]
    assert action["target"] == f"logprob:{arrays['actions'][2]}"
    bad = get(maze, "/api/frame/activations?seed=3&t=999&layer=res1.hook_out")
    assert bad.status_code == 400 and "outside the episode" in bad.json()["error"]
    bad = get(maze, "/api/frame/activations?seed=3&t=0&layer=res1.hook_ou")
    assert bad.status_code == 400 and "res1.hook_out" in bad.json()["error"]  # closest names


def test_slow_work_answers_202_with_a_job_then_the_result(maze_run):
    client = client_for(maze_run)
    try:
        first = client.get(f"/{TOKEN}/api/frame/nmf?seed=1&t=0&layer=res1.hook_out&k=4")
        assert first.status_code == 202
        job = first.json()["pending"]
        assert job["status"] == "running" and 0 <= job["progress"] <= 1
        for _ in range(600):
            state = get(client, f"/api/jobs/{job['id']}").json()
            if state["status"] != "running":
                break
            time.sleep(0.05)
        assert state["status"] == "done" and state["progress"] == 1
        maps, meta = unpack(
            get(client, "/api/frame/nmf?seed=1&t=0&layer=res1.hook_out&k=4").content
        )
        assert maps["maps"].shape == (9, 9, 4) and (maps["maps"] >= 0).all()
        assert len(meta["features"]) == 4 and {"label", "correlation", "colour"} <= set(
            meta["features"][0]
        )
        assert maps["example_obs"].shape == (16, 3, 9, 9)
        assert get(client, "/api/jobs/nope").status_code == 404
    finally:
        explorer_of(client).jobs.close()


def test_maze_editor_answers_the_vector_field_and_the_cheese_vector_changes_it(maze):
    from policylens.envs.maze import MazeState
    from policylens.studies.maze.vector_fields import vector_field

    ex = explorer_of(maze)
    state = get(maze, "/api/maze/level?level=5").json()
    r = post(maze, "/api/maze", {"state": state, "layer": "res1.hook_out"})
    arrays, meta = unpack(r.content)
    assert set(meta) == {"base"}
    direct = vector_field(ex.agent(ex.step(None)), MazeState.from_dict(state), ex.world.config)
    np.testing.assert_allclose(arrays["base_field"], direct.probs, rtol=1e-5)
    assert arrays["base_cells"].tolist() == [list(c) for c in direct.cells]
    steer = {"vector": "cheese", "coef": 3.0}
    arrays, meta = unpack(post(maze, "/api/maze", {"state": state, "layer": "res1.hook_out",
                                                   "intervention": steer}).content)  # fmt: skip
    assert not np.allclose(arrays["mod_field"], arrays["base_field"])
    moved = dict(state, cheese=state["mouse"])  # the cheese on the mouse is still a maze...
    walled = dict(state, walls=["#" * 9] * 9)  # ...but walls everywhere is not
    r = post(maze, "/api/maze", {"state": walled, "layer": "res1.hook_out"})
    assert r.status_code == 400 and "wall" in r.json()["error"]
    assert (
        post(maze, "/api/maze", {"state": {"walls": 3}, "layer": "res1.hook_out"}).status_code
        == 400
    )
    assert post(maze, "/api/maze", {"state": moved, "layer": "res1.hook_out"}).status_code == 200


def test_maze_paths_play_both_agents_in_one_batch_on_equal_luck(maze):
    from dataclasses import replace

    from policylens.envs.maze import MazeState
    from policylens.explorer.session import Intervention
    from policylens.worlds.maze import run_episodes_from_states

    ex = explorer_of(maze)
    step, world = ex.step(None), ex.world
    state = get(maze, "/api/maze/level?level=4").json()
    paths = {}
    for coef in (5.0, -5.0):  # the second finds the agent's path cached: only the change plays
        body = {"state": state, "seed": 7, "intervention": {"vector": "cheese", "coef": coef}}
        paths[coef] = post(maze, "/api/maze/paths", body).json()
    assert paths[5.0]["base"] == paths[-5.0]["base"]
    base, steered = paths[5.0]["base"], paths[5.0]["mod"]
    assert base["positions"][0] == steered["positions"][0] == state["mouse"]
    assert base["positions"] != steered["positions"]  # this decisive agent goes elsewhere
    for p in (base, steered):
        assert len(p["positions"]) == p["length"] + 1 <= 41
    # each row is its own condition, whatever plays beside it: alone, each path is the same, and
    # the agent's is the maze study's own sampled episode with that seed
    maze_state = MazeState.from_dict(state)
    agent = ex.agent(step)
    hooks = ex.hooks_for(step, Intervention("cheese", 5.0), maze_state)
    assert world.trajectories(agent, maze_state, [hooks], 7, 40) == [steered]
    assert world.trajectories(agent, maze_state, [[], hooks, []], 7, 40) == [base, steered, base]
    limited = replace(world.config, max_steps=min(world.config.max_steps, 40))
    (study,) = run_episodes_from_states(agent, [maze_state], limited, seed=7)
    assert [list(c) for c in study.positions] == base["positions"]
    unchanged = post(maze, "/api/maze/paths", {"state": state, "seed": 7}).json()
    assert unchanged == {"base": base}


def test_cluster_labels_are_validated_saved_atomically_and_reloaded(maze, maze_run):
    r = get(maze, "/api/clusters?layer=res1.hook_out&k=3")
    arrays, meta = unpack(r.content)
    assert arrays["labels"].shape == (12, 9, 9) and arrays["labels"].max() <= 2
    assert arrays["sizes"].sum() == 256 * 81 and 0 <= meta["scores"]["ami"] <= 1
    body = {"layer": "res1.hook_out", "k": 3, "cluster": 1, "label": "corridor"}
    assert post(maze, "/api/clusters/label", body, "PUT").json()["names"] == {"1": "corridor"}
    for bad in ("<script>", "a\nb", "x" * 41):
        r = post(maze, "/api/clusters/label", {**body, "label": bad}, "PUT")
        assert r.status_code in (400, 422), bad
    assert post(maze, "/api/clusters/label", {**body, "cluster": 5}, "PUT").status_code == 400
    folder = maze_run / "analysis" / "explorer"
    assert [p.name for p in folder.iterdir()] == ["labels.json"]  # no temporary file left behind
    again = client_for(maze_run)  # a new launch reads them back
    assert unpack(get(again, "/api/clusters?layer=res1.hook_out&k=3").content)[1]["names"] == {
        "1": "corridor"
    }
    explorer_of(again).jobs.close()
    assert post(maze, "/api/clusters/label", {**body, "label": ""}, "PUT").json()["names"] == {}


def test_a_frames_clusters_are_its_positions_nearest_centres(maze):
    ex = explorer_of(maze)
    step, layer = ex.step(None), "res1.hook_out"
    query = f"/api/frame/clusters?seed=1&layer={layer}&k=3"
    labels = {t: unpack(get(maze, f"{query}&t={t}").content)[0]["labels"] for t in (0, 5)}
    found = ex.clusters(step, layer, 3, "kmeans")["clusters"]
    ep = ex.episode(step, 1, None, False)
    for t, got in labels.items():
        acts = ex.activations(step, ep.obs[t][None], layer)  # (channels, 9, 9)
        points = acts.reshape(len(acts), -1).T / found.scale
        nearest = ((points[:, None] - found.anchors[None]) ** 2).sum(-1).argmin(1)
        assert got.shape == (9, 9) and np.array_equal(got.reshape(-1), nearest)
    assert get(maze, f"{query}&t=999").status_code == 400
    assert get(maze, "/api/frame/clusters?seed=1&t=0&layer=hook_value").status_code == 400


def test_saved_vectors_steer_and_channel_pages_show_examples(maze):
    state = get(maze, "/api/maze/level?level=2").json()
    saved = post(maze, "/api/vectors", {"name": "cheese-2", "state": state}).json()
    assert saved["hook"] == "res1.hook_out"
    assert post(maze, "/api/vectors", {"name": "../x", "state": state}).status_code == 400
    assert {"name": "cheese-2", "hook": "res1.hook_out"}.items() <= get(maze, "/api/run").json()[
        "vectors"
    ][0].items()
    iv = {"vector": "cheese-2", "coef": 2.0}
    vector = explorer_of(maze).load_vector("cheese-2")[0]  # as saved: steering adds 2 x it
    arrays, meta = check_intervention(
        maze, {"episode": {"seed": 3}, "t": 1, "intervention": iv},
        [("res1.hook_out", lambda act, hook: act + 2.0 * vector)],
    )  # fmt: skip
    assert not np.allclose(arrays["probs"], arrays["base_probs"])  # this steering shows
    arrays, meta = unpack(get(maze, "/api/channel?layer=res1.hook_out&channel=4").content)
    values = [e["value"] for e in meta["examples"]]
    assert arrays["obs"].shape == (6, 3, 9, 9) and values == sorted(values, reverse=True)
    assert set(meta["correlations"]["correlations"]) == {
        "wall",
        "path",
        "mouse",
        "cheese",
        "corner",
    }
    assert get(maze, "/api/channel?layer=res1.hook_out&channel=16").status_code == 400


# -- the API on a rook run with an SAE -----------------------------------------------------------------------
def test_rook_episodes_units_and_sae_pages(rook):
    info = get(rook, "/api/run").json()
    assert info["world"] == "rook" and info["render"] == {"kind": "chess", "size": 5}
    assert not info["editable"] and info["greedy"]
    (sae,) = info["saes"]
    arrays, meta = unpack(get(rook, "/api/episode?seed=2").content)
    assert arrays["obs"].shape[1:] == (75,) and meta["outcome"]
    assert get(rook, "/api/episode?seed=2&level=1").status_code == 400  # no levels here
    acts = unpack(get(rook, f"/api/frame/activations?seed=2&t=0&layer={MLP_HOOK}").content)[0]
    assert acts["acts"].shape == (32,)
    amap = unpack(get(rook, "/api/frame/attribution?seed=2&t=0&method=saliency").content)[0]
    assert amap["map"].shape == (5, 5)
    channel = unpack(get(rook, f"/api/channel?layer={MLP_HOOK}&channel=3").content)
    assert channel[0]["obs"].shape == (6, 75)
    assert set(channel[1]["correlations"]["correlations"]) == {
        "in_check",
        "can_mate",
        "rook_en_prise",
    }
    over, meta = unpack(get(rook, f"/api/sae/{sae['id']}").content)
    assert meta["d_sae"] == 64 and over["frequency"].shape == (64,)
    # the frequencies are the SAE (read from its folder) encoding the play's activations, each
    # recomputed from its observation
    ex = explorer_of(rook)
    step = ex.step(None)
    folder_sae = load_sae(ex.root / "analysis" / "sae" / sae["id"])
    data = ex.sae_data(step, sae["id"])["data"]
    assert meta["observations"] == len(data.obs) > 0
    _, cache = ex.agent(step).run_with_cache(data.obs, names=[MLP_HOOK])
    torch.testing.assert_close(data.acts.float(), cache[MLP_HOOK].float())
    with torch.no_grad():
        z = folder_sae.encode(cache[MLP_HOOK].float())
    np.testing.assert_allclose(over["frequency"], (z != 0).float().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(over["max"], z.max(0).values.numpy(), rtol=1e-5, atol=1e-6)
    assert meta["dead"] == int((z != 0).sum(0).eq(0).sum())
    latent = int(np.argmax(over["frequency"]))
    card, cmeta = unpack(get(rook, f"/api/sae/{sae['id']}/latent/{latent}").content)
    assert card["top_obs"].shape[1:] == (75,) and len(cmeta["ablation"]["logit_change"]) == 24
    assert (card["activations"] > 0).all()
    assert get(rook, f"/api/sae/{sae['id']}/latent/64").status_code == 400
    assert get(rook, "/api/sae/..%2f..%2fconfig.json").status_code in (400, 404)
    body = {"episode": {"seed": 2}, "t": 0, "intervention": {"sae": sae["id"]}}
    # spliced: the activation replaced by the SAE's reconstruction of it
    check_intervention(rook, body, [(MLP_HOOK, lambda act, hook: folder_sae(act)[0])])
    clamp = {
        "episode": {"seed": 2},
        "t": 0,
        "intervention": {"clamp_channels": [1, 2], "clamp_value": 5.0, "hook": MLP_HOOK},
    }

    def units_1_2_at_5(act, hook):  # an MLP's clamp sets its units
        act = act.clone()
        act[:, [1, 2]] = 5.0
        return act

    clamped = check_intervention(rook, clamp, [(MLP_HOOK, units_1_2_at_5)])[0]
    assert not np.allclose(clamped["probs"], clamped["base_probs"])
    assert post(rook, "/api/maze", {"state": {}, "layer": MLP_HOOK}).status_code == 400


# -- the API on a hazard-world run ---------------------------------------------------------------------------
HAZARD_LAYER = "hook_relu"


@pytest.fixture(scope="module")
def hazards_run(tiny_hazard_run, tmp_path_factory) -> Path:
    """A copy of the shared tiny hazard run (the explorer may write into the run it serves), with
    a small SAE on its conv map."""
    import shutil

    from policylens.studies.rook_sae.runs import SAESpec, SAETrainOptions, train_run_sae

    run = tmp_path_factory.mktemp("explorer") / "hazards"
    shutil.copytree(tiny_hazard_run.path, run)
    spec = SAESpec(arch="topk", k=4, expansion=2, samples=4000)
    train_run_sae(run, SAETrainOptions(HAZARD_LAYER, spec, steps=300))
    return run


@pytest.fixture(scope="module")
def hazards(hazards_run):
    client = client_for(hazards_run)
    yield client
    client.app.app.state.explorer.jobs.close()


def test_hazard_episodes_are_drawn_as_tiles_and_end_by_the_worlds_cause(hazards):
    from policylens.envs.hazards import CAUSES, HazardsVecEnv
    from policylens.rollout import engine
    from policylens.worlds.hazards import symbolic_rgb

    info = get(hazards, "/api/run").json()
    assert info["world"] == "hazards" and info["has_levels"] and not info["editable"]
    assert info["render"]["kind"] == "image"
    kinds = {name for name, _ in info["render"]["legend"]}
    assert {"saw", "enemy", "lava", "coin", "wall", "crate", "agent"} <= kinds
    assert info["default_layer"] == HAZARD_LAYER  # the RL-vision study's conv map
    ex = explorer_of(hazards)
    outcomes = set()
    for seed in range(4):
        arrays, meta = unpack(get(hazards, f"/api/episode?seed={seed}").content)
        T = meta["length"]
        ep = ex.episode(ex.step(None), seed, None, False)
        assert arrays["obs"].shape == (T + 1, 13, 13, 3) and arrays["obs"].dtype == np.uint8
        for t in (0, T):  # each frame is the study's picture of the symbolic view, one px a tile
            assert np.array_equal(arrays["obs"][t], symbolic_rgb(ep.obs[t], px=1))
        # the outcome is the world's own: the same level replayed with the same actions
        envs = HazardsVecEnv(1, **ex.world.env_kwargs)
        envs.reset(seed=seed)
        for t, a in enumerate(arrays["actions"]):
            _, _, terminated, truncated, infos = envs.step(np.array([a]))
            assert bool(terminated[0] or truncated[0]) == (t == T - 1)
        cause = str(infos["final_info"]["death_cause"][0])
        assert meta["outcome"] == ("coin" if cause == "none" else cause)
        assert meta["success"] == (meta["outcome"] == "coin")
        assert meta["bookmarks"][-1]["label"] == meta["outcome"]
        outcomes.add(meta["outcome"])
    assert outcomes <= {"coin", *CAUSES[1:]}
    # the tiny run's agent times out; the other endings read the same label
    for success, cause, outcome in ((True, "none", "coin"), (False, "saw", "saw"),
                                    (False, "fell", "fell"), (False, "timeout", "timeout")):  # fmt: skip
        ended = engine.Episode(success=success, end={"death_cause": cause, "truncated": False})
        assert ex.world.outcome(ended) == outcome
    # level N is the world's level seed N
    arrays, meta = unpack(get(hazards, "/api/episode?seed=0&level=7").content)
    envs, obs, _ = ex.world.reset(0, 7, False)
    assert envs.unwrapped.get_state(0).level_seed == 7 and meta["level"] == 7
    assert np.array_equal(arrays["obs"][0], symbolic_rgb(obs[0], px=1))
    envs.close()


def test_hazard_channels_correlate_with_the_worlds_object_masks(hazards):
    from policylens.worlds.hazards import OBJECTS

    ex = explorer_of(hazards)
    step = ex.step(None)
    query = f"seed=1&t=0&layer={HAZARD_LAYER}"
    assert unpack(get(hazards, f"/api/frame/activations?{query}").content)[0]["acts"].shape == (
        16, 13, 13,
    )  # fmt: skip
    arrays, meta = unpack(get(hazards, f"/api/channel?layer={HAZARD_LAYER}&channel=5").content)
    assert arrays["obs"].shape == (6, 13, 13, 3)  # dataset examples, drawn
    correlations = meta["correlations"]["correlations"]
    assert set(correlations) == set(OBJECTS)
    data = ex.dataset(step)
    assert len(data.obs) == 256
    # the masks are the world's, cell for cell with what the agent sees
    assert np.array_equal(data.truth["agent"], data.obs[:, 7] > 0)
    assert data.truth["agent"].any((1, 2)).all()
    assert ((data.obs[:, 0] > 0) <= data.truth["wall"]).all()
    acts = ex.dataset_acts(step, HAZARD_LAYER)[:, 5].reshape(-1)
    wall = data.truth["wall"].reshape(-1).astype(float)
    np.testing.assert_allclose(correlations["wall"], np.corrcoef(acts, wall)[0, 1], rtol=1e-6)


def test_hazard_clusters_are_scored_against_each_cells_object(hazards):
    from policylens.worlds.hazards import HazardsWorld

    ex = explorer_of(hazards)
    arrays, meta = unpack(get(hazards, f"/api/clusters?layer={HAZARD_LAYER}&k=3").content)
    data = ex.dataset(ex.step(None))
    assert arrays["labels"].shape == (12, 13, 13) and arrays["obs"].shape == (12, 13, 13, 3)
    assert arrays["sizes"].sum() == len(data.obs) * 13 * 13
    scores = meta["scores"]
    assert scores["categories"] == list(HazardsWorld.CATEGORIES) and 0 <= scores["ami"] <= 1
    assert {c["majority"] for c in scores["clusters"]} <= set(HazardsWorld.CATEGORIES)
    cat, names = ex.world.categories(data, (13, 13))
    assert (cat[data.truth["agent"]] == names.index("agent")).all()  # the agent is on top
    anything = np.logical_or.reduce([data.truth[n] for n in names[1:]])
    assert (cat[~anything] == names.index("empty")).all() and (cat[anything] > 0).all()
    query = f"/api/frame/clusters?seed=1&t=2&layer={HAZARD_LAYER}&k=3"
    labels = unpack(get(hazards, query).content)[0]["labels"]
    assert labels.shape == (13, 13) and labels.min() >= 0 and labels.max() <= 2


def test_hazard_overlays_and_nmf_features_named_by_object_masks(hazards):
    from policylens.worlds.hazards import OBJECTS

    for q in ("method=saliency", "method=ig&target=action", f"method=ig&layer={HAZARD_LAYER}"):
        amap = unpack(get(hazards, f"/api/frame/attribution?seed=1&t=1&{q}").content)[0]["map"]
        assert amap.shape == (13, 13) and np.isfinite(amap).all(), q
    query = f"/api/frame/nmf?seed=1&t=1&layer={HAZARD_LAYER}&k=4"
    arrays, meta = unpack(get(hazards, query).content)
    assert arrays["maps"].shape == (13, 13, 4) and (arrays["maps"] >= 0).all()
    assert arrays["example_obs"].shape == (16, 13, 13, 3)
    # named as the RL-vision study names them: the object mask best correlated (Pearson, numpy
    # here) with the feature's maps over the dataset the NMF was fitted on
    ex = explorer_of(hazards)
    step = ex.step(None)
    fitted, truth = ex.nmf(step, HAZARD_LAYER, 4)["nmf"].maps, ex.dataset(step).truth
    assert fitted.shape == (256, 13, 13, 4) and len(meta["features"]) == 4
    for i, f in enumerate(meta["features"]):
        x = fitted[..., i].ravel().astype(np.float64)
        by_hand = {
            name: np.corrcoef(x, truth[name].ravel())[0, 1] if truth[name].std() * x.std() else 0.0
            for name in OBJECTS
        }
        assert f["correlations"] == pytest.approx(by_hand, abs=1e-9), i
        best = max(by_hand, key=by_hand.__getitem__)
        assert f["label"] == best and f["correlation"] == pytest.approx(by_hand[best], abs=1e-9)


def test_hazard_interventions_and_sae_pages(hazards):
    from policylens.envs.hazards import CAUSES

    info = get(hazards, "/api/run").json()
    (sae,) = info["saes"]
    from policylens.worlds.hazards import symbolic_rgb

    ex = explorer_of(hazards)
    step = ex.step(None)
    clamp = {"episode": {"seed": 1}, "t": 1,
             "intervention": {"clamp_channels": list(range(16)), "clamp_value": 5.0}}  # fmt: skip

    def every_channel_at_5(act, hook):  # the whole conv map fixed: every frame looks the same
        return torch.full_like(act, 5.0)

    arrays, meta = check_intervention(hazards, clamp, [(HAZARD_LAYER, every_channel_at_5)])
    assert not np.allclose(arrays["probs"], arrays["base_probs"])
    played = ex.world.play(ex.agent(step), 1, None, False, [(HAZARD_LAYER, every_channel_at_5)])
    assert np.array_equal(arrays["final_obs"], symbolic_rgb(played.obs[-1], px=1))
    assert {meta["outcome"], meta["base_outcome"]} <= {"coin", *CAUSES[1:]}
    at = {"episode": {"seed": 1}, "t": 1, "intervention": {
        "clamp_channels": [3], "clamp_value": 4.0, "clamp_position": [6, 7]}}  # fmt: skip

    def channel_3_only_at_6_7(act, hook):  # Mini et al.: the rest of the channel zeroed
        act = act.clone()
        act[:, 3] = 0.0
        act[:, 3, 6, 7] = 4.0
        return act

    check_intervention(hazards, at, [(HAZARD_LAYER, channel_3_only_at_6_7)])
    over, meta = unpack(get(hazards, f"/api/sae/{sae['id']}").content)
    # a latent's frequency: the share of observations where it fires at any cell of the map
    folder_sae = load_sae(ex.root / "analysis" / "sae" / sae["id"])
    data = ex.sae_data(step, sae["id"])["data"]
    _, cache = ex.agent(step).run_with_cache(data.obs, names=[HAZARD_LAYER])
    cells = cache[HAZARD_LAYER].float().permute(0, 2, 3, 1)  # (n, 13, 13, 16)
    with torch.no_grad():
        z = folder_sae.encode(cells.reshape(-1, 16)).reshape(len(cells), 13 * 13, -1)
    np.testing.assert_allclose(over["frequency"], (z != 0).any(1).float().mean(0).numpy())
    np.testing.assert_allclose(over["max"], z.amax((0, 1)).numpy(), rtol=1e-5, atol=1e-6)
    latent = int(np.argmax(over["frequency"]))
    card = unpack(get(hazards, f"/api/sae/{sae['id']}/latent/{latent}").content)[0]
    assert card["top_obs"].shape[1:] == (13, 13, 3)
    spliced = {"episode": {"seed": 1}, "t": 1, "intervention": {"sae": sae["id"]}}

    def reconstructed(act, hook):  # each cell's channel vector through the SAE
        vectors = act.permute(0, 2, 3, 1).reshape(-1, 16)
        return folder_sae(vectors)[0].reshape(len(act), 13, 13, 16).permute(0, 3, 1, 2)

    check_intervention(hazards, spliced, [(HAZARD_LAYER, reconstructed)])
    assert post(hazards, "/api/maze", {"state": {}, "layer": HAZARD_LAYER}).status_code == 400


def test_a_taken_port_and_a_folder_without_a_run_fail_in_one_sentence(tmp_path):
    from typer.testing import CliRunner

    from policylens.cli import app

    sock = free_socket(0)
    try:
        with pytest.raises(ValueError, match="is in use on 127.0.0.1"):
            free_socket(sock.getsockname()[1])
    finally:
        sock.close()
    res = CliRunner().invoke(app, ["explore", str(tmp_path), "--no-browser"])
    assert res.exit_code == 2 and "not a policylens run" in res.output


def test_the_server_sends_each_answer_without_waiting_for_acknowledgements(maze_run):
    """TCP_NODELAY on every connection: with Nagle's algorithm, a kept-alive connection held
    each answer's body until the page acknowledged its headers (about 40 ms)."""
    import http.client
    import socket

    from policylens.explorer.app import Background

    server = Background(Explorer(maze_run))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        conn.request("GET", f"/{server.token}/api/maze/level?level=1")
        assert conn.getresponse().read()  # the connection stays open
        (protocol,) = server.server.server_state.connections
        sock = protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        conn.close()
    finally:
        server.close()


# -- fuzz ---------------------------------------------------------------------------------------------------
def _values(schema: dict):
    """Values for one parameter: mostly what the schema allows, often what it does not."""
    kind = schema.get("type") or next(
        (s.get("type") for s in schema.get("anyOf", []) if s.get("type") != "null"), "string"
    )
    nasty = st.sampled_from(["../config.json", "..%2f..%2fetc", "/etc/passwd", "-1", "1e999",
                             "NaN", "", "res1.hook_out", "hook_value", "logit:9", "value",
                             "<script>", "\x00", "9" * 30])  # fmt: skip
    if kind == "integer":
        return st.one_of(st.integers(-3, 40), st.integers(-(2**40), 2**40), nasty)
    if kind == "number":
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), nasty)
    if kind == "boolean":
        return st.one_of(st.booleans(), nasty)
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), nasty)
    return st.one_of(nasty, st.text(max_size=12))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**33), 2**33) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("world", ["maze", "hazards"])
def test_fuzzing_the_openapi_spec_gives_no_server_error_and_no_outside_file(world, request):
    client, run = request.getfixturevalue(world), request.getfixturevalue(f"{world}_run")
    spec = client.app.app.openapi()
    operations = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    run_files = {
        p.read_bytes()
        for p in run.rglob("*")
        if p.is_file() and p.suffix in (".json", ".html", ".csv")
    }
    body_keys = st.sampled_from(["state", "layer", "intervention", "episode", "t", "name", "k",
                                 "cluster", "label", "step", "seed", "vector", "coef", "hook"])  # fmt: skip

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(st.sampled_from(operations), st.data())
    def check(operation, data):
        path, method, op = operation
        url, params = path, {}
        for p in op.get("parameters", []):
            value = data.draw(_values(p.get("schema", {})), label=p["name"])
            if p["in"] == "path":
                url = url.replace("{" + p["name"] + "}", quote(str(value), safe="/.:") or "x")
            elif data.draw(st.booleans()):
                params[p["name"]] = value
        body = None
        if "requestBody" in op:
            body = data.draw(
                st.one_of(json_values, st.dictionaries(body_keys, json_values, max_size=6))
            )
        r = client.request(method.upper(), f"/{TOKEN}{url}", params=params, json=body)
        assert r.status_code < 500, (method, url, params, body, r.text[:300])
        if url.startswith("/files/") and r.status_code == 200:
            assert r.content in run_files

    check()
