"""Sparse autoencoders on agents: gather a hook's activations, splice an SAE in, ablate its latents.

:mod:`policylens.lenses.sae` trains SAEs on plain ``(samples, d_in)`` tensors. This module ties
them to a :class:`~policylens.agents.HookedAgent` acting in a world:

- :class:`HookSite` says how a hook's activation becomes SAE input vectors: ``vector`` for
  ``(batch, d)`` layers (an MLP's ``layers.0.hook_act``), ``channels`` for conv layers, where every
  spatial position's channel vector ``(batch, C, H, W) -> (batch * H * W, C)`` is one sample (the
  maze CNN's per-position features), ``flat`` for anything else flattened per observation.
- :func:`gather_activations` plays the agent and keeps observations, its outputs and the hook's
  activations in memory (:func:`activations_from_store` reads them from a ``policylens collect``
  store instead).
- :func:`splice_hook` replaces the hook's activation by the SAE's reconstruction;
  :func:`evaluate_spliced` compares the spliced agent with the original in the world (return,
  success, action agreement, value error) beside zero- and mean-ablation of the whole hook, the
  two baselines that give those numbers a scale.
- :func:`latent_ablation` removes one latent at a time (its decoder contribution is subtracted
  from the real activation, so the SAE's reconstruction error stays in) and measures the change
  in the action distribution and value; :func:`latent_cards` gathers what a feature dashboard shows.

An SAE folder written here (:func:`save_agent_sae`) is :func:`~policylens.lenses.sae.save_sae`'s
``config.json`` + ``sae.safetensors`` plus ``site.json`` (hook, layout, activation shape, source run
and checkpoint, world, held-out metrics) and ``history.json`` (the training curve).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from policylens.artifacts import read_json, write_json
from policylens.lenses.sae import (
    CONFIG_FILE,
    SAELENS_CFG_FILE,
    SAEConfig,
    SparseAutoencoder,
    evaluate_sae,
    export_saelens,
    import_saelens,
    load_sae,
    save_sae,
    train_sae,
)
from policylens.rollout import stats

LAYOUTS: dict[str, str] = {
    "auto": "channels for (C, H, W) activations, vector for (d,), flat otherwise",
    "vector": "one (d,) vector per observation",
    "channels": "one (C,) channel vector per spatial position of a (C, H, W) activation",
    "flat": "the whole activation flattened per observation",
}
SITE_FILE = "site.json"
HISTORY_FILE = "history.json"
SITE_FORMAT = "policylens-sae-site/1"
CONDITIONS = ("original", "sae", "zero", "mean")
"""What sits at the hook in :func:`evaluate_spliced`: nothing changed, the SAE reconstruction,
zeros, the hook's mean activation."""


# -- hook sites -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HookSite:
    """A hook of an agent and how its activations map to SAE input vectors."""

    hook: str
    layout: str
    """``vector``, ``channels`` or ``flat`` (see :data:`LAYOUTS`)."""
    shape: tuple[int, ...]
    """Activation shape of one observation, e.g. ``(256,)`` or ``(16, 9, 9)``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.layout not in ("vector", "channels", "flat"):
            raise ValueError(
                f"Unknown layout {self.layout!r}; use one of vector, channels, flat (or auto)."
            )
        if self.layout == "channels" and len(self.shape) != 3:
            raise ValueError(
                f"Hook {self.hook!r} gives activations of shape {self.shape} per observation; the "
                "channels layout needs (C, H, W): use layout 'flat' or 'vector'."
            )
        if self.layout == "vector" and len(self.shape) != 1:
            raise ValueError(
                f"Hook {self.hook!r} gives activations of shape {self.shape} per observation; the "
                "vector layout needs (d,): use layout 'channels' or 'flat'."
            )

    @property
    def d_in(self) -> int:
        """Width of one SAE input vector."""
        return self.shape[0] if self.layout == "channels" else max(1, math.prod(self.shape))

    @property
    def positions(self) -> int:
        """SAE input vectors per observation (H * W for channels, else 1)."""
        return self.shape[1] * self.shape[2] if self.layout == "channels" else 1

    def describe(self) -> str:
        if self.layout == "channels":
            c, h, w = self.shape
            return f"{c}-wide channel vectors at {h}x{w} positions of {self.hook!r}"
        return f"{self.d_in}-wide vectors of {self.hook!r} (activation shape {self.shape})"

    def to_vectors(self, act: Tensor) -> Tensor:
        """``(batch, *shape)`` -> ``(batch * positions, d_in)`` float vectors."""
        if tuple(act.shape[1:]) != self.shape:
            raise ValueError(
                f"Hook {self.hook!r} gave activations of shape {tuple(act.shape[1:])} per "
                f"observation, but this site expects {self.shape}; rebuild the site for this agent."
            )
        if self.layout == "channels":
            # permute + reshape (not view): conv activations may be channels_last tensors
            return act.permute(0, 2, 3, 1).reshape(-1, self.shape[0]).float()  # (B*H*W, C)
        return act.reshape(act.shape[0], -1).float()  # (B, d_in)

    def from_vectors(self, vectors: Tensor, batch: int) -> Tensor:
        """``(batch * positions, d_in)`` -> ``(batch, *shape)`` (the inverse of to_vectors)."""
        if self.layout == "channels":
            c, h, w = self.shape
            return vectors.reshape(batch, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        return vectors.reshape(batch, *self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, "layout": self.layout, "shape": list(self.shape)}


def _resolve_layout(layout: str, shape: tuple[int, ...]) -> str:
    if layout not in LAYOUTS:
        import difflib

        close = difflib.get_close_matches(str(layout), list(LAYOUTS), n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown layout {layout!r}.{hint} Choose one of {', '.join(LAYOUTS)}.")
    if layout != "auto":
        return layout
    if len(shape) == 3:
        return "channels"
    return "vector" if len(shape) == 1 else "flat"


def hook_site(agent, hook: str, layout: str = "auto") -> HookSite:
    """The site of ``hook`` on ``agent`` (its activation shape read from one forward pass)."""
    if hook not in agent.hook_names():
        from policylens.agents.hooks import unknown_name_message

        raise ValueError(unknown_name_message("hook name", hook, agent.hook_names()))
    dtype = torch.uint8 if agent.obs_kind == "image" else agent.dtype
    obs = torch.zeros((1, *agent.obs_shape), dtype=dtype, device=agent.device)
    with torch.no_grad():
        _, cache = agent.run_with_cache(obs, names=[hook])
    shape = tuple(cache[hook].shape[1:])
    return HookSite(hook, _resolve_layout(layout, shape), shape)


def check_sae_fits(sae: SparseAutoencoder, site: HookSite) -> None:
    """Raise a clear ValueError when the SAE's width is not the site's vector width."""
    if sae.config.d_in != site.d_in:
        raise ValueError(
            f"The SAE reads {sae.config.d_in}-wide vectors but the hook gives "
            f"{site.describe()}; use an SAE trained on this hook (and layout) or pick the hook "
            "it was trained on."
        )


# -- splicing hooks -------------------------------------------------------------------------------
def splice_hook(
    sae: SparseAutoencoder, site: HookSite, zero_latents: Sequence[int] | Tensor | None = None
) -> Callable[[Tensor, Any], Tensor]:
    """A hook fn replacing the activation by the SAE reconstruction (some latents zeroed)."""
    check_sae_fits(sae, site)
    keep = None
    if zero_latents is not None and len(zero_latents):
        keep = torch.ones(sae.config.d_sae)
        keep[torch.as_tensor(zero_latents, dtype=torch.long)] = 0.0

    def fn(act: Tensor, hook: Any) -> Tensor:
        x = site.to_vectors(act)  # (B * positions, d_in)
        z = sae.encode(x)
        if keep is not None:
            z = z * keep.to(z.device)
        recon = sae.decode(z)
        return site.from_vectors(recon, act.shape[0]).to(act.dtype)

    return fn


def zero_hook(act: Tensor, hook: Any) -> Tensor:
    """Zero-ablation of the whole hook."""
    return torch.zeros_like(act)


def constant_hook(value: Tensor) -> Callable[[Tensor, Any], Tensor]:
    """Replace the activation of every observation by ``value`` (shape of one observation's)."""

    def fn(act: Tensor, hook: Any) -> Tensor:
        if tuple(value.shape) != tuple(act.shape[1:]):
            raise ValueError(
                f"Mean activation of shape {tuple(value.shape)} does not fit hook {hook.name!r} "
                f"with activations {tuple(act.shape[1:])}; compute the mean on this hook."
            )
        return value.to(act.device, act.dtype).expand_as(act).clone()

    return fn


def latent_removal_hook(
    sae: SparseAutoencoder, site: HookSite, latent: int
) -> Callable[[Tensor, Any], Tensor]:
    """A hook fn that subtracts latent ``latent``'s decoder contribution from the activation.

    The reconstruction error stays in (activation - z_j * W_dec[j]), so the effect measured is the
    latent's effect on the real agent, not on the SAE-spliced one.
    """
    check_sae_fits(sae, site)

    def fn(act: Tensor, hook: Any) -> Tensor:
        x = site.to_vectors(act)  # (B * positions, d_in)
        z_j = sae.encode(x)[:, latent]  # (B * positions,)
        delta = z_j[:, None] * sae.W_dec[latent]  # (B * positions, d_in)
        return act - site.from_vectors(delta, act.shape[0]).to(act.dtype)

    return fn


# -- activation data ------------------------------------------------------------------------------
@dataclass
class ActivationData:
    """Observations, the agent's outputs on them and one hook's activations, in memory."""

    site: HookSite
    obs: np.ndarray
    """(N, *obs_shape) observations the agent acted on."""
    acts: Tensor
    """(N, *site.shape) float32 activations at the hook."""
    logits: Tensor | None = None
    """(N, num_actions) logits of the unmodified agent (None when not known)."""
    values: Tensor | None = None
    """(N,) values of the unmodified agent."""
    legal: np.ndarray | None = None
    """(N, num_actions) bool legal-action masks where the world labels them."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def vectors(self) -> Tensor:
        """All SAE input vectors ``(N * positions, d_in)``."""
        return self.site.to_vectors(self.acts)

    def split(self, holdout: float) -> tuple[ActivationData, ActivationData]:
        """The first and last ``holdout`` fraction of observations (later episodes held out)."""
        n_test = int(round(len(self) * holdout))
        if not 0 < n_test < len(self):
            raise ValueError(
                f"Cannot hold out {holdout:.0%} of {len(self)} observations; gather more steps or "
                "change the holdout fraction."
            )
        cut = len(self) - n_test
        return self.take(slice(0, cut)), self.take(slice(cut, len(self)))

    def take(self, rows: slice | np.ndarray) -> ActivationData:
        def part(x: Any) -> Any:
            return None if x is None else x[rows]

        return ActivationData(
            self.site,
            self.obs[rows],
            self.acts[rows],
            part(self.logits),
            part(self.values),
            part(self.legal),
            dict(self.meta),
        )


def _legal_mask(infos: dict[str, Any], n: int, num_actions: int) -> np.ndarray | None:
    if "legal_actions" not in infos:
        return None
    value = infos["legal_actions"]
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = np.stack([np.asarray(v) for v in value])
    return np.asarray(value, dtype=bool).reshape(n, num_actions)


def _choose(logits: Tensor, greedy: bool, uniforms: Tensor | None, legal: Tensor | None) -> Tensor:
    """Actions from logits: argmax, or inverse-CDF sampling with the given uniforms (batch,)."""
    if legal is not None:
        logits = logits.masked_fill(~legal, -torch.inf)
    if greedy:
        return logits.argmax(-1)
    cdf = torch.softmax(logits.float(), -1).cumsum(-1)  # (batch, A)
    idx = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None].contiguous())[:, 0]
    return idx.clamp(max=logits.shape[-1] - 1)


def _make_envs(env_id: str, n: int, env_kwargs: dict[str, Any], agent):
    from policylens.envs import make_vec

    envs = make_vec(env_id, n, **env_kwargs)
    shape = tuple(envs.single_observation_space.shape)
    if shape != tuple(agent.obs_shape):
        envs.close()
        raise ValueError(
            f"The agent takes observations of shape {tuple(agent.obs_shape)} but {env_id} with "
            f"{env_kwargs} gives {shape}; use the world the agent was trained in."
        )
    return envs


@torch.no_grad()
def gather_activations(
    agent,
    hook: str,
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    steps: int = 10_000,
    seed: int = 0,
    greedy: bool = False,
    mask_illegal: bool = False,
    layout: str = "auto",
    num_envs: int = 32,
) -> ActivationData:
    """Play ``agent`` for ``steps`` environment steps and keep what the SAE tools need.

    Environments autoreset, so the rows cover many episodes; actions are sampled (or the argmax
    with ``greedy``, the right policy for a Q-network), over legal actions only with
    ``mask_illegal`` (worlds that label ``info["legal_actions"]``).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    site = hook_site(agent, hook, layout)
    env_kwargs = dict(env_kwargs or {})
    n = min(num_envs, steps)
    envs = _make_envs(env_id, n, env_kwargs, agent)
    gen = torch.Generator().manual_seed(seed)
    obs, infos = envs.reset(seed=seed)
    if mask_illegal and "legal_actions" not in infos:
        envs.close()
        raise ValueError(f"{env_id} does not label info['legal_actions']; gather unmasked.")
    parts: dict[str, list] = {"obs": [], "acts": [], "logits": [], "values": [], "legal": []}
    rows = 0
    was_training = agent.training
    agent.eval()
    try:
        while rows < steps:
            (logits, values), cache = agent.run_with_cache(obs, names=[hook])
            legal = _legal_mask(infos, n, agent.num_actions)
            take = min(n, steps - rows)
            parts["obs"].append(np.asarray(obs)[:take].copy())
            parts["acts"].append(cache[hook][:take].float().cpu().contiguous())
            parts["logits"].append(logits[:take].float().cpu())
            parts["values"].append(values[:take].float().cpu())
            if legal is not None:
                parts["legal"].append(legal[:take])
            mask = torch.from_numpy(legal) if (mask_illegal and legal is not None) else None
            actions = _choose(logits.float().cpu(), greedy, torch.rand(n, generator=gen), mask)
            obs, _, _, _, infos = envs.step(actions.numpy())
            rows += take
    finally:
        agent.train(was_training)
        envs.close()
    return ActivationData(
        site=site,
        obs=np.concatenate(parts["obs"]),
        acts=torch.cat(parts["acts"]),
        logits=torch.cat(parts["logits"]),
        values=torch.cat(parts["values"]),
        legal=np.concatenate(parts["legal"]) if parts["legal"] else None,
        meta={
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "steps": steps,
            "seed": seed,
            "greedy": greedy,
            "mask_illegal": mask_illegal,
        },
    )


def activations_from_store(
    store, hook: str, layout: str = "auto", max_rows: int | None = None, seed: int = 0
) -> ActivationData:
    """Read a hook's activations (and observations, logits, values) from a collect store.

    ``max_rows`` caps the observations read into memory (a seeded random subset, in row order).
    """
    from policylens.rollout import open_store
    from policylens.rollout.store import unknown_message

    store = open_store(store) if isinstance(store, str | os.PathLike) else store
    if hook not in store.hooks:
        raise ValueError(
            unknown_message(f"hook in store {store.path}", hook, store.hooks)
            + " Collect the store with --hooks including it."
        )
    arr = store[f"activations/{hook}"]
    shape = tuple(arr.row_shape)
    site = HookSite(hook, _resolve_layout(layout, shape), shape)
    n = len(store)
    rows: np.ndarray | slice = slice(0, n)
    if max_rows is not None and max_rows < n:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=max_rows, replace=False))
    meta = dict(store.meta)
    return ActivationData(
        site=site,
        obs=store["obs"][rows],
        acts=torch.from_numpy(np.ascontiguousarray(arr[rows], dtype=np.float32)),
        logits=torch.from_numpy(store["logits"][rows].astype(np.float32))
        if "logits" in store
        else None,
        values=torch.from_numpy(store["values"][rows].astype(np.float32))
        if "values" in store
        else None,
        legal=store["labels/legal_actions"][rows].astype(bool)
        if "labels/legal_actions" in store
        else None,
        meta={
            "store": str(store.path),
            "env_id": meta.get("env_id"),
            "env_kwargs": meta.get("env_kwargs", {}),
            "run": meta.get("run"),
            "checkpoint_step": meta.get("checkpoint_step"),
            "greedy": meta.get("greedy", False),
        },
    )


# -- training and files ---------------------------------------------------------------------------
def sae_config_for(
    site: HookSite,
    arch: str = "topk",
    expansion: int = 8,
    k: int | None = None,
    samples: int = 500_000,
    seed: int = 0,
    **overrides: Any,
) -> SAEConfig:
    """An SAEConfig sized for ``site``: ``d_sae = expansion * d_in``; k defaults to min(32, d_in/2)."""
    if expansion < 1:
        raise ValueError(f"expansion must be >= 1, got {expansion}.")
    if k is None:
        k = min(32, max(1, site.d_in // 2))
    return SAEConfig(
        d_in=site.d_in,
        d_sae=expansion * site.d_in,
        arch=arch,
        k=k,
        samples=samples,
        seed=seed,
        **overrides,
    )


def train_agent_sae(
    data: ActivationData,
    config: SAEConfig,
    holdout: float = 0.1,
    progress: bool = False,
) -> tuple[SparseAutoencoder, list[dict[str, float]], dict[str, Any]]:
    """Train an SAE on ``data``'s vectors, holding out the last observations for its metrics.

    Returns the SAE, its training history and a summary: held-out mse, explained variance, l0,
    dead fraction, training samples per second, vectors used.
    """
    if config.d_in != data.site.d_in:
        raise ValueError(
            f"SAEConfig.d_in={config.d_in} but the data are {data.site.describe()}; size the "
            "config with sae_config_for(site)."
        )
    train, test = data.split(holdout)
    x_train = train.vectors()  # (N_train * positions, d_in)
    t0 = time.perf_counter()
    sae, history = train_sae(x_train, config, progress=progress)
    seconds = time.perf_counter() - t0
    metrics = evaluate_sae(sae, test.vectors())
    seen = history[-1]["samples"] if history else 0
    summary = {
        **metrics,
        "train_vectors": int(x_train.shape[0]),
        "test_vectors": int(test.vectors().shape[0]),
        "samples": int(seen),
        "seconds": round(seconds, 3),
        "samples_per_s": round(seen / max(seconds, 1e-9), 1),
    }
    return sae, history, summary


def save_agent_sae(
    folder: str | os.PathLike,
    sae: SparseAutoencoder,
    site: HookSite,
    meta: dict[str, Any] | None = None,
    history: list[dict[str, float]] | None = None,
    saelens: bool = False,
) -> Path:
    """Write the SAE with its site (and history; and a SAELens copy in ``saelens/``)."""
    check_sae_fits(sae, site)
    folder = Path(folder)
    save_sae(sae, folder)
    write_json(folder / SITE_FILE, {"format": SITE_FORMAT, **site.to_dict(), **(meta or {})})
    if history is not None:
        write_json(folder / HISTORY_FILE, history)
    if saelens:
        export_saelens(
            sae,
            folder / "saelens",
            metadata={"hook_name": site.hook, "policylens_site": site.to_dict()},
        )
    return folder


def load_agent_sae(folder: str | os.PathLike) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Load an SAE folder: ours (``site.json`` + ``config.json``) or a SAELens one (``cfg.json``).

    Returns the SAE and its site metadata (``hook``, ``layout``, ``shape`` where known).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No SAE folder at {folder}; train one with `policylens sae train`."
        )
    if (folder / CONFIG_FILE).is_file():
        sae = load_sae(folder)
        info = read_json(folder / SITE_FILE) if (folder / SITE_FILE).is_file() else {}
        return sae, dict(info)
    if (folder / SAELENS_CFG_FILE).is_file():
        sae = import_saelens(folder)
        meta = read_json(folder / SAELENS_CFG_FILE).get("metadata") or {}
        info = dict(meta.get("policylens_site") or {})
        if "hook" not in info and meta.get("hook_name"):
            info["hook"] = meta["hook_name"]
        return sae, info
    raise FileNotFoundError(
        f"{folder} holds no SAE ({CONFIG_FILE} or {SAELENS_CFG_FILE}); pass an SAE folder."
    )


def site_for_sae(agent, info: dict[str, Any], hook: str | None = None) -> HookSite:
    """The site an SAE folder names (``hook`` overrides it), checked against the agent."""
    name = hook or info.get("hook")
    if not name:
        raise ValueError("The SAE folder does not name its hook; pass --hook.")
    site = hook_site(agent, name, info.get("layout", "auto") if hook is None else "auto")
    if info.get("shape") and tuple(info["shape"]) != site.shape and hook is None:
        raise ValueError(
            f"The SAE was trained on {name!r} activations of shape {tuple(info['shape'])} but "
            f"this agent's are {site.shape}; use the agent the SAE was trained on."
        )
    return site


# -- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def compare_outputs(
    agent,
    obs: np.ndarray | Tensor,
    fwd_hooks: list,
    greedy: bool,
    seed: int = 0,
    legal: np.ndarray | None = None,
    batch_size: int = 2048,
) -> dict[str, float]:
    """How far a hooked agent's outputs are from the original's on the same observations.

    action_agreement: fraction of observations where the chosen action is the same (argmax, or
    sampled with the same random number through the inverse CDF); kl: mean KL(original || hooked)
    of the action distributions; value_error: mean |V_hooked - V_original|.
    """
    gen = torch.Generator().manual_seed(seed)
    agree = kl = verr = 0.0
    n = len(obs)
    for start in range(0, n, batch_size):
        o = obs[start : start + batch_size]
        lo, vo = agent(o)
        lh, vh = agent.run_with_hooks(o, fwd_hooks=fwd_hooks)
        mask = None if legal is None else torch.from_numpy(legal[start : start + batch_size])
        u = torch.rand(len(o), generator=gen)
        a_o = _choose(lo.float(), greedy, u, mask)
        a_h = _choose(lh.float(), greedy, u, mask)
        agree += float((a_o == a_h).sum())
        lpo, lph = F.log_softmax(lo.float(), -1), F.log_softmax(lh.float(), -1)
        kl += float((lpo.exp() * (lpo - lph)).sum())
        verr += float((vh.float() - vo.float()).abs().sum())
    return {"action_agreement": agree / n, "kl": kl / n, "value_error": verr / n}


@torch.no_grad()
def play_episodes(
    agent,
    episodes: int,
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 10_000,
    greedy: bool = False,
    mask_illegal: bool = False,
    fwd_hooks: list | None = None,
    max_envs: int = 256,
) -> dict[str, Any]:
    """Episodes of the (hooked) agent, each step compared with the unhooked agent on the same obs.

    Each env slot contributes its first episode. Returns return, success and length (95%
    intervals) and, over all steps played, action_agreement (the hooked agent's action equals the
    one the original would take with the same random number) and value_error (mean |dV|).
    """
    from policylens.train.episodes import episode_success

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    env_kwargs = dict(env_kwargs or {})
    gen = torch.Generator().manual_seed(seed)
    rets: list[float] = []
    lens: list[int] = []
    wins: list[bool] = []
    agree = steps = 0
    verr = 0.0
    wave = 0
    was_training = agent.training
    agent.eval()
    try:
        while len(rets) < episodes:
            n = min(max_envs, episodes - len(rets))
            envs = _make_envs(env_id, n, env_kwargs, agent)
            obs, infos = envs.reset(seed=seed + wave * max_envs)
            wave += 1
            if mask_illegal and "legal_actions" not in infos:
                envs.close()
                raise ValueError(f"{env_id} does not label info['legal_actions']; play unmasked.")
            ret, length = np.zeros(n), np.zeros(n, dtype=np.int64)
            ended: dict[int, tuple[float, int, bool]] = {}
            active = np.ones(n, dtype=bool)
            while active.any():
                legal = _legal_mask(infos, n, agent.num_actions) if mask_illegal else None
                mask = None if legal is None else torch.from_numpy(legal)
                u = torch.rand(n, generator=gen)
                lo, vo = agent(obs)
                if fwd_hooks:
                    lh, vh = agent.run_with_hooks(obs, fwd_hooks=fwd_hooks)
                else:
                    lh, vh = lo, vo
                a_h = _choose(lh.float().cpu(), greedy, u, mask)
                a_o = _choose(lo.float().cpu(), greedy, u, mask)
                idx = torch.from_numpy(np.nonzero(active)[0])
                agree += int((a_h[idx] == a_o[idx]).sum())
                verr += float((vh.float().cpu() - vo.float().cpu())[idx].abs().sum())
                steps += len(idx)
                obs, reward, terminated, truncated, infos = envs.step(a_h.numpy())
                final = infos.get("final_info", infos)
                for i in np.nonzero(active)[0]:
                    ret[i] += float(reward[i])
                    length[i] += 1
                    if terminated[i] or truncated[i]:
                        ended[i] = (
                            float(ret[i]),
                            int(length[i]),
                            episode_success(final, i, bool(terminated[i])),
                        )
                        active[i] = False
            envs.close()
            for i in range(n):
                rets.append(ended[i][0])
                lens.append(ended[i][1])
                wins.append(ended[i][2])
    finally:
        agent.train(was_training)
    return {
        "episodes": len(rets),
        "return": stats.mean(rets),
        "success": stats.proportion(wins),
        "length": stats.mean(lens),
        "steps": steps,
        "action_agreement": agree / max(steps, 1),
        "value_error": verr / max(steps, 1),
    }


def condition_hooks(
    condition: str, sae: SparseAutoencoder, site: HookSite, mean_act: Tensor | None
) -> list:
    """``fwd_hooks`` that put ``condition``'s activation (see :data:`CONDITIONS`) at the hook."""
    if condition == "original":
        return []
    if condition == "sae":
        return [(site.hook, splice_hook(sae, site))]
    if condition == "zero":
        return [(site.hook, zero_hook)]
    if condition == "mean":
        if mean_act is None:
            raise ValueError("Mean ablation needs the hook's mean activation; pass data.")
        return [(site.hook, constant_hook(mean_act))]
    raise ValueError(f"Unknown condition {condition!r}; use one of {', '.join(CONDITIONS)}.")


def evaluate_spliced(
    agent,
    sae: SparseAutoencoder,
    site: HookSite,
    data: ActivationData,
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    episodes: int = 100,
    seed: int = 10_000,
    greedy: bool = False,
    mask_illegal: bool = False,
    conditions: Sequence[str] = CONDITIONS,
) -> dict[str, Any]:
    """The SAE's quality as a replacement for the hook, with zero/mean ablation for scale.

    ``data`` (observations of the original agent, e.g. from :func:`gather_activations` with a
    seed not used for training) gives the reconstruction metrics, the hook's mean activation, and
    offline output comparisons; then every condition plays ``episodes`` episodes in the world.
    ``return_recovered`` is (R_sae - R_zero) / (R_original - R_zero).
    """
    check_sae_fits(sae, site)
    if data.site != site:
        raise ValueError(
            f"The data hold {data.site.describe()} but the SAE is evaluated on {site.describe()}; "
            "gather the data at the same hook and layout."
        )
    for c in conditions:
        if c not in CONDITIONS:
            raise ValueError(f"Unknown condition {c!r}; use some of {', '.join(CONDITIONS)}.")
    mean_act = data.acts.mean(0)  # (*site.shape)
    legal = data.legal if mask_illegal else None
    result: dict[str, Any] = {
        "hook": site.hook,
        "layout": site.layout,
        "d_in": site.d_in,
        "d_sae": sae.config.d_sae,
        "arch": sae.config.arch,
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs or {}),
        "greedy": greedy,
        "mask_illegal": mask_illegal,
        "reconstruction": evaluate_sae(sae, data.vectors()),
        "offline": {"observations": len(data)},
        "in_world": {},
    }
    for c in conditions:
        hooks = condition_hooks(c, sae, site, mean_act)
        if c != "original":
            result["offline"][c] = compare_outputs(
                agent, data.obs, hooks, greedy, seed=seed, legal=legal
            )
        result["in_world"][c] = play_episodes(
            agent, episodes, env_id, env_kwargs, seed, greedy, mask_illegal, hooks
        )
    w = result["in_world"]
    if {"original", "sae", "zero"} <= set(w):
        r_o, r_s, r_z = (w[c]["return"]["mean"] for c in ("original", "sae", "zero"))
        gap = r_o - r_z
        result["return_recovered"] = (r_s - r_z) / gap if abs(gap) > 1e-9 else math.nan
    return result


# -- latents --------------------------------------------------------------------------------------
@torch.no_grad()
def latent_activity(
    sae: SparseAutoencoder, data: ActivationData, batch_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Per observation and latent: the largest activation over positions and where it was.

    Returns ``(max_act (N, d_sae), position (N, d_sae))``; position indexes ``h * W + w`` for the
    channels layout (0 otherwise).
    """
    check_sae_fits(sae, data.site)
    P = data.site.positions
    maxes, where = [], []
    for acts in data.acts.split(batch_size):
        z = sae.encode(data.site.to_vectors(acts))  # (B * P, d_sae)
        z = z.reshape(acts.shape[0], P, -1)
        m, i = z.max(dim=1)
        maxes.append(m)
        where.append(i)
    return torch.cat(maxes), torch.cat(where)


@torch.no_grad()
def latent_entries(
    sae: SparseAutoencoder, data: ActivationData, batch_size: int = 1024
) -> tuple[Tensor, Tensor, Tensor]:
    """Every non-zero latent activation on ``data``, grouped by latent (a CSC-like layout).

    Returns ``(vector_index (nnz,), value (nnz,), starts (d_sae + 1,))``: latent j's entries are
    ``starts[j]:starts[j + 1]``; a vector index is ``row * positions + position``.
    """
    check_sae_fits(sae, data.site)
    P = data.site.positions
    idx, lat, val = [], [], []
    for b, acts in enumerate(data.acts.split(batch_size)):
        z = sae.encode(data.site.to_vectors(acts))  # (B * P, d_sae)
        v, j = torch.nonzero(z, as_tuple=True)
        idx.append(v + b * batch_size * P)
        lat.append(j)
        val.append(z[v, j])
    latent = torch.cat(lat)
    order = torch.argsort(latent, stable=True)
    counts = torch.bincount(latent, minlength=sae.config.d_sae)
    starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return torch.cat(idx)[order], torch.cat(val)[order], starts


@torch.no_grad()
def latent_ablation(
    agent,
    sae: SparseAutoencoder,
    site: HookSite,
    data: ActivationData,
    latents: Sequence[int] | None = None,
    max_rows: int = 512,
    greedy: bool = True,
    entries: tuple[Tensor, Tensor, Tensor] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The effect of removing each latent on the agent's actions and value, ranked by KL.

    For latent j the hook's activation becomes ``act - z_j * W_dec[j]``, with ``z_j`` encoded from
    ``data.acts`` (the reconstruction error stays in, so this is the latent's effect on the real
    agent). Only observations where j fires can change; up to ``max_rows`` of them (a seeded
    sample) are run. Per latent: ``frequency`` (share of observations where it fires), and over
    those observations ``kl`` (KL(original || ablated) of the action distribution),
    ``flip`` (share whose argmax action changes, or sampled action with shared random numbers when
    ``greedy`` is False), ``value_change`` (mean V_ablated - V), ``logit_change`` (per action)
    and ``prob_change`` (per action); ``kl_all`` = frequency * kl and ``flip_all`` = frequency *
    flip average over all observations. The list is ordered by ``flip_all`` for greedy agents
    (softmax of Q-values says little), by ``kl_all`` otherwise. ``latents`` defaults to every
    latent that fires on ``data``.
    """
    check_sae_fits(sae, site)
    if data.site != site:
        raise ValueError(
            f"The data hold {data.site.describe()} but the ablation is on {site.describe()}; "
            "gather the data at the same hook and layout."
        )
    vec_idx, values, starts = entries if entries is not None else latent_entries(sae, data)
    P, N = site.positions, len(data)
    if latents is None:
        latents = torch.nonzero(starts[1:] > starts[:-1])[:, 0].tolist()
    rng = np.random.default_rng(seed)
    base = [agent(o) for o in np.array_split(data.obs, max(1, math.ceil(N / 2048)))]
    base_logits = torch.cat([b[0] for b in base]).float()  # (N, A) the unmodified agent
    base_values = torch.cat([b[1] for b in base]).float()  # (N,)
    out = []
    for j in latents:
        j = int(j)
        if not 0 <= j < sae.config.d_sae:
            raise ValueError(f"Latent {j} does not exist; the SAE has {sae.config.d_sae} latents.")
        seg = slice(int(starts[j]), int(starts[j + 1]))
        vec, val = vec_idx[seg], values[seg]
        rows = torch.unique(vec // P).numpy()  # observations where latent j fires
        freq = len(rows) / N
        entry: dict[str, Any] = {"latent": j, "frequency": freq, "rows": int(len(rows))}
        if len(rows) == 0:
            entry.update(kl=0.0, flip=0.0, value_change=0.0, kl_all=0.0, flip_all=0.0,
                         logit_change=[0.0] * agent.num_actions,
                         prob_change=[0.0] * agent.num_actions)  # fmt: skip
            out.append(entry)
            continue
        if len(rows) > max_rows:
            rows = np.sort(rng.choice(rows, size=max_rows, replace=False))
        rows_t = torch.from_numpy(rows)
        # z_j at every position of the chosen rows: (R, P), then its decoder contribution.
        pos = torch.searchsorted(rows_t, vec // P)
        keep = (pos < len(rows)) & (rows_t[pos.clamp(max=len(rows) - 1)] == vec // P)
        z = torch.zeros(len(rows) * P)
        z[pos[keep] * P + vec[keep] % P] = val[keep]
        delta = site.from_vectors(z[:, None] * sae.W_dec[j], len(rows))  # (R, *site.shape)

        def remove(act: Tensor, hook: Any, delta: Tensor = delta) -> Tensor:
            return act - delta.to(act.device, act.dtype)

        lo, vo = base_logits[rows_t], base_values[rows_t]
        lh, vh = agent.run_with_hooks(data.obs[rows], fwd_hooks=[(site.hook, remove)])
        lh, vh = lh.float(), vh.float()
        lpo, lph = F.log_softmax(lo, -1), F.log_softmax(lh, -1)
        kl = float((lpo.exp() * (lpo - lph)).sum(-1).mean())
        u = torch.from_numpy(rng.random(len(rows)).astype(np.float32))
        flip = float((_choose(lo, greedy, u, None) != _choose(lh, greedy, u, None)).float().mean())
        entry.update(
            kl=kl,
            flip=flip,
            value_change=float((vh - vo).mean()),
            kl_all=kl * freq,
            flip_all=flip * freq,
            logit_change=(lh - lo).mean(0).tolist(),
            prob_change=(lph.exp() - lpo.exp()).mean(0).tolist(),
        )
        out.append(entry)
    first, second = ("flip_all", "kl_all") if greedy else ("kl_all", "flip_all")
    out.sort(key=lambda e: (-e[first], -e[second]))
    return out


@dataclass
class LatentCard:
    """What a feature dashboard shows about one latent."""

    latent: int
    frequency: float
    """Share of observations where the latent fires (at any position)."""
    top_rows: list[int]
    top_values: list[float]
    top_positions: list[tuple[int, int] | None]
    """(row, col) of the strongest position for the channels layout, else None."""
    top_obs: np.ndarray
    """(n_top, *obs_shape) the top-activating observations."""
    activations: np.ndarray
    """Non-zero activations of the latent over all observations and positions (histogram)."""
    ablation: dict[str, Any]
    """This latent's :func:`latent_ablation` entry."""

    def summary(self) -> dict[str, Any]:
        return {
            "latent": self.latent,
            "frequency": self.frequency,
            "max_activation": float(self.top_values[0]) if self.top_values else 0.0,
            "top_rows": self.top_rows,
            **{k: v for k, v in self.ablation.items() if k not in ("latent", "frequency")},
        }


@torch.no_grad()
def latent_cards(
    agent,
    sae: SparseAutoencoder,
    site: HookSite,
    data: ActivationData,
    latents: Sequence[int] | None = None,
    top: int = 8,
    n_examples: int = 6,
    max_rows: int = 512,
    greedy: bool = True,
    seed: int = 0,
) -> tuple[list[LatentCard], list[dict[str, Any]]]:
    """Dashboard cards for ``latents`` (default: the ``top`` latents by ablation effect).

    Returns the cards and the full ablation ranking (every latent that fires on ``data``).
    """
    activity, where = latent_activity(sae, data)
    entries = latent_entries(sae, data)
    ranking = latent_ablation(
        agent, sae, site, data, None, max_rows=max_rows, greedy=greedy, entries=entries,
        seed=seed,
    )  # fmt: skip
    by_latent = {e["latent"]: e for e in ranking}
    if latents is None:
        latents = [e["latent"] for e in ranking[:top]]
    missing = [int(j) for j in latents if int(j) not in by_latent]
    if missing:
        bad = [j for j in missing if not 0 <= j < sae.config.d_sae]
        if bad:
            raise ValueError(
                f"Latent(s) {bad} do not exist; the SAE has {sae.config.d_sae} latents."
            )
        for e in latent_ablation(agent, sae, site, data, missing, max_rows, greedy, entries):
            by_latent[e["latent"]] = e
    cards = []
    W = site.shape[2] if site.layout == "channels" else 1
    for j in latents:
        j = int(j)
        col = activity[:, j]
        rows: list[int] = []
        seen: set[bytes] = set()
        for r in torch.argsort(col, descending=True).tolist():  # distinct observations only
            if len(rows) == n_examples or col[r] <= 0:
                break
            key = np.ascontiguousarray(data.obs[r]).tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(r)
        positions: list[tuple[int, int] | None] = [
            (int(where[r, j]) // W, int(where[r, j]) % W) if site.layout == "channels" else None
            for r in rows
        ]
        seg = slice(int(entries[2][j]), int(entries[2][j + 1]))
        cards.append(
            LatentCard(
                latent=j,
                frequency=float((col > 0).float().mean()),
                top_rows=rows,
                top_values=[float(col[r]) for r in rows],
                top_positions=positions,
                top_obs=data.obs[rows] if rows else data.obs[:0],
                activations=entries[1][seg].numpy(),
                ablation=by_latent[j],
            )
        )
    return cards, ranking


# -- runs -----------------------------------------------------------------------------------------
def run_world(run) -> dict[str, Any]:
    """World and acting policy of a run: env_id, env_kwargs, greedy (Q-networks) and masking."""
    trainer = run.config.get("trainer", {})
    if "env_id" not in trainer:
        raise ValueError(f"Run {run.path} does not name its world (trainer.env_id in config.json).")
    agent_cfg = run.config.get("agent", {})
    q = run.config.get("kind") == "dqn" or (agent_cfg.get("kwargs") or {}).get("head") == "q"
    return {
        "env_id": trainer["env_id"],
        "env_kwargs": dict(trainer.get("env_kwargs", {})),
        "greedy": bool(q),
        "mask_illegal": bool(trainer.get("mask_illegal", False)),
    }


def default_sae_dir(run, hook: str, arch: str, expansion: int) -> Path:
    """``RUN/analysis/sae/<hook>-<arch>-x<expansion>``."""
    return run.analysis_dir / "sae" / f"{hook}-{arch}-x{expansion}"


def train_run_sae(
    source: str | os.PathLike,
    hook: str,
    out: str | os.PathLike | None = None,
    *,
    arch: str = "topk",
    expansion: int = 8,
    k: int | None = None,
    l1_coeff: float | None = None,
    samples: int = 500_000,
    steps: int = 20_000,
    step: int | None = None,
    layout: str = "auto",
    seed: int = 0,
    holdout: float = 0.1,
    saelens: bool = False,
    progress: bool = False,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train an SAE on a run's agent (``steps`` steps of play) or on a collect store's activations.

    Writes the SAE folder (default ``RUN/analysis/sae/<hook>-<arch>-x<expansion>``) and returns it
    with the summary stored in its ``site.json``.
    """
    from policylens.rollout import is_store, open_store
    from policylens.runs import Run

    overrides = dict(config_overrides or {})
    if l1_coeff is not None:
        overrides["l1_coeff"] = l1_coeff
    meta: dict[str, Any]
    if is_store(source):
        store = open_store(source)
        data = activations_from_store(store, hook, layout, max_rows=steps, seed=seed)
        run_path = data.meta.get("run")
        meta = {
            "source": "store",
            "store": str(store.path),
            "run": run_path,
            "checkpoint_step": data.meta.get("checkpoint_step"),
            "env_id": data.meta.get("env_id"),
            "env_kwargs": data.meta.get("env_kwargs", {}),
        }
        if out is None:
            if not run_path:
                raise ValueError(
                    f"Store {store.path} was not collected from a run; pass --out for the SAE."
                )
            out = default_sae_dir(Run(run_path), hook, arch, expansion)
    else:
        run = Run(source)
        ckpt, _ = run.checkpoint(step)
        agent = run.load_agent(ckpt)
        world = run_world(run)
        data = gather_activations(
            agent, hook, world["env_id"], world["env_kwargs"], steps, seed=seed,
            greedy=world["greedy"], mask_illegal=world["mask_illegal"], layout=layout,
        )  # fmt: skip
        meta = {"source": "run", "run": str(run.path), "checkpoint_step": ckpt, **world}
        if out is None:
            out = default_sae_dir(run, hook, arch, expansion)
    config = sae_config_for(data.site, arch, expansion, k, samples, seed, **overrides)
    sae, history, summary = train_agent_sae(data, config, holdout, progress)
    meta.update(steps_gathered=len(data), seed=seed, metrics=summary)
    folder = save_agent_sae(out, sae, data.site, meta, history, saelens=saelens)
    return folder, {"sae_dir": str(folder), **data.site.to_dict(), "d_sae": config.d_sae, **meta}


def _run_and_sae(run_path: str | os.PathLike, sae_dir: str | os.PathLike, step: int | None,
                 hook: str | None):  # fmt: skip
    from policylens.runs import Run

    run = Run(run_path)
    sae, info = load_agent_sae(sae_dir)
    if (
        step is None
        and info.get("checkpoint_step") is not None
        and (str(Path(info.get("run") or "").resolve()) == str(run.path.resolve()))
    ):
        step = int(info["checkpoint_step"])
    ckpt, _ = run.checkpoint(step)
    agent = run.load_agent(ckpt)
    site = site_for_sae(agent, info, hook)
    check_sae_fits(sae, site)
    return run, ckpt, agent, sae, site


def eval_run_sae(
    run_path: str | os.PathLike,
    sae_dir: str | os.PathLike,
    episodes: int = 100,
    steps: int = 4096,
    step: int | None = None,
    hook: str | None = None,
    seed: int = 10_000,
    ablation_top: int = 10,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate an SAE folder on a run's agent (see :func:`evaluate_spliced`) and rank latents.

    Gathers ``steps`` fresh steps (seeded with ``seed``, not the training seed) for the offline
    metrics and the mean activation; writes ``eval.json`` into the SAE folder when ``write``.
    """
    run, ckpt, agent, sae, site = _run_and_sae(run_path, sae_dir, step, hook)
    world = run_world(run)
    data = gather_activations(
        agent, site.hook, world["env_id"], world["env_kwargs"], steps, seed=seed,
        greedy=world["greedy"], mask_illegal=world["mask_illegal"], layout=site.layout,
    )  # fmt: skip
    result = evaluate_spliced(
        agent, sae, site, data, world["env_id"], world["env_kwargs"], episodes, seed,
        world["greedy"], world["mask_illegal"],
    )  # fmt: skip
    result.update(run=str(run.path), checkpoint_step=ckpt, sae_dir=str(sae_dir))
    if ablation_top > 0:
        ranking = latent_ablation(agent, sae, site, data, greedy=world["greedy"], seed=seed)
        result["alive_fraction_on_eval"] = len(ranking) / sae.config.d_sae
        result["latent_ablation"] = [
            {k: v for k, v in e.items() if k not in ("logit_change", "prob_change")}
            for e in ranking[:ablation_top]
        ]
    if write:
        write_json(Path(sae_dir) / "eval.json", result)
    return result


def dashboard_run_sae(
    run_path: str | os.PathLike,
    sae_dir: str | os.PathLike,
    latents: Sequence[int] | None = None,
    top: int = 8,
    steps: int = 4096,
    step: int | None = None,
    hook: str | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 10_000,
) -> tuple[Path, list[dict[str, Any]]]:
    """Feature dashboards (PNG per latent + ``index.html``) for an SAE folder on a run's agent.

    Written to ``out`` (default ``<sae_dir>/dashboard``); returns the HTML path and each
    latent's summary.
    """
    from policylens.report.sae import write_sae_dashboard

    run, ckpt, agent, sae, site = _run_and_sae(run_path, sae_dir, step, hook)
    world = run_world(run)
    data = gather_activations(
        agent, site.hook, world["env_id"], world["env_kwargs"], steps, seed=seed,
        greedy=world["greedy"], mask_illegal=world["mask_illegal"], layout=site.layout,
    )  # fmt: skip
    cards, ranking = latent_cards(
        agent, sae, site, data, latents, top=top, greedy=world["greedy"], seed=seed
    )
    folder = Path(out) if out is not None else Path(sae_dir) / "dashboard"
    context = {
        "run": str(run.path),
        "checkpoint_step": ckpt,
        "sae_dir": str(sae_dir),
        "site": site.to_dict(),
        "d_sae": sae.config.d_sae,
        "arch": sae.config.arch,
        "observations": len(data),
        "alive_fraction": len(ranking) / sae.config.d_sae,
        **world,
    }
    html = write_sae_dashboard(folder, cards, context, num_actions=agent.num_actions)
    return html, [c.summary() for c in cards]


__all__ = [
    "CONDITIONS",
    "LAYOUTS",
    "ActivationData",
    "HookSite",
    "LatentCard",
    "activations_from_store",
    "check_sae_fits",
    "compare_outputs",
    "condition_hooks",
    "constant_hook",
    "dashboard_run_sae",
    "eval_run_sae",
    "evaluate_spliced",
    "gather_activations",
    "hook_site",
    "latent_ablation",
    "latent_activity",
    "latent_entries",
    "latent_cards",
    "latent_removal_hook",
    "load_agent_sae",
    "play_episodes",
    "run_world",
    "sae_config_for",
    "save_agent_sae",
    "site_for_sae",
    "splice_hook",
    "train_agent_sae",
    "train_run_sae",
    "zero_hook",
]
