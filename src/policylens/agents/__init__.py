"""Hooked agents: hook points, built-in networks, HookedAgent, and the one loader (load_agent)."""

from policylens.agents.agent import HookedAgent
from policylens.agents.hooks import (
    ActivationCache,
    HookPoint,
    ModuleOutputHook,
    retain_freed_memory,
)
from policylens.agents.load import (
    find_agent_config,
    load_agent,
    load_research_impala,
    run_checkpoints,
)
from policylens.agents.models import (
    ARCHS,
    MLP,
    ClearCNN,
    ImpalaCNN,
    MazeCNN,
    build_agent,
    layer_init,
    orthogonal_init,
)
from policylens.agents.sb3 import policy_value_from_sb3, sb3_agent

__all__ = [
    "ARCHS",
    "MLP",
    "ActivationCache",
    "ClearCNN",
    "HookPoint",
    "HookedAgent",
    "ImpalaCNN",
    "MazeCNN",
    "ModuleOutputHook",
    "build_agent",
    "find_agent_config",
    "layer_init",
    "load_agent",
    "load_research_impala",
    "orthogonal_init",
    "policy_value_from_sb3",
    "retain_freed_memory",
    "run_checkpoints",
    "sb3_agent",
]
