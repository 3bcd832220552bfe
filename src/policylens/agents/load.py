"""Load agents from policylens folders, trainer checkpoints, research ``.pth`` files and SB3.

- a directory written by :meth:`HookedAgent.save` (``model.safetensors`` + ``config.json``);
- one ``.safetensors`` file (trainer checkpoints ``run/checkpoints/step_<N>.safetensors``) whose
  agent config is passed as ``config=`` or found beside it (see :func:`find_agent_config`);
- a ``.pt``/``.pth`` file from the goal-misgeneralization research code (procgen maze IMPALA
  agents): ``{"model_state_dict": ...}`` or a bare state dict, read with
  ``torch.load(weights_only=True)``, never unpickling arbitrary objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from policylens import artifacts
from policylens.agents.agent import CONFIG_FILE, WEIGHTS_FILE, HookedAgent
from policylens.agents.models import agent_from_config, build_agent

RESEARCH_OBS_SHAPE = (64, 64, 3)
"""Procgen observations, as the research IMPALA agents see them."""


def load_agent(
    path: str | os.PathLike,
    config: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> HookedAgent:
    """Load an agent from a saved directory, a ``.safetensors`` checkpoint or a research ``.pth``.

    Args:
        config: the agent config (``arch``, ``kwargs``, ``obs_shape``, ``num_actions``) for a bare
            ``.safetensors`` file, when it is not stored beside the file.
        device, dtype: where to put the loaded agent.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No agent at {path}; check the path.")
    if path.is_dir():
        agent = HookedAgent.load(path)
    elif path.suffix == ".safetensors":
        cfg = config if config is not None else find_agent_config(path)
        agent = agent_from_config(cfg, source="the agent config")
        agent.load_weights(path)
    elif path.suffix in (".pt", ".pth"):
        agent = load_research_impala(path)
    else:
        raise ValueError(
            f"Cannot load {path}: expected a directory written by HookedAgent.save, a "
            ".safetensors checkpoint or a .pt/.pth research checkpoint."
        )
    if device is not None or dtype is not None:
        agent.to(device=device, dtype=dtype)
    return agent.eval()


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
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} cannot be read as a weights-only PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt or holds pickled objects."
        ) from e
    state = _state_dict_of(data, path)
    for key in ("embedder.block1.conv.weight", "fc_policy.weight"):
        if key not in state:
            raise ValueError(
                f"{path} is not an IMPALA maze checkpoint: it has no {key!r} (first keys: "
                f"{', '.join(list(state)[:4])})."
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


class SB3PolicyValue(nn.Module):
    """A Stable-Baselines3 ActorCriticPolicy (discrete actions) as a ``(logits, value)`` module.

    SB3 preprocesses observations itself (e.g. scales images), so wrap it with
    ``obs_kind="vector"`` to hand it raw observations as float.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.policy.get_distribution(obs).distribution.logits  # (batch, A)
        value = self.policy.predict_values(obs).squeeze(-1)  # (batch,)
        return logits, value


def policy_value_from_sb3(policy: nn.Module) -> SB3PolicyValue:
    """Turn an SB3 ``ActorCriticPolicy`` with a discrete action space into a (logits, value)
    module, ready for ``HookedAgent.from_module(module, obs_shape, num_actions)``."""
    from gymnasium import spaces

    space = getattr(policy, "action_space", None)
    if not isinstance(space, spaces.Discrete):
        raise ValueError(
            f"policy_value_from_sb3 needs a policy with a Discrete action space, got {space}."
        )
    if not hasattr(policy, "get_distribution") or not hasattr(policy, "predict_values"):
        raise ValueError(
            f"{type(policy).__name__} is not an SB3 ActorCriticPolicy (no get_distribution/"
            "predict_values); pass model.policy of a PPO or A2C model."
        )
    return SB3PolicyValue(policy)


def sb3_agent(model: Any) -> HookedAgent:
    """A HookedAgent around an SB3 PPO/A2C model (or its policy) with a discrete action space."""
    policy = getattr(model, "policy", model)
    module = policy_value_from_sb3(policy)
    obs_shape = tuple(policy.observation_space.shape)
    return HookedAgent.from_module(module, obs_shape, int(policy.action_space.n), "vector")


__all__ = [
    "WEIGHTS_FILE",
    "find_agent_config",
    "load_agent",
    "load_research_impala",
    "policy_value_from_sb3",
    "sb3_agent",
]
