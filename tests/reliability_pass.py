"""A reliability pass: hundreds of bad inputs, generated from tables, each expected to end in one
clear sentence (exit 1 or 2, no traceback) or to succeed where the input is valid, and never to
change a file that existed before it ran.

Run it: ``.venv/bin/python tests/reliability_pass.py`` (``--quick`` for the subset CI runs
unmarked, ``-v`` to list every case). It prints the cases per category and every failure, and
exits 1 if any case failed. Commands run in-process through typer's CliRunner; any world stepped,
training started, sweep trial submitted, explorer served or demo run while a refusal is expected
counts as a failure ("work started"), so an input accepted by mistake never runs for long.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class WorkStarted(Exception):
    """Raised by the patched worlds and trainers: the command got past its input checks."""


@dataclass
class Case:
    category: str
    name: str
    run: Callable[[], Any]
    """Runs the case; returns (exit_code, output) for a CLI case, raises for an API case."""
    expect: str = "refused"
    """refused (exit 1/2, one sentence, or a ValueError/TypeError), ok, or custom (run checks)."""
    fragment: str | None = None
    """Text the refusal must contain (normalised spaces)."""
    writes: bool = False
    """The case may change the fixtures (it checks its own files)."""


# --------------------------------------------------------------------------------- fixtures
def make_fixtures(root: Path) -> dict[str, Path]:
    """A tiny maze run and hazard run, and damaged copies of them and of their artefacts."""
    import dataclasses

    from policylens.train.ppo import train_ppo
    from policylens.worlds.hazards import HazardsRecipe
    from policylens.worlds.maze import MazeRecipe

    fx = root / "fixtures"
    maze = MazeRecipe(total_steps=512, world_size=7, precision="float32", num_envs=16,
                      num_steps=32).config()  # fmt: skip
    train_ppo(dataclasses.replace(maze, threads=1), fx / "maze", progress=False)
    hazards = HazardsRecipe(num_levels=20, total_steps=512, num_envs=8, num_steps=32,
                            threads=1).config()  # fmt: skip
    hazards.env_kwargs["max_steps"] = 40
    train_ppo(hazards, fx / "hazards", progress=False)
    paths = {"maze": fx / "maze", "hazards": fx / "hazards"}
    (fx / "a_file.txt").write_text("a file, not a folder")
    paths["file"] = fx / "a_file.txt"
    (fx / "empty").mkdir()
    paths["empty"] = fx / "empty"
    paths["missing"] = fx / "no_such_folder"
    ckpt = sorted((fx / "maze" / "checkpoints").glob("*.safetensors"))[-1].read_bytes()
    config = (fx / "maze" / "config.json").read_text()

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'PWNED'}",))

    damaged_ckpt = {
        "ckpt_truncated": ckpt[: len(ckpt) // 2],
        "ckpt_random": np.random.default_rng(0).bytes(4096),
        "ckpt_empty": b"",
        "ckpt_pickle": pickle.dumps({"w": Boom()}),
    }
    damaged_config = {
        "config_list": "[1, 2, 3]",
        "config_text": '{"kind": ',
        "config_empty": "",
        "config_null": "null",
        "config_no_agent": json.dumps({"kind": "ppo", "trainer": json.loads(config)["trainer"]}),
        "config_trainer_list": json.dumps({**json.loads(config), "trainer": [1]}),
        "config_binary": b"\xff\xfe\x00{",
    }
    for name, data in damaged_ckpt.items():
        folder = fx / name
        shutil.copytree(fx / "maze", folder)
        for f in (folder / "checkpoints").glob("*.safetensors"):
            f.write_bytes(data)
    for name, text in damaged_config.items():
        folder = fx / name
        shutil.copytree(fx / "maze", folder)
        data = text if isinstance(text, bytes) else text.encode()
        (folder / "config.json").write_bytes(data)
    paths.update({n: fx / n for n in [*damaged_ckpt, *damaged_config]})
    # an SAE folder and damaged copies
    from policylens.agents.sae import SAEConfig, build_sae, save_sae

    sae = fx / "sae"
    save_sae(build_sae(SAEConfig(d_in=4, d_sae=8, k=2)), sae)
    paths["sae"] = sae
    for name, change in {
        "sae_config_list": ("config.json", b"[]"),
        "sae_config_text": ("config.json", b"{"),
        "sae_weights_pickle": ("sae.safetensors", pickle.dumps(Boom())),
        "sae_weights_truncated": ("sae.safetensors", (sae / "sae.safetensors").read_bytes()[:40]),
    }.items():
        shutil.copytree(sae, fx / name)
        (fx / name / change[0]).write_bytes(change[1])
        paths[name] = fx / name
    failures = fx / "failures_list.json"
    failures.write_text("[]")
    paths["failures_list"] = failures
    metrics = fx / "metrics_damaged"
    shutil.copytree(fx / "maze", metrics)
    (metrics / "metrics.csv").write_text("step,return\n1,banana\n")
    paths["metrics_damaged"] = metrics
    return paths


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".policylens.lock"
    }


@contextlib.contextmanager
def no_work() -> Iterator[None]:
    """Every world step, training, trial, explorer and demo raises :class:`WorkStarted`."""
    from policylens.demo import run_demo  # noqa: F401  (imported so it can be patched)
    from policylens.envs import batched, chess
    from policylens.sweeps import runner

    def work(*_a: Any, **_k: Any) -> Any:
        raise WorkStarted

    targets = [
        (batched.BatchedEnv, "step"),
        (batched.BatchedVecEnv, "step"), (chess.RookEndgameEnv, "step"),
        (runner.LocalPool, "submit"),
        (sys.modules["policylens.demo"], "run_demo"),
    ]  # fmt: skip
    import policylens.explorer as explorer

    targets.append((explorer, "serve"))
    with contextlib.suppress(ImportError):
        from gymnasium.envs.box2d.lunar_lander import LunarLander

        targets.append((LunarLander, "step"))
    saved = [(obj, name, getattr(obj, name)) for obj, name in targets]
    for obj, name, _ in saved:
        setattr(obj, name, work)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


# --------------------------------------------------------------------------------- CLI tables
def cli(args: list[Any]) -> Callable[[], CliResult]:
    def invoke() -> tuple[int, str]:
        from typer.testing import CliRunner

        from policylens.cli import app

        result = CliRunner().invoke(app, [str(a) for a in args])
        if isinstance(result.exception, WorkStarted):
            raise WorkStarted
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.output)

    return invoke


@dataclass
class CliResult:
    code: int
    output: str


def command_params() -> dict[str, list[Any]]:
    """Every command path ('sae train') and its click parameters."""
    import typer

    from policylens.cli import app

    found: dict[str, list[Any]] = {}

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = list(cmd.params)

    walk(typer.main.get_command(app), [])
    return found


def base_args(command: str, params: list[Any], fx: dict[str, Path], scratch: Path) -> list[str]:
    """Arguments that satisfy a command's required parameters (valid paths where asked)."""
    world = {"failures": "hazards", "hazards-report": "hazards", "features": "hazards",
             "dissect": "hazards", "hallucinations": "hazards", "edit": "hazards",
             "rl-vision-report": "hazards", "attribute": "hazards"}.get(command, "maze")  # fmt: skip
    args: list[str] = []
    for p in params:
        if not p.required:
            continue
        value = {
            "hook": "hook_fc", "name": "maze-corner" if command == "zoo info" else "x",
            "train_command": "policylens train maze", "feature": "0", "sae_dir": str(fx["sae"]),
        }.get(p.name)  # fmt: skip
        if value is None:
            value = str(scratch / f"new_{p.name}") if p.name in ("out",) else str(fx[world])
            if command == "zoo export" and p.name == "out":
                value = str(scratch / "zoo_out")
        if p.param_type_name == "argument":
            args.append(value)
        else:
            args += [p.opts[0], value]
    return args


def annotation(param: Any) -> Any:
    """The Python type a typer parameter takes (the item type of a repeatable option)."""
    import typing

    kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if typing.get_origin(kind) is list:
        kind = typing.get_args(kind)[0]
    return kind


BAD_INTS = ["banana", "1.5", str(10**30), ""]
BAD_FLOATS = ["nan", "inf", "-inf", "banana"]


def number_cases(fx: dict[str, Path], scratch: Path, quick: bool) -> list[Case]:
    """Every numeric option of every command with non-numeric, out-of-range, NaN, infinite and
    huge values: refused naming the option, before any work."""
    cases = []
    for command, params in command_params().items():
        base = base_args(command, params, fx, scratch)
        for p in params:
            kind = annotation(p)
            if p.param_type_name != "option" or kind not in (int, float):
                continue
            flag = p.opts[0]
            values = list(BAD_INTS if kind is int else BAD_FLOATS)
            if getattr(p, "min", None) is not None:
                values.append(str(p.min - 1))
            if getattr(p, "max", None) is not None:
                values.append(str(p.max + 1) if kind is int else str(p.max * 10 + 1))
            if quick:
                values = values[:1] + values[-1:]
            for v in values:
                cases.append(Case("numbers", f"{command} {flag} {v!r}",
                                  cli([*command.split(), *base, flag, v]), fragment=flag))  # fmt: skip
    return cases


RUN_COMMANDS = {
    "eval": ["--episodes", "1"], "behaviour": ["--episodes", "1", "--n-mazes", "20"],
    "steer": ["--n-mazes", "100"], "report": [], "table": [], "collect": ["--steps", "10"],
    "probe": [], "chess-eval": ["--episodes", "1"], "failures": ["--levels", "1"],
    "hazards-report": ["--levels", "1"], "features": [], "dissect": ["--levels", "1"],
    "hallucinations": [], "sae train": ["--hook", "hook_fc", "--steps", "10"],
    "sae eval": ["SAE", "--episodes", "1"], "sae dashboard": ["SAE"], "similarity": [],
    "attribute": [], "edit": ["--feature", "0", "--out", "NEW"], "rl-vision-report": [],
    "zoo export": ["NEW", "--name", "x", "--command", "x"], "updates analyze": [],
    "sae dead-latents": ["--hook", "hook_fc"],
}  # fmt: skip
"""Commands that read a run (first argument) and the rest of a cheap invocation."""

BAD_RUNS = ["missing", "file", "empty", "ckpt_truncated", "ckpt_random", "ckpt_empty",
            "ckpt_pickle", "config_list", "config_text", "config_empty", "config_null",
            "config_no_agent", "config_trainer_list", "config_binary"]  # fmt: skip


def path_cases(fx: dict[str, Path], scratch: Path, quick: bool) -> list[Case]:
    """Every command that reads a run, given a missing path, a file, an empty folder, and runs
    whose checkpoints or config.json are truncated, random, empty, pickled or the wrong JSON."""
    cases = []
    known = command_params()
    for command, rest in RUN_COMMANDS.items():
        if command not in known:
            continue
        bad_runs = BAD_RUNS[::4] if quick else BAD_RUNS
        for bad in bad_runs:
            if command == "updates analyze" and bad.startswith("ckpt"):
                continue  # reads experiments, not checkpoints
            extra = [str(fx["sae"]) if a == "SAE" else str(scratch / f"new-{command}-{bad}")
                     if a == "NEW" else a for a in rest]  # fmt: skip
            args = [*command.split(), str(fx[bad]), *extra]
            cases.append(Case("paths", f"{command} <{bad}>", cli(args)))
    # artefacts other than runs
    for sae in ["sae_config_list", "sae_config_text", "sae_weights_pickle",
                "sae_weights_truncated", "missing", "file", "empty"]:  # fmt: skip
        cases.append(Case("artefacts", f"sae eval <{sae}>",
                          cli(["sae", "eval", fx["maze"], fx[sae], "--episodes", 1])))  # fmt: skip
        cases.append(Case("artefacts", f"sae dashboard <{sae}>",
                          cli(["sae", "dashboard", fx["maze"], fx[sae]])))  # fmt: skip
    for bad in ["failures_list", "missing", "file", "empty"]:
        cases.append(Case("artefacts", f"hazards-report --failures <{bad}>",
                          cli(["hazards-report", fx["hazards"], "--failures", fx[bad]])))  # fmt: skip
    cases.append(Case("artefacts", "runs <damaged metrics.csv> lists the others", cli(
        ["runs", fx["maze"].parent, "--json"]), expect="ok"))  # fmt: skip
    for bad in ["config_list", "config_text", "metrics_damaged", "config_trainer_list"]:
        cases.append(Case("artefacts", f"runs <{bad}> alone", cli(["runs", fx[bad]]), "ok"))
    for root in ["missing", "file"]:
        cases.append(Case("paths", f"runs <{root}>", cli(["runs", fx[root]])))
        cases.append(Case("paths", f"updates list <{root}>", cli(["updates", "list", fx[root]])))
    for spec in ["missing", "file", "config_list"]:
        target = fx[spec] / "config.json" if spec == "config_list" else fx[spec]
        cases.append(Case("paths", f"sweep <spec {spec}>",
                          cli(["sweep", target, "--out", scratch / f"sw-{spec}"])))  # fmt: skip
    for name in ["nosuch", "../../etc", ""]:
        cases.append(Case("paths", f"zoo info {name!r}", cli(["zoo", "info", name])))
    return cases


OUTPUTS = {
    "gallery": (["gallery", "--n", "1"], "file"),
    "report": (["report", "MAZE"], "file"),
    "hazards-report": (["hazards-report", "HAZARDS", "--levels", "1"], "file"),
    "rl-vision-report": (["rl-vision-report", "HAZARDS"], "file"),
    "sae dead-latents": (["sae", "dead-latents", "MAZE", "--hook", "hook_fc"], "file"),
    "updates compare": (["updates", "compare", "MAZE"], "file"),
    "sae train": (["sae", "train", "MAZE", "--hook", "hook_fc", "--steps", "10"], "folder"),
    "sae dashboard": (["sae", "dashboard", "MAZE", "SAE"], "folder"),
    "collect": (["collect", "MAZE", "--steps", "10"], "folder"),
    "train maze": (["train", "maze", "--world-size", "7"], "folder"),
    "train hazards": (["train", "hazards"], "folder"),
    "train chess": (["train", "chess"], "folder"),
    "sweep": (["sweep", "--steps", "4096"], "folder"),
    "updates run": (["updates", "run"], "folder"),
    "edit": (["edit", "HAZARDS", "--feature", "0"], "folder"),
    "demo": (["demo", "--quick"], "folder"),
}
"""Commands with an output flag (--out), and whether it names a file or a folder."""


def overwrite_cases(fx: dict[str, Path], scratch: Path, quick: bool) -> list[Case]:
    """Every output flag pointed at a run's config.json, metrics.csv, a checkpoint, resume.pt, a
    run folder, an SAE and an unrelated file, with and without --overwrite: refused (a run's files
    always), the fixtures unchanged."""
    cases = []
    known = command_params()
    ckpt = sorted((fx["maze"] / "checkpoints").glob("*.safetensors"))[0]
    targets = {
        "run config.json": fx["maze"] / "config.json",
        "run metrics.csv": fx["maze"] / "metrics.csv",
        "run resume.pt": fx["maze"] / "resume.pt",
        "run checkpoint": ckpt,
        "run folder": fx["maze"],
        "existing SAE": fx["sae"],
        "unrelated file": fx["file"],
    }
    for command, (args, kind) in OUTPUTS.items():
        if command not in known:
            continue
        names = {p.name for p in known[command]}
        fill = {"MAZE": str(fx["maze"]), "HAZARDS": str(fx["hazards"]), "SAE": str(fx["sae"])}
        base = [fill.get(a, a) for a in args]
        for target_name, target in targets.items():
            if quick and target_name not in ("run config.json", "existing SAE"):
                continue
            for overwrite in [False, True] if "overwrite" in names else [False]:
                flags = ["--overwrite"] if overwrite else []
                if overwrite and target_name in ("unrelated file",) and kind == "file":
                    continue  # replacing it is what was asked (gallery checks it below)
                if overwrite and target_name == "existing SAE" and command == "sae train":
                    continue  # replacing an SAE with --overwrite is allowed
                if command in ("sae dashboard", "demo") and target_name == "existing SAE":
                    continue  # its folder holds no dashboard: writing one there is fine
                name = f"{command} --out <{target_name}>{' --overwrite' if overwrite else ''}"
                out = ["--out", str(target)] if command != "zoo export" else [str(target)]
                cases.append(Case("overwrite", name, cli([*base, *out, *flags])))
    other = scratch / "gallery.png"

    def gallery_overwrite() -> None:
        other.write_text("mine")
        first = cli(["gallery", "--n", "1", "--out", other])()
        assert first.code == 2 and other.read_text() == "mine", first.output
        second = cli(["gallery", "--n", "1", "--out", other, "--overwrite"])()
        assert second.code == 0 and other.read_bytes().startswith(b"\x89PNG"), second.output

    cases.append(Case("overwrite", "gallery --overwrite replaces only when asked",
                      gallery_overwrite, expect="custom", writes=True))  # fmt: skip

    def save_pretrained_run() -> None:
        from policylens import load_agent

        load_agent(fx["maze"]).save_pretrained(fx["maze"])

    cases.append(Case("overwrite", "save_pretrained(run folder)", save_pretrained_run,
                      fragment="already exists"))  # fmt: skip
    return cases


def api_cases(fx: dict[str, Path]) -> list[Case]:
    """The Python API given wrong types and values: ValueError/TypeError in one sentence."""
    from policylens import load_agent
    from policylens.artifacts import check_output, read_json
    from policylens.runs import Run
    from policylens.train.dqn import DQNConfig
    from policylens.train.ppo import PPOConfig

    cases = []
    for source in [123, None, 1.5, ["a"], {"a": 1}, b"bytes", fx["missing"], fx["file"],
                   fx["empty"], fx["ckpt_pickle"], fx["config_list"], fx["ckpt_random"]]:  # fmt: skip
        cases.append(Case("api", f"load_agent({source!r:.40})", lambda s=source: load_agent(s)))
    for source in [fx["missing"], fx["file"], fx["config_list"], fx["config_text"],
                   fx["config_null"], fx["config_trainer_list"]]:  # fmt: skip
        cases.append(Case("api", f"Run({source.name})", lambda s=source: Run(s)))
    bad_config = {
        "total_steps": ["1000", 1.5, None, -1, 0, 10**23, True],
        "num_envs": [0, -3, 2.0, "8", 10**9],
        "num_steps": [0, 10**9, None],
        "learning_rate": [float("nan"), float("inf"), -1.0, 0.0, "0.1"],
        "gamma": [1.5, -0.1, float("nan")],
        "seed": [-1, "0", 1.5],
        "update_epochs": [0, 10**9],
        "checkpoints": [-1, 10**9],
        "precision": ["float64", 3],
    }
    for field_name, values in bad_config.items():
        for v in values:
            cases.append(Case("api", f"PPOConfig({field_name}={v!r})", lambda f=field_name, v=v:
                              PPOConfig(env_id="policylens/Maze-v0", **{f: v})))  # fmt: skip
    bad_dqn = {
        "total_steps": [0, 10**23, "5"], "num_envs": [0, 10**9], "buffer_size": [10**12, 1.5],
        "batch_size": [0, 10**12], "learning_rate": [float("nan"), -1.0], "tau": [0.0, 2.0],
        "n_step": [0, 10**9], "exploration_fraction": [1.5, float("nan")],
    }  # fmt: skip
    for field_name, values in bad_dqn.items():
        for v in values:
            cases.append(Case("api", f"DQNConfig({field_name}={v!r})", lambda f=field_name, v=v:
                              DQNConfig(env_id="policylens/Maze-v0", **{f: v})))  # fmt: skip
    agent = load_agent(fx["maze"])
    obs = np.zeros(agent.obs_shape, dtype=np.uint8)
    for name, value in {
        "text": "an observation", "None": None, "dict": {"a": 1},
        "NaN": np.full(agent.obs_shape, np.nan, dtype=np.float32),
        "inf": np.full(agent.obs_shape, np.inf, dtype=np.float32),
        "wrong shape": np.zeros((2, 3, 5, 5), dtype=np.uint8),
        "strings": np.full(agent.obs_shape, "x"), "complex": obs.astype(np.complex64),
        "empty": np.zeros((0,)),
    }.items():  # fmt: skip
        cases.append(Case("api", f"agent(<{name}>)", lambda v=value: agent(v)))
    cases.append(Case("api", "agent(<valid uint8>)", lambda: agent(obs), expect="ok"))
    for kwargs in [{"device": "banana"}, {"dtype": "int8"}, {"dtype": 3}, {"device": 7}]:
        cases.append(Case("api", f"load_agent(run, {kwargs})",
                          lambda k=kwargs: load_agent(fx["maze"], **k)))  # fmt: skip
    cases.append(Case("api", "check_output(run config.json)",
                      lambda: check_output(fx["maze"] / "config.json", overwrite=True)))  # fmt: skip
    cases.append(Case("api", "read_json(list, expect=dict)",
                      lambda: read_json(fx["config_list"] / "config.json", expect=dict)))  # fmt: skip
    cases.append(Case("api", "Run(maze).load_agent(step=7)",
                      lambda: Run(fx["maze"]).load_agent(step=7)))  # fmt: skip
    return cases


def concurrency_cases(fx: dict[str, Path], scratch: Path) -> list[Case]:
    """A folder held by another writer: every writer into it refused, naming the holder."""
    from policylens.artifacts import FolderLock

    cases = []

    def held(args: list[Any], folder: Path) -> Callable[[], CliResult]:
        def go() -> tuple[int, str]:
            folder.mkdir(parents=True, exist_ok=True)
            with FolderLock(folder):
                return cli(args)()  # type: ignore[return-value]

        return go

    for name, args, folder in [
        ("train maze --resume into a held run", ["train", "maze", "--out", fx["maze"],
         "--world-size", 7, "--steps", 4096, "--resume"], fx["maze"]),
        ("sae train into a held SAE folder", ["sae", "train", fx["maze"], "--hook", "hook_fc",
         "--steps", 10, "--out", scratch / "held_sae"], scratch / "held_sae"),
        ("collect into a held store", ["collect", fx["maze"], "--steps", 10, "--out",
         scratch / "held_store"], scratch / "held_store"),
        ("sweep into a held folder", ["sweep", "--out", scratch / "held_sweep", "--steps",
         4096], scratch / "held_sweep"),
        ("train hazards into a held folder", ["train", "hazards", "--out",
         scratch / "held_h"], scratch / "held_h"),
    ]:  # fmt: skip
        cases.append(Case("concurrency", name, held(args, folder), fragment="being written"))
    return cases


POLICYLENS = [sys.executable, "-c", "from policylens.cli import main; main()"]


def kill_cases(scratch: Path) -> list[Case]:
    """kill -9 of a training, then --resume to the end; kill -9 of a sweep leaves no worker."""

    def kill_and_resume() -> None:
        from policylens.runs import Run

        out = scratch / "killed"
        code = (
            "import dataclasses, sys\n"
            "from policylens.train.ppo import train_ppo\n"
            "from policylens.worlds.maze import MazeRecipe\n"
            "c = MazeRecipe(total_steps=512 * 40, world_size=7, precision='float32', "
            "num_envs=16, num_steps=32).config()\n"
            "c = dataclasses.replace(c, threads=1, resume_every=1)\n"
            f"train_ppo(c, {str(out)!r}, resume=True, progress=False)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code])
        deadline = time.time() + 120
        while not (out / "resume.pt").exists():
            assert time.time() < deadline and proc.poll() is None, "the training did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not Run(out).done
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        run = Run(out)
        assert run.done and run.metrics()[-1]["step"] == 512 * 40

    def sweep_workers_die() -> None:
        code = (
            "import os, time\n"
            "from policylens.sweeps.runner import LocalPool\n"
            "with LocalPool(1, 1) as pool:\n"
            "    print(pool.pool.submit(os.getpid).result(), flush=True)\n"
            "    pool.pool.submit(time.sleep, 600)\n"
            "    time.sleep(600)\n"
        )
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert parent.stdout is not None
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
        raise AssertionError("a sweep worker outlived its killed sweep")

    return [
        Case("kill", "kill -9 a training, resume it to the end", kill_and_resume, "custom", writes=True),
        Case("kill", "kill -9 a sweep: its workers exit", sweep_workers_die, "custom", writes=True),
    ]  # fmt: skip


# --------------------------------------------------------------------------------- running
def check(case: Case, fixtures: Path) -> str | None:
    """Run one case; None if it behaved, else what went wrong."""
    before = None if case.writes else digests(fixtures)
    try:
        with no_work() if case.expect == "refused" else contextlib.nullcontext():
            outcome = case.run()
    except WorkStarted:
        return "accepted: it started work instead of refusing"
    except (ValueError, TypeError, FileNotFoundError) as e:
        if case.expect != "refused":
            return f"raised {type(e).__name__}: {e}"
        message = str(e)
        if not message or "\n" in message.strip():
            return f"{type(e).__name__} without one sentence: {message!r}"
        if case.fragment and case.fragment not in message:
            return f"message lacks {case.fragment!r}: {message}"
        outcome = None
    except AssertionError as e:
        return f"check failed: {e}"
    except Exception as e:
        return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
    else:
        if case.expect == "refused" and not isinstance(outcome, CliResult):
            return f"accepted: returned {type(outcome).__name__}"
    if isinstance(outcome, CliResult):
        code, output = outcome.code, outcome.output
        text = " ".join(output.replace("│", " ").split())
        if "Traceback" in output or "bug in policylens" in output:
            return f"traceback (exit {code}): {text[-400:]}"
        if case.expect == "ok" and code != 0:
            return f"exit {code}: {text[-300:]}"
        if case.expect == "refused":
            if code not in (1, 2):
                return f"accepted: exit {code}: {text[-200:]}"
            errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
            if len(errors) > 1:
                return f"more than one error line: {errors}"
            if case.fragment and case.fragment not in text:
                return f"message lacks {case.fragment!r}: {text[-300:]}"
    if before is not None:
        after = digests(fixtures)
        changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
        if changed:
            return f"changed existing files: {changed[:5]}"
    return None


def all_cases(fx: dict[str, Path], scratch: Path, quick: bool) -> list[Case]:
    cases = [
        *number_cases(fx, scratch, quick),
        *path_cases(fx, scratch, quick),
        *overwrite_cases(fx, scratch, quick),
        *api_cases(fx),
        *concurrency_cases(fx, scratch),
    ]
    if not quick:
        cases += kill_cases(scratch)
    return cases


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick, verbose = "--quick" in argv, "-v" in argv
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="policylens-reliability-") as tmp:
        root = Path(tmp)
        os.environ["POLICYLENS_HOME"] = str(root / "home")
        start = time.perf_counter()
        fx = make_fixtures(root)
        scratch = root / "scratch"
        scratch.mkdir()
        cases = all_cases(fx, scratch, quick)
        counts: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        failures = []
        cwd = os.getcwd()
        os.chdir(scratch)  # a default output (gallery's PNG) lands in the scratch folder
        try:
            for case in cases:
                problem = check(case, root / "fixtures")
                counts[case.category] += 1
                if problem is not None:
                    failed[case.category] += 1
                    failures.append(f"[{case.category}] {case.name}: {problem}")
                if verbose:
                    print(f"{'FAIL' if problem else 'ok  '} [{case.category}] {case.name}")
        finally:
            os.chdir(cwd)
        pwned = (root / "PWNED").exists()
    for line in failures:
        print("FAIL", line)
    if pwned:
        print("FAIL a pickle planted as weights was unpickled (it ran code)")
    total = sum(counts.values())
    print(f"reliability pass: {total} cases in {time.perf_counter() - start:.0f} s")
    for category in counts:
        print(f"  {category:12s} {counts[category]:4d} cases, {failed[category]} failed")
    bad = len(failures) + int(pwned)
    print("all cases behaved" if not bad else f"{bad} cases failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
