"""Interventions on activations: patching, steering vectors and channel clamping.

Each returns hook functions for ``agent.hooks(fwd_hooks=...)`` / ``run_with_hooks``, so any
intervention composes with any rollout or analysis. Effects on behaviour are measured over many
episodes with confidence intervals and controls (the maze study's steering experiments do so),
never from one example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from policylens.errors import check_known

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent
    from policylens.agents.hooks import HookPointLike

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


def check_hook(agent: HookedAgent, name: str) -> None:
    """One sentence, with the closest names, when ``agent`` has no hook ``name``."""
    check_known([name], agent.hook_names(), "hook")


def check_coefficient(coef: Any) -> float:
    """``coef`` as a finite float, or one sentence saying it is not one."""
    try:
        value = float(coef)
    except (TypeError, ValueError):
        raise ValueError(f"coefficient must be a number, got {coef!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"coefficient must be finite, got {coef!r}")
    return value


# -- patching ---------------------------------------------------------------------------------


def patch_activations(
    agent: HookedAgent,
    target_obs: np.ndarray | torch.Tensor,
    source_obs: np.ndarray | torch.Tensor,
    hooks: Sequence[str],
    positions: Sequence[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``target_obs`` with activations at ``hooks`` (optionally only at spatial ``positions``)
    taken from a run on ``source_obs``; returns (logits, value).
    """
    for name in hooks:
        check_hook(agent, name)
    _, cache = agent.run_with_cache(source_obs, names=list(hooks))

    def make(name: str) -> HookFn:
        src = cache[name]

        def fn(act: torch.Tensor, hook: HookPointLike) -> torch.Tensor:
            if src.shape != act.shape:
                raise ValueError(
                    f"cannot patch {name}: source activations {tuple(src.shape)} vs target {tuple(act.shape)}; "
                    "use batches of the same size"
                )
            if positions is None:
                return src.to(act.dtype)
            out = act.clone()
            for r, c in positions:
                _check_position(act, r, c, name)
                out[..., r, c] = src[..., r, c]
            return out

        return fn

    return agent.run_with_hooks(target_obs, fwd_hooks=[(n, make(n)) for n in hooks])


def _check_position(act: torch.Tensor, r: int, c: int, name: str) -> None:
    if act.ndim < 3:
        raise ValueError(
            f"{name} has no spatial dimensions (shape {tuple(act.shape)}); positions need a conv layer"
        )
    h, w = act.shape[-2:]
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"position {(r, c)} is outside {name}'s {h}x{w} grid")


# -- steering vectors -------------------------------------------------------------------------


def activation(agent: HookedAgent, obs: np.ndarray | torch.Tensor, hook: str) -> torch.Tensor:
    """Activations at one hook for a batch of observations (detached)."""
    check_hook(agent, hook)
    _, cache = agent.run_with_cache(obs, names=[hook])
    return cache[hook]


def contrast_vector(
    agent: HookedAgent,
    obs_a: np.ndarray | torch.Tensor,
    obs_b: np.ndarray | torch.Tensor,
    hook: str,
) -> torch.Tensor:
    """Mean activation of ``obs_a`` minus mean activation of ``obs_b`` at ``hook``."""
    return activation(agent, obs_a, hook).mean(0) - activation(agent, obs_b, hook).mean(0)


def add_vector(vector: torch.Tensor, coef: float = 1.0) -> HookFn:
    """A hook adding ``coef * vector`` (broadcast over the batch, or one vector per batch row)."""
    coef = check_coefficient(coef)

    def fn(act: torch.Tensor, hook: HookPointLike) -> torch.Tensor:
        v = vector.to(act.device, act.dtype)
        if v.shape != act.shape and v.shape != act.shape[1:]:
            raise ValueError(
                f"steering vector of shape {tuple(v.shape)} does not fit activations {tuple(act.shape)} at {hook.name}"
            )
        return act + coef * v

    return fn


def random_like(vector: torch.Tensor, seed: int, per_row: bool = False) -> torch.Tensor:
    """A random Gaussian direction with the norm of ``vector`` (of each batch row if ``per_row``)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(vector.shape, generator=g, dtype=vector.dtype)
    if per_row:
        shape = (-1,) + (1,) * (vector.ndim - 1)
        norm_v = vector.flatten(1).norm(dim=1).view(shape)
        return r * (norm_v / r.flatten(1).norm(dim=1).view(shape).clamp_min(1e-12))
    return r * (vector.norm() / r.norm().clamp_min(1e-12))


# -- channel clamping -------------------------------------------------------------------------


def clamp_channels(
    channels: Sequence[int],
    value: float,
    positions: Sequence[tuple[int, int]] | None = None,
    zero_elsewhere: bool = True,
) -> HookFn:
    """A hook fixing ``channels`` to ``value`` at ``positions`` (all positions when None).

    With ``zero_elsewhere`` the rest of each clamped channel is set to 0, so the channel encodes
    only the chosen place (Mini, Turner et al. retarget the mouse this way). A layer of plain
    units ``(batch, units)`` has its ``channels`` (units) clamped, without positions.
    """
    value = check_coefficient(value)

    def fn(act: torch.Tensor, hook: HookPointLike) -> torch.Tensor:
        if act.ndim != 4 and not (act.ndim == 2 and positions is None):
            raise ValueError(f"{hook.name} has no channels x positions (shape {tuple(act.shape)})")
        out = act.clone()
        for ch in channels:
            if not 0 <= ch < act.shape[1]:
                raise ValueError(
                    f"channel {ch} does not exist at {hook.name} ({act.shape[1]} channels)"
                )
            if positions is None:
                out[:, ch] = value
                continue
            if zero_elsewhere:
                out[:, ch] = 0
            for r, c in positions:
                _check_position(act, r, c, hook.name)
                out[:, ch, r, c] = value
        return out

    return fn
