"""Weight-update analysis: what a short phase of training changed in a network, and where.

An *update* is the difference of two checkpoints of one network, ``post - pre``, as a state dict
(parameter name -> tensor). The functions here are pure: state dicts in, numbers and state dicts
out, so they work for any architecture and any trainer (the built-in PPO or Stable-Baselines3).

- arithmetic: :func:`weight_delta`, :func:`apply_update` (``pre - update`` is the "subtracted"
  model), :func:`noise_like` (a random control with the update's per-tensor norms);
- where the update lands: :func:`param_group` (shared layers, policy or value body/head) and
  :func:`group_shares`;
- its shape: per-tensor norms, absolute and relative to the weights, sparsity (share of the
  update's squared mass in its top k% entries), low rank (singular values of each weight delta):
  :func:`tensor_stats`, :func:`summarize_update`;
- consistency: :func:`cosine` and :func:`cosine_matrix` across seeds and reward variants.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from policylens.artifacts import read_safetensors

StateDict = dict[str, Tensor]
"""Parameter name -> tensor, as ``nn.Module.state_dict()`` gives it."""

GROUPS = ("shared", "policy body", "policy head", "value body", "value head")
"""Where a parameter sits: layers both heads read, or the policy's or value's own layers."""

TOP_FRACS = (0.01, 0.05, 0.1)
"""Default entry fractions for the sparsity measure (top 1%, 5%, 10% of entries)."""


# ----------------------------------------------------------------------------- loading, checks
def load_state(file: str | os.PathLike) -> StateDict:
    """A ``.safetensors`` checkpoint as a state dict, with a clear error for a missing file."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {file}; train that phase first or check the path."
        )
    return read_safetensors(file)


def save_state(state: Mapping[str, Tensor], file: str | os.PathLike) -> Path:
    """Write a state dict to one ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    from policylens.artifacts import atomic_path

    file = Path(file)
    tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}
    with atomic_path(file) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", "writer": "policylens"})
    return file


def check_compatible(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], what: str = "the two checkpoints"
) -> None:
    """Raise one ValueError if ``a`` and ``b`` do not have the same parameter names and shapes."""
    missing = [k for k in a if k not in b]
    extra = [k for k in b if k not in a]
    shapes = [
        f"{k} {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        for k in a
        if k in b and tuple(a[k].shape) != tuple(b[k].shape)
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"only in the first: {_names(missing)}")
        if extra:
            parts.append(f"only in the second: {_names(extra)}")
        if shapes:
            parts.append(f"different shapes: {_names(shapes)}")
        raise ValueError(
            f"{what.capitalize()} come from different architectures ({'; '.join(parts)}); "
            "compare updates of one architecture only."
        )


def _names(items: Sequence[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def float_params(state: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors (integer buffers such as counters are not weights)."""
    return [k for k, v in state.items() if v.is_floating_point()]


# ----------------------------------------------------------------------------- arithmetic
def weight_delta(pre: Mapping[str, Tensor], post: Mapping[str, Tensor]) -> StateDict:
    """The update ``post - pre`` of every floating-point tensor (float32)."""
    check_compatible(pre, post, "pre and post")
    return {k: post[k].float() - pre[k].float() for k in float_params(pre)}


def apply_update(
    pre: Mapping[str, Tensor], update: Mapping[str, Tensor], scale: float = 1.0
) -> StateDict:
    """``pre + scale * update`` (``scale=-1`` gives the subtracted model); other tensors copied."""
    missing = [k for k in update if k not in pre]
    if missing:
        raise ValueError(
            f"The update has tensors the model lacks ({_names(missing)}); they come from "
            "different architectures."
        )
    out: StateDict = {}
    for k, v in pre.items():
        if k in update:
            if tuple(update[k].shape) != tuple(v.shape):
                raise ValueError(
                    f"Update tensor {k} has shape {tuple(update[k].shape)}, the model "
                    f"{tuple(v.shape)}; they come from different architectures."
                )
            out[k] = (v.float() + scale * update[k].float()).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def noise_like(update: Mapping[str, Tensor], seed: int) -> StateDict:
    """Gaussian noise with exactly the update's Frobenius norm in every tensor (the noise control).

    A tensor whose update is zero gets zero noise.
    """
    generator = torch.Generator().manual_seed(seed)
    out: StateDict = {}
    for k in sorted(update):
        u = update[k].float()
        z = torch.randn(u.shape, generator=generator)
        zn = float(z.norm())
        out[k] = z * (float(u.norm()) / zn) if zn > 0 else torch.zeros_like(u)
    return {k: out[k] for k in update}


# ----------------------------------------------------------------------------- where it lands
def param_group(name: str) -> str:
    """The group of a parameter name: one of :data:`GROUPS`.

    Knows the built-in networks (``policy_head``/``value_head``, ``fc_policy``/``fc_value``,
    ``q_head``) and SB3's ActorCriticPolicy (``mlp_extractor.policy_net``/``value_net`` towers,
    ``action_net``, ``value_net``); everything else counts as shared.
    """
    parts = name.split(".")
    if "mlp_extractor" in parts:
        i = parts.index("mlp_extractor")
        tower = parts[i + 1] if i + 1 < len(parts) else ""
        if tower == "policy_net":
            return "policy body"
        if tower == "value_net":
            return "value body"
        return "shared"
    if any(p in ("policy_head", "fc_policy", "action_net", "q_head") for p in parts):
        return "policy head"
    if any(p in ("value_head", "fc_value", "value_net") for p in parts):
        return "value head"
    if parts[0] == "value_layers" or (len(parts) > 1 and parts[1] == "value_layers"):
        return "value body"
    if any(p in ("pi_features_extractor",) for p in parts):
        return "policy body"
    if any(p in ("vf_features_extractor",) for p in parts):
        return "value body"
    return "shared"


def group_shares(update: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    """Per group: share of the update's squared norm, share of the parameters, and the norm."""
    total_sq = sum(float(v.float().pow(2).sum()) for v in update.values())
    total_n = sum(v.numel() for v in update.values())
    groups = {k: param_group(k) for k in update}
    if "value body" in groups.values():  # separate value layers: the trunk is the policy's alone
        groups = {k: "policy body" if g == "shared" else g for k, g in groups.items()}
    out: dict[str, dict[str, float]] = {}
    for g in GROUPS:
        names = [k for k in update if groups[k] == g]
        if not names:
            continue
        sq = sum(float(update[k].float().pow(2).sum()) for k in names)
        n = sum(update[k].numel() for k in names)
        out[g] = {
            "mass_share": sq / total_sq if total_sq > 0 else math.nan,
            "param_share": n / total_n if total_n else math.nan,
            "norm": math.sqrt(sq),
        }
    return out


# ----------------------------------------------------------------------------- shape of a delta
def topk_mass(delta: Tensor, frac: float) -> float:
    """Share of ``delta``'s squared mass held by its largest ``frac`` of entries (at least one).

    1.0 means all of the update sits in those entries; a dense Gaussian tensor gives a small
    share (about 0.08 for frac=0.01 and 0.44 for frac=0.1 on large tensors).
    """
    x = delta.detach().float().flatten().pow(2)
    total = float(x.sum())
    if total == 0 or x.numel() == 0:
        return math.nan
    k = max(1, math.ceil(frac * x.numel()))
    return float(torch.topk(x, k).values.sum()) / total


def singular_values(delta: Tensor) -> np.ndarray:
    """Singular values of a weight delta viewed as a matrix ``(out, in * kernel...)``, descending.

    Vectors (biases) have no useful rank: an empty array is returned for them.
    """
    if delta.dim() < 2:
        return np.zeros(0)
    m = delta.detach().double().reshape(delta.shape[0], -1)  # (out, rest)
    return torch.linalg.svdvals(m).numpy()


def rank_stats(svals: np.ndarray) -> dict[str, float]:
    """Low-rank summaries of a spectrum: top-1 energy share, effective rank, stable rank."""
    if svals.size == 0 or float(svals.sum()) == 0:
        return {"top1_energy": math.nan, "effective_rank": math.nan, "stable_rank": math.nan}
    energy = svals**2
    p = svals / svals.sum()
    p = p[p > 0]
    return {
        "top1_energy": float(energy[0] / energy.sum()),
        # Roy & Vetterli: exp of the entropy of the normalised singular values.
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "stable_rank": float(energy.sum() / energy[0]),
    }


def tensor_stats(
    update: Mapping[str, Tensor],
    pre: Mapping[str, Tensor] | None = None,
    top_fracs: Sequence[float] = TOP_FRACS,
    max_singular: int = 16,
) -> list[dict[str, Any]]:
    """One row per tensor: group, shape, norm, norm relative to the weights, sparsity, rank."""
    rows = []
    for k, u in update.items():
        u = u.float()
        norm = float(u.norm())
        w_norm = float(pre[k].float().norm()) if pre is not None and k in pre else math.nan
        svals = singular_values(u)
        row: dict[str, Any] = {
            "name": k,
            "group": param_group(k),
            "shape": list(u.shape),
            "numel": u.numel(),
            "norm": norm,
            "weight_norm": w_norm,
            "rel_norm": norm / w_norm if w_norm and w_norm > 0 else math.nan,
            "max_abs": float(u.abs().max()) if u.numel() else math.nan,
            "top_mass": {f"{f:g}": topk_mass(u, f) for f in top_fracs},
            "singular_values": svals[:max_singular].tolist(),
            **rank_stats(svals),
        }
        rows.append(row)
    return rows


def flatten(state: Mapping[str, Tensor], names: Iterable[str] | None = None) -> Tensor:
    """Concatenate tensors (all, or ``names`` in that order) into one float64 vector."""
    keys = list(state) if names is None else list(names)
    if not keys:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([state[k].detach().double().flatten() for k in keys])


def cosine(a: Mapping[str, Tensor], b: Mapping[str, Tensor], group: str | None = None) -> float:
    """Cosine similarity of two updates over all tensors (or one :func:`param_group`)."""
    check_compatible(a, b, "the two updates")
    names = [k for k in a if group is None or param_group(k) == group]
    x, y = flatten(a, names), flatten(b, names)
    nx, ny = float(x.norm()), float(y.norm())
    if nx == 0 or ny == 0:
        return math.nan
    return float(x @ y) / (nx * ny)


def cosine_matrix(
    updates: Mapping[str, Mapping[str, Tensor]], group: str | None = None
) -> tuple[list[str], np.ndarray]:
    """Labels and the symmetric matrix of pairwise cosine similarities of ``updates``."""
    labels = list(updates)
    for lab in labels[1:]:
        check_compatible(updates[labels[0]], updates[lab], f"updates {labels[0]} and {lab}")
    vecs = []
    for lab in labels:
        u = updates[lab]
        names = [k for k in u if group is None or param_group(k) == group]
        vecs.append(flatten(u, names))
    m = torch.stack(vecs) if vecs else torch.zeros((0, 0), dtype=torch.float64)  # (n, params)
    norms = m.norm(dim=1, keepdim=True)
    unit = m / torch.where(norms > 0, norms, torch.ones_like(norms))
    sim = (unit @ unit.T).numpy()  # (n, n)
    zero = (norms.squeeze(1) == 0).numpy()
    sim[zero, :] = np.nan
    sim[:, zero] = np.nan
    return labels, sim


def summarize_update(
    pre: Mapping[str, Tensor],
    update: Mapping[str, Tensor],
    top_fracs: Sequence[float] = TOP_FRACS,
) -> dict[str, Any]:
    """Everything about one update: totals, per-group shares and per-tensor statistics."""
    names = [k for k in update]
    u, w = flatten(update, names), flatten(pre, names)
    norm, w_norm = float(u.norm()), float(w.norm())
    return {
        "norm": norm,
        "weight_norm": w_norm,
        "rel_norm": norm / w_norm if w_norm > 0 else math.nan,
        "num_params": int(u.numel()),
        "top_mass": {f"{f:g}": topk_mass(u, f) for f in top_fracs},
        "groups": group_shares(update),
        "tensors": tensor_stats(update, pre, top_fracs),
    }


__all__ = [
    "GROUPS",
    "TOP_FRACS",
    "StateDict",
    "apply_update",
    "check_compatible",
    "cosine",
    "cosine_matrix",
    "flatten",
    "float_params",
    "group_shares",
    "load_state",
    "noise_like",
    "param_group",
    "rank_stats",
    "save_state",
    "singular_values",
    "summarize_update",
    "tensor_stats",
    "topk_mass",
    "weight_delta",
]
