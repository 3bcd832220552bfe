"""Transformer lenses over TransformerLens's ``HookedTransformer``: direct logit attribution,
attention read from one query position, OV / QK circuit SVDs, and activation patching.

Each function takes a ``HookedTransformer`` (any: the decision transformer is one), its
``ActivationCache`` or its inputs, and tensors; it knows nothing of tokens' meaning (which
position is an RTG or a state token is the caller's business) and imports no world.

Direct logit attribution (:func:`logit_attribution`) follows TransformerLens's convention for the
final LayerNorm: every component of the residual stream at the read position is centred and
divided by the *cached* final LayerNorm scale (``ActivationCache.apply_ln_to_stack``, the scale of
the whole residual stream, so the map is linear and the components add up); the LayerNorm's
weight is folded into the unembedding direction and its bias, with the unembedding bias, is one
constant ``bias`` term. The components then sum to the model's logit (or logit combination)
exactly, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogitAttribution:
    """Each residual-stream component's direct contribution to a logit combination."""

    labels: list[str]
    """``embed`` (the residual stream's input), ``L{l}H{h}`` (a head's ``z @ W_O``), ``L{l}.b_O``,
    ``L{l}N{n}`` (a neuron's ``post * W_out``), ``L{l}.b_out`` and ``bias`` (the final
    LayerNorm's and the unembedding's biases)."""
    values: Tensor
    """``(components, batch)``."""
    logits: Tensor
    """``(batch,)``: the model's own value of the combination, for checking ``values.sum(0)``."""

    def of(self, label: str) -> Tensor:
        return self.values[self.labels.index(label)]


def _final_ln(model: Any) -> tuple[Tensor | None, Tensor | None]:
    """The final LayerNorm's weight and bias (None for a model without them)."""
    ln = getattr(model, "ln_final", None)
    w, b = getattr(ln, "w", None), getattr(ln, "b", None)
    return (w if isinstance(w, Tensor) else None), (b if isinstance(b, Tensor) else None)


def logit_attribution(
    model: Any, cache: Any, pos: int, coefficients: Tensor, neurons: bool = True
) -> LogitAttribution:
    """Direct logit attribution at position ``pos`` of the combination ``coefficients @ logits``.

    ``coefficients``: ``(batch, d_vocab_out)`` (one-hot for one logit, +1/-1 for a logit
    difference). ``cache``: ``model.run_with_cache(...)`` of the same batch. Neurons are one
    component each when the model has MLPs and ``neurons`` is True (else one ``L{l}.mlp`` each).
    See the module doc for the LayerNorm convention; the components sum to ``logits``.
    """
    cfg = model.cfg
    coefficients = coefficients.to(model.W_U.dtype)
    direction = coefficients @ model.W_U.T  # (B, d_model)
    constant = coefficients @ model.b_U
    w, b = _final_ln(model)
    if b is not None:
        constant = constant + direction @ b
    if w is not None:
        direction = direction * w
    parts: list[Tensor] = [cache["blocks.0.hook_resid_pre"][:, pos][None]]
    labels = ["embed"]
    heads, head_labels = cache.stack_head_results(
        layer=-1, pos_slice=pos, return_labels=True, apply_ln=False
    )
    for layer in range(cfg.n_layers):
        n = cfg.n_heads
        parts.append(heads[layer * n : (layer + 1) * n])
        labels += head_labels[layer * n : (layer + 1) * n]
        block = model.blocks[layer]
        parts.append(block.attn.b_O.expand_as(heads[0])[None])
        labels.append(f"L{layer}.b_O")
        if not cfg.attn_only:
            out = cache[f"blocks.{layer}.hook_mlp_out"][:, pos]
            if neurons:
                post = cache[f"blocks.{layer}.mlp.hook_post"][:, pos]  # (B, d_mlp)
                per = post.T[:, :, None] * block.mlp.W_out[:, None, :]  # (d_mlp, B, d_model)
                parts.append(per)
                labels += [f"L{layer}N{i}" for i in range(per.shape[0])]
                parts.append(block.mlp.b_out.expand_as(out)[None])
                labels.append(f"L{layer}.b_out")
            else:
                parts.append(out[None])
                labels.append(f"L{layer}.mlp")
    stack = torch.cat(parts, dim=0)  # (components, B, d_model)
    stack = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=pos)
    values = torch.einsum("cbd,bd->cb", stack, direction)
    values = torch.cat([values, constant[None]], dim=0)
    labels.append("bias")
    final = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][:, pos]
    if hasattr(model, "ln_final"):
        final = model.ln_final(final)
    logits = ((final @ model.W_U + model.b_U) * coefficients).sum(-1)
    return LogitAttribution(labels, values.detach(), logits.detach())


def attention_from(cache: Any, n_layers: int, query: int) -> Tensor:
    """Attention paid by position ``query`` to every key: ``(layers, batch, heads, keys)``."""
    return torch.stack(
        [cache[f"blocks.{layer}.attn.hook_pattern"][:, :, query] for layer in range(n_layers)]
    )


@dataclass(frozen=True)
class HeadSVD:
    """One matrix's singular value decomposition: ``M = U diag(S) Vh`` (rank-many terms)."""

    singular_values: Tensor
    """``(rank,)``, descending."""
    left: Tensor
    """``(d_model, rank)``: input directions of OV, query-side directions of QK."""
    right: Tensor
    """``(d_model, rank)``: output directions of OV, key-side directions of QK."""


def circuit_svds(model: Any, which: str) -> list[list[HeadSVD]]:
    """The SVD of each head's ``OV`` (``W_V W_O``) or ``QK`` (``W_Q W_K^T``) FactoredMatrix, per
    layer then head (biases left out)."""
    if which not in ("OV", "QK"):
        raise ValueError(f"which must be 'OV' or 'QK', got {which!r}.")
    matrix = model.OV if which == "OV" else model.QK
    out: list[list[HeadSVD]] = []
    for layer in range(model.cfg.n_layers):
        row = []
        for head in range(model.cfg.n_heads):
            u, s, v = matrix[layer, head].svd()  # FactoredMatrix.svd: M = U diag(S) V^T
            row.append(HeadSVD(s.detach(), u.detach(), v.detach()))
        out.append(row)
    return out


def fraction_in_span(vectors: Tensor, basis: Tensor) -> Tensor:
    """Share of each vector's squared norm inside the span of ``basis``'s orthonormal columns:
    ``(..., d) x (d, k) -> (...)``; the chance level of a random vector is ``k / d``."""
    coords = vectors @ basis
    return (coords.pow(2).sum(-1) / vectors.pow(2).sum(-1).clamp_min(1e-30)).detach()


@dataclass(frozen=True)
class Site:
    """One activation to patch: a hook's value at one position (all: None), one head's slice
    (hooks with a head axis such as ``attn.hook_z``) or the whole position."""

    label: str
    hook: str
    pos: int | None = None
    head: int | None = None

    def index(self) -> tuple[Any, ...]:
        pos = slice(None) if self.pos is None else self.pos
        return (slice(None), pos) if self.head is None else (slice(None), pos, self.head)


def run_patched(
    model: Any,
    target: Any,
    source: Any,
    sites: Sequence[Site],
) -> Tensor:
    """``model(target)`` with the activations at ``sites`` replaced by their values in
    ``source`` (an ``ActivationCache`` of the same-shaped input). Later sites see the patched
    run's own upstream values except where patched."""
    hooks: list[tuple[str, Callable[[Tensor, Any], Tensor]]] = []
    for site in sites:
        stored = source[site.hook]

        def hook(act: Tensor, hook: Any, site: Site = site, stored: Tensor = stored) -> Tensor:
            act = act.clone()
            act[site.index()] = stored[site.index()].to(act.dtype)
            return act

        hooks.append((site.hook, hook))
    with torch.no_grad():
        out: Tensor = model.run_with_hooks(target, fwd_hooks=hooks)
    return out
