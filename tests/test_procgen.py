"""procgen's games through envpool (``policylens/procgen-<Game>``): registration without envpool,
the vector interface and same-step autoreset, options, and a procgen-layout IMPALA checkpoint
played and analysed on real procgen frames.

Without envpool (or the Qt 5 runtime its procgen needs) the envpool tests are skipped with the
reason; under CI (``CI`` set) they fail instead, since CI installs both.
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from oracles import missing

from policylens.agents.load import load_agent
from policylens.agents.models import build_agent
from policylens.envs import WORLDS, make, make_vec
from policylens.envs.procgen import GAMES, require_envpool
from policylens.lenses.attribution import IntegratedGradients, Saliency, attribute
from policylens.lenses.features import feature_maps
from policylens.lenses.interventions import add_vector, random_like
from policylens.lenses.nmf import attribution_nmf
from policylens.rollout.engine import Policy, steps

README = Path(__file__).resolve().parents[1] / "README.md"
MAZE = "policylens/procgen-Maze"
LAYER = "embedder.block2.res2.hook_out"


@pytest.fixture(scope="module")
def procgen() -> None:
    try:
        require_envpool(MAZE)
    except ValueError as e:
        missing(str(e))


def test_every_game_is_listed_and_making_one_without_envpool_says_what_to_install(monkeypatch):
    assert {"policylens/procgen-Maze", "policylens/procgen-CoinRun"} <= set(WORLDS)
    assert len([w for w in WORLDS if w.startswith("policylens/procgen-")]) == len(GAMES) == 16
    monkeypatch.setitem(sys.modules, "envpool", None)  # import envpool now raises ImportError
    for maker in (lambda: make(MAZE), lambda: make_vec(MAZE, 2)):
        with pytest.raises(ValueError) as err:
            maker()
        assert (
            str(err.value)
            == "policylens/procgen-Maze needs envpool: pip install 'policylens[procgen]'"
        )


def test_making_one_without_qt_names_the_debian_package(procgen, monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool.procgen", None)  # as when libQt5Gui is missing
    with pytest.raises(ValueError, match=r"needs the Qt 5 runtime .*apt-get install libqt5gui5"):
        make("policylens/procgen-CoinRun")


def test_vector_world_gives_hwc_uint8_frames_15_actions_and_same_step_autoreset(procgen):
    envs = make_vec(MAZE, 4)
    try:
        assert envs.single_observation_space.shape == (64, 64, 3)
        assert envs.single_action_space.n == 15
        assert envs.metadata["autoreset_mode"].value == "SameStep"
        obs, infos = envs.reset(seed=0)
        assert obs.shape == (4, 64, 64, 3) and obs.dtype == np.uint8
        assert (infos["steps"] == 0).all() and not infos["success"].any()
        rng = np.random.default_rng(0)
        ended_seen = 0
        for _ in range(600):  # procgen Maze times out at 500 steps
            before = infos["steps"]
            obs, reward, terminated, truncated, infos = envs.step(rng.integers(0, 15, 4))
            assert obs.shape == (4, 64, 64, 3) and obs.dtype == np.uint8
            ended = terminated | truncated
            # every env's action counts: no step is spent on a reset
            np.testing.assert_array_equal(infos["steps"], np.where(ended, 0, before + 1))
            if ended.any():
                final = infos["final_info"]
                np.testing.assert_array_equal(final["steps"][ended], before[ended] + 1)
                # Maze pays 10 exactly when the cheese is reached, which is procgen's success
                np.testing.assert_array_equal(final["success"][ended], reward[ended] == 10)
                assert not infos["success"][ended].any()
                assert infos["final_obs"].shape == (4, 64, 64, 3)
                ended_seen += int(ended.sum())
            if ended_seen >= 4:
                break
        assert ended_seen >= 4
    finally:
        envs.close()


def test_options_and_seeds_pass_through_to_procgen(procgen):
    one_level = make_vec(MAZE, 3, num_levels=1, start_level=7)
    easy, _ = one_level.reset(seed=0)
    _, infos = one_level.reset(seed=5)
    assert (infos["level_seed"] == 7).all()  # one level: start_level
    np.testing.assert_array_equal(easy[0], easy[1])  # same level, same first frame
    hard = make_vec(MAZE, 3, num_levels=1, start_level=7, distribution_mode="hard")
    assert hard.task == "MazeHard-v0"
    assert not np.array_equal(hard.reset(seed=0)[0], easy)  # a hard maze is drawn differently
    coinrun = make_vec("policylens/procgen-CoinRun", 3, num_levels=10, start_level=100)
    first, infos = coinrun.reset(seed=1)
    assert ((infos["level_seed"] >= 100) & (infos["level_seed"] < 110)).all()
    np.testing.assert_array_equal(coinrun.reset(seed=1)[0], first)  # a seed fixes the levels
    for envs in (one_level, hard, coinrun):
        envs.close()
    with pytest.raises(ValueError, match="not one of policylens/procgen-CoinRun's: easy, hard"):
        make("policylens/procgen-CoinRun", distribution_mode="memory")
    with pytest.raises(ValueError, match="Did you mean 'num_levels'"):
        make(MAZE, num_level=5)
    check_env(make(MAZE, num_levels=5).unwrapped, skip_render_check=True)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1, 4])
def test_research_impala_checkpoint_plays_and_every_lens_runs_on_procgen_frames(
    procgen, tmp_path, scale
):
    """A procgen-layout ``.pth`` (random weights) loads, acts through the rollout engine with a
    hook cached, and attribution, feature maps, NMF and steering run on the frames it saw."""
    net = build_agent("impala", (64, 64, 3), 15, seed=scale, scale=scale, init="default").net
    path = tmp_path / "model.pth"
    torch.save({"model_state_dict": net.state_dict()}, path)
    agent = load_agent(path)
    assert agent.config["kwargs"]["scale"] == scale

    envs = make_vec("policylens/procgen-CoinRun", 2, num_levels=50)
    generator = torch.Generator().manual_seed(0)
    frames = []
    for step in steps(agent, envs, envs.reset(seed=0), Policy(), generator, cache=[LAYER]):
        assert step.cache[LAYER].shape[0] == 2 and step.actions.max() < 15
        frames.append(step.obs)
        if len(frames) == 4:
            break
    envs.close()
    frames = np.concatenate(frames)  # (8, 64, 64, 3) real CoinRun frames

    saliency = attribute(agent, frames, Saliency(), target="value")
    assert saliency.attributions.shape == (8, 3, 64, 64) and saliency.attributions.abs().sum() > 0
    ig = attribute(agent, frames[:2], IntegratedGradients(n_steps=8), "value", LAYER)
    assert ig.attributions.shape[0] == 2 and ig.attributions.dim() == 4
    maps = feature_maps(agent, frames, LAYER)
    (_, value), cache = agent.run_with_cache(frames, names=[LAYER])
    np.testing.assert_allclose(maps, cache[LAYER].numpy(), rtol=1e-5, atol=1e-6)
    nmf = attribution_nmf(ig.attributions, k=2)
    assert nmf.components.shape[0] == 2

    vector = random_like(cache[LAYER].mean(0), seed=0)
    _, steered = agent.run_with_hooks(frames, fwd_hooks=[(LAYER, add_vector(vector, 5.0))])
    assert not torch.allclose(steered, value)


@pytest.mark.slow
def test_readme_real_procgen_example_runs(procgen, tmp_path):
    section = README.read_text(encoding="utf-8").split("\n## Real procgen\n", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    path = tmp_path / "model.pth"
    torch.save(build_agent("impala", (64, 64, 3), 15, init="default").net.state_dict(), path)
    for old, new in (('"model.pth"', repr(str(path))), ("agent, 200,", "agent, 2,")):
        assert code.count(old) == 1, f"the README example no longer contains {old!r}"
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile("import policylens\n" + code, f"{README}:Real procgen", "exec"), scope)
    episodes = scope["episodes"]  # a .pth agent evaluated through the rollout engine
    assert len(episodes) == 2 and scope["obs"].shape == (8, 64, 64, 3)
    for ep in episodes:
        assert 1 <= ep.length <= 500 and ep.success == (ep.ret == 10)
    assert scope["ig"].attributions.shape == (8, 32, 16, 16)
