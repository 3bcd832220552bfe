"""The explorer's decision-transformer view on a tiny DT run: the rollout is the episode play_dt
plays (its actions, windows and logits, recorded from inside play_dt), the attention map is the
cache's pattern on play_dt's own window, the patching table is the study's, every new route is
behind the token, Host and Origin checks, and (slow) a browser moves the RTG slider and sees the
episode change."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from oracles import INSTALL, missing
from typer.testing import CliRunner

from policylens.cli import app as cli
from policylens.explorer import Explorer, create_app
from policylens.explorer.security import loopback_hosts
from policylens.explorer.tensors import unpack
from policylens.rollout import dt as rollout_dt
from policylens.rollout.dt import PlayOptions, play_dt
from policylens.runs import Run
from policylens.train.dt import load_run_dt

TOKEN = "test-token-0123456789abcdef"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
K = 3
runner = CliRunner()


def invoke(*args) -> dict:
    r = runner.invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def build_dt_run(root: Path) -> Path:
    """A tiny Dynamic-Obstacles DT run (8 episodes collected, 4 gradient steps) whose RTG
    embedding is scaled up, so the target RTG changes what it does (as training would)."""
    data, out = root / "store", root / "dt_run"
    invoke("dt", "collect", "--out", data, "--episodes", 8, "--json")
    invoke("train", "dt", "--data", data, "--out", out, "--steps", 4, "--context", K,
           "--d-model", 16, "--d-mlp", 32, "--batch-size", 4, "--json")  # fmt: skip
    run = Run(out)
    model = load_run_dt(run)
    with torch.no_grad():
        model.rtg_embed.weight.mul_(300)
        model.unembed.W_U.mul_(20)  # decisive: sampled actions follow the logits
    model.save_weights(run.checkpoint(None)[1])
    return out


@pytest.fixture(scope="module")
def dt_run(tmp_path_factory) -> Path:
    return build_dt_run(tmp_path_factory.mktemp("dt"))


@pytest.fixture(scope="module")
def client(dt_run):
    torch.set_num_threads(1)
    explorer = Explorer(dt_run)
    yield TestClient(create_app(explorer, TOKEN, loopback_hosts(PORT)), base_url=BASE)
    explorer.jobs.close()


def get(client: TestClient, path: str, **kw):
    """GET through the token, asking again while a job runs (202)."""
    for _ in range(1200):
        r = client.get(f"/{TOKEN}{path}", **kw)
        if r.status_code != 202:
            return r
        time.sleep(0.1)
    raise AssertionError(f"{path} still pending")


def tensors(client: TestClient, path: str) -> tuple[dict, dict]:
    r = get(client, path)
    assert r.status_code == 200, r.text
    return unpack(r.content)


class Recording:
    """play_dt's model and envs, recording the windows it reads, the logits it gets and the
    actions it takes."""

    def __init__(self, model, monkeypatch) -> None:
        self.model, self.windows, self.logits, self.actions = model, [], [], []
        self.dt_config = model.dt_config
        make = rollout_dt.make

        def recording_make(*args, **kwargs):
            env = make(*args, **kwargs)
            step = env.step

            def recorded(a):
                self.actions.append(int(a))
                return step(a)

            env.step = recorded
            return env

        monkeypatch.setattr(rollout_dt, "make", recording_make)

    def eval(self):
        return self

    def __call__(self, batch):
        out = self.model(batch)
        self.windows.append(batch)
        self.logits.append(out[0, -1].float().numpy())
        return out


def play_dt_recorded(run: Path, rtg: float, seed: int, greedy: bool, monkeypatch):
    run_ = Run(run)
    rec = Recording(load_run_dt(run_), monkeypatch)
    [episode] = play_dt(rec, run_.config["trainer"]["env_id"], [rtg],
                        PlayOptions(1, seed, greedy), run_.config["trainer"]["env_kwargs"])  # fmt: skip
    monkeypatch.undo()
    return episode, rec


def test_the_run_opens_in_its_dt_view_and_refuses_the_agent_views(client):
    info = get(client, "/api/run").json()
    assert info["kind"] == "dt" and info["world"] == "minigrid"
    assert info["actions"] == ["left", "right", "forward"] and info["model"]["context"] == K
    assert info["checkpoints"] == sorted(info["checkpoints"]) and info["step"] == 4
    for path in (
        "/api/episode",
        "/api/frame/activations?t=0&layer=x",
        "/api/channel?layer=x&channel=0",
    ):
        r = get(client, path)
        assert r.status_code == 400 and "decision-transformer run" in r.json()["error"], path
    page = get(client, "/static/main.js").text
    assert "dt.js" in page and get(client, "/static/dt.js").status_code == 200


@pytest.mark.parametrize(
    ("rtg", "seed", "greedy"), [(1.0, 3, False), (-1.0, 5, False), (0.5, 2, True)]
)
def test_the_rollout_is_the_episode_play_dt_plays(client, dt_run, rtg, seed, greedy, monkeypatch):
    arrays, meta = tensors(
        client, f"/api/dt/rollout?rtg={rtg}&seed={seed}&greedy={str(greedy).lower()}"
    )
    episode, rec = play_dt_recorded(dt_run, rtg, seed, greedy, monkeypatch)
    assert arrays["actions"].tolist() == rec.actions
    assert meta["length"] == episode.length == len(rec.actions)
    assert meta["return"] == pytest.approx(episode.ret) and meta["outcome"] == episode.outcome
    assert meta["success"] == episode.success and meta["target"] == rtg and meta["seed"] == seed
    np.testing.assert_allclose(arrays["logits"], np.stack(rec.logits), rtol=0, atol=1e-6)
    probs = torch.softmax(torch.from_numpy(np.stack(rec.logits)), -1).numpy()
    np.testing.assert_allclose(arrays["probs"], probs, rtol=0, atol=1e-6)
    # the RTG token falls by each reward; the frames are the states of the windows' last steps
    np.testing.assert_allclose(arrays["rtg"][0], rtg)
    np.testing.assert_allclose(
        arrays["rtg"][1:], rtg - np.cumsum(arrays["rewards"])[:-1], atol=1e-5
    )
    assert arrays["obs"].shape == (episode.length, 56, 56, 3) and arrays["obs"].dtype == np.uint8
    explorer = Explorer(dt_run)
    try:
        ro = explorer.dt_rollout(explorer.step(None), seed, rtg, greedy)
    finally:
        explorer.jobs.close()
    for t, window in enumerate(rec.windows):
        np.testing.assert_array_equal(ro.window(t).obs.numpy(), window.obs.numpy())
        np.testing.assert_array_equal(ro.window(t).rtg.numpy(), window.rtg.numpy())
    np.testing.assert_array_equal(arrays["obs"], explorer.world.drawn(ro.obs))


def test_the_rtg_changes_the_episode(client):
    plays = {rtg: tensors(client, f"/api/dt/rollout?rtg={rtg}&seed=1")[0]["actions"].tolist()
             for rtg in (1.0, -1.0)}  # fmt: skip
    assert plays[1.0] != plays[-1.0]


@pytest.mark.parametrize("t", [0, 1, 4])
def test_the_attention_map_is_the_caches_pattern_on_play_dts_window(client, dt_run, t, monkeypatch):
    _, rec = play_dt_recorded(dt_run, 1.0, 3, False, monkeypatch)
    t = min(t, len(rec.windows) - 1)
    arrays, meta = tensors(client, f"/api/dt/attention?rtg=1.0&seed=3&t={t}")
    model = load_run_dt(Run(dt_run))
    with torch.no_grad():
        _, cache = model.run_with_cache(rec.windows[t])
    want = np.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0].numpy()
                     for layer in range(model.cfg.n_layers)])  # fmt: skip
    assert arrays["pattern"].shape == (1, 2, 3 * K, 3 * K)
    np.testing.assert_allclose(arrays["pattern"], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(arrays["pattern"].sum(-1), 1, atol=1e-5)
    assert meta["query"] == 3 * K - 2 and meta["heads"] == ["L0H0", "L0H1"] and meta["t"] == t
    tokens = meta["tokens"]
    assert [x["kind"] for x in tokens[-3:]] == ["R", "s", "a"] and tokens[-1]["label"] == f"a{t}=?"
    pads = 3 * max(0, K - 1 - t)
    assert [x["kind"] for x in tokens[:pads]] == ["pad"] * pads
    assert all(
        x["step"] == t - (K - 1) + i // 3 for i, x in enumerate(tokens) if x["kind"] != "pad"
    )


def test_attention_outside_the_episode_and_bad_rtgs_are_refused(client):
    r = get(client, "/api/dt/attention?rtg=1.0&seed=3&t=5000")
    assert r.status_code == 400 and "outside the episode" in r.json()["error"]
    for q in ("rtg=nan", "rtg=inf", "rtg=1e9", "seed=-1", "t=-1"):
        assert get(client, f"/api/dt/attention?t=0&{q}").status_code in (400, 422), q
        if not q.startswith("t="):
            assert get(client, f"/api/dt/rollout?{q}").status_code in (400, 422), q


def test_the_patching_table_is_the_studys(client, dt_run):
    from policylens.studies.dt_analysis import PatchOptions, patching

    r = get(client, "/api/dt/patching?high=200&low=-200&min_gap=0&histories=16")
    assert r.status_code == 200, r.text
    got = r.json()
    want = patching(Run(dt_run), PatchOptions(histories=16, high=200, low=-200, min_gap=0))
    assert [row["component"] for row in got["rows"]] == [row["component"] for row in want.rows]
    for g, w in zip(got["rows"], want.rows, strict=True):
        assert g["recovered"]["mean"] == pytest.approx(w["recovered"]["mean"], abs=1e-6)
        assert g["recovered"]["ci"] == pytest.approx(w["recovered"]["ci"], abs=1e-6)
    assert got["fewest"]["components"] == want.fewest["components"]


def test_a_dt_without_its_store_patches_on_the_store_it_is_given(dt_run, tmp_path):
    """A DT whose training store is gone (as a zoo DT ships) says so in one sentence; given a
    store (``policylens explore RUN --data STORE``) its patching table is the study's on it."""
    from policylens.studies.dt_analysis import PatchOptions, patching

    moved = tmp_path / "moved"
    shutil.copytree(dt_run, moved)
    config = json.loads((moved / "config.json").read_text())
    store = config["trainer"]["data"]
    config["trainer"]["data"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    query = "/api/dt/patching?high=200&low=-200&min_gap=0&histories=16"
    for data in (None, store):
        explorer = Explorer(moved, data=data)
        try:
            client = TestClient(create_app(explorer, TOKEN, loopback_hosts(PORT)), base_url=BASE)
            r = get(client, query)
        finally:
            explorer.jobs.close()
        if data is None:
            assert r.status_code == 400 and "is not here" in r.json()["error"], r.text
            continue
        assert r.status_code == 200, r.text
        want = patching(Run(dt_run), PatchOptions(histories=16, high=200, low=-200, min_gap=0))
        got = [row["recovered"]["mean"] for row in r.json()["rows"]]
        assert got == pytest.approx([row["recovered"]["mean"] for row in want.rows], abs=1e-6)
    for bad in (tmp_path / "gone", tmp_path):
        with pytest.raises(ValueError, match="must be a trajectory store"):
            Explorer(moved, data=bad)
    r = runner.invoke(cli, ["explore", str(moved), "--data", str(tmp_path), "--no-browser"])
    assert r.exit_code == 2 and "must be a trajectory store" in r.output


@pytest.mark.parametrize("path", ["/api/dt/rollout?rtg=1", "/api/dt/attention?t=0",
                                  "/api/dt/patching?high=200&low=-200&min_gap=0"])  # fmt: skip
def test_the_dt_routes_are_behind_the_token_host_and_origin_checks(client, path):
    for wrong in ("", TOKEN[:-1], f"{TOKEN}x", "x"):
        r = client.get(f"/{wrong}{path}" if wrong else path)
        assert r.status_code == 403 and "token" in r.json()["error"], wrong
    ok = f"/{TOKEN}{path}"
    r = client.get(ok, headers={"Host": "evil.test"})
    assert r.status_code == 403 and "Host" in r.json()["error"]
    assert client.get(ok, headers={"Origin": "http://evil.test"}).status_code == 403
    assert client.get(ok, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    r = get(client, path)
    assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)
    assert r.headers["content-security-policy"].startswith("default-src 'self'")


# -- the page in a real browser (slow) -------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def until(page, condition: str, timeout_s: float = 120.0) -> None:
    """Wait until the JavaScript expression is true (polled: the CSP forbids Playwright's
    string-evaluating wait_for_function)."""
    end = time.monotonic() + timeout_s
    while not page.evaluate(f"() => Boolean({condition})"):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {condition}")
        page.wait_for_timeout(30)


@pytest.mark.slow
@pytest.mark.xdist_group("browser")
def test_the_browser_replays_the_episode_when_the_rtg_slider_moves(dt_run):
    absent = []
    if not Path(CHROMIUM).exists():
        absent.append(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        absent.append(f"playwright is not installed ({INSTALL['playwright']})")
    if absent:
        missing("browser tests need a browser: " + "; ".join(absent))
    from policylens.explorer.app import Background

    torch.set_num_threads(1)
    server = Background(Explorer(dt_run))
    problems: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(f"{server.url}#/dt?seed=1&rtg=1.00&t=1&high=200&low=-200&min_gap=0")
            until(page, "document.querySelector('#dt-attention')?.dataset.t === '1'")
            assert page.locator("#dt-attention canvas.dt-head").count() == 2
            assert "Decision transformer" in page.inner_text("#nav")
            high = page.get_attribute("#dt-summary", "data-actions")
            rows = page.locator("#dt-tokens tr[data-t]").count()
            assert rows == len(high.split(","))
            page.fill("#rtg-slider", "-1")
            until(page, "document.querySelector('#dt-summary').dataset.rtg === '-1'")
            low = page.get_attribute("#dt-summary", "data-actions")
            assert low != high and "target RTG -1.00" in page.inner_text("#dt-summary")
            assert "rtg=-1.00" in page.url
            assert page.locator("#dt-tokens tr[data-t]").count() == len(low.split(","))
            page.locator("#dt-tokens tr[data-t='0']").click()
            until(page, "document.querySelector('#dt-attention').dataset.t === '0'")
            until(page, "document.querySelector('#dt-patch-table')")
            assert "residual stream before the unembed" in page.inner_text("#dt-patch-table")
            browser.close()
    finally:
        server.close()
    assert problems == []
