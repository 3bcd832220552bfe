"""Run folders: ``config.json``, ``checkpoints/step_<N>.safetensors``, ``metrics.csv``, ``analysis/``.

A run folder is self-describing: ``config.json`` holds the trainer's kind and hyperparameters and
the agent's recipe, so any checkpoint can be rebuilt into a HookedAgent without the code that
trained it. Every write is atomic; ``resume.pt`` holds the trainer state of the latest update.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from policylens.agents.agent import WEIGHTS_FILE
from policylens.agents.load import run_checkpoints
from policylens.agents.pretrained import (
    RESULTS_FILE,
    check_files,
    read_config,
    source_folder,
    source_name,
)
from policylens.artifacts import (
    FolderLock,
    atomic_path,
    locked_by,
    read_json,
    read_torch_weights,
    write_bytes,
    write_json,
    write_text,
)

DONE = "DONE"
"""The done marker's file name: its presence says training finished."""

RESUME_SECONDS = 120.0
"""Trainers save their resume state at least this often, so a kill loses at most this much work."""


class Run:
    """One training run's folder."""

    def __init__(self, path: str | os.PathLike[str]):
        """Open the run at ``path``; ``zoo:NAME`` and ``hf://org/name`` open the pretrained agent's
        run as laid out in the local cache (:func:`run_folder`)."""
        self.path = run_folder(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(
                f"{self.path} is not a policylens run (no config.json); train one with `policylens train`"
            )
        self.config: dict[str, Any] = read_json(self.path / "config.json", expect=dict)
        for key in ("trainer", "agent"):
            if key in self.config and not isinstance(self.config[key], dict):
                raise ValueError(
                    f"{self.path / 'config.json'}: its {key!r} entry is not a JSON object; the "
                    "run's config is damaged"
                )
        self.lock: FolderLock | None = None

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any], restart: bool = False) -> Run:
        """Start a new run folder, locked for writing until ``release()``.

        Refuses to overwrite a run that already has checkpoints, unless ``restart`` and the run
        there is an unfinished one of the same trainer config (its checkpoints are then removed,
        one by one: nothing else in the folder is touched).
        """
        path = Path(path)
        lock = FolderLock(path, "--out run folder")
        try:
            old = sorted((path / "checkpoints").glob("step_*.safetensors"))
            if (path / "config.json").exists() and not old:
                # a run killed before its first checkpoint is started again; any other
                # config.json (an SAE's, an agent's) is not the trainer's to replace
                saved = read_json(path / "config.json")
                if not (isinstance(saved, dict) and isinstance(saved.get("trainer"), dict)):
                    raise ValueError(
                        f"{path} holds a config.json that is not a run's (an SAE's, an agent's?); "
                        "choose another --out"
                    )
            if (path / "config.json").exists() and old:
                saved = read_json(path / "config.json", expect=dict)
                same = outcome_settings(saved.get("trainer")) == outcome_settings(config["trainer"])
                if not (restart and same and not (path / DONE).exists()):
                    raise ValueError(
                        f"{path} already holds a run; pass --resume to continue it or choose "
                        "another --out"
                    )
                for file in old:
                    file.unlink()
                (path / "resume.pt").unlink(missing_ok=True)
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_json(path / "config.json", config)
            write_text(path / "metrics.csv", "")
        except BaseException:
            lock.release()
            raise
        run = cls(path)
        run.lock = lock
        return run

    @classmethod
    def start(cls, path: str | Path, config: dict[str, Any], resume: bool) -> tuple[Run, Any]:
        """The run folder a trainer writes into (locked until ``release()``), and the trainer
        state to continue from.

        Without ``resume`` (or with nothing at ``path`` yet) a new run is created. With it, the
        folder must hold a run of the same trainer config; its ``resume.pt`` state is returned
        (None when the run was killed before the first save, and then its metrics restart).
        """
        path = Path(path)
        if not (resume and (path / "config.json").exists()):
            return cls.create(path, config), None
        lock = FolderLock(path, "--out run folder")
        try:
            run = cls(path)
            saved = run.config.get("trainer")
            if outcome_settings(saved) != outcome_settings(config["trainer"]):
                differ = _differences(saved, config["trainer"])
                raise ValueError(
                    f"{path} was trained with another config (it differs in {differ}); resume "
                    "with the same options"
                )
            steps = config["trainer"].get("total_steps")
            if isinstance(saved, dict) and saved.get("total_steps") != steps:
                # the same training, its step count given unrounded (an older run): record the
                # steps it will train; the run-only settings stay those it began with
                run.config["trainer"] = {**saved, "total_steps": steps}
                write_json(path / "config.json", run.config)
            state = run.load_resume_state()
            if state is None:
                run.truncate_metrics(0)
        except BaseException:
            lock.release()
            raise
        run.lock = lock
        return run, state

    def release(self) -> None:
        """End this process's writing: other writers may take the folder."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def unfinished_note(self) -> str | None:
        """A sentence saying the run is unfinished (and who is writing it), or None when done."""
        if self.done:
            return None
        rows = self.metrics()
        steps = int(rows[-1]["step"]) if rows and "step" in rows[-1] else 0
        total = self.config.get("trainer", {}).get("total_steps")
        of = f" of {total}" if total else ""
        writer = self.writer
        state = f"still training ({writer})" if writer else "stopped before it finished"
        return (
            f"{self.path} is unfinished: {state}, {steps}{of} steps trained; figures are for "
            "its latest checkpoint"
        )

    @property
    def writer(self) -> str | None:
        """The process writing this run now (in words), or None."""
        return locked_by(self.path)

    @property
    def done(self) -> bool:
        """Training finished (the trainer wrote the done marker)."""
        return (self.path / DONE).exists()

    def mark_done(self, step: int) -> None:
        """Write the done marker: the run reached its planned ``step`` count."""
        write_json(self.path / DONE, {"step": step})

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def analysis_dir(self) -> Path:
        d = self.path / "analysis"
        d.mkdir(exist_ok=True)
        return d

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, file) for every saved checkpoint, oldest first."""
        return run_checkpoints(self.path)

    def checkpoint(self, step: int | None = None) -> tuple[int, Path]:
        """The checkpoint at ``step`` (latest when None), with a clear error if there is none."""
        found = self.checkpoints()
        if not found:
            raise FileNotFoundError(f"run {self.path} has no checkpoints yet; train it first")
        if step is None:
            return found[-1]
        for s, f in found:
            if s == step:
                return s, f
        steps = ", ".join(str(s) for s, _ in found)
        raise ValueError(f"run {self.path} has no checkpoint at step {step}; it has {steps}")

    def load_agent(self, step: int | None = None):
        """The agent at a checkpoint (latest by default) as a HookedAgent."""
        from policylens.agents import load_agent

        if not isinstance(self.config.get("agent"), dict):
            raise ValueError(
                f"{self.path / 'config.json'} has no 'agent' entry, so its checkpoints cannot be "
                "rebuilt; the run's config is damaged or not one policylens wrote"
            )
        _, file = self.checkpoint(step)
        return load_agent(file, config=self.config["agent"])

    def save_checkpoint(self, agent, step: int) -> Path:
        file = self.path / "checkpoints" / f"step_{step}.safetensors"
        agent.save_weights(file)
        return file

    # -- trainer state ----------------------------------------------------------------------------
    def save_resume_state(self, state: dict[str, Any]) -> None:
        with atomic_path(self.path / "resume.pt") as tmp:
            torch.save(state, tmp)

    def load_resume_state(self, keys: Iterable[str] = ()) -> dict[str, Any] | None:
        """The trainer state in ``resume.pt`` (None when there is none), refused in one sentence
        when it is damaged, pickled, or not a trainer state with ``keys``."""
        file = self.path / "resume.pt"
        if not file.exists():
            return None
        try:
            state = read_torch_weights(file, file)
        except ValueError as e:
            raise ValueError(f"{e.args[0].rstrip('.')}; delete it to restart the run") from e
        missing = list(keys) if not isinstance(state, dict) else [k for k in keys if k not in state]
        if missing or not isinstance(state, dict):
            raise ValueError(
                f"{file} is not this trainer's saved state (no {', '.join(missing)}); it comes "
                "from another trainer or version; delete it to restart the run"
            )
        return state

    def check_resume_fits(
        self, state: dict[str, Any], module: Any, keys: Iterable[str] = (), what: str = "agent"
    ) -> None:
        """Refuse, in one sentence, a ``resume.pt`` that is not this trainer's state (no ``keys``)
        or whose ``state[what]`` weights do not fit ``module`` (a state copied from a run of
        another world or network)."""
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(
                f"{self.path / 'resume.pt'} is not this trainer's saved state (no "
                f"{', '.join(missing)}); it comes from another trainer or version; delete it to "
                "restart the run"
            )
        own = module.state_dict()
        saved = state.get(what)
        if not isinstance(saved, dict):
            raise ValueError(
                f"{self.path / 'resume.pt'} holds no {what} weights; delete it to restart the run"
            )
        wrong = [
            k
            for k in own
            if k not in saved
            or not hasattr(saved[k], "shape")
            or tuple(saved[k].shape) != tuple(own[k].shape)
        ] + [k for k in saved if k not in own]
        if wrong:
            raise ValueError(
                f"{self.path / 'resume.pt'} belongs to another run: its {what} weights do not fit "
                f"this network ({', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}); "
                "delete it to restart the run, or resume the run it came from"
            )

    # -- metrics ----------------------------------------------------------------------------------
    def metrics(self) -> list[dict[str, float]]:
        """Rows of metrics.csv as dicts of floats (a partial last line from a kill is skipped)."""
        file = self.path / "metrics.csv"
        if not file.exists():
            return []
        text = file.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        rows = []
        reader = csv.reader(_io.StringIO(text))
        header = next(reader, None)
        if header is None:
            return []
        if "step" not in header or len(set(header)) != len(header):
            raise ValueError(
                f"{file} is damaged (its header {','.join(header)[:60]!r} is not the trainer's); "
                "delete the file's bad lines or train the run again"
            )
        for line, cells in enumerate(reader, start=2):
            try:
                if len(cells) != len(header):
                    raise ValueError("wrong number of fields")
                rows.append({k: float(v) for k, v in zip(header, cells, strict=True) if v != ""})
            except ValueError:
                raise ValueError(
                    f"{file} is damaged at line {line} (not {len(header)} numbers); delete the "
                    "bad lines or train the run again"
                ) from None
        return rows

    def append_metrics(self, row: dict[str, float]) -> None:
        file = self.path / "metrics.csv"
        new = not file.exists() or file.stat().st_size == 0
        with open(file, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})
            f.flush()

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only rows up to ``last_step`` (used when resuming from a checkpoint)."""
        rows = [r for r in self.metrics() if r.get("step", 0) <= last_step]
        if not rows:
            write_text(self.path / "metrics.csv", "")
            return
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
        write_text(self.path / "metrics.csv", buf.getvalue())

    def summary(self) -> dict[str, Any]:
        """Key settings and the latest metrics, for `policylens runs`."""
        metrics = self.metrics()
        last = metrics[-1] if metrics else {}
        cfg = self.config.get("trainer", {})
        ckpts = self.checkpoints()
        return {
            "run": str(self.path),
            "kind": self.config.get("kind", "?"),
            "env": cfg.get("env_id", "?"),
            "env_kwargs": cfg.get("env_kwargs", {}),
            "arch": self.config.get("agent", {}).get("arch", "?"),
            "seed": cfg.get("seed"),
            "steps": int(last.get("step", 0)),
            "total_steps": cfg.get("total_steps"),
            "checkpoints": len(ckpts),
            "success": last.get("success"),
            "return": last.get("return"),
            "done": self.done,
            "writer": self.writer,
        }


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


RUN_ONLY_SETTINGS = ("threads", "init_weights")
"""Trainer settings a resumed run may change: how it runs, not what it learns (a resumed run takes
its weights from resume.pt, whatever file a new one would start from)."""


def outcome_settings(trainer: Any) -> Any:
    """A trainer config's settings that decide what it learns; the step count rounded up to
    whole rollouts (PPO) or vector steps (DQN), as the trainers train it."""
    if not isinstance(trainer, dict):
        return trainer
    settings = {k: v for k, v in trainer.items() if k not in RUN_ONLY_SETTINGS}
    unit = _steps_unit(settings)
    if unit and isinstance(settings.get("total_steps"), int):
        settings["total_steps"] = -(-settings["total_steps"] // unit) * unit
    return settings


def _steps_unit(trainer: dict[str, Any]) -> int | None:
    """Environment steps per unit of training: num_envs x num_steps (PPO) or num_envs (DQN)."""
    envs, steps = trainer.get("num_envs"), trainer.get("num_steps", 1)
    if isinstance(envs, int) and isinstance(steps, int) and envs > 0 and steps > 0:
        return envs * steps
    return None


def _differences(saved: Any, new: dict[str, Any]) -> str:
    old, now = outcome_settings(saved), outcome_settings(new)
    if not isinstance(old, dict):
        return "everything: its trainer entry is damaged"
    names = sorted(k for k in {*old, *now} if old.get(k) != now.get(k))
    return ", ".join(names) or "nothing named"


def cache_home() -> Path:
    """Where pretrained agents' run folders are laid out: ``$POLICYLENS_HOME`` or
    ``~/.cache/policylens``."""
    home = os.environ.get("POLICYLENS_HOME")
    return Path(home) if home else Path.home() / ".cache" / "policylens"


def run_folder(source: str | os.PathLike[str]) -> Path:
    """The run folder behind ``source``: the path itself, or for ``zoo:NAME`` and
    ``hf://org/name[@rev]`` a finished run folder laid out once in :func:`cache_home` from the
    pretrained agent (its run config, its weights as the last checkpoint, the files shipped beside
    it at their run paths, the done marker), where analyses then write their results. Laid out again when the agent's sha256 changes."""
    text = str(source)
    folder = source_folder(text)
    if folder is None:
        return Path(source)
    config = read_config(folder)
    check_files(folder, config)
    if not isinstance(config.get("run"), dict):
        raise ValueError(
            f"{text} was saved without its training run (no run entry in config.json); "
            "load it with load_agent instead of as a run."
        )
    home = cache_home() / "zoo" / source_name(text)
    here = home / "config.json"
    pinned = {"source": text, "sha256": config["sha256"]}
    if here.is_file() and read_json(here).get("pretrained") == pinned:
        return home
    steps = int(config.get("provenance", {}).get("steps", config["run"]["trainer"]["total_steps"]))
    for _, old in run_checkpoints(home):
        old.unlink()
    (home / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_bytes(
        home / "checkpoints" / f"step_{steps}.safetensors", (folder / WEIGHTS_FILE).read_bytes()
    )
    for name in config["sha256"]:  # files shipped beside the agent (an SAE), at their run paths
        if name not in (WEIGHTS_FILE, RESULTS_FILE):
            write_bytes(home / name, (folder / name).read_bytes())
    write_json(home / DONE, {"step": steps})
    write_json(here, {**config["run"], "pretrained": pinned})  # last: it marks the layout whole
    return home


def check_resume(out: str | Path, resume: bool) -> None:
    """Refuse ``--resume`` when ``out`` holds no run, so a typo never trains from scratch."""
    out = Path(out)
    if resume and not (out / "config.json").exists():
        raise FileNotFoundError(
            f"--resume: {out} holds no run to continue (no config.json); drop --resume to start one"
        )


def find_runs(root: str | Path, skipped: list[str] | None = None) -> list[Run]:
    """Every run folder under ``root`` (``root`` itself included), sorted by path.

    A run whose config cannot be read is left out; with ``skipped``, a sentence saying why is
    appended to it for each (``policylens runs`` prints them as warnings).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    configs: Iterable[Path] = root.rglob("config.json")
    runs = []
    for c in sorted(configs):
        if (c.parent / "checkpoints").is_dir():
            try:
                runs.append(Run(c.parent))
            except (ValueError, OSError) as e:
                if skipped is not None:
                    skipped.append(f"skipped {c.parent}: {e}")
    return runs


def config_json(obj: Any) -> Any:
    """Round-trip a config through JSON (turns tuples into lists) so saved and live configs compare."""
    return json.loads(json.dumps(obj))


def saved_env_state(envs) -> Any:
    """A vector env's full state for resume.pt, when the world can give one (the maze can).

    With a state, a resumed run ends exactly where an uninterrupted one would; without (Box2D),
    it resumes from the same weights and optimiser with freshly reset episodes. Arrays become
    tensors because resume.pt is read with ``weights_only=True``.
    """
    return _tensors(envs.state_dict()) if hasattr(envs, "state_dict") else None


def env_from_saved(state: Any) -> Any:
    """The inverse of :func:`saved_env_state`'s conversion: tensors back to NumPy arrays."""
    if isinstance(state, torch.Tensor):
        return state.numpy()
    if isinstance(state, dict):
        return {k: env_from_saved(v) for k, v in state.items()}
    if isinstance(state, list):
        return [env_from_saved(v) for v in state]
    return state


def _tensors(obj: Any) -> Any:
    if hasattr(obj, "__array__") and not isinstance(obj, torch.Tensor):
        import numpy as np

        return torch.from_numpy(np.array(obj))
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_tensors(v) for v in obj]
    return obj


class TrainingProgress:
    """A rich progress bar with the live success rate, return and speed (no-op when disabled)."""

    def __init__(self, enabled: bool, label: str, unit: str, total: int, done: int) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
            TextColumn("{task.fields[live]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),  # as tqdm: stdout stays for results (--json)
        )
        self.task = self.progress.add_task("train", total=total, completed=done, live="")
        self.progress.start()

    def update(self, completed: int, row: dict[str, float], extra: str = "") -> None:
        """Show ``completed`` units and the metrics row (episodes, success, return, steps_per_s)."""
        if not self.enabled:
            return
        live = f"{extra}  {row['steps_per_s']:.0f} steps/s".strip()
        if row["episodes"]:
            live = f"success {row['success']:.0%}  return {row['return']:.2f}  " + live
        self.progress.update(self.task, completed=completed, live=live)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
