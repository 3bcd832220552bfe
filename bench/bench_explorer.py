"""Latency of each explorer interaction as a user feels it: from the click, key or slider move to
the answer drawn, measured by the page itself (``window.__latencies``) in Debian's Chromium driven
by Playwright, with the server started as ``policylens explore RUN --no-browser`` (one torch
thread, its default).

Interactions on the maze (maze_cnn), the rook endgame (MLP 256-256 Q-network with a 4x SAE) and
the hazard world (the recipe's one-conv maze_cnn on the symbolic 13 x 13 view, its frames drawn
by the server): scrubbing with an overlay, the activations or the frame's clusters shown, the
arrow keys, toggling overlays, opening a channel, labelling a cluster (every world with episodes
and conv maps: maze and hazards); moving the cheese, toggling a wall, dragging the steering
slider (the steered agent's vector field; then the two sampled paths of up to 40 steps, the
agent's cached, the steered one played), moving the cheese in the interventions view (both
paths played as one batch) (maze); opening an SAE latent, splicing an SAE in (rook). Each is
warmed up once (the first answer may start a background job), then repeated ``--repeats`` times;
p50 and p95 are printed against the 100 ms budget.

Named peer: the wire format. One episode bundle is decoded in the page from our binary message
and from the same arrays as JSON lists (FastAPI's default answer); the ratio is printed.

Run: ``.venv/bin/python bench/bench_explorer.py [--maze RUN] [--rook RUN] [--hazards RUN]
[--worlds maze,rook,hazards] [--repeats 30]``. A world without a run given gets an untrained one
of its built-in architecture (latency does not depend on training). Labelling a cluster writes
into the run's ``analysis/explorer/labels.json``. Timings on a machine shared with other jobs are
inflated.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

CHROMIUM = "/usr/bin/chromium"


def build_maze_run(root: Path) -> Path:
    """An untrained run of the built-in maze architecture."""
    from policylens.agents import build_agent
    from policylens.runs import Run

    torch.manual_seed(0)
    maze = build_agent("maze_cnn", (3, 9, 9), 4)
    with torch.no_grad():
        maze.net.fc_policy.weight.mul_(300.0)  # decisive, so paths differ when steered
    trainer = {"env_id": "policylens/Maze-v0", "env_kwargs": {"cheese_region": 1, "max_steps": 100},
               "gamma": 0.95, "gae_lambda": 0.9}  # fmt: skip
    run = Run.create(root / "maze", {"kind": "ppo", "agent": maze.config, "trainer": trainer})
    run.save_checkpoint(maze, 0)
    return run.path


def build_rook_run(root: Path) -> Path:
    """An untrained rook-endgame Q-network run with a 4x SAE on its first layer."""
    from policylens.agents import build_agent
    from policylens.runs import Run
    from policylens.studies.rook_sae.runs import SAESpec, SAETrainOptions, train_run_sae

    rook = build_agent("mlp", (75,), 24, head="q", hidden=[256, 256])
    trainer = {"env_id": "policylens/RookEndgame-v0", "env_kwargs": {}, "gamma": 0.99}
    rrun = Run.create(root / "rook", {"kind": "dqn", "agent": rook.config, "trainer": trainer})
    rrun.save_checkpoint(rook, 0)
    spec = SAESpec(arch="topk", expansion=4, samples=20_000)
    train_run_sae(rrun.path, SAETrainOptions("layers.0.hook_act", spec, steps=2000))
    return rrun.path


def build_hazards_run(root: Path) -> Path:
    """An untrained run of the hazard recipe's network in the recipe's world."""
    from policylens.agents import build_agent
    from policylens.envs.hazards import CHANNELS
    from policylens.runs import Run
    from policylens.worlds.hazards import HazardsRecipe

    recipe = HazardsRecipe().config()
    view = 13  # the world's default symbolic view, as the recipe trains on
    agent = build_agent(recipe.arch, (len(CHANNELS), view, view), 15, **recipe.arch_kwargs)
    trainer = {"env_id": recipe.env_id, "env_kwargs": recipe.env_kwargs, "gamma": recipe.gamma,
               "gae_lambda": recipe.gae_lambda}  # fmt: skip
    run = Run.create(root / "hazards", {"kind": "ppo", "agent": agent.config, "trainer": trainer})
    run.save_checkpoint(agent, 0)
    return run.path


def explore(run: Path) -> tuple[subprocess.Popen, str]:
    """``policylens explore RUN`` in its own process, as a user runs it (a server thread in this
    process would share the GIL with Playwright and inflate every answer); returns it and its URL."""
    cli = Path(sys.executable).parent / "policylens"
    server = subprocess.Popen([str(cli), "explore", str(run), "--no-browser"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    for line in server.stdout:
        found = re.search(r"http://127\.0\.0\.1:\d+/\S+/", line)
        if found:
            return server, found.group(0)
    raise RuntimeError(f"policylens explore {run} printed no URL")


def wait(page, condition: str, timeout_ms: int = 120_000) -> None:
    """Poll a JavaScript condition (the page's CSP forbids Playwright's eval-based waits)."""
    for _ in range(timeout_ms // 20):
        if page.evaluate(f"() => Boolean({condition})"):
            return
        page.wait_for_timeout(20)
    raise TimeoutError(condition)


def recorded(page, name: str) -> int:
    return page.evaluate(f"() => window.__latencies.filter(l => l.name === {name!r}).length")


def repeat(page, name: str, action, n: int, settle: str = "true") -> list[float]:
    """Do ``action(i)`` n + 1 times (the first one warms up), each time waiting until the page has
    recorded one more latency under ``name``; returns the n measured ones (ms)."""
    for i in range(n + 1):
        before = recorded(page, name)
        action(i)
        wait(page, f"window.__latencies.filter(l => l.name === {name!r}).length > {before}")
        wait(page, settle)
        page.wait_for_timeout(30)  # a user's next move comes later than the last answer
    values = page.evaluate(
        f"() => window.__latencies.filter(l => l.name === {name!r}).map(l => l.ms)"
    )
    return values[-n:]


def episode_interactions(page, url: str, n: int, prefix: str = "") -> dict[str, list[float]]:
    """The views every world with episodes and conv maps has: overlays, NMF, activations, a
    channel's page, the trajectory, the frame's clusters and naming a cluster."""
    out: dict[str, list[float]] = {}
    rng = np.random.default_rng(0)
    page.goto(f"{url}#/observation?seed=1&overlay=saliency")
    wait(page, "document.querySelector('#board')?.dataset.overlay === 'saliency'")
    length = int(page.inner_text("#frame-label").split("/")[1])
    frames = rng.integers(0, length + 1, size=n + 1)
    out["scrub (saliency overlay)"] = repeat(
        page, "scrub", lambda i: page.fill("#frame-slider", str(frames[i])), n
    )
    out["arrow key (saliency overlay)"] = repeat(
        page, "arrow key", lambda i: page.keyboard.press("ArrowRight" if i % 2 else "ArrowLeft"), n
    )
    kinds = ["ig", "saliency", "grad_x_input", "ig-layer"]
    out["toggle overlay"] = repeat(
        page, "toggle overlay", lambda i: page.select_option("#overlay", kinds[i % 4]), n
    )
    page.select_option("#overlay", "nmf")
    wait(page, "document.querySelector('#nmf-legend')")
    out["scrub (NMF features)"] = repeat(
        page, "scrub", lambda i: page.fill("#frame-slider", str(frames[i])), n
    )

    page.goto(f"{url}#/activations?seed=1")
    wait(page, "document.querySelectorAll('canvas.channel').length > 0")
    out["scrub (activations)"] = repeat(
        page, "scrub", lambda i: page.fill("#frame-slider", str(frames[i])), n
    )
    channels = page.locator("canvas.channel")
    channels.nth(0).click()
    wait(page, "document.querySelectorAll('#examples canvas').length > 0")
    count = channels.count()
    out["open channel"] = repeat(
        page, "open channel", lambda i: channels.nth(i % count).click(), n,
        "document.querySelectorAll('#examples canvas').length > 0",
    )  # fmt: skip

    page.goto(f"{url}#/trajectory?seed=1")
    wait(page, "document.querySelector('#board')?.dataset.frame")
    out["scrub (trajectory, timelines)"] = repeat(
        page, "scrub", lambda i: page.fill("#frame-slider", str(frames[i])), n
    )

    page.goto(f"{url}#/clusters?k=4&seed=1")
    wait(page, "document.querySelector('#cluster-frame')?.dataset.frame")
    out["scrub (frame clusters)"] = repeat(
        page, "scrub", lambda i: page.fill("#frame-slider", str(frames[i])), n
    )

    def label(i: int) -> None:
        page.fill("#cluster-label-0", f"label {i}")
        page.locator("#cluster-label-0").dispatch_event("change")

    out["label a cluster"] = repeat(page, "label cluster", label, n)
    return {f"{prefix}{name}": values for name, values in out.items()}


def maze_interactions(page, url: str, n: int) -> dict[str, list[float]]:
    out = episode_interactions(page, url, n)
    page.goto(f"{url}#/editor?level=3")
    wait(page, "document.querySelector('#board')?.dataset.field")
    state = page.evaluate("() => fetch('api/maze/level?level=3').then(r => r.json())")
    size = len(state["walls"])
    free = [(r, c) for r in range(size) for c in range(size) if state["walls"][r][c] == "."]
    inner = [
        (r, c)
        for r in range(1, size - 1)
        for c in range(1, size - 1)
        if state["walls"][r][c] == "#"
    ]
    box = page.locator("#board").bounding_box()
    cell = box["width"] / size

    def click(rc) -> None:
        page.locator("#board").click(
            position={"x": (rc[1] + 0.5) * cell, "y": (rc[0] + 0.5) * cell}
        )

    page.check("#mode-cheese")
    out["move the cheese"] = repeat(
        page, "edit maze (cheese)", lambda i: click(free[(7 * i) % len(free)]), n
    )
    page.check("#mode-wall")
    wall = inner[len(inner) // 2]  # removing a wall keeps the maze valid; putting it back too
    out["toggle a wall"] = repeat(page, "edit maze (wall)", lambda i: click(wall), n)

    page.goto(f"{url}#/interventions?level=3&vector=cheese&coef=-1")
    wait(page, "document.querySelector('#board-mod')?.dataset.path")
    coefs = [-3, -1, 1, 3, 5, -5]
    path_done = "window.__latencies.filter(l => l.name === 'steering slider: path').length"
    out["drag the steering slider (fields)"] = repeat(
        page, "steering slider", lambda i: page.fill("#coef", str(coefs[i % len(coefs)])), n,
        f"{path_done} >= window.__latencies.filter(l => l.name === 'steering slider').length",
    )  # fmt: skip
    paths = page.evaluate(
        "() => window.__latencies.filter(l => l.name === 'steering slider: path').map(l => l.ms)"
    )
    out["drag the steering slider (paths)"] = paths[-n:]

    page.check("#mode-cheese")  # a new maze: both agents' paths are played, as one batch
    box = page.locator("#board-base").bounding_box()
    cell = box["width"] / size
    fields_name, paths_name = "edit maze (cheese)", "edit maze (cheese): path"
    settle = (
        f"window.__latencies.filter(l => l.name === {paths_name!r}).length - "
        f"{recorded(page, paths_name)} >= window.__latencies.filter(l => l.name === "
        f"{fields_name!r}).length - {recorded(page, fields_name)}"
    )

    def move(i: int) -> None:
        rc = free[(7 * i) % len(free)]
        page.locator("#board-base").click(
            position={"x": (rc[1] + 0.5) * cell, "y": (rc[0] + 0.5) * cell}
        )

    repeat(page, fields_name, move, n, settle)
    paths = page.evaluate(
        f"() => window.__latencies.filter(l => l.name === {paths_name!r}).map(l => l.ms)"
    )
    out["move the cheese (interventions, paths)"] = paths[-n:]
    return out


def hazards_interactions(page, url: str, n: int) -> dict[str, list[float]]:
    return episode_interactions(page, url, n, prefix="hazards: ")


def rook_interactions(page, url: str, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    page.goto(f"{url}#/activations?seed=3")
    wait(page, "document.querySelector('#units')")
    length = int(page.inner_text("#frame-label").split("/")[1])
    out["rook: arrow key (activations)"] = (
        repeat(page, "arrow key", lambda i: page.keyboard.press("End" if i % 2 else "Home"), n)
        if length
        else []
    )
    page.goto(f"{url}#/sae")
    wait(page, "document.querySelector('#histogram')")
    rows = page.locator("#sae-ranking tr[data-latent]")
    count = rows.count()
    out["rook: open an SAE latent"] = repeat(
        page, "open latent", lambda i: rows.nth(i % count).click(), n
    )
    sae = page.evaluate("() => fetch('api/run').then(r => r.json()).then(i => i.saes[0].id)")
    page.goto(f"{url}#/interventions?seed=3&sae={sae}")
    wait(page, "document.querySelector('#intervention-summary th')")
    out["rook: splice the SAE in / out"] = repeat(
        page, "splice SAE", lambda i: page.select_option("#sae", "" if i % 2 else sae), n
    )
    return out


def wire_peer(page, url: str) -> tuple[float, float, int, int]:
    """Decode time of one episode bundle (ms) as our binary message and as JSON lists."""
    page.goto(f"{url}#/overview")
    wait(page, "document.querySelector('#curves')")
    return page.evaluate(
        """async () => {
          const api = await import('./static/api.js');
          const buf = await (await fetch('api/episode?seed=1')).arrayBuffer();
          const m = api.unpack(buf);
          const nested = (t) => { const rows = t.shape[0] || 1; const size = t.data.length / rows;
            return Array.from({length: rows}, (_, i) => Array.from(t.data.subarray(i * size, (i + 1) * size))); };
          const text = JSON.stringify(Object.fromEntries(Object.entries(m.tensors).map(([k, t]) => [k, nested(t)])));
          const time = (f) => { const s = performance.now(); for (let i = 0; i < 50; i++) f(); return (performance.now() - s) / 50; };
          return [time(() => api.unpack(buf)), time(() => JSON.parse(text)), buf.byteLength, text.length];
        }"""
    )


WORLDS = {
    "maze": (build_maze_run, maze_interactions),
    "rook": (build_rook_run, rook_interactions),
    "hazards": (build_hazards_run, hazards_interactions),
}
"""World -> how to build an untrained run of it, and its interactions."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--maze", type=Path, help="A maze run (default: an untrained maze_cnn run)."
    )
    parser.add_argument("--rook", type=Path, help="A rook run with an SAE (default: built).")
    parser.add_argument(
        "--hazards", type=Path, help="A hazard-world run (default: an untrained recipe network)."
    )
    parser.add_argument(
        "--worlds", default=",".join(WORLDS), help="Worlds to measure, comma-separated."
    )
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    unknown = [w for w in worlds if w not in WORLDS]
    if unknown or not worlds:
        parser.error(f"--worlds takes some of {', '.join(WORLDS)}; got {args.worlds!r}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    from playwright.sync_api import sync_playwright

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-explorer-"))
    runs = {w: getattr(args, w) or WORLDS[w][0](tmp) for w in worlds}
    results: dict[str, list[float]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for world, run in runs.items():
            server, url = explore(run)
            try:
                results.update(WORLDS[world][1](page, url, args.repeats))
                if world == worlds[0]:
                    peer = wire_peer(page, url)
            finally:
                server.terminate()
                server.wait(10)
        browser.close()
    print(f"explorer latency through Chromium, {args.repeats} repeats each (ms; budget 100 at p95)")
    print(f"{'interaction':40s} {'p50':>7s} {'p95':>7s}  p95/budget")
    for name, values in results.items():
        if not values:
            continue
        p50 = statistics.median(values)
        p95 = float(np.percentile(values, 95))
        print(f"{name:40s} {p50:7.1f} {p95:7.1f}  {p95 / 100:.2f}{'' if p95 < 100 else '  over'}")
    binary_ms, json_ms, binary_bytes, json_bytes = peer
    print(
        f"peer, JSON lists: decoding one episode bundle of the {worlds[0]} run takes "
        f"{binary_ms:.3f} ms as binary ({binary_bytes / 1024:.0f} KB) vs {json_ms:.3f} ms as JSON "
        f"lists ({json_bytes / 1024:.0f} KB): {json_ms / max(binary_ms, 1e-6):.0f}x"
    )


if __name__ == "__main__":
    main()
