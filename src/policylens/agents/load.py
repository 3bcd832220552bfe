"""The one agent loader, :func:`load_agent`: anything that holds an agent becomes a HookedAgent.

- a run folder (``config.json`` with ``"trainer"`` and ``"agent"``, and
  ``checkpoints/step_<N>.safetensors``): its latest checkpoint;
- a folder written by :meth:`HookedAgent.save_pretrained` (``model.safetensors`` + ``config.json``,
  the Hugging Face layout; the weights' sha256 checked), a zoo agent ``zoo:NAME`` shipped with
  the package (``policylens zoo list``), or ``hf://org/name[@revision]`` from the hub (the ``hub``
  extra; ``HF_HUB_OFFLINE=1`` reads its cache only);
- one ``.safetensors`` file (e.g. a run's ``checkpoints/step_<N>.safetensors``) whose agent
  config is passed as ``config=`` or found beside it (see :func:`find_agent_config`);
- a ``.pt``/``.pth`` file from the goal-misgeneralization research code (procgen maze IMPALA
  agents): ``{"model_state_dict": ...}`` or a bare state dict;
- a ``.pt``/``.pth`` state dict of a Q-network that is a chain of Linear layers with ReLUs
  between them (``nn.Sequential`` keys ``0.weight``, ``2.weight``, ... or ``fc1``, ``fc2``, ...,
  as DuPlessie's rook-endgame networks; play them with ``rules="duplessie"``);
- a Stable-Baselines3 PPO/A2C model, or its ``.zip`` (``MlpPolicy``).

Weights are read from safetensors or with ``torch.load(weights_only=True)``; nothing is unpickled.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from policylens import artifacts
from policylens.agents.agent import CONFIG_FILE, HookedAgent
from policylens.agents.models import agent_from_config, build_agent
from policylens.agents.pretrained import load_pretrained, source_folder
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
        source: a run folder, an agent folder, ``zoo:NAME``, ``hf://org/name[@rev]``, a
            ``.safetensors``, ``.pt``/``.pth`` or SB3 ``.zip`` file, or an SB3 PPO/A2C model
            (wrapped, sharing its parameters).
        config: the agent config (``arch``, ``kwargs``, ``obs_shape``, ``num_actions``) of a bare
            ``.safetensors`` file, when it is not stored beside the file.
        device, dtype: where to put the loaded agent.
    """
    if isinstance(source, str | os.PathLike):
        folder = source_folder(str(source))
        agent = _load_path(folder if folder is not None else Path(source), config)
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
        agent.to(device=check_device(device), dtype=check_dtype(dtype))
    return agent.eval()


FLOAT_DTYPES = {"float32": torch.float32, "float64": torch.float64,
                "bfloat16": torch.bfloat16, "float16": torch.float16}  # fmt: skip


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a torch device this machine has, or one sentence saying why not."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:1' or 'mps'."
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r}, but this PyTorch has no usable CUDA GPU; use device='cpu'."
        )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}, but MPS is not available here; use device='cpu'.")
    return parsed


def check_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``dtype`` (a torch float dtype or its name) as a torch dtype, or one sentence."""
    if dtype is None or dtype in FLOAT_DTYPES.values():
        return dtype  # type: ignore[return-value]
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in FLOAT_DTYPES:
        return FLOAT_DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(
        f"dtype={dtype!r} is not a float dtype agents run in; use one of "
        f"{', '.join(FLOAT_DTYPES)} (or torch.float32, ...)."
    )


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
        state = _state_dict_of(artifacts.read_torch_weights(path, path), path)
        if _linear_chain(state):
            return load_linear_qnet(path)
        return load_research_impala(path)
    if path.suffix == ".zip":
        return load_sb3_zip(path)
    raise ValueError(
        f"Cannot load {path}: expected a run folder, a folder written by save_pretrained, a "
        ".safetensors checkpoint, a .pt/.pth research checkpoint or a Stable-Baselines3 .zip."
    )


def _load_folder(folder: Path) -> HookedAgent:
    """A run folder (its latest checkpoint) or a folder written by
    :meth:`HookedAgent.save_pretrained`."""
    config_file = folder / CONFIG_FILE
    config = artifacts.read_json(config_file) if config_file.is_file() else None
    if isinstance(config, dict) and {"trainer", "agent"} <= config.keys():
        found = run_checkpoints(folder)
        if not found:
            raise FileNotFoundError(f"Run {folder} has no checkpoints yet; train it first.")
        return _from_config(config["agent"], found[-1][1], config_file)
    if isinstance(config, dict) and "policylens" in config:
        return load_pretrained(folder)
    raise ValueError(
        f"{folder} is neither a run folder (config.json and checkpoints/) nor an agent folder "
        "written by HookedAgent.save_pretrained (config.json and model.safetensors)."
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


LINEAR_KEY = re.compile(r"^(?:fc)?(\d+)\.(weight|bias)$")
"""A Linear layer's key in an ``nn.Sequential`` (``2.weight``) or numbered (``fc2.weight``)."""


def _linear_chain(state: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """``[(weight, bias), ...]`` in order when ``state`` is a chain of Linear layers, else []."""
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        m = LINEAR_KEY.match(key)
        if m is None:
            return []
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
    chain = [layers[i] for i in sorted(layers)]
    if not chain or any(set(c) != {"weight", "bias"} or c["weight"].ndim != 2 for c in chain):
        return []
    if any(a["weight"].shape[0] != b["weight"].shape[1] for a, b in itertools.pairwise(chain)):
        return []
    return [(c["weight"], c["bias"]) for c in chain]


def load_linear_qnet(path: str | os.PathLike) -> HookedAgent:
    """A Q-network saved as the state dict of Linear layers with ReLUs between them, as an
    ``mlp`` Q agent (hooks ``layers.<i>.hook_act`` after each hidden ReLU).

    DuPlessie's rook-endgame networks are such chains over his 75 one-hot inputs and 24 actions;
    they play in the rook-endgame world (``rules="duplessie"``). Re-save a pickled
    module first with ``torch.save(net.state_dict(), path)`` (nothing is unpickled here).
    """
    path = Path(path)
    chain = _linear_chain(_state_dict_of(artifacts.read_torch_weights(path, path), path))
    if not chain:
        raise ValueError(
            f"{path} is not a chain of Linear layers (keys 0.weight, 0.bias, 2.weight, ... or "
            "fc1.weight, ...); wrap other networks with HookedAgent.from_module."
        )
    hidden = [int(w.shape[0]) for w, _ in chain[:-1]]
    agent = build_agent(
        "mlp", (int(chain[0][0].shape[1]),), int(chain[-1][0].shape[0]),
        hidden=hidden, activation="relu", head="q", init="default",
    )  # fmt: skip
    names = [f"layers.{i}.linear" for i in range(len(hidden))] + ["q_head"]
    state = {f"{n}.{p}": t for n, (w, b) in zip(names, chain, strict=True) for p, t in
             (("weight", w), ("bias", b))}  # fmt: skip
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
    "load_linear_qnet",
    "load_research_impala",
    "load_sb3_zip",
    "run_checkpoints",
]
