"""Mechanistic analyses of a decision transformer at its last state token (where it acts).

Every analysis runs the run's DT on ``histories`` windows of a trajectory store (by default the
run's training store; pass a store collected with another seed for held-out histories), each a
window of ``context`` steps ending at a sampled row (``full_windows``: only rows with a whole
window of their own episode behind them). The window's return-to-go tokens are all set to one
value (the tasks pay only at the end, so the RTG is constant within an episode), and the action
is read at the last state token (position ``3K - 2``).

- :func:`rtg_scan`: action probabilities and logits as the RTG varies over a grid.
- :func:`logit_attribution_study`: direct logit attribution of the chosen action's logit (or its
  difference from the mean logit) to the embeddings, each head, each MLP neuron and the biases
  (TransformerLens's cached-scale final LayerNorm; :mod:`policylens.lenses.transformer`).
- :func:`attention_by_token_type`: mean attention from the last state token to the R, s and a
  tokens of each earlier step, per head.
- :func:`circuits`: singular values of each head's OV and QK, and how much of the RTG embedding
  direction and of the state embeddings' variance lies in their top singular directions.
- :func:`patching`: activation patching between a high- and a low-RTG run of the same history
  (the high run's activation patched into the low run: the share of the high-vs-low logit
  difference recovered; and the reverse, the share lost), and the fewest components that
  recover the bar (80%).
- :func:`instruction_pca`: the memory task: a PCA of the state embeddings of frames showing the
  instruction object (key vs ball), and whether moving a later state token along the
  instruction direction flips the side the DT turns to.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from policylens.agents.dt import DTBatch
from policylens.envs.minigrid import ACTION_NAMES
from policylens.lenses.transformer import (
    Site,
    attention_from,
    circuit_svds,
    fraction_in_span,
    logit_attribution,
    run_patched,
)
from policylens.rollout import stats
from policylens.runs import Run
from policylens.studies.dt import _checked
from policylens.train.dt import TrajectoryData, load_run_dt, run_store

TOKEN_TYPES = ("R", "s", "a")
"""The three tokens of a step, in sequence order."""


@dataclass(frozen=True)
class HistoryOptions:
    """Which DT and which histories an analysis reads."""

    data: str | None = None
    """Trajectory store of the histories (default: the run's training store)."""
    histories: int = 64
    seed: int = 0
    """Seeds the choice of histories."""
    full_windows: bool = True
    """Only windows with ``context`` real steps (no padding)."""
    step: int | None = None
    """Checkpoint (default: the latest)."""

    def __post_init__(self) -> None:
        if isinstance(self.histories, bool) or not isinstance(self.histories, int):
            raise ValueError(f"histories must be an integer, got {self.histories!r}.")
        if self.histories < 1:
            raise ValueError(f"histories must be >= 1, got {self.histories}.")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")


@dataclass
class Histories:
    """A loaded DT and a batch of windows (their RTG tokens not yet set)."""

    model: Any
    step: int
    batch: DTBatch
    rows: np.ndarray
    """The store rows the windows end at."""
    data: str
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    run: str = ""

    @property
    def context(self) -> int:
        return int(self.model.dt_config.context)

    @property
    def query(self) -> int:
        """Position of the last state token."""
        return 3 * self.context - 2


def action_names(n: int) -> list[str]:
    return list(ACTION_NAMES) if n == len(ACTION_NAMES) else [str(i) for i in range(n)]


def load_histories(
    run: Run, options: HistoryOptions, candidates: int | None = None, labels: Sequence[str] = ()
) -> Histories:
    """The run's DT and ``candidates`` (default ``options.histories``) windows drawn without
    replacement from the store; ``labels`` names store arrays (``labels/instruction``) read at
    each window's last row."""
    _checked(run)
    step, _ = run.checkpoint(options.step)
    model = load_run_dt(run, step)
    path = run_store(run, options.data)
    data = TrajectoryData(path)
    k = int(model.dt_config.context)
    eligible = np.arange(data.rows)
    if options.full_windows:
        eligible = eligible[data.timestep.numpy() >= k - 1]
    n = min(candidates or options.histories, len(eligible))
    if n < 1:
        raise ValueError(f"{path} holds no window of {k} steps; lower the context or collect more.")
    rows = np.sort(np.random.default_rng(options.seed).choice(eligible, n, replace=False))
    batch = data.windows(torch.from_numpy(rows), k)
    extra: dict[str, np.ndarray] = {}
    if labels:
        from policylens.rollout.store import Store

        store = Store(path)
        for name in labels:
            if name not in store:
                raise ValueError(f"{path} holds no {name!r} array.")
            extra[name] = np.asarray(store[name][:])[rows]
        store.close()
    return Histories(model, step, batch, rows, path, extra, str(run.path))


def _histories(
    source: Run | Histories, options: HistoryOptions, candidates: int | None = None
) -> Histories:
    return source if isinstance(source, Histories) else load_histories(source, options, candidates)


def with_rtg(batch: DTBatch, rtg: float | Tensor) -> DTBatch:
    """``batch`` with every RTG token set to ``rtg`` (a number, or one per window)."""
    value = torch.as_tensor(rtg, dtype=batch.rtg.dtype)
    if value.dim() == 1:
        value = value[:, None]
    return replace(batch, rtg=torch.broadcast_to(value, batch.rtg.shape).clone())


def subset(batch: DTBatch, index: Tensor) -> DTBatch:
    def pick(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[index]

    return DTBatch(
        obs=batch.obs[index], actions=batch.actions[index], rtg=batch.rtg[index],
        timesteps=batch.timesteps[index], mask=batch.mask[index],
        direction=pick(batch.direction),
    )  # fmt: skip


def _last_logits(model: Any, batch: DTBatch) -> Tensor:
    with torch.no_grad():
        out: Tensor = model(batch)[:, -1].float()
    return out


def _interval(values: Tensor | np.ndarray) -> dict[str, Any]:
    return stats.mean(np.asarray(values, dtype=float))


# -- 1. RTG scan -------------------------------------------------------------------------------
DEFAULT_SCAN = tuple(float(round(x, 2)) for x in np.linspace(-1.0, 1.0, 21))


@dataclass(frozen=True)
class ScanOptions(HistoryOptions):
    rtgs: tuple[float, ...] = DEFAULT_SCAN
    """The RTG values scanned."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rtgs or not all(math.isfinite(r) for r in self.rtgs):
            raise ValueError("rtgs must hold at least one finite value.")


@dataclass(frozen=True)
class ScanResult:
    run: str
    step: int
    data: str
    histories: int
    actions: list[str]
    rows: list[dict[str, Any]]
    """Per RTG: ``rtg``, ``probability`` (per action: mean with 95% interval), ``logit`` (per
    action: mean), ``argmax_share`` (per action: share of histories choosing it)."""
    example: dict[str, Any]
    """The first history's probabilities at each RTG (one fixed state and history)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rtg_scan(run: Run | Histories, options: ScanOptions | None = None) -> ScanResult:
    """Action logits and probabilities at fixed histories as the RTG token varies."""
    options = options or ScanOptions()
    h = _histories(run, options)
    names = action_names(int(h.model.dt_config.num_actions))
    rows, example = [], []
    for rtg in options.rtgs:
        logits = _last_logits(h.model, with_rtg(h.batch, rtg))
        probs = torch.softmax(logits, -1)
        chosen = logits.argmax(-1)
        rows.append({
            "rtg": float(rtg),
            "probability": {a: _interval(probs[:, i]) for i, a in enumerate(names)},
            "logit": {a: float(logits[:, i].mean()) for i, a in enumerate(names)},
            "argmax_share": {a: float((chosen == i).float().mean()) for i, a in enumerate(names)},
        })  # fmt: skip
        example.append([float(p) for p in probs[0]])
    return ScanResult(
        h.run, h.step, h.data, len(h.rows), names, rows,
        {"row": int(h.rows[0]), "probabilities": example},
    )  # fmt: skip


# -- 2. direct logit attribution ---------------------------------------------------------------
CONTRASTS = ("none", "mean")


@dataclass(frozen=True)
class AttributionOptions(HistoryOptions):
    rtg: float = 1.0
    contrast: str = "none"
    """none: the chosen action's logit; mean: its difference from the mean of all logits."""
    top: int = 10
    """Neurons listed (by mean absolute contribution)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.contrast not in CONTRASTS:
            raise ValueError(
                f"contrast must be one of {', '.join(CONTRASTS)}, got {self.contrast!r}."
            )
        if not math.isfinite(self.rtg):
            raise ValueError(f"rtg must be finite, got {self.rtg}.")


@dataclass(frozen=True)
class AttributionResult:
    run: str
    step: int
    data: str
    histories: int
    rtg: float
    metric: str
    logit: dict[str, Any]
    """The metric's mean over histories (95% interval)."""
    max_sum_error: float
    """Largest ``|sum of components - the model's value|`` over histories."""
    components: list[dict[str, Any]]
    """``embed`` (split into ``embed.state``, ``.dir``, ``.time``, ``.pos``), each head, each
    MLP layer (its neurons and ``b_out`` together), the attention biases and ``bias``; mean
    contribution with its 95% interval, largest absolute mean first."""
    neurons: list[dict[str, Any]]
    """The ``top`` neurons by mean absolute contribution."""
    convention: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


LN_CONVENTION = (
    "each component at the last state token is centred and divided by the cached final "
    "LayerNorm scale (ActivationCache.apply_ln_to_stack); ln_final.w is folded into W_U and "
    "ln_final.b @ W_U + b_U is the 'bias' component; the components sum to the model's value"
)


def logit_attribution_study(
    run: Run | Histories, options: AttributionOptions | None = None
) -> AttributionResult:
    """Direct logit attribution of the action chosen at ``options.rtg`` at the last state token."""
    options = options or AttributionOptions()
    h = _histories(run, options)
    model, batch = h.model, with_rtg(h.batch, options.rtg)
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch)
        chosen = logits[:, -1].argmax(-1)
        n_act = logits.shape[-1]
        coef = torch.nn.functional.one_hot(chosen, n_act).float()
        if options.contrast == "mean":
            coef = coef - 1.0 / n_act
        dla = logit_attribution(model, cache, h.query, coef)
        value = (logits[:, -1].float() * coef).sum(-1)
        error = float((dla.values.sum(0) - value).abs().max())
        # the state token's embedding, split into its additive parts
        parts = {"embed.state": cache["hook_state_embed"][:, -1],
                 "embed.time": cache["hook_time_embed"][:, -1],
                 "embed.pos": cache["hook_pos_embed"][h.query].expand_as(cache["hook_state_embed"][:, -1])}  # fmt: skip
        if "hook_dir_embed" in cache.cache_dict:
            parts["embed.dir"] = cache["hook_dir_embed"][:, -1]
        stack = cache.apply_ln_to_stack(
            torch.stack(list(parts.values())), layer=-1, pos_slice=h.query
        )
        w = getattr(model.ln_final, "w", None) if hasattr(model, "ln_final") else None
        direction = coef @ model.W_U.T
        if isinstance(w, Tensor):
            direction = direction * w
        split = torch.einsum("cbd,bd->cb", stack, direction)
    rows: list[dict[str, Any]] = []
    labels, values = dla.labels, dla.values
    for i, label in enumerate(labels):
        if label == "embed" or "N" not in label.split(".")[0][1:]:
            rows.append({"component": label, **_interval(values[i])})
    for i, label in enumerate(parts):
        rows.append({"component": label, **_interval(split[i])})
    for layer in range(model.cfg.n_layers):
        mine = [
            i
            for i, lab in enumerate(labels)
            if lab.startswith(f"L{layer}N") or lab == f"L{layer}.b_out"
        ]
        if mine:
            rows.append({"component": f"L{layer}.mlp", **_interval(values[mine].sum(0))})
    rows.sort(key=lambda r: -abs(r["mean"]))
    neuron_idx = [i for i, lab in enumerate(labels) if "N" in lab.split(".")[0][1:]]
    neurons = sorted(
        ({"component": labels[i], **_interval(values[i])} for i in neuron_idx),
        key=lambda r: -abs(r["mean"]),
    )[: options.top]
    metric = "logit of the chosen action" + (
        " minus the mean logit" if options.contrast == "mean" else ""
    )
    return AttributionResult(
        h.run, h.step, h.data, len(h.rows), options.rtg, metric, _interval(value),
        error, rows, neurons, LN_CONVENTION,
    )  # fmt: skip


# -- 3. attention by token type ------------------------------------------------------------
@dataclass(frozen=True)
class AttentionOptions(HistoryOptions):
    rtg: float = 1.0


@dataclass(frozen=True)
class AttentionResult:
    run: str
    step: int
    data: str
    histories: int
    rtg: float
    heads: list[dict[str, Any]]
    """Per head (``L{l}H{h}``): ``by_type`` (R, s, a, pad: total attention, mean with 95%
    interval) and ``by_step`` (offset 0 = the current step, -1 the one before ...: the mean
    attention to each of its R, s and a tokens)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def attention_by_token_type(
    run: Run | Histories, options: AttentionOptions | None = None
) -> AttentionResult:
    """Mean attention from the last state token to the R / s / a tokens of each step, per head."""
    options = options or AttentionOptions()
    h = _histories(run, options)
    model, k = h.model, h.context
    batch = with_rtg(h.batch, options.rtg)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch)
    pattern = attention_from(cache, model.cfg.n_layers, h.query)  # (L, B, H, 3K)
    real = batch.mask.repeat_interleave(3, dim=1).float()  # (B, 3K): pads are not R/s/a
    kinds = torch.arange(3 * k) % 3
    heads = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            p = pattern[layer, :, head]  # (B, 3K)
            by_type = {
                t: _interval((p * real * (kinds == i)).sum(-1)) for i, t in enumerate(TOKEN_TYPES)
            }
            by_type["pad"] = _interval((p * (1 - real)).sum(-1))
            by_step = []
            for j in range(k):
                row: dict[str, Any] = {"offset": j - (k - 1)}
                for i, t in enumerate(TOKEN_TYPES):
                    col = 3 * j + i
                    row[t] = float((p[:, col] * real[:, col]).mean())
                by_step.append(row)
            heads.append({"head": f"L{layer}H{head}", "by_type": by_type, "by_step": by_step})
    return AttentionResult(h.run, h.step, h.data, len(h.rows), options.rtg, heads)


# -- 4. OV and QK circuits ---------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitOptions(HistoryOptions):
    top: int = 4
    """Top singular directions whose span the alignments measure."""
    values: int = 10
    """Singular values listed per head and circuit."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top < 1 or self.values < 1:
            raise ValueError("top and values must be >= 1.")


@dataclass(frozen=True)
class CircuitResult:
    run: str
    step: int
    data: str
    histories: int
    top: int
    chance: float
    """``top / d_model``: the share of a random direction in a top-``top`` span."""
    heads: list[dict[str, Any]]
    """Per head: ``ov_singular_values``, ``qk_singular_values``, the share of the RTG
    embedding direction in OV's top input span (``rtg_in_ov``) and QK's top key-side span
    (``rtg_in_qk_key``), the share of the state embeddings' variance in OV's top input span
    (``state_in_ov``) and QK's top query-side span (``state_in_qk_query``), and
    ``rtg_ov_logits``: what one unit of RTG moves each action's logit through the head's OV when
    it attends fully to an RTG token (before the LayerNorm scales)."""
    convention: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def circuits(run: Run | Histories, options: CircuitOptions | None = None) -> CircuitResult:
    """SVDs of each head's OV and QK and their alignment with the RTG and state embeddings."""
    options = options or CircuitOptions()
    h = _histories(run, options)
    model = h.model
    with torch.no_grad():
        _, cache = model.run_with_cache(with_rtg(h.batch, 1.0))
        state = cache["hook_state_embed"][:, -1]
        if "hook_dir_embed" in cache.cache_dict:
            state = state + cache["hook_dir_embed"][:, -1]
        rtg_dir = model.rtg_embed.weight[:, 0].detach()
        unembed = model.W_U.detach()
        w_final = getattr(getattr(model, "ln_final", None), "w", None)
        if isinstance(w_final, Tensor):
            unembed = unembed * w_final[:, None]
        ov, qk = circuit_svds(model, "OV"), circuit_svds(model, "QK")
        k = options.top
        heads = []
        names = action_names(int(model.dt_config.num_actions))
        for layer in range(model.cfg.n_layers):
            w1 = getattr(getattr(model.blocks[layer], "ln1", None), "w", None)

            def effective(x: Tensor, w1: Any = w1) -> Tensor:
                """What a head reads of residual direction(s) ``x``: LayerNorm's centring and
                weight (its scale is one number per token and leaves shares unchanged)."""
                if model.cfg.normalization_type == "LN":
                    x = x - x.mean(-1, keepdim=True)
                return x * w1 if isinstance(w1, Tensor) else x

            r = effective(rtg_dir)
            s = effective(state)
            s = s - s.mean(0)  # the variance across states
            for head in range(model.cfg.n_heads):
                o, q = ov[layer][head], qk[layer][head]
                state_ov = float(fraction_in_span(s, o.left[:, :k]).mul(s.pow(2).sum(-1)).sum()
                                 / s.pow(2).sum())  # fmt: skip
                state_qk = float(fraction_in_span(s, q.left[:, :k]).mul(s.pow(2).sum(-1)).sum()
                                 / s.pow(2).sum())  # fmt: skip
                through = r @ model.OV[layer, head].AB @ unembed
                heads.append({
                    "head": f"L{layer}H{head}",
                    "ov_singular_values": [float(v) for v in o.singular_values[: options.values]],
                    "qk_singular_values": [float(v) for v in q.singular_values[: options.values]],
                    "rtg_in_ov": float(fraction_in_span(r, o.left[:, :k])),
                    "rtg_in_qk_key": float(fraction_in_span(r, q.right[:, :k])),
                    "state_in_ov": state_ov,
                    "state_in_qk_query": state_qk,
                    "rtg_ov_logits": {a: float(v) for a, v in zip(names, through, strict=True)},
                })  # fmt: skip
    convention = (
        "directions as the head reads them (LayerNorm-centred, times ln1.w); OV input = left "
        "singular vectors of W_V W_O, QK query = left and key = right singular vectors of "
        "W_Q W_K^T; biases left out; state variance over the histories' last state tokens"
    )
    return CircuitResult(
        h.run, h.step, h.data, len(h.rows), k, k / model.cfg.d_model, heads, convention
    )


# -- 5. activation patching --------------------------------------------------------------------
@dataclass(frozen=True)
class PatchOptions(HistoryOptions):
    high: float = 1.0
    low: float = -1.0
    min_gap: float = 0.5
    """Keep histories whose high and low runs choose different actions with a logit-difference
    gap (high minus low) of at least this."""
    bar: float = 0.8
    """The share of the difference the fewest components must recover."""
    max_set: int = 3
    """Largest component set searched exhaustively."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.high) and math.isfinite(self.low)) or self.high == self.low:
            raise ValueError("high and low must be two different finite RTGs.")
        if not 0 < self.bar <= 1:
            raise ValueError(f"bar must be in (0, 1], got {self.bar}.")
        if self.min_gap < 0 or self.max_set < 1:
            raise ValueError("min_gap must be >= 0 and max_set >= 1.")


@dataclass(frozen=True)
class PatchResult:
    run: str
    step: int
    data: str
    candidates: int
    """Histories examined (the high and low runs choose different actions in ``histories``)."""
    histories: int
    high: float
    low: float
    gap: dict[str, Any]
    """``m(high) - m(low)``, ``m = logit[a_high] - logit[a_low]`` (the two runs' argmax)."""
    rows: list[dict[str, Any]]
    """Per component (patched at the last state token unless named otherwise): ``recovered``
    (high into low: mean per-history share of the gap recovered, 95% interval), ``lost`` (low
    into high: the share destroyed), ``pooled`` (sum of recovered over sum of gaps), and
    ``chosen`` (share of histories whose patched low run chooses ``a_high``)."""
    fewest: dict[str, Any]
    """The fewest components (of embed, heads, MLPs) whose joint patch recovers ``bar``."""
    fewest_upstream: dict[str, Any]
    """The same without the MLPs (which sit downstream of every head at the last token)."""
    bar: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def component_sites(model: Any, pos: int) -> list[Site]:
    """Embeddings, each head's output and each MLP's output at position ``pos``."""
    sites = [Site("embed", "blocks.0.hook_resid_pre", pos)]
    for layer in range(model.cfg.n_layers):
        sites += [Site(f"L{layer}H{h}", f"blocks.{layer}.attn.hook_z", pos, h)
                  for h in range(model.cfg.n_heads)]  # fmt: skip
        if not model.cfg.attn_only:
            sites.append(Site(f"L{layer}.mlp", f"blocks.{layer}.hook_mlp_out", pos))
    return sites


def patching(run: Run | Histories, options: PatchOptions | None = None) -> PatchResult:
    """Patch each component of the high-RTG run into the low-RTG run of the same histories."""
    options = options or PatchOptions()
    h = _histories(run, options, candidates=options.histories * 8)
    model = h.model
    hi_l = _last_logits(model, with_rtg(h.batch, options.high))
    lo_l = _last_logits(model, with_rtg(h.batch, options.low))
    a_hi, a_lo = hi_l.argmax(-1), lo_l.argmax(-1)
    ar = torch.arange(len(a_hi))

    def metric(logits: Tensor, a: Tensor, b: Tensor) -> Tensor:
        i = torch.arange(len(a))
        return logits[i, a] - logits[i, b]

    gap = metric(hi_l, a_hi, a_lo) - metric(lo_l, a_hi, a_lo)
    keep = ((a_hi != a_lo) & (gap >= options.min_gap)).nonzero()[:, 0][: options.histories]
    if len(keep) < 2:
        raise ValueError(
            f"only {len(keep)} of {len(ar)} histories change their action between RTG "
            f"{options.high:g} and {options.low:g}; try other RTGs or more histories."
        )
    batch = subset(h.batch, keep)
    a_hi, a_lo, gap = a_hi[keep], a_lo[keep], gap[keep]
    high, low = with_rtg(batch, options.high), with_rtg(batch, options.low)
    with torch.no_grad():
        m_hi_logits, hi_cache = model.run_with_cache(high)
        m_lo_logits, lo_cache = model.run_with_cache(low)
    m_hi = metric(m_hi_logits[:, -1].float(), a_hi, a_lo)
    m_lo = metric(m_lo_logits[:, -1].float(), a_hi, a_lo)

    def effect(sites: Sequence[Site]) -> dict[str, Any]:
        into_low = run_patched(model, low, hi_cache, sites)[:, -1].float()
        into_high = run_patched(model, high, lo_cache, sites)[:, -1].float()
        rec = (metric(into_low, a_hi, a_lo) - m_lo) / gap
        lost = (m_hi - metric(into_high, a_hi, a_lo)) / gap
        return {
            "recovered": _interval(rec),
            "lost": _interval(lost),
            "pooled": float((metric(into_low, a_hi, a_lo) - m_lo).sum() / gap.sum()),
            "chosen": float((into_low.argmax(-1) == a_hi).float().mean()),
        }

    q, n_layers = h.query, model.cfg.n_layers
    sites = component_sites(model, q)
    rows = [{"component": "nothing", **effect([])}]
    rows += [{"component": s.label, **effect([s])} for s in sites]
    for layer in range(n_layers):
        heads = [s for s in sites if s.label.startswith(f"L{layer}H")]
        rows.append({"component": f"L{layer} heads (together)", **effect(heads)})
    rows.append({"component": "rtg tokens (all steps)", **effect([Site("rtg", "hook_rtg_embed")])})
    for j in range(h.context):
        site = Site(f"rtg[{j - h.context + 1}]", "hook_rtg_embed", j)
        rows.append({"component": f"rtg token, step {j - h.context + 1}", **effect([site])})
    final = Site("resid_final", f"blocks.{n_layers - 1}.hook_resid_post", q)
    rows.append({"component": "residual stream before the unembed", **effect([final])})
    fewest = _fewest(sites, effect, options)
    upstream = [s for s in sites if not s.label.endswith(".mlp")]
    fewest_upstream = _fewest(upstream, effect, options)
    return PatchResult(
        h.run, h.step, h.data, len(ar), len(keep), options.high, options.low,
        _interval(gap), rows, fewest, fewest_upstream, options.bar,
    )  # fmt: skip


def _fewest(sites: Sequence[Site], effect: Any, options: PatchOptions) -> dict[str, Any]:
    """The smallest set (exhaustive up to ``max_set``, then greedy) whose mean recovered share
    reaches the bar; ties go to the larger share."""
    cache: dict[tuple[str, ...], dict[str, Any]] = {}

    def score(group: Sequence[Site]) -> dict[str, Any]:
        key = tuple(s.label for s in group)
        if key not in cache:
            cache[key] = effect(group)
        return cache[key]

    for size in range(1, min(options.max_set, len(sites)) + 1):
        best = max(itertools.combinations(sites, size),
                   key=lambda g: score(g)["recovered"]["mean"])  # fmt: skip
        if score(best)["recovered"]["mean"] >= options.bar:
            return {"components": [s.label for s in best], "search": "exhaustive",
                    "reached": True, **score(best)}  # fmt: skip
    chosen: list[Site] = []
    while len(chosen) < len(sites):
        rest = [s for s in sites if s not in chosen]
        chosen.append(max(rest, key=lambda s: score([*chosen, s])["recovered"]["mean"]))
        if score(chosen)["recovered"]["mean"] >= options.bar:
            break
    reached = score(chosen)["recovered"]["mean"] >= options.bar
    return {"components": [s.label for s in chosen], "search": "greedy", "reached": reached,
            **score(chosen)}  # fmt: skip


# -- 6. the memory task's instruction ----------------------------------------------------------
EMPTY, KEY, BALL = 1, 5, 6
"""minigrid's object indices of an empty square, the key and the ball."""


@dataclass(frozen=True)
class InstructionOptions(HistoryOptions):
    held_out: str | None = None
    """Store of the flip test's histories (default: ``data``): collect it with another seed."""
    frames: int = 4000
    """Most frames (instruction in view) in the PCA."""
    rtg: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}.")


@dataclass(frozen=True)
class InstructionResult:
    run: str
    step: int
    data: str
    held_out: str
    frames: dict[str, int]
    """Frames with the instruction object in view, per instruction (key, ball)."""
    explained: list[float]
    """Share of the variance of their state embeddings on each of the top 5 principal axes."""
    top2: float
    cells: int
    """View cells the instruction object is seen at."""
    token_explained: list[float]
    """The instruction's own embeddings: what a key and what a ball at each of those cells add to
    the state embedding over an empty square (2 x ``cells`` vectors), their variance on the top
    5 axes (Bloom et al.'s MemoryDT: about 85% on the top 2)."""
    token_top2: float
    anchor_cells: list[list[int]]
    """The two view cells the instruction is seen at most often in the frames."""
    anchor_explained: list[float]
    """Bloom et al.'s own construct (their app's embedding PCA): the state embedding's key and
    ball columns at those two cells, each scaled to unit length and standardized over its
    entries, their variance on each principal axis (4 vectors: 3 axes)."""
    anchor_top2: float
    anchor_null: dict[str, float]
    """The same share for 4 random Gaussian vectors of ``d_model`` entries (1,000 draws): its
    median and 95th percentile, the figure a trained embedding must beat."""
    separation: dict[str, Any]
    """Along PC1 and along the key-to-ball direction: the share of frames a threshold at the
    midpoint of the two class means classifies right."""
    decisions: int
    """Held-out histories at the hallway's end (facing east, the instruction in view in the
    window): ``left`` turns up, ``right`` down."""
    accuracy: dict[str, Any]
    """Share turning to the correct side (left vs right logit), before any edit."""
    flipped: dict[str, Any]
    """Share whose side flips when every in-view frame of the window moves along the
    instruction direction to the other instruction's mean (its own mean swapped for the other)."""
    flipped_control: dict[str, Any]
    """The same with a random direction of the same length."""
    accuracy_edited: dict[str, Any]
    """Share turning to the side of the *other* instruction after the edit."""
    flipped_token: dict[str, Any]
    """Share whose side flips when each in-view frame's instruction token is swapped for the
    other object's at its cell (the finer feature: what the observation's object adds)."""
    flipped_token_control: dict[str, Any]
    """The same with random directions as long as those swaps."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _in_view(
    data: TrajectoryData, pos: np.ndarray, square: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose view shows the key or ball at ``square`` (minigrid's view: the agent at the
    bottom middle facing up, indexed ``[x, y]``; hidden cells are 0), and each row's view cell
    ``(x, y)`` of that square (``(N, 2)``; meaningful where shown)."""
    from policylens.envs.minigrid import DIR_VEC, VIEW

    d = data.direction.numpy() % 4
    fwd, right = np.asarray(DIR_VEC)[d], np.asarray(DIR_VEC)[(d + 1) % 4]
    delta = np.asarray(square)[None] - pos
    ahead, side = (delta * fwd).sum(-1), (delta * right).sum(-1)
    vy, vx = VIEW - 1 - ahead, VIEW // 2 + side
    ok = (vx >= 0) & (vx < VIEW) & (vy >= 0) & (vy < VIEW)
    obj = np.zeros(len(d), dtype=np.int64)
    idx = np.flatnonzero(ok)
    obj[idx] = data.obs.numpy()[idx, vx[idx], vy[idx], 0]
    return ok & ((obj == KEY) | (obj == BALL)), np.stack([vx, vy], 1)


def instruction_tokens(model: Any, cells: np.ndarray) -> Tensor:
    """``(len(cells), 2, d_model)``: what a key and what a ball at each view cell ``(x, y)`` add
    to the state embedding over an empty square there (the difference of two of its weight
    columns; the state embedding is linear in the one-hot cells)."""
    offsets = model._channel_offsets  # (H, W, 3): the first column of each cell channel
    weight = model.state_embed.weight.detach()
    first = torch.as_tensor(offsets[cells[:, 0], cells[:, 1], 0]).long()  # (C,)
    objects = torch.tensor([KEY, BALL])
    return (weight[:, first[:, None] + objects] - weight[:, first + EMPTY][:, :, None]).permute(
        1, 2, 0
    )


def _variance_shares(vectors: Tensor) -> Tensor:
    """Variance shares of ``vectors`` (``(..., n, d)``, rows) on each of their principal axes."""
    s = torch.linalg.svdvals(vectors - vectors.mean(-2, keepdim=True)).pow(2)
    return s / s.sum(-1, keepdim=True)


def _instruction_token_pca(model: Any, cells: np.ndarray) -> list[float]:
    """Variance shares of the principal axes of the instruction's token embeddings
    (:func:`instruction_tokens` at every cell in ``cells``)."""
    vectors = instruction_tokens(model, cells).reshape(-1, model.cfg.d_model).double()
    return _variance_shares(vectors).tolist()


def _standardized_shares(vectors: Tensor) -> Tensor:
    """:func:`_variance_shares` with each row first scaled to unit length and standardized over
    its entries (as Bloom et al.'s app does before its PCA)."""
    v = vectors.double()
    v = v / v.norm(dim=-1, keepdim=True)
    return _variance_shares(
        (v - v.mean(-1, keepdim=True)) / v.std(-1, unbiased=False, keepdim=True)
    )


def _anchor_pca(model: Any, cells: np.ndarray, seed: int) -> tuple[list[float], dict]:
    """Bloom et al.'s instruction PCA on ``cells`` (view cells): the variance shares of the key
    and ball embedding columns there, and the top-2 share's null over random vectors (see
    :class:`InstructionResult`)."""
    offsets = model._channel_offsets
    weight = model.state_embed.weight.detach()
    columns = [int(offsets[x, y, 0]) + obj for x, y in cells.tolist() for obj in (KEY, BALL)]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1000, len(columns), weight.shape[0], generator=g)
    null = _standardized_shares(noise)[:, :2].sum(-1).numpy()
    return _standardized_shares(weight[:, columns].T).tolist(), {
        "median": float(np.median(null)),
        "p95": float(np.percentile(null, 95)),
    }


def _memory_labels(path: str) -> dict[str, np.ndarray]:
    from policylens.rollout.store import Store

    store = Store(path)
    if store.meta.get("task") != "memory":
        store.close()
        raise ValueError(
            f"{path} is not a memory-task store (`policylens dt collect --task memory`)."
        )
    out = {k: np.asarray(store[f"labels/{k}"][:])
           for k in ("agent_pos", "instruction", "correct_side", "goal_pos")}  # fmt: skip
    out["size"] = np.asarray(store.meta.get("env_kwargs", {}).get("size", 7))
    store.close()
    return out


def instruction_pca(run: Run, options: InstructionOptions | None = None) -> InstructionResult:
    """PCA of the state embeddings of frames showing the instruction object, and whether moving
    a held-out history's in-view frames along the instruction direction flips its turn."""
    options = options or InstructionOptions()
    _checked(run)
    step, _ = run.checkpoint(options.step)
    model = load_run_dt(run, step)
    path = run_store(run, options.data)
    held = options.held_out or path
    rng = np.random.default_rng(options.seed)

    def frames_of(p: str) -> tuple[TrajectoryData, dict[str, np.ndarray], np.ndarray, Any]:
        data, labels = TrajectoryData(p), _memory_labels(p)
        square = (int(labels["size"]) // 2 - 1, 1)
        return data, labels, *_in_view(data, labels["agent_pos"], square)

    data, labels, view, xy = frames_of(path)
    rows = np.flatnonzero(view)
    if len(rows) < 2:
        raise ValueError(f"{path} holds fewer than 2 frames with the instruction in view.")
    cells, seen_at = np.unique(xy[view], axis=0, return_counts=True)
    token_explained = _instruction_token_pca(model, cells)
    anchor_cells = cells[np.argsort(-seen_at, kind="stable")[:2]]
    anchor_explained, anchor_null = _anchor_pca(model, anchor_cells, options.seed)
    rows = np.sort(rng.choice(rows, min(options.frames, len(rows)), replace=False))
    with torch.no_grad():
        emb = model.embed_state(data.obs[torch.from_numpy(rows)]).double()
    ins = labels["instruction"][rows]
    _, s, vh = torch.linalg.svd(emb - emb.mean(0), full_matrices=False)
    explained = (s.pow(2) / s.pow(2).sum()).tolist()
    means = [emb[torch.from_numpy(ins == i)].mean(0) for i in (0, 1)]
    direction = means[1] - means[0]

    def separation(axis: Tensor) -> float:
        proj = emb @ axis
        mid = 0.5 * (float(means[0] @ axis) + float(means[1] @ axis))
        sign = 1.0 if float(means[1] @ axis) >= mid else -1.0
        return float(((sign * (proj - mid) > 0).numpy() == (ins == 1)).mean())

    sep = {"pc1": separation(vh[0]), "instruction_direction": separation(direction)}
    # the flip test on held-out histories at the hallway's end
    hdata, hlabels, hview, hxy = frames_of(held)
    k = int(model.dt_config.context)
    size = int(hlabels["size"])
    at_end = (hlabels["agent_pos"][:, 0] == size // 2) & (
        hlabels["agent_pos"][:, 1] == hlabels["goal_pos"][:, 1]
    )
    candidates = np.flatnonzero(at_end & (hdata.direction.numpy() % 4 == 0))
    batch = hdata.windows(torch.from_numpy(candidates), k)
    idx = torch.from_numpy(candidates)[:, None] + torch.arange(-k + 1, 1)
    seen = torch.from_numpy(hview)[idx.clamp(min=0)] & batch.mask  # (B, K)
    keep = seen.any(1).nonzero()[:, 0]
    keep = keep[torch.from_numpy(rng.permutation(len(keep)))[: options.histories]].sort().values
    if len(keep) < 1:
        raise ValueError(
            f"{held} holds no history at the hallway's end with the instruction in view."
        )
    batch, seen = with_rtg(subset(batch, keep), options.rtg), seen[keep]
    rows_kept = candidates[keep.numpy()]
    own = torch.from_numpy(hlabels["instruction"][rows_kept]).long()
    correct = torch.from_numpy(hlabels["correct_side"][rows_kept]).long()  # 0 up = left
    swap = (means[1] - means[0]).float() * (1 - 2 * own.float())[:, None]  # own mean -> other's
    swap = swap[:, None, :].expand(-1, k, -1)
    # the instruction's own token at each in-view frame's cell, swapped for the other object's
    frame_rows = idx[keep].clamp(min=0).numpy()  # (B, K)
    frame_cells = np.clip(hxy[frame_rows], 0, np.array(model.dt_config.obs_shape[:2]) - 1)
    tokens = instruction_tokens(model, frame_cells.reshape(-1, 2)).reshape(len(keep), k, 2, -1)
    frame_own = torch.from_numpy(hlabels["instruction"][frame_rows]).long()  # (B, K)
    pick = frame_own[..., None, None].expand(-1, -1, 1, tokens.shape[-1])
    token_swap = (tokens.gather(2, 1 - pick) - tokens.gather(2, pick))[:, :, 0]

    def random_like(shift: Tensor, seed: int) -> Tensor:
        """A random direction per history, at each frame as long as ``shift`` there."""
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(shift.shape[0], 1, shift.shape[2], generator=g)
        return noise / noise.norm(dim=2, keepdim=True) * shift.norm(dim=2, keepdim=True)

    def side(shift: Tensor | None) -> Tensor:
        hooks = []
        if shift is not None:
            add = shift * seen[:, :, None].float()

            def hook(act: Tensor, hook: Any) -> Tensor:
                return act + add.to(act.dtype)

            hooks = [("hook_state_embed", hook)]
        with torch.no_grad():
            logits = model.run_with_hooks(batch, fwd_hooks=hooks)[:, -1]
        return (logits[:, 1] > logits[:, 0]).long()  # 0 left (up), 1 right (down)

    before, after, ctrl = side(None), side(swap), side(random_like(swap, options.seed))
    swapped, swapped_ctrl = side(token_swap), side(random_like(token_swap, options.seed + 1))
    return InstructionResult(
        str(run.path), step, path, held,
        {"key": int((ins == 0).sum()), "ball": int((ins == 1).sum())},
        explained[:5], float(sum(explained[:2])), len(cells), token_explained[:5],
        float(sum(token_explained[:2])), anchor_cells.tolist(), anchor_explained,
        float(sum(anchor_explained[:2])), anchor_null, sep, len(keep),
        stats.proportion((before == correct).numpy()),
        stats.proportion((after != before).numpy()),
        stats.proportion((ctrl != before).numpy()),
        stats.proportion((after == 1 - correct).numpy()),
        stats.proportion((swapped != before).numpy()),
        stats.proportion((swapped_ctrl != before).numpy()),
    )  # fmt: skip
