"""The maze commands end to end on a tiny run: eval, behaviour, steer, report, runs, bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from policylens import worlds
from policylens.cli import app
from policylens.report.maze import render
from policylens.runs import Run
from policylens.studies.maze import misgeneralization as study
from policylens.train.ppo import PPOConfig, train_ppo

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = PPOConfig(env_id=worlds.get("maze").env_id, total_steps=16 * 32 * 4, num_envs=16, num_steps=32, checkpoints=2,
                    env_kwargs={"cheese_region": 1, "max_steps": 40})  # fmt: skip
    return train_ppo(cfg, out, progress=False)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_json(tiny_run):
    import numpy as np

    from policylens.studies.maze.behaviour import evaluate

    r = invoke("eval", tiny_run.path, "--episodes", "20", "--cheese-region", "none", "--seed", "7",
               "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["episodes"] == 20 and data["env_kwargs"]["cheese_region"] is None
    assert data["env_kwargs"]["max_steps"] == 40  # the run's world, cheese region overridden
    success = data["success"]
    assert success["n"] == 20 and success["ci"][0] <= success["rate"] <= success["ci"][1]
    assert round(success["rate"] * 20) == pytest.approx(success["rate"] * 20)  # k of 20
    assert data["length"]["n"] == 20 and 1 <= data["length"]["mean"] <= 40
    # The command is evaluate() on the run's latest agent and world: same seed, same numbers.
    direct = evaluate(tiny_run.load_agent(), 20, worlds.get("maze").env_id,
                      {"cheese_region": None, "max_steps": 40}, seed=7).to_json()  # fmt: skip
    np.testing.assert_equal(data, json.loads(json.dumps(direct, default=lambda v: v.tolist())))
    other = invoke("eval", tiny_run.path, "--episodes", "20", "--cheese-region", "none", "--seed",
                   "8", "--json")  # fmt: skip
    assert json.loads(other.output)["length"] != data["length"]  # the seed is passed through


def test_runs_lists_the_run(tiny_run):
    r = invoke("runs", tiny_run.path.parent, "--json")
    assert r.exit_code == 0
    [summary] = json.loads(r.output)
    assert summary["kind"] == "ppo" and summary["done"] and summary["checkpoints"] >= 2


def test_steer_json(tiny_run):
    r = invoke(
        "steer",
        tiny_run.path,
        "--n-mazes",
        "100",
        "--random-vectors",
        "1",
        "--coef",
        "-1",
        "--coef",
        "2",
        "--json",
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert {"baseline", "cheese_vector x -1", "cheese_vector x 2", "random x 2"} <= set(data)


@pytest.mark.slow
def test_report_is_self_contained(tiny_run, tmp_path):
    options = study.StudyOptions(study.AnalysisOptions(episodes=30, n_mazes=30))
    result = study.study(Run(tiny_run.path), options, log=lambda *_: None)
    html = render(result).write(tmp_path / "r.html").read_text()
    for title in (
        "Success and corner bias",
        "Vector fields",
        "Decision squares",
        "Steering",
        "Channel clamping",
    ):
        assert title in html
    assert html.count("data:image/png;base64,") >= 5
    assert "http://" not in html and "https://" not in html  # opens offline
    assert (tiny_run.path / "analysis" / "maze.json").exists()
    assert (tiny_run.path / "analysis" / "attribution.json").exists()  # the study saves its own


@pytest.mark.parametrize(
    "args, msg",
    [
        (["eval", "/nonexistent/run"], "not a policylens run"),
        (["train", "maze", "--out", "/tmp/x", "--cheese-region", "abc"], "--cheese-region"),
        (["train", "maze", "--out", "/tmp/x", "--world-size", "8"], "world_size must be an odd"),
    ],
)
def test_bad_input_is_one_clear_line(args, msg):
    r = invoke(*args)
    assert r.exit_code == 2
    assert msg in r.output and "Traceback" not in r.output


def test_steer_bad_hook_and_coefficient(tiny_run):
    r = invoke("steer", tiny_run.path, "--hook", "res1.hook_outt")
    assert r.exit_code == 2 and "res1.hook_out" in r.output
    r = invoke("steer", tiny_run.path, "--coef", "big")
    assert r.exit_code == 2 and "must be a number" in r.output


def test_run_without_checkpoints(tmp_path):
    Run.create(
        tmp_path / "empty",
        {"kind": "ppo", "trainer": {"env_id": worlds.get("maze").env_id}, "agent": {}},
    )
    r = invoke("eval", tmp_path / "empty")
    assert r.exit_code == 2 and "no checkpoints" in r.output


@pytest.mark.parametrize(
    "make, msg",
    [
        (lambda: study.AnalysisOptions(n_mazes=0), "n_mazes must be >= 1, got 0"),
        (lambda: study.BehaviourOptions(episodes=0), "episodes must be >= 1, got 0"),
        (lambda: study.SteerOptions(random_vectors=0), "random_vectors must be >= 1"),
        (lambda: study.SteerOptions(coefs=()), "coefs must hold at least one"),
        (lambda: study.StudyOptions(n_obs=0), "n_obs must be >= 1"),
    ],
)
def test_options_name_their_fields_not_flags(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_the_shell_maps_a_field_in_an_error_to_its_flag(tiny_run):
    with pytest.raises(ValueError, match="^clamp_channels 999 does not exist at res1.hook_out"):
        study.steer(Run(tiny_run.path), study.SteerOptions(clamp_channels=(999,)))
    r = invoke("steer", tiny_run.path, "--hook", "res1.hook_out", "--clamp-channel", "999")
    assert r.exit_code == 2 and "--clamp-channel 999 does not exist at res1.hook_out" in r.output


def test_the_saved_analysis_is_reused_while_it_fits(tiny_run):
    run = Run(tiny_run.path)
    options = study.AnalysisOptions(episodes=10, n_mazes=10, hook="res1.hook_out", force=True)
    first = study.analyse(run, options, log=lambda m: None)
    file = run.analysis_dir / "maze.json"
    saved = json.loads(file.read_text())
    assert saved["step"] == run.checkpoint()[0] and saved["steering"]["hook"] == "res1.hook_out"
    assert study.MazeAnalysis.from_json(saved).to_json() == saved  # the saved form round-trips
    assert first.behaviour.test.summary["episodes"] == 10
    stamp = file.stat().st_mtime_ns
    quiet = lambda m: None  # noqa: E731
    again = study.analyse(run, study.AnalysisOptions(episodes=10, n_mazes=10), log=quiet)
    assert file.stat().st_mtime_ns == stamp and again.to_json() == saved  # any hook: reused
    other = study.analyse(run, study.AnalysisOptions(10, 10, hook="res1.hook_relu2"), log=quiet)
    assert other.steering["hook"] == "res1.hook_relu2" and file.stat().st_mtime_ns != stamp
