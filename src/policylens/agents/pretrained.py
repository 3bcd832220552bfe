"""Agents in the Hugging Face layout, checked by sha256, and where they come from: a local folder,
the zoo shipped inside the package (``zoo:NAME``) or the Hugging Face hub (``hf://org/name``).

A pretrained folder holds what ``huggingface_hub``'s ``PyTorchModelHubMixin`` writes:

- ``model.safetensors``: the network's weights (no pickles);
- ``config.json``: ``{"policylens": 1, "agent": <agent config>, "sha256": {file: hex}}``,
  and for a trained agent ``"run"`` (the run's own ``config.json``: trainer, world, recipe) and
  ``"provenance"`` (command, steps, seed, version, commit, wall time, CPU);
- ``results.json`` (the headline metrics, measured by the shipped code) and ``README.md`` (the
  model card), for a zoo agent.

The sha256 of every file named in ``config.json`` is checked on load, so an altered or corrupt
weight file is refused in one sentence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policylens import artifacts
from policylens.agents.agent import CONFIG_FILE, PRETRAINED_FORMAT, WEIGHTS_FILE, HookedAgent
from policylens.agents.models import agent_from_config
from policylens.errors import check_known

ZOO = Path(__file__).resolve().parent.parent / "zoo"
"""The shipped agents, one folder each (package data: ``pip install`` users have them)."""
RESULTS_FILE = "results.json"
CARD_FILE = "README.md"
HUB = re.compile(r"^hf:/{1,2}(?P<repo>[\w.-]+/[\w.-]+)(@(?P<revision>[\w./-]+))?$")
"""``hf://org/name[@revision]`` (a ``Path`` folds the two slashes into one, so one is accepted)."""


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """A pretrained folder's ``config.json``, checked to be one (one sentence if not)."""
    folder = Path(folder)
    data = artifacts.read_json(folder / CONFIG_FILE)
    if not isinstance(data, dict) or not {"policylens", "agent", "sha256"} <= data.keys():
        raise ValueError(
            f"{folder / CONFIG_FILE} is not a pretrained agent's config (it needs policylens, "
            "agent and sha256 entries, as save_pretrained writes them)."
        )
    if data["policylens"] != PRETRAINED_FORMAT:
        raise ValueError(
            f"{folder} is in pretrained format {data['policylens']!r}; this policylens reads "
            f"format {PRETRAINED_FORMAT}. Update policylens or re-save the agent."
        )
    return data


def check_files(folder: str | os.PathLike, config: Mapping[str, Any]) -> None:
    """Refuse a folder whose files differ from the sha256 its ``config.json`` records."""
    folder = Path(folder)
    for name, expected in dict(config["sha256"]).items():
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing; the agent at {folder} is incomplete.")
        if artifacts.sha256_of(file) != expected:
            raise ValueError(
                f"{file} is corrupt or truncated, or was altered after saving: it does not match "
                "the sha256 in its config.json; download or save the agent again."
            )


def load_pretrained(folder: str | os.PathLike) -> HookedAgent:
    """The agent in a pretrained folder, its files checked against their sha256 first."""
    folder = Path(folder)
    config = read_config(folder)
    check_files(folder, config)
    agent = agent_from_config(config["agent"], source=folder / CONFIG_FILE)
    agent.load_weights(folder / WEIGHTS_FILE)
    return agent


def zoo_names() -> list[str]:
    """The agents shipped in the zoo, by name."""
    if not ZOO.is_dir():
        return []
    return sorted(p.name for p in ZOO.iterdir() if (p / CONFIG_FILE).is_file())


def zoo_folder(name: str) -> Path:
    """The folder of the zoo agent ``name`` (one sentence naming the closest ones if unknown)."""
    check_known([name], zoo_names(), "zoo agent")
    return ZOO / name


def source_folder(source: str) -> Path | None:
    """The local folder behind ``zoo:NAME`` or ``hf://org/name[@revision]``; None for any other
    text (a path). The hub needs the ``hub`` extra (``huggingface_hub``); with
    ``HF_HUB_OFFLINE=1`` it reads its local cache only."""
    if source.startswith("zoo:"):
        return zoo_folder(source.removeprefix("zoo:"))
    if not source.startswith("hf:"):
        return None
    m = HUB.match(source)
    if m is None:
        raise ValueError(
            f"{source!r} is not a hub address; write hf://org/name or hf://org/name@rev."
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(
            "hf:// agents need huggingface_hub: pip install 'policylens[hub]'."
        ) from None
    try:
        return Path(snapshot_download(m["repo"], revision=m["revision"]))
    except Exception as e:  # the hub raises many kinds: offline, not found, no network
        raise ValueError(f"cannot fetch {source} from the hub ({type(e).__name__}: {e}).") from e


def source_name(source: str) -> str:
    """A folder-safe name for a zoo or hub source (``zoo:maze-corner`` -> ``maze-corner``,
    ``hf://org/name@rev`` -> ``org--name@rev``)."""
    if source.startswith("zoo:"):
        return source.removeprefix("zoo:")
    m = HUB.match(source)
    if m is None:
        raise ValueError(f"{source!r} is neither zoo:NAME nor hf://org/name.")
    rev = f"@{m['revision'].replace('/', '-')}" if m["revision"] else ""
    return m["repo"].replace("/", "--") + rev


__all__ = [
    "CARD_FILE",
    "RESULTS_FILE",
    "ZOO",
    "check_files",
    "load_pretrained",
    "read_config",
    "source_folder",
    "source_name",
    "zoo_folder",
    "zoo_names",
]
