"""The one agent loader, :func:`load_agent`: anything that holds an agent becomes a HookedAgent.

- a run folder (``config.json`` with ``"trainer"`` and ``"agent"``, and
  ``checkpoints/step_<N>.safetensors``): its latest checkpoint;
- a folder written by :meth:`HookedAgent.save` (``model.safetensors`` + ``config.json``);
- one ``.safetensors`` file (e.g. a run's ``checkpoints/step_<N>.safetensors``) whose agent
  config is passed as ``config=`` or found beside it (see :func:`find_agent_config`);
- a ``.pt``/``.pth`` file from the goal-misgeneralization research code (procgen maze IMPALA
  agents): ``{"model_state_dict": ...}`` or a bare state dict;
- a Stable-Baselines3 PPO/A2C model, or its ``.zip`` (``MlpPolicy``).

Weights are read from safetensors or with ``torch.load(weights_only=True)``; nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from policylens import artifacts
from policylens.agents.agent import CONFIG_FILE, WEIGHTS_FILE, HookedAgent
from policylens.agents.models import agent_from_config, build_agent
from policylens.agents.sb3 import sb3_agent, sb3_agent_from_zip

RESEARCH_OBS_SHAPE = (64, 64, 3)
"""Procgen observations, as the research IMPALA agents see them."""
CHECKPOINT = re.compile(r"^step_(\d+)\.safetensors$")
"""A run's checkpoint file name; the number is the environment step it was saved at."""


def load_agent(
    source: str | os.PathLike | Any,
    config: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> HookedAgent:
    """Load an agent, in eval mode, from a path or a Stable-Baselines3 model (see the module doc).

    Args:
        source: a run folder, an agent folder, a ``.safetensors``, ``.pt``/``.pth`` or SB3
            ``.zip`` file, or an SB3 PPO/A2C model (wrapped, sharing its parameters).
        config: the agent config (``arch``, ``kwargs``, ``obs_shape``, ``num_actions``) of a bare
            ``.safetensors`` file, when it is not stored beside the file.
        device, dtype: where to put the loaded agent.
    """
    if isinstance(source, str | os.PathLike):
        agent = _load_path(Path(source), config)
    elif config is not None:
        raise ValueError("config= is for a .safetensors file; a model object needs none.")
    elif isinstance(source, HookedAgent):
        agent = source
    elif hasattr(source, "policy") or hasattr(source, "get_distribution"):
        agent = sb3_agent(source)
    else:
        raise ValueError(
            f"load_agent takes a path or a Stable-Baselines3 model, got a {type(source).__name__}; "
            "wrap a PyTorch module with HookedAgent.from_module(module, obs_shape, num_actions)."
        )
    if device is not None or dtype is not None:
        agent.to(device=device, dtype=dtype)
    return agent.eval()


def _load_path(path: Path, config: dict[str, Any] | None) -> HookedAgent:
    if not path.exists():
        raise FileNotFoundError(f"No agent at {path}; check the path.")
    if config is not None and path.suffix != ".safetensors":
        raise ValueError(f"config= is for a .safetensors file; {path} carries its own.")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".safetensors":
        cfg = config if config is not None else find_agent_config(path)
        return _from_config(cfg, path, "the agent config")
    if path.suffix in (".pt", ".pth"):
        return load_research_impala(path)
    if path.suffix == ".zip":
        return load_sb3_zip(path)
    raise ValueError(
        f"Cannot load {path}: expected a run folder, a folder written by HookedAgent.save, a "
        ".safetensors checkpoint, a .pt/.pth research checkpoint or a Stable-Baselines3 .zip."
    )


def _load_folder(folder: Path) -> HookedAgent:
    """A run folder (its latest checkpoint) or a folder written by :meth:`HookedAgent.save`."""
    config_file = folder / CONFIG_FILE
    config = artifacts.read_json(config_file) if config_file.is_file() else None
    if isinstance(config, dict) and {"trainer", "agent"} <= config.keys():
        found = run_checkpoints(folder)
        if not found:
            raise FileNotFoundError(f"Run {folder} has no checkpoints yet; train it first.")
        return _from_config(config["agent"], found[-1][1], config_file)
    if config is not None and (folder / WEIGHTS_FILE).is_file():
        return _from_config(config, folder / WEIGHTS_FILE, config_file)
    raise ValueError(
        f"{folder} is neither a run folder (config.json and checkpoints/) nor an agent folder "
        "written by HookedAgent.save (config.json and model.safetensors)."
    )


def _from_config(config: Any, weights: Path, source: str | Path) -> HookedAgent:
    agent = agent_from_config(config, source=source)
    agent.load_weights(weights)
    return agent


def run_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, file)`` for every checkpoint in a run folder's ``checkpoints/``, oldest first."""
    found = []
    for f in (Path(folder) / "checkpoints").glob("step_*.safetensors"):
        m = CHECKPOINT.match(f.name)
        if m:
            found.append((int(m.group(1)), f))
    return sorted(found)


def find_agent_config(weights: Path) -> dict[str, Any]:
    """The agent config for a ``.safetensors`` file, looked up beside it.

    Tried in order: ``<dir>/config.json``, ``<dir>/agent.json``, ``<dir>/../agent.json``,
    ``<dir>/../config.json``; a file qualifies when it is an agent config (has ``arch``) or holds
    one under the key ``"agent"`` (a run's config).
    """
    here = weights.parent
    candidates = [
        here / CONFIG_FILE,
        here / "agent.json",
        here.parent / "agent.json",
        here.parent / CONFIG_FILE,
    ]
    for candidate in candidates:
        if not candidate.is_file():
            continue
        data = artifacts.read_json(candidate)
        if isinstance(data, dict) and "arch" in data and "obs_shape" in data:
            return data
        if isinstance(data, dict) and isinstance(data.get("agent"), dict):
            return data["agent"]
    tried = ", ".join(str(c) for c in candidates)
    raise ValueError(
        f"No agent config found for {weights} (tried {tried}); pass config= with the agent's "
        "arch, kwargs, obs_shape and num_actions."
    )


def load_research_impala(path: str | os.PathLike) -> HookedAgent:
    """Load a goal-misgeneralization IMPALA checkpoint (``.pt``/``.pth``) as a HookedAgent.

    The IMPALA ``scale`` (1 or 4) is read from ``embedder.block1.conv.weight`` and the number of
    actions from ``fc_policy.weight``; the state dict is loaded strictly.
    """
    path = Path(path)
    state = _state_dict_of(artifacts.read_torch_weights(path, path), path)
    for key in ("embedder.block1.conv.weight", "fc_policy.weight"):
        if key not in state:
            raise ValueError(
                f"{path} is not an IMPALA maze checkpoint: it has no {key!r} (first keys: "
                f"{', '.join(list(state)[:4])}); for another network, load its state dict into "
                "it and wrap it with HookedAgent.from_module."
            )
    channels = state["embedder.block1.conv.weight"].shape[0]
    if channels % 16:
        raise ValueError(
            f"{path}: embedder.block1.conv has {channels} output channels, not a multiple of 16."
        )
    num_actions = int(state["fc_policy.weight"].shape[0])
    agent = build_agent(
        "impala", RESEARCH_OBS_SHAPE, num_actions, scale=channels // 16, init="default"
    )
    agent.load_net_state_dict(state, source=str(path))
    return agent


def load_sb3_zip(path: str | os.PathLike) -> HookedAgent:
    """A PPO/A2C ``MlpPolicy`` saved with SB3's ``model.save()``, read without unpickling.

    SB3's own ``PPO.load`` unpickles parts of the zip; here the network is rebuilt from the
    readable fields of its ``data`` JSON and the weights read from ``policy.pth`` weights-only.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
            weights = zf.read("policy.pth")
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ValueError(
            f"{path} is not a Stable-Baselines3 model saved with model.save() ({e})."
        ) from e
    state = _state_dict_of(artifacts.read_torch_weights(io.BytesIO(weights), path), path)
    return sb3_agent_from_zip(data, state, str(path))


def _state_dict_of(data: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(data, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(
            f"{path} holds no state dict (expected {{'model_state_dict': ...}} or a dict of "
            "tensors)."
        )
    # Checkpoints written from nn.DataParallel prefix every key with "module.".
    if data and all(k.startswith("module.") for k in data):
        data = {k.removeprefix("module."): v for k, v in data.items()}
    return data


__all__ = [
    "find_agent_config",
    "load_agent",
    "load_research_impala",
    "load_sb3_zip",
    "run_checkpoints",
]
