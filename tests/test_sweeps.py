"""Sweeps: specs and their errors, aggregation over seeds, and tiny 2x2 maze sweeps on the local
pool and on Ray (same results), resumed after a simulated kill, through the CLI with its report."""

from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest
from oracles import require
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from policylens import worlds
from policylens.cli import app
from policylens.runs import Run
from policylens.sweeps import SweepSpec, aggregate, load_spec, parse_seeds, run_sweep
from policylens.sweeps.results import TIMING
from policylens.sweeps.runner import claim, cpu_count, run_trial
from policylens.sweeps.spec import MAX_STEPS, resolve_evaluate

runner = CliRunner()
MAZE_METRICS = "policylens.studies.maze.sweep:maze_metrics"
MAZE_RECIPE = "policylens.worlds.maze:MazeRecipe"
TINY = {"world_size": 5, "num_envs": 8, "num_steps": 16}
"""One PPO update of 128 steps on 5x5 mazes: a trial trains in well under a second."""
TINY_FLAGS = [f"--fixed={k}={v}" for k, v in TINY.items()]


def tiny_spec(**changes) -> SweepSpec:
    settings = {
        "recipe": MAZE_RECIPE,
        "grid": {"cheese_region": [1, "none"]},
        "fixed": TINY,
        "seeds": "0-1",
        "steps": 128,
        "evaluate": MAZE_METRICS,
        "evaluate_kwargs": {"episodes": 20, "n_mazes": 20},
    }
    return SweepSpec(**{**settings, **changes})


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# -- specs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, seeds",
    [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("3", [3]), (" 7 - 8 ", [7, 8]), (2, [2])],
)
def test_seed_texts(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text, message",
    [("4-0", "runs backwards"), ("a-b", "a range like 0-4"), ("0-999", "at most 100"),
     ("1,,2", "a range like 0-4"), (True, "must be integers")],
)  # fmt: skip
def test_bad_seeds_are_one_sentence(text, message):
    with pytest.raises(ValueError, match=message):
        parse_seeds(text)


def test_spec_trials_names_and_text_values():
    spec = tiny_spec(grid={"num_levels": ["0", 10], "cheese_region": [1, "None"]})
    assert list(spec.grid) == ["cheese_region", "num_levels"]  # sorted: stable folder names
    assert spec.grid == {"cheese_region": [1, None], "num_levels": [0, 10]}
    names = [t.name for t in spec.trials()]
    assert len(names) == 2 * 2 * 2 and len(set(names)) == 8
    assert names[:3] == [
        "cheese_region=1,num_levels=0,seed=0",
        "cheese_region=1,num_levels=0,seed=1",
        "cheese_region=1,num_levels=10,seed=0",
    ]
    trial = spec.trials()[-1]
    config = spec.config(trial, threads=3)
    assert config.env_kwargs["cheese_region"] is None and config.env_kwargs["num_levels"] == 10
    assert (config.seed, config.total_steps, config.threads, config.num_envs) == (1, 128, 3, 8)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"grid": {"cheese_regoin": [1]}}, "Did you mean 'cheese_region'"),
        ({"grid": {"cheese_region": []}}, "cheese_region has no values"),
        ({"grid": {"world_size": [5, 7]}}, "both in the grid and fixed"),
        ({"grid": {"cheese_region": [1, 1]}}, "lists a value twice"),
        ({"grid": {"arch": ["a/b"]}}, "cannot name a trial folder"),
        ({"grid": {"cheese_region": [9]}}, "does not fit in the smallest maze"),
        ({"recipe": "policylens.worlds.maze:maze_recipee"}, "has no function maze_recipee"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"steps": MAX_STEPS + 1}, "steps must be an integer from 1"),
        ({"steps": 64}, "smaller than one rollout"),
        ({"evaluate": "maze_metrics"}, "'module:function'"),
        ({"seeds": "0-99", "grid": {"num_levels": list(range(11))}}, "at most 1000"),
    ],
)
def test_bad_specs_are_one_sentence(changes, message):
    with pytest.raises(ValueError, match=message) as e:
        tiny_spec(**changes)
    assert "\n" not in str(e.value)


def test_toml_spec_with_flag_overrides(tmp_path):
    file = tmp_path / "spec.toml"
    file.write_text(
        f'world = "maze"\nrecipe = "{MAZE_RECIPE}"\nseeds = [0, 2]\nsteps = 256\nevaluate = "m:f"\n'
        '[grid]\ncheese_region = [1, 3, "none"]\nnum_levels = [0]\n'
        "[fixed]\nworld_size = 5\nnum_envs = 8\nnum_steps = 16\n"
    )
    spec = load_spec(file)
    assert spec.grid["cheese_region"] == [1, 3, None] and spec.seeds == [0, 2]
    assert len(spec.trials()) == 3 * 2
    # a flag replaces one grid parameter and keeps the other, and replaces other settings whole
    spec = load_spec(file, grid={"cheese_region": ["none"]}, seeds="4-6", evaluate=MAZE_METRICS)
    assert spec.grid == {"cheese_region": [None], "num_levels": [0]} and spec.seeds == [4, 5, 6]
    assert spec.steps == 256 and spec.evaluate == MAZE_METRICS
    file.write_text('seed = 3\nevaluate = "m:f"\n')
    with pytest.raises(ValueError, match="Did you mean 'seeds'"):
        load_spec(file)
    file.write_text("grid = [\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_spec(file)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")


def test_spec_round_trips_through_json():
    spec = tiny_spec()
    again = SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and [t.name for t in again.trials()] == [t.name for t in spec.trials()]


@pytest.mark.parametrize(
    "evaluate, kwargs, message",
    [
        ("policylens.nowhere:f", {}, "cannot import policylens.nowhere"),
        ("policylens.studies.maze.sweep:nothing", {}, "has no function nothing"),
        (MAZE_METRICS, {"episode": 5}, "cannot be called with a run path"),
    ],
)
def test_bad_evaluate_is_refused_before_training(evaluate, kwargs, message):
    spec = tiny_spec(evaluate=evaluate, evaluate_kwargs=kwargs)
    with pytest.raises(ValueError, match=message):
        resolve_evaluate(spec)


def test_sweep_folder_holds_one_spec(tmp_path):
    claim(tmp_path / "s", tiny_spec())
    claim(tmp_path / "s", tiny_spec())  # the same spec again: a rerun
    with pytest.raises(ValueError, match="differs in seeds, steps"):
        claim(tmp_path / "s", tiny_spec(seeds=[0], steps=256))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no sweep"):
        claim(tmp_path / "other", tiny_spec())


def test_aggregate_is_student_t_over_seeds():
    spec = tiny_spec()
    rows = [
        {"cheese_region": 1, "seed": 0, "a": 0.2, "b": math.nan, "seconds": 1.0},
        {"cheese_region": 1, "seed": 1, "a": 0.4, "b": 3.0, "seconds": 1.0},
        {"cheese_region": 1, "seed": 2, "a": 0.9, "b": 5.0, "seconds": 1.0},
        {"cheese_region": None, "seed": 0, "a": 0.5, "b": 1.0, "seconds": 1.0},
    ]
    first, second = aggregate(spec, rows)
    assert first["params"] == {"cheese_region": 1} and first["seeds"] == [0, 1, 2]
    assert set(first["metrics"]) == {"a", "b"}  # timing is not a metric
    a = first["metrics"]["a"]
    half = scipy_stats.t.ppf(0.975, 2) * np.std([0.2, 0.4, 0.9], ddof=1) / math.sqrt(3)
    assert a["n"] == 3 and a["mean"] == pytest.approx(0.5)
    assert a["ci"] == pytest.approx([0.5 - half, 0.5 + half])
    assert first["metrics"]["b"]["n"] == 2 and first["metrics"]["b"]["mean"] == 4.0  # NaN left out
    assert second["params"] == {"cheese_region": None} and second["metrics"]["a"]["n"] == 1
    assert all(math.isnan(v) for v in second["metrics"]["a"]["ci"])  # one seed: no interval


def test_welch_difference_matches_scipy():
    from policylens.rollout.stats import welch_difference

    a, b = [0.90, 0.89, 0.89], [0.87, 0.87, 0.866]
    d = welch_difference(a, b)
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert d["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert d["ci"] == pytest.approx([ci.low, ci.high]) and d["effect"]
    assert not welch_difference([0.2, 0.1, 0.3], [0.25, 0.15, 0.2])["effect"]
    assert math.isnan(welch_difference([1.0], [2.0, 3.0])["ci"][0])  # one value: no interval


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "cheese_region"], "--grid takes NAME=V1,V2"),
        (["--grid", "cheese_region=1", "--backend", "rey"], "Did you mean 'ray'"),
        (["--grid", "cheese_region=1", "--steps", "1000000000"], "steps must be an integer"),
        (["--grid", "cheese_region=1", "--seeds", "0-500"], "at most 100"),
        (["--grid", "cheese_region=1", "--address", "x:1"], "ray backend only"),
        (["/nonexistent/spec.toml"], "does not exist"),
        (["--world", "mazee"], "Unknown world 'mazee'"),
    ],
)
def test_cli_bad_input_is_one_clear_line(args, message, tmp_path):
    r = runner.invoke(app, ["sweep", *args, "--out", str(tmp_path / "s"), "--quiet"])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s" / "trials").exists()  # refused before any training


# -- running ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_on_the_pool_and_ray_and_after_a_kill(tmp_path):
    """One test in three steps that share the first sweep (a module fixture would be built again
    on each pytest-xdist worker, and each build spawns processes that import torch)."""
    out = tmp_path / "local"
    printed = check_local_sweep(out)
    check_rerun_finishes_only_killed_trials(out, printed["results"], tmp_path)
    check_ray_gives_the_local_results(printed["results"], tmp_path / "ray")  # last: may skip


def check_local_sweep(out):
    """The 2x2 tiny sweep through `policylens sweep --json` on two local workers."""
    args = ["sweep", "--grid", "cheese_region=1,none", *TINY_FLAGS, "--seeds", "0-1",
            "--steps", "128", "--eval-arg", "episodes=20", "--eval-arg", "n_mazes=20",
            "--workers", "2", "--out", str(out), "--json"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output)
    rows = printed["results"]
    assert [(r["cheese_region"], r["seed"]) for r in rows] == [(1, 0), (1, 1), (None, 0), (None, 1)]
    assert json.loads((out / "results.json").read_text()) == rows
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == [
        "cheese_region", "seed", "train_success", "test_success", "test_corner_first_off_path",
        "p_cheese_at_decision_squares", "train_path_ratio", "seconds", "train_seconds",
    ]  # fmt: skip
    assert [r["cheese_region"] for r in table] == ["1", "1", "none", "none"]
    for row in rows:
        assert 0 <= row["train_success"] <= 1 and row["train_path_ratio"] >= 1
        assert row["seconds"] > row["train_seconds"] > 0
        name = f"cheese_region={_text(row['cheese_region'])},seed={row['seed']}"
        trial = Run(out / "trials" / name)
        assert trial.done and trial.config["trainer"]["threads"] == max(1, cpu_count() // 2)
        assert trial.config["trainer"]["env_kwargs"]["world_size"] == 5
        assert json.loads((trial.path / "trial.json").read_text()) == row
    assert without_timing(rows[:1]) != without_timing(rows[1:2])  # seeds make different agents
    [one, anywhere] = printed["aggregate"]
    assert one["params"] == {"cheese_region": 1} and one["seeds"] == [0, 1]
    assert anywhere["params"] == {"cheese_region": None}
    for group, trials in ((one, rows[:2]), (anywhere, rows[2:])):
        for name, metric in group["metrics"].items():
            values = [r[name] for r in trials if not math.isnan(r[name])]  # NaN: not measured
            assert metric["n"] == len(values), name
            if values:
                assert metric["mean"] == pytest.approx(np.mean(values)), name
            assert metric["ci"] == pytest.approx(t_interval(values), nan_ok=True), name
    html = (out / "report.html").read_text()
    assert printed["report"] == str(out / "report.html")
    assert "Metrics by parameter" in html and html.count("data:image/png;base64,") == 1
    assert "https://" not in html and "p_cheese_at_decision_squares" in html
    return printed


def _text(value):
    return "none" if value is None else str(value)


def check_ray_gives_the_local_results(local_rows, out):
    require("ray")
    rows = run_sweep(tiny_spec(), out, workers=2, backend="ray", quiet=True)
    np.testing.assert_equal(without_timing(rows), without_timing(local_rows))
    trial = Run(out / "trials" / "cheese_region=1,seed=0")
    assert trial.config["trainer"]["threads"] == max(1, cpu_count() // 2)


def check_rerun_finishes_only_killed_trials(out, local_rows, tmp_path):
    trials = out / "trials"
    evaluated_only = trials / "cheese_region=1,seed=1"  # trained, killed while evaluating
    partial = trials / "cheese_region=none,seed=0"  # killed before its first resume save
    (evaluated_only / "trial.json").unlink()
    for name in ("trial.json", "DONE", "resume.pt"):
        (partial / name).unlink()
    untouched = {p: p.stat().st_mtime_ns for p in trials.glob("*/trial.json")}
    trained_at = (evaluated_only / "metrics.csv").stat().st_mtime_ns
    threads = Run(partial).config["trainer"]["threads"]
    # the same spec from a TOML file, on one worker: the rerun is accepted
    (tmp_path / "spec.toml").write_text(
        '[grid]\ncheese_region = [1, "none"]\n[fixed]\nworld_size = 5\nnum_envs = 8\n'
        "num_steps = 16\n[evaluate_kwargs]\nepisodes = 20\nn_mazes = 20\n"
    )
    r = runner.invoke(
        app,
        ["sweep", str(tmp_path / "spec.toml"), "--seeds", "0-1", "--steps", "128",
         "--workers", "1", "--out", str(out), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["results"]
    np.testing.assert_equal(without_timing(rows), without_timing(local_rows))
    assert len(untouched) == 2
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched  # not rerun
    assert (evaluated_only / "metrics.csv").stat().st_mtime_ns == trained_at  # not retrained
    assert (partial / "DONE").exists() and (partial / "trial.json").exists()
    # one worker would train on every CPU; a started run resumes on the threads it began with
    assert Run(partial).config["trainer"]["threads"] == threads
    # a different spec into the same folder is refused in one sentence
    r = runner.invoke(app, ["sweep", "--grid", "cheese_region=3", *TINY_FLAGS, "--out", str(out)])
    assert r.exit_code == 2 and "differs in" in r.output


@pytest.mark.slow
def test_a_failing_trial_leaves_its_traceback(tmp_path):
    spec = tiny_spec(
        grid={"cheese_region": [1]}, seeds=[0], evaluate="json:dumps", evaluate_kwargs={}
    )
    path = tmp_path / "trial"
    with pytest.raises(ValueError, match="returned str, not a dict of numbers"):
        run_trial(spec, spec.trials()[0], str(path), threads=1)
    assert "not a dict of numbers" in (path / "error.txt").read_text()
    assert Run(path).done and not (path / "trial.json").exists()  # trained, not finished


def t_interval(values) -> list[float]:
    """The 95% Student-t interval of the mean of the values that are not NaN (NaN ends when
    fewer than two are)."""
    x = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) < 2:
        return [math.nan, math.nan]
    half = scipy_stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return [x.mean() - half, x.mean() + half]


def known_metrics(run_path: str, offset: float = 0.0) -> dict[str, float]:
    """A sweep evaluation whose answer the test knows: numbers made of the trial's seed and
    cheese region (as its run folder's config.json records them) and its last logged step."""
    trainer = Run(run_path).config["trainer"]
    seed, region = trainer["seed"], trainer["env_kwargs"]["cheese_region"]
    return {
        "known": seed**2 / 4 + (10 if region is None else region) + offset,
        "steps": Run(run_path).metrics()[-1]["step"],
    }


@pytest.mark.slow
def test_a_sweeps_rows_and_aggregate_are_its_trials_known_values(tmp_path):
    """A sweep scored by :func:`known_metrics`: each row and each group's mean and Student-t
    interval are computed here from the seeds and parameters alone."""
    spec = tiny_spec(seeds="0,2,5", evaluate="test_sweeps:known_metrics",
                     evaluate_kwargs={"offset": 0.5})  # fmt: skip
    rows = run_sweep(spec, tmp_path / "s", workers=1, quiet=True, threads=1)
    known = {
        (r, s): s**2 / 4 + (10 if r is None else r) + 0.5 for r in (1, None) for s in (0, 2, 5)
    }
    assert [(r["cheese_region"], r["seed"], r["known"], r["steps"]) for r in rows] == [
        (r, s, known[r, s], 128) for r in (1, None) for s in (0, 2, 5)
    ]
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert without_timing(saved) == without_timing(rows)
    for group, region in zip(aggregate(spec, rows), (1, None), strict=True):
        assert group["params"] == {"cheese_region": region} and group["seeds"] == [0, 2, 5]
        values = [known[region, s] for s in (0, 2, 5)]
        metric = group["metrics"]["known"]
        assert metric["n"] == 3 and metric["mean"] == pytest.approx(np.mean(values))
        # by hand: 2 degrees of freedom, t = 4.303; the seeds' values 0.25 s^2 are 0, 1, 6.25
        assert metric["ci"] == pytest.approx(t_interval(values))
        assert metric["ci"][1] - metric["ci"][0] == pytest.approx(
            2 * 4.302653 * np.std([0, 1, 6.25], ddof=1) / math.sqrt(3), rel=1e-6
        )
        assert group["metrics"]["steps"]["mean"] == 128


def test_ray_backend_without_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'policylens\[ray\]'"):
        run_sweep(tiny_spec(), tmp_path / "s", workers=2, backend="ray", quiet=True)
    assert not (tmp_path / "s" / "trials").exists()


def test_maze_steering_metrics_set_each_intervention_against_its_control(tmp_path):
    from policylens.studies.maze.sweep import maze_steering_metrics
    from policylens.train.ppo import PPOConfig, train_ppo

    config = PPOConfig(env_id=worlds.get("maze").env_id, total_steps=16 * 32 * 2, num_envs=16, num_steps=32,
                       env_kwargs={"cheese_region": None, "max_steps": 40})  # fmt: skip
    run = train_ppo(config, tmp_path / "run", progress=False)
    m = maze_steering_metrics(str(run.path), n_mazes=20)
    for name, (a, b) in {
        "cheese_vector": ("cheese_vector_success", "random_vector_success"),
        "clamp": ("clamp_clamped_reach", "clamp_unclamped_reach"),
    }.items():
        assert m[f"{name}_diff"] == pytest.approx(m[a] - m[b])
        assert m[f"{name}_diff_lo"] <= m[f"{name}_diff"] <= m[f"{name}_diff_hi"]
        excludes_zero = m[f"{name}_diff_lo"] > 0 or m[f"{name}_diff_hi"] < 0
        assert m[f"{name}_effect"] == float(excludes_zero)
    assert -1 <= m["clamped_channel_correlation"] <= 1
