"""The one engine that plays an agent in a vector world: every evaluation, behaviour statistic,
SAE-spliced episode, two-phase evaluation and rollout dataset steps through :func:`steps`.

- :class:`Policy` turns logits into actions: sampled (inverse-CDF on one uniform per env and
  step, so two agents given the same uniforms are compared on equal luck), greedy (argmax), or
  epsilon-greedy, optionally over legal actions only (worlds that label
  ``info["legal_actions"]``). A Q-network's policy is its argmax.
- :func:`steps` yields one :class:`Step` per environment step, with hooks attached for the whole
  rollout and the activations of ``cache`` hooks recorded.
- :func:`run_episodes` plays the first episode of every env slot (short episodes are not
  over-counted), in waves (:class:`EpisodeOptions`), and returns :class:`Episode` records with
  the :class:`Labels` the caller asks for at the start, at every step, summed over the episode,
  and at the end.

Worlds use same-step autoreset: the ``info`` of an ending step is in ``infos["final_info"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from policylens.errors import unknown_message

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent

Hooks = Sequence[tuple[str, Callable[..., Any]]]
Start = tuple[np.ndarray, dict[str, Any]]
"""A vector env's reset, ``(obs, infos)``: what ``envs.reset(seed=...)`` returns."""


@dataclass(frozen=True)
class Policy:
    """How actions are chosen from an agent's outputs."""

    greedy: bool = False
    """Argmax instead of sampling (a Q-network always acts greedily)."""
    epsilon: float = 0.0
    """Chance of a uniformly random (legal) action instead, per env and step."""
    mask_illegal: bool = False
    """Choose among ``info["legal_actions"]`` only."""

    def __post_init__(self) -> None:
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must lie in [0, 1], got {self.epsilon}.")

    def choose(self, logits: Tensor, uniforms: Tensor, legal: Tensor | None = None) -> Tensor:
        """Actions ``(batch,)`` from ``logits (batch, actions)`` and ``uniforms (2, batch)``.

        Row 0 of ``uniforms`` samples the softmax (or is unused when greedy); row 1 decides
        exploration and picks the random action.
        """
        logits = logits.float()
        allowed = legal if (self.mask_illegal and legal is not None) else None
        if allowed is not None:
            logits = logits.masked_fill(~allowed, -torch.inf)
        if self.greedy:
            actions = logits.argmax(-1)
        else:
            cdf = torch.softmax(logits, -1).cumsum(-1)
            idx = torch.searchsorted(cdf, (uniforms[0] * cdf[:, -1])[:, None].contiguous())[:, 0]
            actions = idx.clamp(max=logits.shape[-1] - 1)
        if self.epsilon > 0:
            weights = torch.ones_like(logits) if allowed is None else allowed.float()
            weights[weights.sum(-1) == 0] = 1.0  # no legal move labelled: any move
            cdf = (weights / weights.sum(-1, keepdim=True)).cumsum(-1)
            # one uniform decides and picks: below epsilon explores, rescaled to [0, 1) it picks
            explore = uniforms[1] < self.epsilon
            pick = (uniforms[1] / max(self.epsilon, 1e-12)).clamp(max=1 - 1e-7)
            random = torch.searchsorted(cdf, pick[:, None].contiguous())[:, 0]
            actions = torch.where(explore, random.clamp(max=logits.shape[-1] - 1), actions)
        return actions


def policy_for(agent: HookedAgent, greedy: bool = False, **kwargs: Any) -> Policy:
    """The policy an evaluation uses for ``agent``: greedy for a Q-network, as asked otherwise."""
    return Policy(greedy=greedy or getattr(agent, "output", None) == "q", **kwargs)


def legal_actions(infos: dict[str, Any], n: int, num_actions: int) -> Tensor | None:
    """``info["legal_actions"]`` as a ``(n, actions)`` bool tensor, or None if not labelled."""
    if "legal_actions" not in infos:
        return None
    value = infos["legal_actions"]
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = np.stack([np.asarray(v) for v in value])
    return torch.from_numpy(np.asarray(value, dtype=bool).reshape(n, num_actions))


@dataclass
class Step:
    """One environment step of the whole batch: what the agent saw, output and did, and what
    the world returned."""

    obs: np.ndarray
    infos: dict[str, Any]
    logits: Tensor
    values: Tensor
    cache: Mapping[str, Tensor]
    uniforms: Tensor
    legal: Tensor | None
    actions: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_obs: np.ndarray
    next_infos: dict[str, Any]

    @property
    def done(self) -> np.ndarray:
        return np.asarray(self.terminated) | np.asarray(self.truncated)

    def end_info(self, i: int) -> dict[str, Any]:
        """The info dict holding env ``i``'s labels after this step (its final one if it ended)."""
        if self.done[i]:
            return self.next_infos.get("final_info", self.next_infos)
        return self.next_infos


def check_world(agent: HookedAgent, envs: Any, env_id: str = "the world") -> None:
    """One sentence when the agent cannot act in ``envs`` (observation shape, action count)."""
    shape = tuple(envs.single_observation_space.shape)
    if shape != tuple(agent.obs_shape):
        raise ValueError(
            f"The agent takes observations of shape {tuple(agent.obs_shape)} but {env_id} gives "
            f"{shape}; use the world the agent was built for."
        )
    n_actions = getattr(envs.single_action_space, "n", None)
    if n_actions is not None and int(n_actions) != agent.num_actions:
        raise ValueError(
            f"The agent has {agent.num_actions} actions but {env_id} has {int(n_actions)}; "
            "use the world the agent was built for."
        )


def steps(
    agent: HookedAgent,
    envs: Any,
    start: Start,
    policy: Policy,
    generator: torch.Generator,
    fwd_hooks: Hooks = (),
    cache: Sequence[str] = (),
    active: np.ndarray | None = None,
) -> Generator[Step, None, None]:
    """Step ``envs`` (already reset to ``start = (obs, infos)``) forever, one :class:`Step` per
    call.

    Hooks stay attached and the agent in eval mode while the caller iterates; both are undone
    when the caller stops (``break`` or garbage collection closes the generator).

    ``active``: a bool mask ``(n,)`` the caller may update between steps; rows it marks False
    (episodes the caller is done with) skip the agent's forward pass, their logits and values
    are zero and their actions meaningless. A wave of evaluation episodes waits for its longest
    one (a 500-step timeout among 100-step levels: 7x the useful work, measured). Only without
    hooks and cache, which may address batch rows. The uniforms are drawn for every row, so the
    active rows' random numbers are those of a full pass.
    """
    n = envs.num_envs
    obs, infos = start
    if policy.mask_illegal and "legal_actions" not in infos:
        raise ValueError("this world does not label info['legal_actions']; play unmasked.")
    was_training = agent.training
    agent.eval()
    try:
        acts: Mapping[str, Tensor]
        with agent.hooks(fwd_hooks=list(fwd_hooks)), torch.no_grad():
            while True:
                if cache:
                    (logits, values), acts = agent.run_with_cache(obs, names=list(cache))
                elif active is not None and not fwd_hooks and not active.all():
                    rows = torch.from_numpy(np.nonzero(active)[0])
                    part_logits, part_values = agent(obs[rows.numpy()]) if len(rows) else (
                        torch.zeros(0, agent.num_actions), torch.zeros(0))  # fmt: skip
                    logits = torch.zeros(n, part_logits.shape[-1])
                    values = torch.zeros(n)
                    logits[rows], values[rows] = (
                        part_logits.float().cpu(),
                        part_values.float().cpu(),
                    )
                    acts = {}
                else:
                    (logits, values), acts = agent(obs), {}
                logits, values = logits.float().cpu(), values.float().cpu()
                uniforms = torch.rand(2, n, generator=generator)
                legal = legal_actions(infos, n, agent.num_actions)
                actions = policy.choose(logits, uniforms, legal).numpy()
                next_obs, reward, terminated, truncated, next_infos = envs.step(actions)
                yield Step(obs, infos, logits, values, acts, uniforms, legal, actions,
                           np.asarray(reward), np.asarray(terminated), np.asarray(truncated),
                           next_obs, next_infos)  # fmt: skip
                obs, infos = next_obs, next_infos
    finally:
        agent.train(was_training)


@dataclass(frozen=True)
class Labels:
    """Which ``info`` labels each :class:`Episode` keeps: a start or trace label the world's
    info lacks at the first step is refused in one sentence; sums and end labels a world does not
    give are left out."""

    start: Sequence[str] = ()
    """Of the first observation."""
    trace: Sequence[str] = ()
    """Of every observation, the first and the last included."""
    sums: Sequence[str] = ()
    """Summed over the episode's steps (e.g. a reward component)."""
    end: Sequence[str] = ()
    """Of the last observation."""


@dataclass(frozen=True)
class EpisodeOptions:
    """How :func:`run_episodes` plays: seeds, policy, waves, and the labels it keeps."""

    seed: int = 10_000
    """Wave ``w``'s worlds are reset with ``seed + w * max_envs``; the actions' random numbers
    come from a generator seeded ``seed``."""
    policy: Policy | None = None
    """How actions are chosen; None: :func:`policy_for` the agent (greedy for a Q-network)."""
    max_envs: int = 256
    """Env slots played at once (one wave)."""
    labels: Labels = Labels()

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_envs, bool)
            or not isinstance(self.max_envs, int)
            or self.max_envs < 1
        ):
            raise ValueError(
                f"EpisodeOptions.max_envs must be an integer >= 1, got {self.max_envs!r}."
            )


@dataclass
class Episode:
    """One finished episode: return, length, success, and the labels the caller asked for."""

    ret: float = 0.0
    length: int = 0
    success: bool = False
    start: dict[str, Any] = field(default_factory=dict)
    """Labels of the first observation (:attr:`Labels.start`)."""
    trace: dict[str, list[Any]] = field(default_factory=dict)
    """Labels of every observation, the first and the last included (:attr:`Labels.trace`)."""
    sums: dict[str, float] = field(default_factory=dict)
    """Labels summed over the episode's steps (:attr:`Labels.sums`)."""
    end: dict[str, Any] = field(default_factory=dict)
    """Labels of the last observation (:attr:`Labels.end`), plus ``truncated``."""


def episode_success(final_info: dict[str, Any], i: int | np.integer, terminated: bool) -> bool:
    """An env's ``success`` label when it gives one, else 'terminated' (reaching a goal)."""
    if "success" in final_info:
        return bool(final_info["success"][i])
    return bool(terminated)


def _label(infos: dict[str, Any], key: str, i: int) -> Any:
    value = infos[key][i]
    return value.item() if isinstance(value, np.generic) else value


def first_episodes(
    agent: HookedAgent,
    envs: Any,
    start: Start,
    policy: Policy,
    generator: torch.Generator,
    fwd_hooks: Hooks = (),
    labels: Labels = Labels(),
    on_step: Callable[[Step, np.ndarray], None] | None = None,
) -> list[Episode]:
    """Step ``envs`` (reset to ``start``) until every slot has finished its first episode;
    return those episodes, with their ``labels``.

    ``on_step(step, active)`` sees every step with the mask of slots still in their first
    episode (e.g. to compare with an unhooked agent).
    """
    n = envs.num_envs
    infos = start[1]
    asked = [*labels.start, *labels.trace]
    missing = [k for k in asked if k not in infos]
    if missing:  # a typo would otherwise come back as an empty trace
        known = sorted(k for k in infos if not k.startswith("_"))
        raise ValueError(unknown_message("label (of the world's info)", missing[0], known))
    eps = [Episode() for _ in range(n)]
    for i, ep in enumerate(eps):
        ep.start = {k: _label(infos, k, i) for k in labels.start if k in infos}
        ep.trace = {k: [_label(infos, k, i)] for k in labels.trace if k in infos}
        ep.sums = {k: 0.0 for k in labels.sums}
    active = np.ones(n, dtype=bool)
    for step in steps(agent, envs, start, policy, generator, fwd_hooks, active=active):
        if on_step is not None:
            on_step(step, active)
        done = step.done
        for i in np.nonzero(active)[0].tolist():
            ep, src = eps[i], step.end_info(i)
            ep.ret += float(step.reward[i])
            ep.length += 1
            for k in ep.trace:
                ep.trace[k].append(_label(src, k, i))
            for k in labels.sums:
                if k in src:
                    ep.sums[k] += float(src[k][i])
            if done[i]:
                ep.success = episode_success(src, i, bool(step.terminated[i]))
                ep.end = {k: _label(src, k, i) for k in labels.end if k in src}
                ep.end["truncated"] = bool(step.truncated[i] and not step.terminated[i])
                active[i] = False
        if not active.any():
            break
    return eps


def run_episodes(
    agent: HookedAgent,
    episodes: int,
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    options: EpisodeOptions = EpisodeOptions(),
    *,
    fwd_hooks: Hooks = (),
    on_step: Callable[[Step, np.ndarray], None] | None = None,
) -> list[Episode]:
    """``episodes`` episodes of ``agent`` in ``env_id``, one per env slot, in waves of
    ``options.max_envs``; ``fwd_hooks`` stay attached throughout, ``on_step`` as
    :func:`first_episodes`.
    """
    from policylens.envs import make_vec

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    policy = options.policy or policy_for(agent)
    generator = torch.Generator().manual_seed(options.seed)
    done: list[Episode] = []
    wave = 0
    while len(done) < episodes:
        n = min(options.max_envs, episodes - len(done))
        envs = make_vec(env_id, n, **dict(env_kwargs or {}))
        try:
            check_world(agent, envs, env_id)
            start = envs.reset(seed=options.seed + wave * options.max_envs)
            done += first_episodes(
                agent, envs, start, policy, generator, fwd_hooks, options.labels, on_step
            )
        finally:
            envs.close()
        wave += 1
    return done
