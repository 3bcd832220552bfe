"""The "Understanding RL Vision" study on the hazard world: editing, labels, dissection,
hallucinations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from policylens.agents.agent import HookedAgent
from policylens.envs.hazards import HazardsConfig
from policylens.lenses.nmf import label_features
from policylens.report import rl_vision as report
from policylens.studies.hazards.failures import FAILURE_CAUSES, FailureTable
from policylens.studies.rl_vision import dissection, editing, hallucinations
from policylens.studies.rl_vision.features import FeatureOptions, fit_features
from policylens.worlds.hazards import hazard_env_kwargs, masks_at, velocity_mask


# -- editing -----------------------------------------------------------------------------------
def _conv(seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(6, 5, kernel_size=3, padding=1)


def test_projection_kills_exactly_the_direction():
    conv = _conv()
    v = np.random.default_rng(1).standard_normal(6)
    edited = _conv()
    with torch.no_grad():
        edited.weight.copy_(editing.project_out(conv.weight, v, 6))
    vt = torch.tensor(v, dtype=torch.float32)
    along = vt[None, :, None, None] * torch.rand(1, 1, 7, 7)  # every cell along v
    bias = edited.bias[None, :, None, None]
    assert torch.allclose(edited(along) - bias, torch.zeros(1, 5, 7, 7), atol=1e-5)
    x = torch.randn(2, 6, 7, 7)
    orth = x - torch.einsum("bchw,c->bhw", x, vt)[:, None] * vt[None, :, None, None] / (vt @ vt)
    assert torch.allclose(edited(orth), conv(orth), atol=1e-5)
    assert not torch.allclose(edited(x), conv(x), atol=1e-3)  # x has a part along v


def test_projection_over_a_linear_map_reader():
    fc = nn.Linear(3 * 4 * 4, 2)
    v = np.array([1.0, -2.0, 0.5])
    w = editing.project_out(fc.weight, v, 3)
    along = (torch.tensor(v, dtype=torch.float32)[:, None, None] * torch.rand(1, 4, 4)).flatten()
    assert torch.allclose(w @ along, torch.zeros(2), atol=1e-5)


def test_random_direction_control_is_another_edit():
    conv = _conv()
    v = np.random.default_rng(0).standard_normal(6)
    (r,) = editing.random_directions(6, 1, seed=3)
    assert np.isclose(np.linalg.norm(r), 1.0)
    w_feature = editing.project_out(conv.weight, v, 6)
    w_random = editing.project_out(conv.weight, r, 6)
    # each edit kills its own direction only
    rt = torch.tensor(r, dtype=torch.float32)[None, :, None, None].expand(1, 6, 3, 3)
    assert torch.allclose((w_random * rt).sum(1), torch.zeros(5, 3, 3), atol=1e-5)
    assert (w_feature * rt).sum(1).abs().max() > 1e-3
    # the projector depends on the direction only, so the "equal norm" control is exact
    assert torch.allclose(editing.project_out(conv.weight, 7 * r, 6), w_random, atol=1e-6)
    assert not np.allclose(editing.random_directions(6, 2, 0), editing.random_directions(6, 2, 1))


def test_edit_agent_edits_the_reader_and_leaves_the_source():
    from policylens.agents.models import build_agent

    agent = build_agent("maze_cnn", (9, 13, 13), 15, channels=4, hidden=8)
    before = agent.net.res1.conv2.weight.detach().clone()
    v = np.array([1.0, 0.0, 0.0, 0.0])
    edited = editing.edit_agent(agent, "res1.hook_relu2", v)
    assert torch.equal(agent.net.res1.conv2.weight, before)
    assert torch.allclose(edited.net.res1.conv2.weight[:, 0], torch.zeros_like(before[:, 0]))
    assert torch.allclose(edited.net.res1.conv2.weight[:, 1:], before[:, 1:])
    assert editing.reader_of("hook_relu") == "fc"
    with pytest.raises(ValueError, match="no single reader"):
        editing.reader_of("hook_conv")


# -- automatic labels ---------------------------------------------------------------------------
def test_labels_on_a_world_with_known_features():
    rng = np.random.default_rng(0)
    n, h, w = 40, 13, 13
    saw = rng.random((n, h, w)) < 0.03
    enemy = rng.random((n, h, w)) < 0.03
    wall = rng.random((n, h, w)) < 0.3
    maps = np.stack(
        [saw * 2.0 + rng.random((n, h, w)) * 0.1, enemy * 1.0, wall * 0.5 + 0.2 * enemy], -1
    )
    masks = {"saw": saw, "enemy": enemy, "wall": wall}
    labels = label_features(maps, masks)
    assert [lab["label"] for lab in labels] == ["saw", "enemy", "wall"]
    assert labels[1]["correlation"] == pytest.approx(1.0)
    assert labels[0]["correlation"] > 0.9


def test_masks_resize_and_velocity_marker():
    m = np.zeros((1, 4, 4), bool)
    m[0, 3, 3] = True
    small = masks_at({"saw": m}, (2, 2))["saw"]
    assert small[0].tolist() == [[False, False], [False, True]]
    vel = velocity_mask(HazardsConfig(obs_mode="rgb", tile_px=3))
    assert vel.sum() == 3 * 6 and vel[:3, :6].all()
    assert not velocity_mask(HazardsConfig(paint_vel_info=False)).any()


# -- dissection --------------------------------------------------------------------------------
def _episode(cause: str, in_view: list[bool], occluded: list[bool], lava: bool = False):
    t = len(in_view)
    saw_pos = np.array([[[5.0, 5.0], [5.0, 20.0]]] * t)
    flags = {
        "saw_pos": saw_pos, "saw_valid": np.ones((t, 2), bool),
        "saw_in_view": np.array([[v, False] for v in in_view]),
        "saw_occluded": np.array([[o, True] for o in occluded]),
        "enemy_pos": np.zeros((t, 1, 2)), "enemy_valid": np.zeros((t, 1), bool),
        "enemy_in_view": np.zeros((t, 1), bool), "enemy_occluded": np.zeros((t, 1), bool),
        "agent_pos": np.zeros((t, 2)), "mask_lava": np.full((t, 3, 3), lava),
    }  # fmt: skip
    return dissection.FailedEpisode(0, cause, np.zeros((t, 1)), np.zeros(t), np.zeros(t), flags,
                                    np.array([5.0, 5.6]))  # fmt: skip


@pytest.mark.parametrize(
    ("in_view", "occluded", "expected", "visible"),
    [
        ([False, True, True], [False, False, True], "seen and ignored", 2),
        ([True, False, True], [False, False, False], "seen and ignored", 1),
        ([True, True, True], [False, False, False], "seen and ignored", 3),
        ([False, True, True], [False, True, True], "occluded", 2),
        ([False, False, False], [False, False, False], "not in view", 0),
    ],
)
def test_dissection_classifier_on_hand_built_episodes(in_view, occluded, expected, visible):
    ep = _episode("saw", in_view, occluded)
    flags = dissection.killer_flags(ep)
    assert flags is not None
    # the killer is the nearer saw (slot 0), whose flags are the hand-built ones
    assert flags["in_view"].tolist() == in_view
    assert dissection.classify(**flags) == expected
    assert dissection.visible_steps(flags["in_view"]) == visible  # unbroken, back from death


def test_dissection_lava_and_falls():
    assert dissection.classify(
        **dissection.killer_flags(_episode("lava", [0, 0], [0, 0], True))
    ) == ("seen and ignored")
    assert dissection.killer_flags(_episode("fell", [True], [False])) is None


# -- hallucinations -----------------------------------------------------------------------------
class _ChannelSum(nn.Module):
    """A network whose value is the sum of channel 0 of its first layer's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)

    def forward(self, x):
        a = self.conv(x)
        s = a.sum((1, 2, 3))
        return torch.zeros(len(x), 2), s


def test_hallucinations_found_and_checked_by_patching():
    n, h, w = 6, 5, 5
    maps = np.zeros((n, h, w, 1))
    saw = np.zeros((n, h, w), bool)
    saw[:3, 1, 1] = True
    maps[:3, 1, 1, 0] = 1.0  # real saws
    maps[4, 3, 3, 0] = 2.0  # a strong response with no saw near: a hallucination
    found, counts = hallucinations.find_hallucinations(
        maps, {"saw": saw}, [{"label": "saw", "correlation": 0.9}]
    )
    assert [(f.frame, f.cell) for f in found] == [(4, (3, 3))]
    assert counts["0:saw"]["cells"] == 1
    # the agent's value reads the map itself: patching the hallucinated cell from a clean frame
    # removes exactly its strength; the control patch elsewhere changes nothing
    agent = HookedAgent.from_module(_ChannelSum(), obs_shape=(1, h, w), num_actions=2)
    obs = maps[..., 0][:, None].astype(np.float32)
    check = hallucinations.intervention_check(agent, obs, maps, "conv.hook_out", found, radius=0)
    row = check["rows"][0]
    assert row["patched"] == pytest.approx(-2.0)
    assert row["control"] == pytest.approx(0.0)


def test_hallucination_sentence_tells_unchecked_from_none_found():
    def sentence(found: dict) -> str:
        result = hallucinations.HallucinationResult("hook_relu", 6, examples=[], **found)
        return report.hallucination_sentence(result)

    unnamed = sentence({"counts": {}, "check": {"checked": 0}})
    assert "none could be checked" in unnamed and "no evidence either way" in unnamed
    quiet = {"0:saw": {"feature": 0, "label": "saw"}}
    assert sentence({"counts": quiet, "check": {"checked": 0}}).startswith("No hallucinations")
    checked = {"checked": 5, "abs_value_change": {"mean": 0.2},
               "abs_value_change_control": {"mean": 0.1},
               "difference": {"mean": 0.1, "ci": [-0.05, 0.25]}}  # fmt: skip
    assert sentence({"counts": quiet, "check": checked}).endswith("(no effect).")
    checked["difference"]["ci"] = [0.05, 0.15]
    assert "no effect" not in sentence({"counts": quiet, "check": checked})


# -- the edit's verdict, the table cache, attribution on objects --------------------------------
def _table(n: int, deaths: dict[str, int]) -> FailureTable:
    """A failure table of ``n`` levels with these deaths per cause (the rest completed)."""
    from policylens.rollout import stats

    causes = np.array(sum(([c] * deaths.get(c, 0) for c in FAILURE_CAUSES), []) + ["none"] * (
        n - sum(deaths.values())))  # fmt: skip
    return FailureTable(
        env_kwargs={},
        episodes=n,
        completion=stats.proportion(causes == "none"),
        failures={c: {"of_levels": stats.proportion(causes == c)} for c in FAILURE_CAUSES},
        enemy_sides={},
        length=stats.mean(np.ones(n)),
    )


def _experiment(base: FailureTable, tables: dict[str, FailureTable]) -> editing.EditExperiment:
    return editing.EditExperiment("hook_relu", base.episodes, 0, {}, base, tables)


def test_edit_verdict_met_only_when_the_cause_rises_alone_beyond_random():
    base = _table(10_000, {"saw": 40, "enemy": 500, "lava": 60})
    blinded = _table(10_000, {"saw": 1200, "enemy": 520, "lava": 55})
    shuffled = _table(10_000, {"saw": 60, "enemy": 510, "lava": 70})
    exp = _experiment(base, {"edit:saw": blinded, "invisible:saw": blinded, "random:0": shuffled})
    v = editing.edit_verdict(exp, "saw")
    assert v.effect and v.beats_random and v.target_met
    assert v.ratio == pytest.approx(30.0)
    assert "met." in report.verdict_sentence(v) and "no effect" not in report.verdict_sentence(v)
    assert v.share_of_invisible == pytest.approx(1.0) and v.invisible_reaches_target

    half = _table(10_000, {"saw": 70, "enemy": 500, "lava": 60})  # +0.3 points
    invisible = _table(10_000, {"saw": 100, "enemy": 500, "lava": 60})  # +0.6: below the bar too
    v = editing.edit_verdict(
        _experiment(base, {"edit:saw": half, "invisible:saw": invisible, "random:0": base}),
        "saw",
    )
    assert v.effect and not v.target_met and v.share_of_invisible == pytest.approx(0.5)
    assert v.invisible_reaches_target is False
    sentence = report.verdict_sentence(v)
    assert "50% of what invisibility does" in sentence and "so no edit could" in sentence

    collateral = _table(10_000, {"saw": 1200, "enemy": 1100, "lava": 60})  # enemies x2.2 too
    v = editing.edit_verdict(
        _experiment(base, {"edit:saw": collateral, "random:0": shuffled}), "saw"
    )
    assert v.effect and not v.target_met and v.other_ratios["enemy"] > 2
    assert v.largest_rise == "saw" and "not specific" not in report.verdict_sentence(v)
    v = editing.edit_verdict(_experiment(base, {"edit:enemy": collateral}), "enemy")
    assert v.largest_rise == "saw" and "not specific: saw deaths rose more" in (
        report.verdict_sentence(v)
    )

    same = _table(10_000, {"saw": 43, "enemy": 500, "lava": 60})
    v = editing.edit_verdict(_experiment(base, {"edit:saw": same, "random:0": shuffled}), "saw")
    assert not v.effect and not v.target_met
    assert "no effect" in report.verdict_sentence(v)

    v = editing.edit_verdict(_experiment(base, {"edit:saw": blinded, "random:0": blinded}), "saw")
    assert not v.beats_random and not v.target_met  # any rank-one edit does as much
    with pytest.raises(ValueError, match="no edit of 'enemy'"):
        editing.edit_verdict(exp, "enemy")


def test_saved_experiment_is_judged_again_and_options_name_their_fields(tmp_path):
    base = _table(10_000, {"saw": 40, "enemy": 500, "lava": 60})
    blinded = _table(10_000, {"saw": 1200, "enemy": 520, "lava": 55})
    exp = _experiment(base, {"edit:saw": blinded, "random:0": base})
    judged = editing.edit_verdict(exp, "saw")
    saved = exp.to_json() | {"verdict": {"feature": "saw", "target_met": False}}  # an old rule's
    again = editing.EditExperiment.from_json(json.loads(json.dumps(saved)))
    assert again.verdict == judged and again.verdict.target_met  # judged by today's rule
    assert again.tables == exp.tables and again.moves == exp.moves
    assert "verdict" not in exp.to_json() and "verdict" in again.to_json()
    with pytest.raises(ValueError, match="Unknown direction 'banana'"):
        editing.EditOptions("saw", tmp_path, direction="banana")
    with pytest.raises(ValueError, match="^feature must be one of"):
        editing.EditOptions("banana", tmp_path)
    with pytest.raises(ValueError, match="^direction object needs feature"):
        editing.EditOptions("3", tmp_path, direction="object")
    with pytest.raises(ValueError, match="^levels must lie in 1..1024"):
        dissection.DissectOptions(levels=2000)
    with pytest.raises(ValueError, match="^layer hook_conv has no single reader"):
        editing.reader_of("hook_conv")


def test_attribution_on_objects_compares_object_cells_with_the_rest():
    from policylens.studies.rl_vision.features import attribution_on_objects

    attr = np.ones((2, 3, 4, 4))
    saw = np.zeros((2, 4, 4), bool)
    saw[0, 1, 1] = True
    attr[0, :, 1, 1] = 5.0
    out = attribution_on_objects(attr, {"saw": saw, "none": np.zeros_like(saw)})
    assert out["saw"]["on"] == pytest.approx(15.0) and out["saw"]["off"] == pytest.approx(3.0)
    assert out["saw"]["ratio"] == pytest.approx(5.0) and "none" not in out


def test_object_direction_is_the_objects_mean_activation_minus_the_rest():
    from policylens.studies.rl_vision.features import object_direction
    from policylens.worlds.hazards import OBJECTS, Frames

    rng = np.random.default_rng(0)
    saw = rng.random((6, 5, 5)) < 0.2
    act = rng.normal(0, 0.01, (6, 4, 5, 5))
    act[:, 2] += 3.0 * saw  # channel 2 fires on saws

    class Cached:  # an agent whose conv map is known
        def run_with_cache(self, obs, names):
            return (None, None), {names[0]: torch.tensor(act)}

    masks = {name: saw if name == "saw" else np.zeros_like(saw) for name in OBJECTS}
    frames = Frames(obs=np.zeros((6, 9, 5, 5)), masks=masks, values=np.zeros(6))
    v = object_direction(Cached(), frames, "hook_relu", "saw")
    assert v.shape == (4,) and v[2] == pytest.approx(3.0, abs=0.05)
    assert np.abs(np.delete(v, 2)).max() < 0.05
    with pytest.raises(ValueError, match="No enemy is in view"):
        object_direction(Cached(), frames, "hook_relu", "enemy")


# -- on a tiny trained hazard run ---------------------------------------------------------------
@pytest.mark.slow
def test_edit_experiment_saves_and_reuses_its_tables(tiny_hazard_run, tmp_path):
    agent = tiny_hazard_run.load_agent()
    env = {**tiny_hazard_run.config["trainer"]["env_kwargs"], "start_level": 20, "num_levels": 0}
    v = np.random.default_rng(0).standard_normal(16)
    logs: list[str] = []
    options = editing.ExperimentOptions(3, random_controls=1, cache=tmp_path)
    first = editing.edit_experiment(agent, "hook_relu", {"saw": v}, env, options, logs.append)
    assert len(list(tmp_path.glob("*.json"))) == 4  # unedited, edit, invisible saws, random
    assert not any("saved earlier" in m for m in logs)
    logs.clear()
    again = editing.edit_experiment(agent, "hook_relu", {"saw": v}, env, options, logs.append)
    assert len(logs) == 4 and all("saved earlier" in m for m in logs)
    assert again.moves == first.moves and again == first
    edited = editing.edit_agent(agent, "hook_relu", v)
    assert editing.table_key(agent, env, 3, 0) != editing.table_key(edited, env, 3, 0)
    assert editing.table_key(agent, env, 3, 0) != editing.table_key(agent, env, 4, 0)


@pytest.mark.slow
def test_study_commands_end_to_end(tiny_hazard_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from policylens.cli import app

    run = str(tiny_hazard_run.path)
    cli = CliRunner()

    def ok(*args: str) -> dict:
        r = cli.invoke(app, [*args, "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)  # progress lines go to stderr

    features = ok("features", run, "--n-obs", "16", "--nmf", "3")
    assert features["layer"] == "hook_relu" and len(features["nmf"]["features"]) == 3
    direct = fit_features(  # the library on the same agent, frames and seed
        tiny_hazard_run.load_agent(), hazard_env_kwargs(tiny_hazard_run),
        FeatureOptions(n_obs=16, nmf=3),
    ).result().to_json()  # fmt: skip
    for got, want in zip(features["nmf"]["features"], direct["nmf"]["features"], strict=True):
        assert got["label"] == want["label"]
        # (the command runs on its own thread count: sums in another order, NMF to ~1e-4)
        assert got["correlations"] == pytest.approx(want["correlations"], abs=1e-3)
    for name, best in features["best_alignment"].items():  # the best feature for each object
        assert best == pytest.approx(
            max(f["correlations"][name] for f in features["nmf"]["features"]), abs=1e-9
        )
    assert set(features["best_alignment"]) >= {"saw", "enemy", "coin", "wall"}
    edited = tmp_path / "edited"
    result = ok("edit", run, "--feature", "saw", "--out", str(edited), "--levels", "3",
                "--random", "1", "--n-obs", "16", "--nmf", "3")  # fmt: skip
    assert result["experiment"]["verdict"]["feature"] == "saw"
    assert set(result["experiment"]["tables"]) == {"edit:saw", "invisible:saw", "random:0"}
    reader = tiny_hazard_run.load_agent().net.fc.weight
    v = torch.tensor(result["edit"]["direction"], dtype=torch.float32)
    w = tiny_hazard_run.__class__(edited).load_agent().net.fc.weight.reshape(len(reader), 16, -1)
    assert torch.einsum("ocr,c->or", w, v).abs().max() < 1e-4  # the direction is gone
    r = cli.invoke(app, ["edit", run, "--feature", "saw", "--out", str(edited)])
    assert r.exit_code == 2 and "already holds a run" in r.output
    # another writer holds the run's analysis folder (where the tables go): refused, nothing
    # written, so the same command works once that writer is done
    from policylens.artifacts import FolderLock

    waiting = tmp_path / "waiting"
    with FolderLock(tiny_hazard_run.analysis_dir, "analysis folder"):
        r = cli.invoke(app, ["edit", run, "--feature", "saw", "--out", str(waiting), "--levels",
                             "3", "--random", "0", "--n-obs", "16", "--nmf", "3"])  # fmt: skip
    assert r.exit_code == 2 and "being written by another process" in r.output
    assert not waiting.exists()
    by_mask = ok("edit", run, "--feature", "wall", "--direction", "object", "--n-obs", "16",
                 "--out", str(tmp_path / "no-wall"))  # fmt: skip
    assert by_mask["edit"]["direction_from"] == "object" and len(by_mask["edit"]["direction"]) == 16
    by_mask_edit = editing.EditRecord.from_json(by_mask["edit"])
    assert report.edit_description(by_mask_edit).startswith("Removed the wall direction")
    assert "NMF feature" in report.edit_description(editing.EditRecord.from_json(result["edit"]))
    r = cli.invoke(app, ["edit", run, "--feature", "saw", "--direction", "banana",
                         "--out", str(tmp_path / "y")])  # fmt: skip
    assert r.exit_code == 2 and "Unknown direction 'banana'" in r.output
    assert not (tmp_path / "y").exists()
    r = cli.invoke(app, ["edit", run, "--feature", "banana", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "feature must be one of" in r.output
    assert not (tmp_path / "x").exists()
    dissected = ok("dissect", run, "--levels", "3", "--window", "4")
    assert dissected["levels"] == 3
    gamma = tiny_hazard_run.config["trainer"]["gamma"]
    lam = tiny_hazard_run.config["trainer"]["gae_lambda"]
    assert dissected["episodes"]
    for ep in dissected["episodes"]:  # a failed level earns nothing: A_t = gV_t+1 - V_t + gl A_t+1
        v, a = np.array(ep["values"]), np.array(ep["advantages"])
        assert len(v) == len(a) == 4
        assert a[:-1] == pytest.approx(gamma * v[1:] - v[:-1] + gamma * lam * a[1:], abs=1e-4)
        if ep["cause"] != "timeout":  # ended by a hazard: nothing follows the last step
            assert a[-1] == pytest.approx(-v[-1], abs=1e-5)
        # (a timeout's last step, bootstrapped from its final observation, is checked by hand in
        # test_known_answers.py)
    found = ok("hallucinations", run, "--n-obs", "16", "--nmf", "3", "--limit", "4")
    assert found["frames"] == 16
    r = cli.invoke(app, ["rl-vision-report", run, "--edit", str(edited),
                         "--out", str(tmp_path / "r.html")])  # fmt: skip
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert "Feature legend" in html and "Model editing" in html and "Failure dissection" in html
    assert "aligned &gt;= 0.6" in html or "No hazard appeared" in html
    assert "Removed NMF feature" in html  # which feature the edit removed, and its label
    assert "Hallucinations" in html and ("hallucinat" in html.split("Hallucinations", 1)[1])


def test_diversity_effects_compare_the_ends_and_say_no_effect():
    from policylens.studies.rl_vision.diversity import diversity_effects

    rows = [{"num_levels": n, "seed": s, "unseen": u, "score": c}
            for n, s, u, c in [(100, 0, 0.86, 0.2), (100, 1, 0.87, 0.3), (100, 2, 0.87, 0.1),
                               (1000, 0, 0.5, 0.9),
                               (10000, 0, 0.90, 0.25), (10000, 1, 0.89, 0.1),
                               (10000, 2, 0.90, math.nan)]]  # fmt: skip
    unseen, score = diversity_effects(rows, ["unseen", "score"])
    assert (
        unseen.startswith("unseen, 10,000 vs 100 training levels: +0.030")
        and "no effect" not in unseen
    )
    assert score.endswith("no effect")  # the NaN seed is left out, the middle setting unused


def play_by_hand(agent, n: int, env_kwargs: dict, seed: int) -> list[bool]:
    """Whether each of ``n`` hazard levels is won by ``agent``'s sampled actions, played with
    ``gymnasium.make`` one level at a time: level i is reset with ``seed + i``; its action at step
    t is the inverse CDF of softmax(logits) at uniform ``U_t[0, i]``, the uniforms drawn (2, n)
    per step from a torch generator seeded ``seed`` (the sampling policy's contract)."""
    import gymnasium as gym

    gen = torch.Generator().manual_seed(seed)
    steps = env_kwargs["max_steps"]
    uniforms = torch.stack([torch.rand(2, n, generator=gen)[0] for _ in range(steps)])
    won = []
    for i in range(n):
        env = gym.make("policylens/Hazards-v0", **{**env_kwargs, "masks": False})
        obs, _ = env.reset(seed=seed + i)
        for t in range(steps):
            with torch.no_grad():
                logits = agent(torch.from_numpy(obs[None]))[0].float()
            cdf = torch.softmax(logits, -1).cumsum(-1)
            action = int(torch.searchsorted(cdf, (uniforms[t, i] * cdf[:, -1])[:, None])[0, 0])
            obs, _, terminated, truncated, info = env.step(min(action, logits.shape[-1] - 1))
            if terminated or truncated:
                break
        won.append(bool(info["success"]))
        env.close()
    return won


@pytest.mark.slow
def test_diversity_sweep_and_its_report(tmp_path):
    from policylens.runs import Run
    from policylens.studies.rl_vision.diversity import diversity_result
    from policylens.studies.rl_vision.summary import StudySummary
    from policylens.sweeps import SweepSpec, run_sweep

    spec = SweepSpec(world="hazards", recipe="policylens.worlds.hazards:HazardsRecipe",
                     grid={"num_levels": [5, 50]}, seeds=[0, 1], steps=512,
                     fixed={"num_envs": 8, "num_steps": 32},
                     evaluate="policylens.studies.rl_vision.diversity:diversity_metrics",
                     evaluate_kwargs={"levels": 3, "frames": 16, "k": 3})  # fmt: skip
    rows = run_sweep(spec, tmp_path / "sweep", quiet=True, threads=1)
    assert [(r["num_levels"], r["seed"]) for r in rows] == [(5, 0), (5, 1), (50, 0), (50, 1)]
    for row in rows:
        assert -1 <= row["interpretability_score"] <= 1
    # a trial's completions are its agent's levels played by hand: 3 levels each of its training
    # and unseen levels, evaluation seed 10,000 + the metrics' seed (0)
    run = Run(tmp_path / "sweep" / "trials" / "num_levels=5,seed=0")
    agent, trained = run.load_agent(), run.config["trainer"]["env_kwargs"]
    assert trained["num_levels"] == 5 and trained["start_level"] == 0
    unseen = {**trained, "num_levels": 0, "start_level": 5}
    for name, env_kwargs in (("training", trained), ("unseen", unseen)):
        won = play_by_hand(agent, 3, env_kwargs, seed=10_000)
        assert rows[0][f"{name}_completion"] == sum(won) / 3, name
    diversity = diversity_result(tmp_path / "sweep")
    assert len(diversity.effects) == len(diversity.metrics) == 5
    summary = StudySummary(tmp_path, None, None, None, (), diversity)
    html = report.render(summary, tmp_path / "r.html")
    assert "The diversity hypothesis" in html.read_text()
    with pytest.raises(FileNotFoundError, match="holds no sweep"):
        diversity_result(tmp_path)
