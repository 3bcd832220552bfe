"""Stable-Baselines3 actor-critic policies (PPO, A2C) with discrete actions as HookedAgents.

A live model is wrapped as it is (:func:`sb3_agent`, sharing its parameters); an ``MlpPolicy``
is rebuilt from an agent config carrying an ``"sb3"`` entry (:func:`sb3_agent_from_config`, how
run checkpoints of the sb3 trainer load) or from the readable parts of a ``model.save()`` zip
(:func:`sb3_config_from_zip`). stable_baselines3 is optional and imported only where needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
from torch import Tensor, nn

from policylens.agents.agent import HookedAgent

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
"""Activations of an SB3 MlpPolicy that policylens rebuilds, by name."""

ZIP_POLICY_KWARGS = {
    "net_arch",
    "activation_fn",
    "ortho_init",
    "optimizer_class",
    "optimizer_kwargs",
}
"""``policy_kwargs`` of a saved model that leave the network an MlpPolicy policylens rebuilds."""


def require_sb3() -> ModuleType:
    """The stable_baselines3 module, or one sentence saying how to install it."""
    try:
        import stable_baselines3
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError(
            "This needs stable-baselines3; install it with `pip install 'policylens[sb3]'`."
        ) from e
    return stable_baselines3


class SB3PolicyValue(nn.Module):
    """A Stable-Baselines3 ActorCriticPolicy (discrete actions) as a ``(logits, value)`` module.

    SB3 preprocesses observations itself (e.g. scales images), so wrap it with
    ``obs_kind="vector"`` to hand it raw observations as float.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy: Any = policy  # SB3's methods, which nn.Module's typing does not know

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
            f"policylens wraps SB3 policies with a Discrete action space, got {space}; "
            "continuous-action agents are not supported."
        )
    if not hasattr(policy, "get_distribution") or not hasattr(policy, "predict_values"):
        raise ValueError(
            f"{type(policy).__name__} is not an SB3 ActorCriticPolicy (no get_distribution/"
            "predict_values); pass a PPO or A2C model or its .policy."
        )
    return SB3PolicyValue(policy)


def sb3_agent(model: Any) -> HookedAgent:
    """A HookedAgent around an SB3 PPO/A2C model (or its policy) with a discrete action space."""
    policy = getattr(model, "policy", model)
    module = policy_value_from_sb3(policy)
    obs_shape = tuple(policy.observation_space.shape)
    return HookedAgent.from_module(module, obs_shape, int(policy.action_space.n), "vector")


def sb3_agent_config(
    obs_shape: Sequence[int], num_actions: int, policy_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The agent config of an SB3 MlpPolicy: the HookedAgent fields plus ``"sb3"``.

    ``policy_kwargs``: ``net_arch`` (``{"pi": [...], "vf": [...]}``), ``activation`` (a key of
    :data:`ACTIVATIONS`) and ``ortho_init``.
    """
    return {
        "arch": None,
        "module": "SB3PolicyValue",
        "obs_shape": [int(s) for s in obs_shape],
        "num_actions": int(num_actions),
        "obs_kind": "vector",
        "output": "policy_value",
        "sb3": {"policy": "MlpPolicy", **policy_kwargs},
    }


def is_sb3_config(agent_config: Any) -> bool:
    """Whether an agent config describes an SB3 MlpPolicy (it has an ``"sb3"`` entry)."""
    return isinstance(agent_config, dict) and isinstance(agent_config.get("sb3"), dict)


def torch_policy_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """SB3's ``policy_kwargs`` (torch classes) for the JSON-able ones of an agent config."""
    return {
        "net_arch": kw["net_arch"],
        "activation_fn": ACTIVATIONS[kw["activation"]],
        "ortho_init": kw["ortho_init"],
    }


def sb3_agent_from_config(agent_config: dict[str, Any]) -> HookedAgent:
    """A HookedAgent around a freshly built SB3 ``ActorCriticPolicy`` described by ``agent_config``.

    Load weights into it with ``agent.load_weights(file)``.
    """
    require_sb3()
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy

    if not is_sb3_config(agent_config):
        raise ValueError(
            "This agent config has no 'sb3' entry; it does not describe an SB3 policy."
        )
    kw = dict(agent_config["sb3"])
    if kw.get("policy") != "MlpPolicy":
        raise ValueError(f"Only SB3 MlpPolicy networks can be rebuilt, got {kw.get('policy')!r}.")
    obs_space = spaces.Box(-np.inf, np.inf, tuple(agent_config["obs_shape"]), np.float32)
    act_space = spaces.Discrete(int(agent_config["num_actions"]))
    policy = ActorCriticPolicy(
        obs_space, act_space, lambda _: 0.0, **torch_policy_kwargs(kw)
    )  # the optimiser is never used here
    agent = sb3_agent(policy)
    agent.config = dict(agent_config)  # so save_pretrained() writes a config that rebuilds it
    return agent


def sb3_agent_from_zip(data: dict[str, Any], state: dict[str, Tensor], source: str) -> HookedAgent:
    """The agent saved by SB3's ``model.save()``: ``data`` is the zip's ``data`` JSON, ``state``
    its ``policy.pth`` state dict (see :func:`sb3_config_from_zip`)."""
    agent = sb3_agent_from_config(sb3_config_from_zip(data, source))
    agent.load_net_state_dict({f"policy.{k}": v for k, v in state.items()}, source=source)
    return agent


def sb3_config_from_zip(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The agent config of a model saved by SB3's ``model.save()``, from the zip's ``data`` JSON.

    Reads only the human-readable fields SB3 writes beside each pickled one (the class and
    spaces' attributes), never the pickles; models other than a PPO/A2C MlpPolicy with a
    discrete action space are refused with a sentence saying how to load them instead.
    """
    refuse = (
        "; load it with stable_baselines3 (e.g. PPO.load, which unpickles the file, so only for "
        "files you trust) and pass the model to load_agent."
    )
    policy = _class_name(data.get("policy_class", {}).get("__init__", ""))
    if policy != "ActorCriticPolicy":
        raise ValueError(
            f"{source} holds an SB3 {policy or 'unknown'} policy, not a PPO/A2C MlpPolicy{refuse}"
        )
    obs, act = data.get("observation_space", {}), data.get("action_space", {})
    if "Box" not in str(obs.get(":type:")) or "Discrete" not in str(act.get(":type:")):
        raise ValueError(
            f"{source} has observations {obs.get(':type:')} and actions {act.get(':type:')}; "
            f"policylens reads Box observations with Discrete actions from a zip{refuse}"
        )
    if str(act.get("start", "0")) != "0":
        raise ValueError(f"{source} numbers its actions from {act['start']}, not 0{refuse}")
    kwargs = data.get("policy_kwargs", {})
    extra = sorted(set(kwargs) - ZIP_POLICY_KWARGS - {":type:", ":serialized:"})
    if extra:
        raise ValueError(f"{source} sets the policy option(s) {', '.join(extra)}{refuse}")
    net_arch = kwargs.get("net_arch", [64, 64])
    if isinstance(net_arch, list):
        net_arch = {"pi": net_arch, "vf": net_arch}
    activation = _class_name(kwargs.get("activation_fn", "<class 'torch.nn.Tanh'>")).lower()
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"{source} uses the activation {kwargs['activation_fn']}; policylens rebuilds "
            f"{', '.join(ACTIVATIONS)} only{refuse}"
        )
    policy_kwargs = {"net_arch": net_arch, "activation": activation, "ortho_init": False}
    return sb3_agent_config(obs["_shape"], int(act["n"]), policy_kwargs)


def _class_name(text: str) -> str:
    """``ReLU`` from ``"<class 'torch.nn.modules.activation.ReLU'>"``, ``ActorCriticPolicy`` from
    ``"<function ActorCriticPolicy.__init__ at 0x...>"`` (the reprs SB3 writes); else ``""``."""
    match = re.match(r"<class '(?:[\w.]+\.)?(\w+)'>|<function (\w+)\.__init__", str(text))
    return (match.group(1) or match.group(2)) if match else ""


__all__ = [
    "ACTIVATIONS",
    "SB3PolicyValue",
    "is_sb3_config",
    "policy_value_from_sb3",
    "require_sb3",
    "sb3_agent",
    "sb3_agent_config",
    "sb3_agent_from_config",
    "sb3_agent_from_zip",
    "sb3_config_from_zip",
    "torch_policy_kwargs",
]
