"""Zoo entries: a trained run exported as a pretrained agent with its provenance, its headline
results measured by the shipped code, and a model card; and the cards read back.

An entry is the Hugging Face layout :meth:`~policylens.agents.agent.HookedAgent.save_pretrained`
writes (``model.safetensors``, ``config.json`` with the sha256 of every file), plus the run's own
config (trainer, world, recipe) and provenance under ``config.json``, ``results.json`` (each
headline figure with its 95% interval, from the world's ``headline`` evaluation) and
``README.md``. Files shipped beside the agent (an SAE) are pinned by sha256 too.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import policylens
from policylens import artifacts, worlds
from policylens.agents.agent import CONFIG_FILE, write_pretrained
from policylens.agents.pretrained import (
    CARD_FILE,
    RESULTS_FILE,
    check_files,
    read_config,
    zoo_folder,
    zoo_names,
)
from policylens.runs import Run
from policylens.sweeps.spec import import_function
from policylens.worlds.maze import ENV_ID as MAZE_ENV_ID

MAX_ENTRY_BYTES = 5 * 1024 * 1024
"""A zoo agent's files together stay within 5 MB (the zoo within 40 MB): small enough to ship."""


@dataclass(frozen=True)
class ExportOptions:
    """How a run becomes a zoo entry."""

    name: str
    """The entry's name (``zoo:NAME``): letters, digits and ``-``."""
    command: str
    """The command that trained the run; the card says it retrains the agent."""
    description: str = ""
    """One paragraph for the card: what the agent is for and what it shows."""
    headline: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the world's headline evaluation (episodes, levels, seed)."""
    attach: tuple[str, ...] = ()
    """Folders inside the run (e.g. ``analysis/sae/<name>``) shipped beside the agent."""
    overwrite: bool = False
    """Replace an entry already at the destination."""
    unfinished: bool = False
    """Export a run still training (its latest checkpoint), the card saying so: how a training
    longer than a session is carried to the next one (``train ... --init-weights``)."""


@dataclass(frozen=True)
class ZooEntry:
    """One zoo agent as its card describes it."""

    name: str
    folder: Path
    world: str
    config: dict[str, Any]
    results: dict[str, Any]

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.config.get("provenance", {}))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "folder": str(self.folder),
            "world": self.world,
            "provenance": self.provenance,
            "results": self.results,
            "files": sorted(self.config["sha256"]),
        }


def git_commit() -> str | None:
    """The commit of the policylens checkout in use, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(policylens.__file__).parent,
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() if out.returncode == 0 else ""
    return commit or None


def cpu_name() -> str:
    """The CPU's model name and how many cores this process may use."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({len(os.sched_getaffinity(0))} cores)"


DT_HEADLINE = "policylens.studies.dt:headline_results"
"""A MiniGrid decision transformer's headline evaluation: play at a target RTG."""
MAZE_DT_HEADLINE = "policylens.studies.maze_dt:headline_results"
"""A maze decision transformer's: success at the data's best RTG, trained and cheese anywhere."""


def headline_of(run: Run) -> str:
    """``module:function`` measuring the run's headline figures: its world's
    (``World.headline``) for an agent, the DT evaluation for a decision transformer."""
    if run.config.get("kind") == "dt":
        maze = run.config.get("trainer", {}).get("env_id") == MAZE_ENV_ID
        return MAZE_DT_HEADLINE if maze else DT_HEADLINE
    world = worlds.of_run(run)
    if world.headline is None:
        raise ValueError(f"the {world.name} world has no headline evaluation to measure.")
    return world.headline


def headline_results(run: Run, **kwargs: Any) -> dict[str, Any]:
    """The run's headline figures (:func:`headline_of`), each a rate or mean with its count and
    95% interval."""
    return dict(import_function(headline_of(run), "headline")(run, **kwargs))


def export(run: Run, out: str | os.PathLike, options: ExportOptions) -> ZooEntry:
    """Write ``run``'s latest agent into ``out`` as a zoo entry (see the module doc), measuring
    its headline results; refused if ``out`` holds anything unless ``options.overwrite``."""
    out = Path(out)
    if not options.name or not all(c.isalnum() or c == "-" for c in options.name):
        raise ValueError(f"name must be letters, digits and '-', got {options.name!r}.")
    if not run.done and not options.unfinished:
        raise ValueError(
            f"{run.path} has not finished training; export finished runs, or set unfinished to "
            "ship its latest checkpoint as a training in progress."
        )
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise ValueError(f"{out} is not empty; choose an empty folder or set overwrite.")
    for sub in options.attach:
        if not (run.path / sub).is_dir():
            raise FileNotFoundError(f"{run.path / sub} does not exist; attach folders of the run.")
    with artifacts.FolderLock(out, "zoo entry folder"):
        config, results = _write_entry(run, out, options)
    return ZooEntry(options.name, out, results["world"], config, results)


def _write_entry(
    run: Run, out: Path, options: ExportOptions
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measure and write the entry's files into ``out`` (locked by the caller); its config and
    results."""
    world = worlds.of_run(run)
    step, checkpoint = run.checkpoint()
    started = time.time()
    results = {
        "world": world.name,
        "measured_with": {"headline": headline_of(run), "options": options.headline},
        "metrics": headline_results(run, **options.headline),
        "seconds": round(time.time() - started, 1),
    }
    metrics = run.metrics()
    provenance = {
        "name": options.name,
        "description": options.description,
        "world": world.name,
        "command": options.command,
        "seed": run.config.get("trainer", {}).get("seed"),
        "steps": step,
        "finished": run.done,
        "planned_steps": run.config.get("trainer", {}).get("total_steps"),
        "wall_time_s": round(float(metrics[-1]["time"]), 1) if metrics else None,
        "cpu": cpu_name(),
        "policylens_version": policylens.__version__,
        "commit": git_commit(),
        "exported": time.strftime("%Y-%m-%d"),
    }
    write_pretrained(  # the checkpoint's own bytes: the entry's sha256 is the checkpoint's
        out,
        lambda file: artifacts.write_bytes(file, checkpoint.read_bytes()),
        run.config["agent"],
        extra={"run": run.config, "provenance": provenance},
        overwrite=options.overwrite,
    )
    config = artifacts.read_json(out / CONFIG_FILE)
    for sub in options.attach:
        shutil.copytree(run.path / sub, out / sub, dirs_exist_ok=options.overwrite)
        for f in sorted((out / sub).rglob("*")):
            if f.is_file() and f.name != artifacts.LOCK_FILE:
                config["sha256"][f.relative_to(out).as_posix()] = artifacts.sha256_of(f)
    artifacts.write_json(out / RESULTS_FILE, results)
    config["sha256"][RESULTS_FILE] = artifacts.sha256_of(out / RESULTS_FILE)
    artifacts.write_json(out / CONFIG_FILE, config)
    artifacts.write_text(out / CARD_FILE, model_card(options.name, config, results))
    size = sum(
        f.stat().st_size for f in out.rglob("*") if f.is_file() and f.name != artifacts.LOCK_FILE
    )
    if size > MAX_ENTRY_BYTES:
        raise ValueError(
            f"{out} holds {size / 2**20:.1f} MB; a zoo entry stays within 5 MB (a smaller network)."
        )
    return config, results


def _figure(stat: dict[str, Any]) -> tuple[str, str]:
    """A metric's value and interval as text."""
    value = stat.get("rate", stat.get("mean"))
    lo, hi = stat.get("ci", [float("nan")] * 2)
    return f"{value:.3f}", f"[{lo:.3f}, {hi:.3f}]"


def model_card(name: str, config: dict[str, Any], results: dict[str, Any]) -> str:
    """The README.md model card: what the agent is, how it was trained, what it measured."""
    p = config["provenance"]
    agent = config["agent"]
    rows = "\n".join(
        f"| {metric} | {_figure(stat)[0]} | {_figure(stat)[1]} | {stat.get('n', '')} |"
        for metric, stat in results["metrics"].items()
    )
    files = "\n".join(f"| `{f}` | `{h}` |" for f, h in sorted(config["sha256"].items()))
    options = json.dumps(config["run"]["trainer"].get("env_kwargs", {}))
    dt = config["run"].get("kind") == "dt"
    if dt:
        loader, variable = "load_decision_transformer", "model"
        network = (
            f"decision transformer (TransformerLens `HookedTransformer`): {agent['n_layers']} "
            f"layer(s), d_model {agent['d_model']}, {agent['n_heads']} heads, d_mlp "
            f"{agent['d_mlp']}, context {agent['context']} steps, observations "
            f"{agent['obs_shape']}, {agent['num_actions']} actions"
        )
        unit = "gradient steps"
    else:
        loader, variable = "load_agent", "agent"
        network = (
            f"`{agent['arch']}` {json.dumps(agent.get('kwargs', {}))}, observations "
            f"{agent['obs_shape']},\n  {agent['num_actions']} actions"
        )
        unit = "environment steps"
    return f"""---
library_name: policylens
tags: [reinforcement-learning, interpretability, policylens, {p["world"]}]
---

# {name}

{p["description"]}

```python
import policylens

{variable} = policylens.{loader}("zoo:{name}")
```

Every command that takes a run takes `zoo:{name}` (e.g. `policylens runs zoo:{name}`).

## Agent

- world: `{p["world"]}` (`{config["run"]["trainer"]["env_id"]}`), options `{options}`
- network: {network}

## Training
{_in_progress(p)}
- command (retrains it): `{p["command"]}`
- trainer: {config["run"].get("kind", "ppo")}, seed {p["seed"]}, {p["steps"]:,} {unit}
- wall time: {p["wall_time_s"]} s on {p["cpu"]}
- exported {p["exported"]} by policylens {p["policylens_version"]} at commit `{p["commit"]}`, which
  measured the results below

## Results

Measured by `{results["measured_with"]["headline"]}` with
`{json.dumps(results["measured_with"]["options"])}` (95% intervals):

| metric | value | 95% interval | n |
|---|---|---|---|
{rows}

## Files

| file | sha256 |
|---|---|
{files}
"""


def _in_progress(p: dict[str, Any]) -> str:
    """The card's warning for an agent whose training had not finished when it was exported."""
    if p.get("finished", True):
        return ""
    return (
        f"\n**Still training**: {p['steps']:,} of {p['planned_steps']:,} planned steps; continue it "
        "by training with `--init-weights` set to this entry's `model.safetensors`.\n"
    )


def read_entry(name: str) -> ZooEntry:
    """The zoo entry ``name``, its files checked against their sha256."""
    folder = zoo_folder(name)
    config = read_config(folder)
    check_files(folder, config)
    results_file = folder / RESULTS_FILE
    results = artifacts.read_json(results_file) if results_file.is_file() else {}
    world = str(config.get("provenance", {}).get("world", "generic"))
    return ZooEntry(name, folder, world, config, results)


def entries() -> list[ZooEntry]:
    """Every shipped zoo entry."""
    return [read_entry(n) for n in zoo_names()]


__all__ = ["MAX_ENTRY_BYTES", "ExportOptions", "ZooEntry", "entries", "export", "headline_results",
           "model_card", "read_entry"]  # fmt: skip
