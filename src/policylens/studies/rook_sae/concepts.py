"""What each live SAE latent means in the world's own terms: its best-matching ground-truth concept.

A world publishes ground truth in ``info`` (:attr:`ActivationData.labels`); :func:`world_concepts`
turns those labels into named concept columns, one value per observation: for the rook endgame
the rook attacked (en prise), the kings in opposition, the black king's distance to the edge and
mobility, a mate in one available, the rook defended, and every piece's square; for the maze the
mouse at or next to a decision square, the distance to the cheese and to the corner, the cheese
in the corner and the move toward the cheese; for any other world its numeric labels as they are.
A per-position latent (channels layout) is also matched, position by position, against "this is
the mouse's / cheese's / ... square" for every ``(row, col)`` label on a grid of its size.

:func:`match_concepts` scores every live latent against every concept by the absolute Pearson
correlation between the latent's activation and the concept, and gives a chance level: the 95th
percentile of the best score after shuffling the observations (the best of many concepts is
never 0 by chance).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from policylens.agents.sae import SparseAutoencoder, check_sae_fits
from policylens.studies.rook_sae.data import ActivationData
from policylens.worlds import for_env


def _rook_concepts(labels: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Chess concepts of rook-endgame positions (white to move)."""
    wk, wr, bk = (labels[k] for k in ("white_king_pos", "white_rook_pos", "black_king_pos"))
    out: dict[str, np.ndarray] = {}

    def cheb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a - b).max(1)

    rook_on = wr[:, 0] >= 0
    out["rook attacked (en prise)"] = labels["rook_en_prise"]
    out["rook defended by the king"] = (cheb(wk, wr) == 1) & rook_on
    out["rook next to the black king"] = (cheb(bk, wr) == 1) & rook_on
    out["kings in opposition"] = (cheb(wk, bk) == 2) & ((wk == bk).any(1))
    out["distance between the kings"] = cheb(wk, bk)
    out["black king's distance to the edge"] = labels["black_king_edge_distance"]
    out["black king on the edge"] = labels["black_king_edge_distance"] == 0
    out["black king in a corner"] = ((bk == 0) | (bk == n - 1)).all(1)
    out["black king's mobility (squares)"] = labels["black_king_moves"]
    out["mate in one available"] = labels["can_mate"]
    out["squares white attacks"] = labels["num_attacked"]
    out["rook on the black king's row or column"] = ((wr == bk).any(1)) & rook_on
    if "mate_distance" in labels:
        out["moves to mate (tablebase)"] = labels["mate_distance"]
    for name, pos in (("white king", wk), ("white rook", wr), ("black king", bk)):
        for r in range(n):
            for c in range(n):
                out[f"{name} on ({r}, {c})"] = (pos[:, 0] == r) & (pos[:, 1] == c)
    return out


def _maze_concepts(labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maze concepts of the mouse's situation."""
    from policylens.envs.maze import ACTION_NAMES

    mouse, square = labels["mouse_pos"], labels["decision_square"]
    has_square = square[:, 0] >= 0
    out: dict[str, np.ndarray] = {
        "mouse at a decision square": labels["at_decision_square"],
        "mouse next to a decision square": has_square & (np.abs(mouse - square).sum(1) <= 1),
        "paths to cheese and corner part here": labels["paths_part"],
        "distance to the cheese": labels["dist_to_cheese"],
        "cheese within 2 steps": labels["dist_to_cheese"] <= 2,
        "distance to the top-right corner": labels["dist_to_corner"],
        "cheese in the top-right corner": (labels["cheese_pos"] == labels["corner_pos"]).all(1),
        "mouse row": mouse[:, 0],
        "mouse column": mouse[:, 1],
        "cheese row": labels["cheese_pos"][:, 0],
        "cheese column": labels["cheese_pos"][:, 1],
    }
    for a, name in enumerate(ACTION_NAMES):
        out[f"way to the cheese is {name}"] = labels["move_to_cheese"] == a
    return out


def world_concepts(data: ActivationData) -> dict[str, np.ndarray]:
    """Named concept values per observation, ``(N,)`` float each, from the world's labels."""
    labels = {k: np.asarray(v) for k, v in data.labels.items()}
    world = for_env(str(data.meta.get("env_id") or "")).name
    if world == "rook" and "black_king_pos" in labels:
        n = int(round(np.sqrt(np.prod(data.obs.shape[1:]) / 3)))
        raw = _rook_concepts(labels, n)
    elif world == "maze" and "decision_square" in labels:
        raw = _maze_concepts(labels)
    else:
        raw = {k: v for k, v in labels.items() if v.ndim == 1}
    return {k: np.asarray(v, dtype=np.float64) for k, v in raw.items()}


def _position_concepts(data: ActivationData) -> dict[str, np.ndarray]:
    """Per-position concepts ``(N * positions,)`` for a channels site: "<label> here" for every
    ``(row, col)`` label whose squares fall on the activation's grid."""
    site = data.site
    if site.layout != "channels":
        return {}
    _, h, w = site.shape
    out = {}
    for key, pos in data.labels.items():
        pos = np.asarray(pos)
        if pos.ndim != 2 or pos.shape[1] != 2 or pos.max() >= max(h, w):
            continue
        grid = np.zeros((len(pos), h, w))
        ok = (pos[:, 0] >= 0) & (pos[:, 1] >= 0)
        grid[np.nonzero(ok)[0], pos[ok, 0].astype(int), pos[ok, 1].astype(int)] = 1.0
        out[f"{key.removesuffix('_pos').replace('_', ' ')} here"] = grid.reshape(-1)
    return out


def _correlations(acts: np.ndarray, concepts: np.ndarray) -> np.ndarray:
    """Pearson r of every column of ``acts`` (n, L) with every column of ``concepts`` (n, K);
    0 where either is constant."""
    a = acts - acts.mean(0)
    c = concepts - concepts.mean(0)
    na, nc = np.linalg.norm(a, axis=0), np.linalg.norm(c, axis=0)
    r = (a.T @ c) / np.maximum(np.outer(na, nc), 1e-12)
    r[na < 1e-12, :] = 0.0
    r[:, nc < 1e-12] = 0.0
    return np.clip(r, -1.0, 1.0)  # (L, K); float32 sums can stray past 1


@torch.no_grad()
def match_concepts(
    sae: SparseAutoencoder,
    data: ActivationData,
    shuffles: int = 5,
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """The best ground-truth concept of every live latent on ``data``, with a chance level.

    A latent's activation per observation is its largest over positions; per-position concepts
    (:func:`_position_concepts`) compare its activation at each position. Returns ``latents``:
    latent -> {concept, r (signed), score (|r|), runner_up, runner_up_r, and for a yes/no concept
    precision (share of firing observations where it holds) and recall (share of observations
    where it holds that the latent fires on)}; ``chance``: the 95th percentile of the best score
    over ``shuffles`` shuffles of the observations; ``above_chance``: the share of live latents
    whose score beats it; ``concepts``: the names; ``by_concept``: concept -> the live latent
    that tracks it best, {latent, r}; ``constant``: concepts that never vary on ``data`` (left
    out: e.g. no decision square on the maze's training distribution).
    """
    check_sae_fits(sae, data.site)
    concepts, per_position = world_concepts(data), _position_concepts(data)
    constant = [k for k, v in {**concepts, **per_position}.items() if np.ptp(v) == 0]
    concepts = {k: v for k, v in concepts.items() if k not in constant}  # nothing to match
    per_position = {k: v for k, v in per_position.items() if k not in constant}
    if not concepts and not per_position:
        raise ValueError(
            "The data carry no varying ground-truth labels to match latents with; gather them "
            "with gather_activations (which keeps the world's info labels) over more steps."
        )
    P = data.site.positions
    z = torch.cat(
        [sae.encode(data.site.to_vectors(a)) for a in data.acts.split(batch_size)]
    ).numpy()  # (N * P, d_sae) float32: a maze layer's per-position latents are large
    per_obs = z.reshape(len(data), P, -1).max(1)  # (N, d_sae)
    live = np.nonzero((per_obs > 0).any(0))[0]
    names = list(concepts) + list(per_position)
    rng = np.random.default_rng(seed)

    def scores(obs_order: np.ndarray | None) -> np.ndarray:
        """(live, concepts) r, with the latents' observations in ``obs_order``."""
        parts = []
        if concepts:
            act = per_obs[:, live] if obs_order is None else per_obs[obs_order][:, live]
            parts.append(_correlations(act, np.stack(list(concepts.values()), 1, dtype=act.dtype)))
        if per_position:
            grid = z[:, live].reshape(len(data), P, -1)
            flat = (grid if obs_order is None else grid[obs_order]).reshape(len(data) * P, -1)
            grid_concepts = np.stack(list(per_position.values()), 1, dtype=flat.dtype)
            parts.append(_correlations(flat, grid_concepts))
        return np.concatenate(parts, 1)

    r = scores(None)
    chance_best = [np.abs(scores(rng.permutation(len(data)))).max(1) for _ in range(shuffles)]
    chance = float(np.quantile(np.concatenate(chance_best), 0.95)) if len(live) else 0.0
    values = {**concepts, **per_position}
    out: dict[int, dict[str, Any]] = {}
    for i, j in enumerate(live.tolist()):
        order = np.argsort(-np.abs(r[i]))
        best, second = int(order[0]), int(order[1]) if len(order) > 1 else int(order[0])
        entry: dict[str, Any] = {
            "concept": names[best],
            "r": float(r[i, best]),
            "score": float(abs(r[i, best])),
            "runner_up": names[second],
            "runner_up_r": float(r[i, second]),
        }
        truth = values[names[best]]
        if set(np.unique(truth)) <= {0.0, 1.0}:
            fires = (z[:, j] if names[best] in per_position else per_obs[:, j]) > 0
            holds = truth > 0.5
            entry["precision"] = float(holds[fires].mean()) if fires.any() else 0.0
            entry["recall"] = float(fires[holds].mean()) if holds.any() else 0.0
        out[j] = entry
    above = sum(e["score"] > chance for e in out.values())
    by_concept = {}
    if len(live):
        for c, name in enumerate(names):
            i = int(np.argmax(np.abs(r[:, c])))
            by_concept[name] = {"latent": int(live[i]), "r": float(r[i, c])}
    return {
        "latents": out,
        "by_concept": by_concept,
        "chance": chance,
        "above_chance": above / len(out) if out else 0.0,
        "constant": constant,
        "live": len(out),
        "concepts": names,
    }


__all__ = ["match_concepts", "world_concepts"]
