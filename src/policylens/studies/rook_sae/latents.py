"""What each SAE latent does in the agent: where it fires, what removing it changes, dashboard cards.

:func:`latent_activity` and :func:`latent_entries` encode the data once; :func:`latent_ablation`
removes one latent at a time from the real activation (its decoder contribution subtracted, so
the SAE's reconstruction error stays in) and measures the change in the action distribution and
value; :func:`survey_latents` does both once for every latent, and :func:`latent_cards` gathers
what a feature dashboard shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from policylens.agents.agent import HookedAgent
from policylens.agents.sae import SparseAutoencoder, check_sae_fits
from policylens.rollout.engine import Policy
from policylens.studies.rook_sae.data import ActivationData


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


@dataclass(frozen=True)
class AblationOptions:
    """How the effect of removing a latent is measured."""

    max_rows: int = 512
    """Observations run per latent (a seeded sample of those where it fires)."""
    greedy: bool = True
    """Flips of the argmax action (Q-networks) rather than of sampled actions."""
    seed: int = 0
    """Seed of the row sample and of the shared uniforms of sampled actions."""


@torch.no_grad()
def latent_ablation(
    agent: HookedAgent,
    sae: SparseAutoencoder,
    data: ActivationData,
    latents: Sequence[int] | None = None,
    options: AblationOptions = AblationOptions(),
    entries: tuple[Tensor, Tensor, Tensor] | None = None,
) -> list[dict[str, Any]]:
    """The effect of removing each latent on the agent's actions and value, ranked by KL.

    For latent j the activation at ``data``'s hook becomes ``act - z_j * W_dec[j]``, with ``z_j``
    encoded from ``data.acts`` (the reconstruction error stays in, so this is the latent's effect
    on the real agent). Only observations where j fires can change; up to ``options.max_rows`` of
    them are run. Per latent: ``frequency`` (share of observations where it fires), and over
    those observations ``kl`` (KL(original || ablated) of the action distribution),
    ``flip`` (share whose argmax action changes, or sampled action with shared uniforms when not
    ``options.greedy``), ``value_change`` (mean V_ablated - V), ``logit_change`` (per action)
    and ``prob_change`` (per action); ``kl_all`` = frequency * kl and ``flip_all`` = frequency *
    flip average over all observations. The list is ordered by ``flip_all`` for greedy agents
    (softmax of Q-values says little), by ``kl_all`` otherwise. ``latents`` defaults to every
    latent that fires on ``data``; ``entries`` (:func:`latent_entries` of ``data``) may be passed
    in when already computed.
    """
    site = data.site
    check_sae_fits(sae, site)
    vec_idx, values, starts = entries if entries is not None else latent_entries(sae, data)
    P, N = site.positions, len(data)
    max_rows, greedy = options.max_rows, options.greedy
    if latents is None:
        latents = torch.nonzero(starts[1:] > starts[:-1])[:, 0].tolist()
    rng = np.random.default_rng(options.seed)
    policy = Policy(greedy=greedy)
    base = [agent(o) for o in np.array_split(data.obs, max(1, math.ceil(N / 2048)))]
    base_logits = torch.cat([b[0] for b in base]).float().cpu()  # (N, A) the unmodified agent
    base_values = torch.cat([b[1] for b in base]).float().cpu()  # (N,)
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
        lh, vh = lh.float().cpu(), vh.float().cpu()
        lpo, lph = F.log_softmax(lo, -1), F.log_softmax(lh, -1)
        kl = float((lpo.exp() * (lpo - lph)).sum(-1).mean())
        u = torch.from_numpy(rng.random((2, len(rows))).astype(np.float32))
        flip = float((policy.choose(lo, u) != policy.choose(lh, u)).float().mean())
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
    concept: dict[str, Any] | None = None
    """Its best-matching ground-truth concept
    (:func:`~policylens.studies.rook_sae.concepts.match_concepts`), if matched."""

    def summary(self) -> dict[str, Any]:
        return {
            "latent": self.latent,
            "frequency": self.frequency,
            "max_activation": float(self.top_values[0]) if self.top_values else 0.0,
            "top_rows": self.top_rows,
            **{k: v for k, v in self.ablation.items() if k not in ("latent", "frequency")},
            **({"concept": self.concept} if self.concept is not None else {}),
        }


@dataclass(frozen=True)
class LatentSurvey:
    """Every latent of an SAE on one data set, computed once: where each fires and what removing
    it does (an interactive page draws any latent's card from it without recomputing)."""

    activity: Tensor
    """(N, d_sae) each latent's largest activation per observation (:func:`latent_activity`)."""
    where: Tensor
    """(N, d_sae) the position of that activation."""
    entries: tuple[Tensor, Tensor, Tensor]
    """Every non-zero activation, grouped by latent (:func:`latent_entries`)."""
    ranking: list[dict[str, Any]]
    """:func:`latent_ablation` of every latent that fires, largest effect first."""

    @property
    def alive_fraction(self) -> float:
        """Share of the latents that fire on the data."""
        return len(self.ranking) / self.activity.shape[1]


def survey_latents(
    agent: HookedAgent,
    sae: SparseAutoencoder,
    data: ActivationData,
    options: AblationOptions = AblationOptions(),
) -> LatentSurvey:
    """Encode ``data`` once and measure the effect of removing every latent that fires."""
    activity, where = latent_activity(sae, data)
    entries = latent_entries(sae, data)
    ranking = latent_ablation(agent, sae, data, None, options, entries)
    return LatentSurvey(activity, where, entries, ranking)


@torch.no_grad()
def latent_cards(
    agent: HookedAgent,
    sae: SparseAutoencoder,
    data: ActivationData,
    latents: Sequence[int] | None = None,
    top: int = 8,
    n_examples: int = 6,
    options: AblationOptions = AblationOptions(),
    survey: LatentSurvey | None = None,
) -> list[LatentCard]:
    """Dashboard cards for ``latents`` (default: the ``top`` latents by ablation effect), each
    with its ``n_examples`` strongest distinct observations.

    ``survey`` (:func:`survey_latents` of ``data``) is computed here unless passed in.
    """
    site = data.site
    if survey is None:
        survey = survey_latents(agent, sae, data, options)
    activity, where, entries = survey.activity, survey.where, survey.entries
    by_latent = {e["latent"]: e for e in survey.ranking}
    if latents is None:
        latents = [e["latent"] for e in survey.ranking[:top]]
    missing = [int(j) for j in latents if int(j) not in by_latent]
    if missing:
        bad = [j for j in missing if not 0 <= j < sae.config.d_sae]
        if bad:
            raise ValueError(
                f"Latent(s) {bad} do not exist; the SAE has {sae.config.d_sae} latents."
            )
        for e in latent_ablation(agent, sae, data, missing, options, entries):
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
    return cards


__all__ = [
    "AblationOptions",
    "LatentCard",
    "LatentSurvey",
    "latent_ablation",
    "latent_activity",
    "latent_cards",
    "latent_entries",
    "survey_latents",
]
