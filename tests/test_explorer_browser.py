"""The explorer in a real browser (Playwright driving Debian's chromium): click through every view
as a user would. Without Chromium or Playwright they follow the suite's one oracle rule
(tests/oracles.py): skipped on a laptop, failed in CI with the lines that install them, so the
browser can never be silently missing there (.ci/run installs it)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from oracles import INSTALL, missing
from test_explorer import build_maze_run, build_rook_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]


def _require_browser() -> None:
    """Chromium and Playwright, or :func:`oracles.missing` naming how to install each."""
    absent = []
    if not Path(CHROMIUM).exists():
        absent.append(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        absent.append(f"playwright is not installed ({INSTALL['playwright']})")
    if absent:
        missing("browser tests need a browser: " + "; ".join(absent))


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _serve(run: Path):
    import torch

    from policylens.explorer import Explorer
    from policylens.explorer.app import Background

    torch.set_num_threads(1)
    return Background(Explorer(run))


@pytest.fixture(scope="module")
def maze_server(tmp_path_factory):
    server = _serve(build_maze_run(tmp_path_factory.mktemp("browser")))
    yield server
    server.close()


@pytest.fixture(scope="module")
def rook_server(tmp_path_factory):
    server = _serve(build_rook_run(tmp_path_factory.mktemp("browser")))
    yield server
    server.close()


@pytest.fixture(scope="module")
def hazards_server(tiny_hazard_run):
    server = _serve(tiny_hazard_run.path)  # scrubbing and overlays write nothing into the run
    yield server
    server.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.problems = problems
    yield page
    page.close()
    # no script errors, no CSP violations, no failed loads while clicking through
    assert problems == []


def until(page, condition: str, timeout_s: float = 60.0) -> None:
    """Wait until the JavaScript expression ``condition`` is true (polled through the debugger
    protocol: Playwright's own wait_for_function evaluates strings, which the page's
    Content-Security-Policy rightly forbids)."""
    end = time.monotonic() + timeout_s
    while not page.evaluate(f"() => Boolean({condition})"):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {condition}")
        page.wait_for_timeout(30)


def _open(page, server, view: str, wait: str):
    page.goto(f"{server.url}#/{view}")
    page.wait_for_selector(wait, timeout=60_000)


def test_scrub_with_the_slider_the_arrow_keys_and_the_bookmarks(page, maze_server):
    _open(page, maze_server, "trajectory?seed=2", "#frame-label")
    until(page, "document.querySelector('#board')?.dataset.frame === '0'")
    length = int(page.inner_text("#frame-label").split("/")[1])
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    until(page, "document.querySelector('#board').dataset.frame === '2'")
    assert "t=2" in page.url and page.inner_text("#frame-label").startswith("t = 2")
    page.keyboard.press("End")
    until(page, f"document.querySelector('#board').dataset.frame === '{length}'")
    page.fill("#frame-slider", "1")
    until(page, "document.querySelector('#board').dataset.frame === '1'")
    last = page.locator(".bookmark").last
    target = last.get_attribute("data-t")
    last.click()
    until(page, f"document.querySelector('#board').dataset.frame === '{target}'")
    assert "action taken" in page.inner_text("#frame-info")
    page.reload()  # the URL holds the frame: a shared link opens at it
    until(page, f"document.querySelector('#board')?.dataset.frame === '{target}'")


def test_toggle_overlays_and_read_the_nmf_legend(page, maze_server):
    _open(page, maze_server, "observation?seed=2&t=3&overlay=none", "#overlay")
    until(page, "document.querySelector('#board')?.dataset.overlay === 'none'")
    page.select_option("#overlay", "saliency")
    until(page, "document.querySelector('#board').dataset.overlay === 'saliency'")
    assert "saliency of value" in page.inner_text("#overlay-range")
    page.select_option("#target", "action")
    until(page, "document.querySelector('#overlay-range').textContent.includes('logprob')")
    page.select_option("#overlay", "nmf")
    page.wait_for_selector("#nmf-legend", timeout=120_000)  # fitted on a background job
    assert page.locator("#nmf-legend tr").count() == 1 + 6
    assert page.locator("#nmf-legend canvas.thumb").count() == 6 * 4
    page.fill("#opacity", "0.2")
    assert "opacity=0.2" in page.url


def test_move_the_cheese_and_the_vector_field_changes(page, maze_server):
    _open(page, maze_server, "editor?level=3", "#board")
    until(page, "document.querySelector('#board')?.dataset.field !== undefined")
    before = page.get_attribute("#board", "data-field")
    state = page.evaluate("fetch('api/maze/level?level=3').then(r => r.json())")
    n = len(state["walls"])
    free = [(r, c) for r in range(n) for c in range(n) if state["walls"][r][c] == "."]
    target = max(
        free, key=lambda p: abs(p[0] - state["cheese"][0]) + abs(p[1] - state["cheese"][1])
    )
    page.check("#mode-cheese")
    box = page.locator("#board").bounding_box()
    cell = box["width"] / n
    page.locator("#board").click(
        position={"x": (target[1] + 0.5) * cell, "y": (target[0] + 0.5) * cell}
    )
    until(page, f"document.querySelector('#board').dataset.field !== '{before}'")
    assert f"cheese={target[0]}%2C{target[1]}" in page.url
    mouse = f"mouse={state['mouse'][0]}%2C{state['mouse'][1]}"
    assert mouse in page.url  # the level's own mouse, written into the address with the edit
    wall = next((r, c) for r in range(n) for c in range(n) if state["walls"][r][c] == "#")
    page.check("#mode-mouse")  # the mouse cannot stand on a wall: nothing changes
    page.locator("#board").click(
        position={"x": (wall[1] + 0.5) * cell, "y": (wall[0] + 0.5) * cell}
    )
    assert f"cheese={target[0]}%2C{target[1]}" in page.url and mouse in page.url
    # the same click on a free cell does move the mouse (the wall click was seen, and refused)
    spot = next(p for p in free if list(p) != list(state["mouse"]) and p != target)
    page.locator("#board").click(
        position={"x": (spot[1] + 0.5) * cell, "y": (spot[0] + 0.5) * cell}
    )
    until(page, f"location.href.includes('mouse={spot[0]}%2C{spot[1]}')")


def test_drag_the_steering_slider_and_the_trajectory_changes(page, maze_server):
    _open(page, maze_server, "interventions?level=3&vector=cheese&coef=0", "#coef")
    until(page, "document.querySelector('#board-base')?.dataset.path")
    assert page.get_attribute("#board-mod", "data-path") == ""  # coefficient 0: nothing changed
    base = json.loads(page.get_attribute("#board-base", "data-path"))
    page.fill("#coef", "5")
    until(page, "document.querySelector('#board-mod').dataset.path")
    steered = json.loads(page.get_attribute("#board-mod", "data-path"))
    assert steered != base and steered[0] == base[0]  # same start, another path
    field = page.get_attribute("#board-mod", "data-field")
    page.fill("#coef", "-5")
    until(page, f"document.querySelector('#board-mod').dataset.field !== '{field}'")
    assert "coef=-5" in page.url


def test_scrub_the_frames_clusters_label_one_and_find_it_after_a_reload(page, maze_server):
    _open(page, maze_server, "clusters?k=3&seed=5&t=0", "#cluster-label-0")
    until(page, "document.querySelector('#cluster-frame')?.dataset.frame === '0'")
    first = page.get_attribute("#cluster-frame", "data-labels")
    assert len(first.split(",")) == 81  # the frame's own 9x9 positions
    page.keyboard.press("End")  # the mouse has moved: the frame's clusters follow it
    until(page, "document.querySelector('#cluster-frame').dataset.frame !== '0'")
    assert page.get_attribute("#cluster-frame", "data-labels") != first
    page.locator("#cluster-frame").click(position={"x": 75, "y": 140})
    focused = page.evaluate("document.activeElement.id")
    assert focused.startswith("cluster-label-")
    page.keyboard.type("corridor")
    page.keyboard.press("Enter")
    until(page, "document.querySelector('#status').textContent.startsWith('saved')")
    page.reload()
    page.wait_for_selector(f"#{focused}")
    assert page.input_value(f"#{focused}") == "corridor"


def test_activations_channel_page_and_run_overview(page, maze_server):
    _open(page, maze_server, "activations?seed=2&t=1", "canvas.channel")
    assert page.locator("canvas.channel").count() == 16
    page.locator("canvas.channel").nth(5).click()
    page.wait_for_selector("#examples canvas.thumb", timeout=60_000)
    assert page.locator("#examples canvas.thumb").count() == 6
    assert "channel=5" in page.url
    _open(page, maze_server, "overview", "#curves canvas")
    assert page.locator("#curves canvas").count() == 2  # success and return
    assert page.locator("#checkpoints button").count() == 2


def test_sae_pages_and_interventions_on_the_rook_endgame(page, rook_server):
    _open(page, rook_server, "sae", "#histogram")
    assert page.locator("#sae-ranking tr[data-latent]").count() >= 1
    assert "never fire" in page.inner_text("#sae-stats")
    page.locator("#sae-ranking tr[data-latent]").last.click()
    latent = page.locator("#sae-ranking tr[data-latent]").last.get_attribute("data-latent")
    until(page, f"location.hash.includes('latent={latent}')")
    sae = rook_server.explorer.saes()[0]["id"]
    _open(page, rook_server, f"interventions?seed=2&sae={sae}", "#intervention-summary th")
    assert "actions first differ" in page.inner_text("#intervention-summary")


def test_scrub_a_hazard_episode_and_toggle_an_overlay(page, hazards_server):
    from policylens.envs.hazards import AGENT, CAUSES, COLOURS

    _open(page, hazards_server, "trajectory?seed=1", "#frame-label")
    until(page, "document.querySelector('#board')?.dataset.frame === '0'")
    assert page.locator("#anywhere").count() == 0 and page.locator("#level").count() == 1
    assert {"saw", "enemy", "lava", "coin", "agent"} <= set(page.inner_text("#colour-key").split())
    outcome = page.inner_text("#episode-summary").split(": ")[1].split(",")[0]
    assert outcome in {"coin", *CAUSES[1:]}
    # the view is centred on the agent: the board's middle is the agent's colour
    middle = (
        "(() => { const c = document.querySelector('#board'); return Array.from("
        "c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data.slice(0, 3)); })()"
    )
    assert tuple(page.evaluate(middle)) == COLOURS[AGENT]
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    until(page, "document.querySelector('#board').dataset.frame === '2'")
    assert "t=2" in page.url and tuple(page.evaluate(middle)) == COLOURS[AGENT]
    page.locator("#nav-observation").click()
    page.wait_for_selector("#overlay")
    until(page, "document.querySelector('#board')?.dataset.overlay === 'saliency'")
    assert page.inner_text("#frame-label").startswith("t = 2")  # the frame travels with the link
    page.select_option("#overlay", "none")
    until(page, "document.querySelector('#board').dataset.overlay === 'none'")
    page.select_option("#overlay", "ig")
    until(page, "document.querySelector('#board').dataset.overlay === 'ig'")
    assert page.inner_text("#overlay-range").startswith("ig of value:")
