"""Reliability: bad inputs refused before any work, corrupt artefacts named in one sentence,
concurrent writers refused (and dead ones' locks taken over), killed trainings resumed exactly,
and pickled files never unpickled. Each case is one a reliability pass found or could find.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from policylens import load_agent
from policylens.artifacts import LOCK_FILE, FolderLock, locked_by, write_json
from policylens.cli import app
from policylens.rollout.store import Store, write_store
from policylens.runs import Run
from policylens.train.ppo import train_ppo
from policylens.worlds.maze import MazeRecipe

runner = CliRunner()
POLICYLENS = [str(Path(sys.executable).parent / "policylens")]  # the installed command


def tiny_recipe(steps: int = 4096):
    return MazeRecipe(total_steps=steps, world_size=7, precision="float32").config()


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "maze"
    train_ppo(tiny_recipe(), out, progress=False)
    return out


def refused(args: list, *fragments: str) -> str:
    """Run the CLI; assert a one-sentence refusal (exit 2, no traceback) holding ``fragments``."""
    r = runner.invoke(app, [str(a) for a in args])
    text = " ".join(r.output.replace("│", " ").split())  # typer boxes and wraps its errors
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "bug in policylens" not in r.output, r.output
    for fragment in fragments:
        assert fragment in text, text
    return text


# ------------------------------------------------------------------ bad inputs, before any work
@pytest.mark.parametrize(
    "args, fragments",
    [
        (["steer", "{run}", "--clamp-channel", "999"], ["--clamp-channel 999 does not exist"]),
        (["steer", "{run}", "--coef", "banana"], ["coefficient must be a number"]),
        (["steer", "{run}", "--hook", "nosuch"], ["Unknown hook 'nosuch'"]),
        (["report", "{run}", "--out", "{file}/report.html"], ["is a file, not a folder"]),
        (["report", "{run}", "--out", "{tmp}"], ["is a folder; give a file name"]),
        (["eval", "{run}", "--episodes", str(10**12)], ["Invalid value for '--episodes'"]),
        (["eval", "{run}", "--seed", "-1"], ["Invalid value for '--seed'"]),
        (["gallery", "--n", str(10**12)], ["Invalid value for '--n'"]),
        (["gallery", "--out", "{file}/g.png"], ["is a file, not a folder"]),
        (["train", "maze", "--out", "{tmp}/x", "--steps", str(10**12)], ["'--steps'"]),
        (["train", "maze", "--out", "{tmp}/x", "--steps", "0"], ["'--steps'"]),
        (["train", "maze", "--out", "{tmp}/x", "--resume"], ["holds no run to continue"]),
        (["train", "maze", "--out", "{file}"], ["is a file; choose a folder"]),
        (["train", "maze", "--out", "{run}"], ["already holds a run"]),
        (["train", "chess", "--out", "{tmp}/y", "--resume"], ["holds no run to continue"]),
        (["collect", "{run}", "--env-kwarg", "cheese_region=banana"], ["cheese_region must be"]),
        (["collect", "{run}", "--out", "{file}"], ["is a file; choose a folder"]),
        (["collect", "{run}", "--hook", "nosuch"], ["Unknown hook 'nosuch'"]),
        (["probe", "{run}", "--hook", "nosuch"], ["Unknown hook 'nosuch'"]),
        (["chess-eval", "{run}"], ["needs a rook run"]),
        (["table", "{run}", "{tmp}"], ["is not a policylens run"]),
        (["runs", "{file}"], ["is a file; give the folder"]),
        (["eval", "{tmp}/nosuch"], ["is not a policylens run"]),
    ],
)
def test_bad_input_is_refused_before_any_work(maze_run, tmp_path, monkeypatch, args, fragments):
    from policylens.envs.chess import RookEndgameEnv
    from policylens.envs.maze import MazeBatch

    def work(*_args, **_kwargs):
        raise AssertionError("a world was stepped before the input was refused")

    monkeypatch.setattr(MazeBatch, "step", work)  # every maze rollout and training steps it
    monkeypatch.setattr(RookEndgameEnv, "step", work)
    file = tmp_path / "a_file.txt"
    file.write_text("x")
    fill = {"run": maze_run, "file": file, "tmp": tmp_path}
    before = (
        sorted(p.name for p in (maze_run / "analysis").glob("*"))
        if (maze_run / "analysis").exists()
        else []
    )
    refused([a.format(**fill) for a in args], *fragments)
    after = (
        sorted(p.name for p in (maze_run / "analysis").glob("*"))
        if (maze_run / "analysis").exists()
        else []
    )
    assert after == before  # nothing was computed or written


def test_python_api_validates_device_dtype_source_and_observations(maze_run):
    for kwargs, fragment in [
        ({"device": "banana"}, "is not a device"),
        ({"dtype": "int8"}, "is not a float dtype"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            load_agent(maze_run, **kwargs)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA"):
            load_agent(maze_run, device="cuda")
    with pytest.raises(ValueError, match="takes a path"):
        load_agent(123)
    assert load_agent(maze_run, dtype="bfloat16").dtype == torch.bfloat16
    agent = load_agent(maze_run)
    with pytest.raises(ValueError, match="numeric observations"):
        agent("not an observation")
    with pytest.raises(ValueError, match="NaN"):
        agent(np.full(agent.obs_shape, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(3, 7, 7\)"):
        agent(np.zeros((2, 3, 5, 5), dtype=np.uint8))


def test_float_images_must_be_scaled_and_give_the_uint8_answer():
    from policylens.agents import build_agent

    agent = build_agent("impala", (64, 64, 3), 15, seed=0)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    logits, _ = agent(frames)
    scaled, _ = agent(frames / 255.0)
    torch.testing.assert_close(logits, scaled)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*uint8"):
        agent(frames.astype(np.float32))


# ------------------------------------------------------------------ corrupt artefacts
def corrupt(file: Path, kind: str) -> None:
    data = file.read_bytes()
    payload = {
        "truncated": data[: len(data) // 2],
        "random": np.random.default_rng(0).bytes(max(64, len(data) // 4)),
        "empty": b"",
    }[kind]
    file.write_bytes(payload)


@pytest.mark.parametrize("kind", ["truncated", "random", "empty"])
def test_corrupt_checkpoint_is_named(maze_run, tmp_path, kind):
    file = tmp_path / "step.safetensors"
    file.write_bytes(Run(maze_run).checkpoint()[1].read_bytes())
    corrupt(file, kind)
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        load_agent(file, config=Run(maze_run).config["agent"])
    assert str(file) in str(e.value)


def test_checkpoint_of_the_wrong_shape_is_named(maze_run, tmp_path):
    state = load_file(str(Run(maze_run).checkpoint()[1]))
    name = next(iter(state))
    state[name] = torch.zeros(3)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_agent(tmp_path / "w.safetensors", config=Run(maze_run).config["agent"])


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "shape"])
def test_corrupt_store_chunk_is_named_without_unsafe_advice(tmp_path, kind):
    store = write_store(tmp_path / "s", {"x": np.arange(40, dtype=np.float32).reshape(20, 2)},
                        chunk_size=8)  # fmt: skip
    chunk = store.path / "x" / "000001.npy"
    if kind == "shape":
        np.save(chunk, np.zeros((8, 3), dtype=np.float32))
    else:
        corrupt(chunk, kind)
    with pytest.raises(ValueError) as e:
        Store(store.path)["x"][:]
    message = str(e.value)
    assert "x/000001.npy" in message and "collect again" in message
    assert "allow_pickle" not in message


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its sha256, to show that nothing changed."""
    from policylens.artifacts import sha256_of

    return {
        str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis", LOCK_FILE))
    return dst


# ------------------------------------------------------------------ class 1: nothing overwritten
def test_no_command_or_api_call_writes_over_a_file_it_did_not_create(maze_run, tmp_path):
    from policylens.artifacts import check_output

    run = copy_run(maze_run, tmp_path / "run")
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    sae = tmp_path / "sae"
    sae.mkdir()
    for name in ("config.json", "sae.safetensors", "site.json"):
        (sae / name).write_text("an earlier SAE")
    before = digests(tmp_path)
    sae_args = ["--hook", "hook_fc", "--objective", "mse", "--steps", 100, "--samples", 100]
    refused(["gallery", "--out", run / "config.json"], "is a file of the run")
    refused(["gallery", "--out", run / "config.json", "--overwrite"], "is a file of the run")
    refused(["gallery", "--out", other], "already exists", "--overwrite")
    refused(["report", run, "--out", other], "already exists")
    refused(["hazards-report", run, "--out", run / "metrics.csv"], "is a file of the run")
    refused(["sae", "train", run, *sae_args, "--out", run], "is a run folder")
    refused(["sae", "train", run, *sae_args, "--out", sae], "already holds", "--overwrite")
    refused(["sae", "dead-latents", run, "--hook", "hook_fc", "--out", other], "already exists")
    refused(["updates", "compare", run, "--out", other], "already exists")
    with pytest.raises(ValueError, match="already exists"):
        load_agent(run).save_pretrained(run)
    with pytest.raises(ValueError, match="file of the run"):
        check_output(run / "checkpoints" / "step_0.safetensors", overwrite=True)
    assert digests(tmp_path) == before
    ok = runner.invoke(app, ["gallery", "--out", str(other), "--n", "1", "--overwrite"])
    assert ok.exit_code == 0 and other.read_bytes().startswith(b"\x89PNG"), ok.output


# ------------------------------------------------------------------ class 2: sizes bounded
def test_every_trainer_bounds_its_sizes_and_states_its_rounding(maze_run, tmp_path):
    from policylens.train.dqn import DQNConfig
    from policylens.train.ppo import PPOConfig

    for cls, kwargs, fragment in [
        (PPOConfig, {"total_steps": 10**23}, "above the bound of 10,000,000,000"),
        (PPOConfig, {"num_envs": 10**6}, "num_envs 1,000,000 is above the bound"),
        (PPOConfig, {"total_steps": "10000"}, "total_steps must be an integer"),
        (PPOConfig, {"learning_rate": float("nan")}, "must be a finite number"),
        (DQNConfig, {"total_steps": 10**12}, "above the bound"),
        (DQNConfig, {"buffer_size": 10**12}, "buffer_size 1,000,000,000,000 is above"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            cls(env_id="policylens/Maze-v0", **kwargs)
    for args, fragment in [
        (["train", "hazards", "--out", tmp_path / "h", "--steps", 10**12], "'--steps'"),
        (["train", "chess", "--out", tmp_path / "c", "--steps", 10**23], "'--steps'"),
        (["sae", "train", maze_run, "--hook", "hook_fc", "--l1-coeff", -1], "'--l1-coeff'"),
        (["sae", "train", maze_run, "--hook", "hook_fc", "--expansion", 10**6], "'--expansion'"),
        (["sae", "train", maze_run, "--hook", "hook_fc", "--samples", 10**15], "'--samples'"),
        (["sweep", "--out", tmp_path / "s", "--steps", 10**12], "'--steps'"),
        (["sweep", "--out", tmp_path / "s", "--workers", 10**6], "'--workers'"),
        (["updates", "run", "--out", tmp_path / "u", "--steps1", 10**12], "'--steps1'"),
        (["steer", maze_run, "--clamp-value", "nan"], "--clamp-value must be a finite number"),
        (["eval", maze_run, "--seed", 10**30], "out of range"),
    ]:
        refused(args, fragment)
    config = MazeRecipe(
        total_steps=16 * 32 + 1, world_size=7, precision="float32", num_envs=16, num_steps=32
    ).config()
    assert "training 1,024 steps (recorded in config.json)" in config.rounding_note()
    run = train_ppo(config, tmp_path / "rounded", progress=False)
    assert run.config["trainer"]["total_steps"] == 1024 == run.metrics()[-1]["step"]
    assert DQNConfig(env_id="x", total_steps=1000, num_envs=16).num_iterations * 16 == 1008


# ------------------------------------------------------------------ class 3: malformed artefacts
def test_malformed_json_and_csv_artefacts_are_named_and_runs_skips_them(maze_run, tmp_path):
    good = copy_run(maze_run, tmp_path / "good")
    cases = {
        "list": ("config.json", "[1, 2]", "holds a JSON array where a JSON object is expected"),
        "no_agent": (
            "config.json",
            '{"kind": "ppo", "trainer": {"env_id": "policylens/Maze-v0"}}',
            "has no 'agent' entry",
        ),
        "trainer": ("config.json", '{"trainer": 3, "agent": {}}', "'trainer' entry is not"),
        "text": ("config.json", '{"kind": ', "is not valid JSON"),
        "metrics": ("metrics.csv", None, "metrics.csv is damaged at line"),
    }
    for name, (file, text, fragment) in cases.items():
        shutil.rmtree(tmp_path / "no_agent", ignore_errors=True)
        bad = copy_run(maze_run, tmp_path / name)
        if text is None:
            text = (maze_run / "metrics.csv").read_text() + "1,banana\n"
        (bad / file).write_text(text)
        before = digests(tmp_path)
        if file == "config.json":
            refused(["eval", bad, "--episodes", 1], str(bad / file), fragment)
        listed = runner.invoke(app, ["runs", str(tmp_path), "--json"])
        assert listed.exit_code == 0, listed.output
        if name == "no_agent":  # listable: its damage shows when its agent is needed
            continue
        assert [r["run"] for r in json.loads(listed.stdout)] == [str(good)]
        assert "warning: skipped" in listed.stderr and fragment in " ".join(listed.stderr.split())
        assert digests(tmp_path) == before
        shutil.rmtree(bad)


# ------------------------------------------------------------------ class 4: clear messages
def test_messages_name_the_cause_not_the_internals(
    maze_run, tiny_hazard_run, tmp_path, monkeypatch
):
    from policylens import artifacts
    from policylens.commands.framework import user_error

    assert user_error(KeyError("agent")) is None  # a bare key is a bug, never "error: agent"
    # a resume.pt from a run of another world: named as foreign, not blamed on pickles
    run = copy_run(maze_run, tmp_path / "run")
    (run / "resume.pt").write_bytes((tiny_hazard_run.path / "resume.pt").read_bytes())
    with pytest.raises(ValueError, match="belongs to another run.*delete it") as e:
        train_ppo(tiny_recipe(), run, resume=True, progress=False)
    assert "pickled" not in str(e.value)

    # a failed atomic write names the file asked for, not its temporary
    def fail(src, dst):
        raise OSError(28, "No space left on device", src)

    monkeypatch.setattr(artifacts.os, "replace", fail)
    with pytest.raises(OSError) as e:
        artifacts.write_text(tmp_path / "out.txt", "x")
    assert e.value.filename == str(tmp_path / "out.txt")
    monkeypatch.undo()
    # a sweep's mistakes are refused before any training
    refused(["sweep", "--out", tmp_path / "s1", "--grid", "num_levels=1,2", "--grid",
             "num_levels=3"], "--grid names 'num_levels' twice")  # fmt: skip
    refused(["sweep", "--out", tmp_path / "s2", "--grid", "world_size=7", "--eval-arg",
             "episodes=banana", "--steps", 4096], "episodes='banana' is not a int")  # fmt: skip
    assert not (tmp_path / "s2" / "trials").exists()


# ------------------------------------------------------------------ class 5: no leftovers
def test_sweep_workers_die_with_the_sweep_process(tmp_path):
    code = (
        "import os, sys, time\n"
        "from policylens.sweeps.runner import LocalPool\n"
        "with LocalPool(1, 1) as pool:\n"
        "    print(pool.pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.pool.submit(time.sleep, 600)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the sweep's worker outlived it")


# ------------------------------------------------------------------ concurrent writers
def test_atomic_writes_get_the_mode_of_a_plain_write(tmp_path):
    from policylens import artifacts

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    artifacts.write_text(tmp_path / "atomic.txt", "x")
    artifacts.write_bytes(tmp_path / "atomic.png", b"x")
    mode = plain.stat().st_mode & 0o777
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "atomic.png").stat().st_mode & 0o777 == mode
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    run, _ = Run.start(out, {"kind": "ppo", "trainer": {"a": 1}, "agent": {}}, resume=False)
    try:
        assert locked_by(out) is not None and f"PID {os.getpid()}" in locked_by(out)
        with pytest.raises(
            ValueError, match=f"being written by another process \\(PID {os.getpid()}"
        ):
            Run.start(out, {"kind": "ppo", "trainer": {"a": 1}, "agent": {}}, resume=True)
        with pytest.raises(ValueError, match="being written"):
            write_store(out, {"x": np.zeros((2, 1))})
    finally:
        run.release()
    assert locked_by(out) is None
    Run.start(out, {"kind": "ppo", "trainer": {"a": 1}, "agent": {}}, resume=True)[0].release()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "store"
    code = (
        "import os, sys; from policylens.artifacts import FolderLock; "
        f"lock = FolderLock({str(folder)!r}); print('locked', flush=True); "
        "os.kill(os.getpid(), 9)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "locked" in done.stdout and done.returncode == -signal.SIGKILL
    assert (folder / LOCK_FILE).exists()  # the dead holder's file is still there ...
    assert locked_by(folder) is None  # ... but nobody holds it
    with FolderLock(folder):
        assert "PID" in str(locked_by(folder))


@pytest.mark.slow
def test_two_trainings_into_one_folder_one_is_refused_and_runs_notices(tmp_path):
    out = tmp_path / "run"
    args = ["train", "maze", "--out", str(out), "--steps", "200000", "--world-size", "7",
            "--threads", "1", "--quiet"]  # fmt: skip
    first = subprocess.Popen([*POLICYLENS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.csv").exists() or locked_by(out) is None:
            assert time.time() < deadline and first.poll() is None, first.stderr.read().decode()
            time.sleep(0.2)
        second = subprocess.run([*POLICYLENS, *args, "--resume"], capture_output=True, text=True)
        assert second.returncode == 2
        assert f"being written by another process (PID {first.pid}" in " ".join(
            second.stderr.split()
        )
        listed = runner.invoke(app, ["runs", str(tmp_path), "--json"])
        assert f"PID {first.pid}" in json.loads(listed.stdout)[0]["writer"]
    finally:
        first.kill()
        first.wait()
    (listed,) = json.loads(runner.invoke(app, ["runs", str(tmp_path), "--json"]).stdout)
    assert listed["writer"] is None and not listed["done"]
    note = runner.invoke(app, ["eval", str(out), "--episodes", "2"])
    assert note.exit_code == 0 and "is unfinished: stopped before it finished" in " ".join(
        note.output.split()
    )


# ------------------------------------------------------------------ kill and resume
@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path):
    args = ["--steps", "61440", "--world-size", "7", "--threads", "1", "--precision", "float32",
            "--quiet"]  # fmt: skip
    # 15 updates of 4,096 steps; the resume state is first saved after update 10
    whole = tmp_path / "whole"
    subprocess.run([*POLICYLENS, "train", "maze", "--out", str(whole), *args], check=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*POLICYLENS, "train", "maze", "--out", str(killed), *args])
    deadline = time.time() + 120
    while not (killed / "resume.pt").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Run(killed).done
    subprocess.run([*POLICYLENS, "train", "maze", "--out", str(killed), *args, "--resume"],
                   check=True)  # fmt: skip
    assert Run(killed).done
    a, b = Run(whole), Run(killed)
    assert [s for s, _ in a.checkpoints()] == [s for s, _ in b.checkpoints()]
    wa, wb = load_file(str(a.checkpoint()[1])), load_file(str(b.checkpoint()[1]))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    keep = ("step", "episodes", "success", "return", "policy_loss", "value_loss")
    assert [{k: r[k] for k in keep if k in r} for r in a.metrics()] == [
        {k: r[k] for k in keep if k in r} for r in b.metrics()
    ]


# ------------------------------------------------------------------ pickles are never run
class Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("where", ["resume.pt", "agent.pt", "chunk.npy", "sae"])
def test_malicious_pickles_are_never_unpickled(maze_run, tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    if where == "resume.pt":
        run = tmp_path / "run"
        train_ppo(tiny_recipe(), run, progress=False, stop_after_updates=1)
        torch.save({"update": Boom()}, run / "resume.pt")
        refused(["train", "maze", "--out", run, "--steps", 4096, "--world-size", 7,
                 "--precision", "float32", "--resume", "--quiet"], "pickled Python objects")  # fmt: skip
    elif where == "agent.pt":
        torch.save({"model_state_dict": Boom()}, tmp_path / "agent.pt")
        with pytest.raises(ValueError, match="pickled Python objects"):
            load_agent(tmp_path / "agent.pt")
    elif where == "chunk.npy":
        store = write_store(tmp_path / "s", {"x": np.zeros((4, 2), dtype=np.float32)})
        with open(store.path / "x" / "000000.npy", "wb") as f:
            np.save(f, np.array([Boom()], dtype=object), allow_pickle=True)
        with pytest.raises(ValueError, match="cannot be read"):
            Store(store.path)["x"][:]
    else:
        folder = tmp_path / "sae"
        folder.mkdir()
        write_json(folder / "cfg.json", {"d_in": 4, "d_sae": 8})
        (folder / "sae_weights.safetensors").write_bytes(pickle.dumps(Boom()))
        r = runner.invoke(app, ["sae", "eval", str(maze_run), str(folder)])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert not (tmp_path / "PWNED").exists()


def test_sae_penalties_are_refused_below_zero_through_the_api():
    from policylens.agents.sae import SAEConfig

    for name in ("l1_coeff", "l0_coeff", "lr"):
        with pytest.raises(ValueError, match=f"SAEConfig.{name} must be a finite number >= 0"):
            SAEConfig(4, 8, arch="relu", **{name: -0.5})
    with pytest.raises(ValueError, match="l1_coeff"):
        SAEConfig(4, 8, arch="relu", l1_coeff=float("nan"))


def test_a_hook_returning_the_wrong_shape_is_named():
    from policylens.agents import build_agent

    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=0)
    obs = np.zeros((2, 3, 9, 9), dtype=np.uint8)
    with pytest.raises(
        ValueError, match=r"The hook on res1\.hook_out returned samples of shape \(5,\)"
    ):
        agent.run_with_hooks(obs, [("res1.hook_out", lambda act, hook: act.flatten(1)[:, :5])])
    logits, _ = agent.run_with_hooks(obs, [("res1.hook_out", lambda act, hook: act * 0)])
    assert logits.shape == (2, 4)  # a same-shape replacement still works


def test_an_unknown_trace_label_is_named_not_returned_empty():
    from policylens import rollout
    from policylens.agents import build_agent

    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=0)
    keep = rollout.EpisodeOptions(labels=rollout.Labels(trace=["mouse_poss"]))
    with pytest.raises(ValueError, match=r"Unknown label .*'mouse_poss'. Did you mean 'mouse_pos'"):
        rollout.run_episodes(agent, 2, "policylens/Maze-v0", options=keep)
    keep = rollout.EpisodeOptions(labels=rollout.Labels(trace=["mouse_pos"]))
    (ep, _) = rollout.run_episodes(agent, 2, "policylens/Maze-v0", options=keep)
    assert len(ep.trace["mouse_pos"]) == ep.length + 1  # every observation, first and last


def test_probe_takes_a_zoo_agent_and_names_an_unknown_hook(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYLENS_HOME", str(tmp_path))
    r = runner.invoke(
        app, ["probe", "zoo:maze-corner", "--hook", "res1.hook_ou", "--episodes", "5"]
    )
    assert r.exit_code == 2 and "Unknown hook 'res1.hook_ou'. Did you mean 'res1.hook_out'" in (
        r.output
    )


def test_observations_scaled_beyond_the_world_are_refused(maze_run):
    """A trained agent knows its world's largest observation (the maze: 1); float planes x255
    are refused in one sentence, the world's own (uint8 or float) pass."""
    agent = load_agent(maze_run)
    assert agent.obs_high == 1.0 and load_agent(maze_run).config["obs_high"] == 1.0
    obs = np.zeros((2, *agent.obs_shape), dtype=np.uint8)
    obs[:, 0, 0, 0] = 1
    agent(obs), agent(obs.astype(np.float32))  # as the world gives them
    with pytest.raises(ValueError, match=r"reach 255, but this agent's world never exceeds 1"):
        agent(obs.astype(np.float32) * 255)
