"""The agent with an SAE spliced in, against the original and zero/mean ablation of the hook.

An SAE can explain most of a layer's variance and still wreck a Q-network's policy (the gaps
between a Q-network's best and second-best actions are small next to the activations' variance),
so SAEs are judged by behaviour first: :func:`compare_outputs` on held-out observations (action
agreement, KL, regret, margin kept), :func:`play_spliced` in the world (success and return with
95% intervals, action agreement step by step), and :func:`evaluate_spliced` for every condition
of :data:`CONDITIONS`, with reconstruction and sparsity beside them. Zero- and mean-ablation of
the whole hook are the floor an SAE must rise above.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from policylens.agents.agent import HookedAgent
from policylens.agents.hooks import HookFn
from policylens.agents.sae import (
    HookSite,
    SparseAutoencoder,
    check_sae_fits,
    mean_ablation,
    splice,
    zero_ablation,
)
from policylens.lenses.sae import evaluate_sae
from policylens.rollout import stats
from policylens.rollout.engine import EpisodeOptions, Policy, Step, run_episodes
from policylens.studies.rook_sae.data import ActivationData, PlaySetting

CONDITIONS = ("original", "spliced", "zero_ablation", "mean_ablation")
"""What sits at the hook in :func:`evaluate_spliced`: nothing changed, the SAE reconstruction,
zeros, the hook's mean activation."""


@dataclass(frozen=True)
class OutputComparison:
    """How far a hooked agent's outputs are from the original's on the same observations."""

    action_agreement: float
    """Share of observations where the policy chooses the same action (same uniforms)."""
    action_agreement_ci: tuple[float, float]
    """Its Wilson 95% interval."""
    kl: float
    """Mean KL(original || hooked) of the action distributions (softmax of the logits)."""
    regret: float
    """Mean of the original's logit (Q-value) of its own choice minus that of the hooked choice."""
    gap: float
    """The original's mean gap between its best and second-best logit (the scale of regret)."""
    margin_kept: float
    """Median of the hooked margin for the original's best action over the original's margin
    (1: kept, below 0: flipped; observations where the original ties left out)."""
    value_error: float
    """Mean |V_hooked - V_original|."""


@torch.no_grad()
def compare_outputs(
    agent: HookedAgent,
    obs: np.ndarray | Tensor,
    fwd_hooks: list,
    policy: Policy,
    seed: int = 0,
    legal: np.ndarray | None = None,
    batch_size: int = 2048,
) -> OutputComparison:
    """The agent with ``fwd_hooks`` against the original on ``obs``: ``policy`` chooses both
    actions (sampled ones with the same uniforms, drawn with ``seed``), over ``legal`` actions
    when given."""
    gen = torch.Generator().manual_seed(seed)
    agree = kl = verr = regret = gap = 0.0
    margins = []
    n = len(obs)
    for start in range(0, n, batch_size):
        o = obs[start : start + batch_size]
        lo, vo = (t.float().cpu() for t in agent(o))
        lh, vh = (t.float().cpu() for t in agent.run_with_hooks(o, fwd_hooks=fwd_hooks))
        mask = None if legal is None else torch.from_numpy(legal[start : start + batch_size])
        u = torch.rand(2, len(o), generator=gen)
        a_o = policy.choose(lo, u, mask)
        a_h = policy.choose(lh, u, mask)
        agree += float((a_o == a_h).sum())
        lpo, lph = F.log_softmax(lo, -1), F.log_softmax(lh, -1)
        kl += float((lpo.exp() * (lpo - lph)).sum())
        verr += float((vh - vo).abs().sum())
        regret += float((lo.gather(1, a_o[:, None]) - lo.gather(1, a_h[:, None])).sum())
        top = lo.topk(2, dim=-1)
        gap += float((top.values[:, 0] - top.values[:, 1]).sum())
        best = top.indices[:, :1]  # (B, 1) the original's best action
        m_o = _margin(lo, best)
        kept = m_o > 1e-12  # the original's best action is unique there
        margins.append(_margin(lh, best)[kept] / m_o[kept])
    ratios = torch.cat(margins)
    return OutputComparison(
        action_agreement=agree / n,
        action_agreement_ci=stats.wilson(round(agree), n),
        kl=kl / n,
        regret=regret / n,
        gap=gap / n,
        margin_kept=float(ratios.median()) if len(ratios) else math.nan,
        value_error=verr / n,
    )


def _margin(logits: Tensor, best: Tensor) -> Tensor:
    """``logits[best]`` minus the largest other logit, per row: (B, A), (B, 1) -> (B,)."""
    others = logits.scatter(1, best, -torch.inf)
    return (logits.gather(1, best) - others.max(dim=1, keepdim=True).values).squeeze(1)


class _Switchable:
    """Forward hooks that can be switched off for single forward passes while they stay attached.

    The rollout engine keeps its ``fwd_hooks`` attached for the whole rollout, also while its
    ``on_step`` callback runs; the callback switches these off to run the unhooked agent on the
    same observations, and on again before the engine's next step.
    """

    def __init__(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> None:
        self.on = True
        self.fwd_hooks = [(name, self._gate(fn)) for name, fn in fwd_hooks]

    def _gate(self, fn: HookFn) -> HookFn:
        def gated(act: Tensor, hook: Any) -> Tensor | None:
            return fn(act, hook) if self.on else None  # None keeps the activation

        return gated

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        self.on = False
        try:
            yield
        finally:
            self.on = True


def play_spliced(
    agent: HookedAgent,
    setting: PlaySetting,
    episodes: int,
    seed: int = 10_000,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    max_envs: int = 256,
) -> dict[str, Any]:
    """Episodes of the hooked agent in ``setting``, each step compared with the unhooked agent
    on the same observation.

    Each env slot contributes its first episode (:func:`~policylens.rollout.engine.run_episodes`,
    seeded with ``seed``). Returns return, success and length (95% intervals) and, over all steps
    played, action_agreement (the hooked agent's action equals the one the original would choose
    with the same uniforms and legal actions; its Wilson interval treats steps as independent,
    which steps of one episode are not, so it is narrower than it should be) and value_error
    (mean |dV|).
    """
    policy = setting.policy
    hooks = _Switchable(fwd_hooks)
    tally = {"agree": 0, "steps": 0, "verr": 0.0}

    def on_step(step: Step, active: np.ndarray) -> None:
        if fwd_hooks:
            with hooks.off(), torch.no_grad():
                lo, vo = agent(step.obs)
            lo, vo = lo.float().cpu(), vo.float().cpu()
        else:  # nothing hooked: the step's outputs are the original's
            lo, vo = step.logits, step.values
        a_o = policy.choose(lo, step.uniforms, step.legal).numpy()
        idx = np.nonzero(active)[0]
        tally["agree"] += int((step.actions[idx] == a_o[idx]).sum())
        tally["verr"] += float((step.values - vo)[idx].abs().sum())
        tally["steps"] += len(idx)

    eps = run_episodes(
        agent, episodes, setting.env_id, dict(setting.env_kwargs),
        EpisodeOptions(seed=seed, policy=policy, max_envs=max_envs),
        fwd_hooks=hooks.fwd_hooks, on_step=on_step,
    )  # fmt: skip
    n = max(tally["steps"], 1)
    return {
        "episodes": len(eps),
        "return": stats.mean([e.ret for e in eps]),
        "success": stats.proportion([e.success for e in eps]),
        "length": stats.mean([e.length for e in eps]),
        "steps": tally["steps"],
        "action_agreement": tally["agree"] / n,
        "action_agreement_ci": list(stats.wilson(int(tally["agree"]), int(n))),
        "value_error": tally["verr"] / n,
    }


def condition_hooks(
    condition: str, sae: SparseAutoencoder, site: HookSite, mean_act: Tensor | None
) -> list[tuple[str, HookFn]]:
    """``fwd_hooks`` that put ``condition``'s activation (see :data:`CONDITIONS`) at the hook."""
    if condition == "original":
        return []
    if condition == "spliced":
        return [splice(sae, site)]
    if condition == "zero_ablation":
        return [zero_ablation(site)]
    if condition == "mean_ablation":
        if mean_act is None:
            raise ValueError("Mean ablation needs the hook's mean activation; pass data.")
        return [mean_ablation(site, mean_act)]
    raise ValueError(f"Unknown condition {condition!r}; use one of {', '.join(CONDITIONS)}.")


@dataclass(frozen=True)
class ConditionEval:
    """One condition at the hook (see :data:`CONDITIONS`): its episodes in the world and, for a
    hooked one, its outputs against the original's on held-out observations."""

    success_rate: float
    success_rate_ci: tuple[float, float]
    """Wilson 95% interval."""
    mean_return: float
    return_ci: tuple[float, float]
    length: float
    """Mean episode length."""
    episodes: int
    steps: int
    action_agreement: float
    """Share of the steps played where the action equals the original's on that observation."""
    action_agreement_ci: tuple[float, float]
    value_error: float
    """Mean |dV| over the steps played."""
    held_out: OutputComparison | None = None
    """The hooked agent against the original on the held-out observations (None: original)."""
    success_kept: float | None = None
    """Success rate over the original's (None: the original was not played)."""
    success_vs_original: dict[str, Any] | None = None
    """Success rate minus the original's, with Newcombe's 95% interval and ``effect``."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "success_rate": self.success_rate,
            "success_rate_ci": list(self.success_rate_ci),
            "return": self.mean_return,
            "return_ci": list(self.return_ci),
            "length": self.length,
            "episodes": self.episodes,
            "steps": self.steps,
            "action_agreement": self.action_agreement,
            "action_agreement_ci": list(self.action_agreement_ci),
            "value_error": self.value_error,
        }
        if self.held_out is not None:
            off = self.held_out
            out.update(
                offline_action_agreement=off.action_agreement,
                offline_action_agreement_ci=list(off.action_agreement_ci),
                kl=off.kl,
                regret=off.regret,
                gap=off.gap,
                margin_kept=off.margin_kept,
                offline_value_error=off.value_error,
            )
        if self.success_kept is not None:
            out.update(success_kept=self.success_kept, success_vs_original=self.success_vs_original)
        return out


@dataclass(frozen=True)
class SpliceEval:
    """An SAE judged as a replacement for its hook: behaviour with it spliced in against the
    original and zero/mean ablation of the hook, with 95% intervals, then reconstruction."""

    hook: str
    layout: str
    d_in: int
    d_sae: int
    arch: str
    k: int | None
    """Active latents (architectures that use k), else None."""
    objective: str
    setting: PlaySetting
    episodes: int
    """Episodes asked for per condition."""
    observations: int
    """Held-out observations behind the offline figures and the reconstruction."""
    reconstruction: dict[str, float]
    """Explained variance, mse, L0, dead fraction and dead latents on the held-out data."""
    conditions: dict[str, ConditionEval]
    """Condition name -> its figures, in the order of :data:`CONDITIONS`."""
    return_recovered: float | None = None
    """(R_spliced - R_zero) / (R_original - R_zero), where all three were played."""

    def to_json(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "layout": self.layout,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "arch": self.arch,
            "k": self.k,
            "objective": self.objective,
            **self.setting.to_json(),
            "episodes": self.episodes,
            "observations": self.observations,
            "reconstruction": dict(self.reconstruction),
            **{name: c.to_json() for name, c in self.conditions.items()},
            **(
                {} if self.return_recovered is None else {"return_recovered": self.return_recovered}
            ),
        }


def evaluate_spliced(
    agent: HookedAgent,
    sae: SparseAutoencoder,
    data: ActivationData,
    setting: PlaySetting,
    episodes: int = 100,
    seed: int = 10_000,
    conditions: Sequence[str] = CONDITIONS,
) -> SpliceEval:
    """The SAE judged as a replacement for the hook ``data`` was gathered at: behaviour first,
    zero/mean ablation as the floor.

    ``data`` (observations of the original agent, e.g. from
    :func:`~policylens.studies.rook_sae.data.gather_activations` with a seed not used for
    training) gives the held-out comparisons (:func:`compare_outputs`), the hook's mean
    activation and the reconstruction metrics; then every condition plays ``episodes`` episodes
    in ``setting`` from the same starts (seeded with ``seed``).
    """
    site = data.site
    check_sae_fits(sae, site)
    for c in conditions:
        if c not in CONDITIONS:
            raise ValueError(f"Unknown condition {c!r}; use some of {', '.join(CONDITIONS)}.")
    mean_act = data.acts.mean(0)  # (*site.shape)
    legal = data.legal if setting.mask_illegal else None
    reconstruction = evaluate_sae(sae, data.vectors())
    dead = round(reconstruction["dead_fraction"] * sae.config.d_sae)
    played: dict[str, dict[str, Any]] = {}
    entries: dict[str, ConditionEval] = {}
    for c in conditions:
        hooks = condition_hooks(c, sae, site, mean_act)
        w = played[c] = play_spliced(agent, setting, episodes, seed, hooks)
        held_out = kept = versus = None
        if c != "original":
            held_out = compare_outputs(agent, data.obs, hooks, setting.policy, seed, legal)
            if "original" in played:
                base = played["original"]["success"]
                rate = base["rate"]
                kept = w["success"]["rate"] / rate if rate > 0 else math.nan
                versus = stats.difference(w["success"], base)
        entries[c] = ConditionEval(
            success_rate=w["success"]["rate"],
            success_rate_ci=tuple(w["success"]["ci"]),
            mean_return=w["return"]["mean"],
            return_ci=tuple(w["return"]["ci"]),
            length=w["length"]["mean"],
            episodes=w["episodes"],
            steps=w["steps"],
            action_agreement=w["action_agreement"],
            action_agreement_ci=tuple(w["action_agreement_ci"]),
            value_error=w["value_error"],
            held_out=held_out,
            success_kept=kept,
            success_vs_original=versus,
        )
    recovered = None
    if {"original", "spliced", "zero_ablation"} <= set(entries):
        r_o, r_s, r_z = (entries[c].mean_return for c in ("original", "spliced", "zero_ablation"))
        gap = r_o - r_z
        recovered = (r_s - r_z) / gap if abs(gap) > 1e-9 else math.nan
    return SpliceEval(
        hook=site.hook,
        layout=site.layout,
        d_in=site.d_in,
        d_sae=sae.config.d_sae,
        arch=sae.config.arch,
        k=sae.config.k if type(sae).uses_k else None,
        objective=sae.config.objective,
        setting=setting,
        episodes=episodes,
        observations=len(data),
        reconstruction={**reconstruction, "dead_latents": dead},
        conditions=entries,
        return_recovered=recovered,
    )


__all__ = [
    "CONDITIONS",
    "ConditionEval",
    "OutputComparison",
    "SpliceEval",
    "compare_outputs",
    "condition_hooks",
    "evaluate_spliced",
    "play_spliced",
]
