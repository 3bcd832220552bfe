"""Training and evaluation of sparse autoencoders (SAEs) on agent activations.

The SAE module, its architectures and its files live in :mod:`policylens.agents.sae`; this module
trains them on plain ``(samples, d_in)`` tensors and measures them. Each architecture trains
through one registered :class:`SAETrainer` (:func:`sae_trainer`): its gradient step and its
resampling scale.

Training computes gradients by hand rather than through autograd. For the top-k architectures it
never materialises a dense ``(batch, d_sae)`` gradient: the decoder is a sparse sum over the ``k``
chosen rows (``embedding_bag``) and the weight gradients are sparse-dense products, so after the
encoder matmul and the top-k selection a step costs O(batch * k * d_in). Decoder gradients have
their component along each (unit) decoder row removed before Adam, and rows are renormalised after.

Dead latents are those that did not fire in the last ``dead_window`` training samples; with
``resample_every`` set they are re-initialised toward inputs the SAE reconstructs badly.

Objectives (``SAEConfig.objective``, :data:`~policylens.agents.sae.SAE_OBJECTIVES`): ``mse``
reconstructs the activations; ``kl`` and ``logits`` also keep the agent's behaviour with the SAE
spliced in. A :class:`Downstream` runs the agent with a batch's reconstruction at the hook and
returns the behaviour term's gradient with respect to the reconstruction (autograd through the
rest of the network); every architecture's step adds it to its reconstruction gradient, so each
objective works for every architecture without a line of its own.

Why one file of this length: the steps, their shared sparse-gradient helpers, the objectives
that feed them and the training loop are one algorithm; split, each part would reach into the
others' internals (``_Step``, ``_output_grad``, ``_batches``).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from policylens.agents.agent import HookedAgent
from policylens.agents.sae import (
    SAE_ARCHITECTURES,
    SAE_OBJECTIVES,
    HookSite,
    SAEConfig,
    SparseAutoencoder,
    build_sae,
)


def synthetic_activations(
    n: int,
    d_in: int,
    n_features: int = 512,
    active: float = 8.0,
    noise: float = 0.05,
    seed: int = 0,
) -> Tensor:
    """Seeded (n, d_in) activations with known sparse structure, for tests and benchmarks.

    Each sample is an offset plus a sparse non-negative combination of ``n_features`` random unit
    directions (feature frequencies follow a power law; ``active`` features per sample on
    average; magnitudes exponential with mean 1), plus Gaussian noise of std ``noise`` per dim.
    """
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_features, d_in, generator=gen)
    dirs /= dirs.norm(dim=1, keepdim=True)  # (n_features, d_in)
    offset = torch.randn(d_in, generator=gen) * 0.5
    freq = 1.0 / torch.arange(1, n_features + 1, dtype=torch.float32) ** 0.5
    freq *= active / freq.sum()  # expected active features per sample
    on = torch.rand(n, n_features, generator=gen) < freq.clamp(max=1.0)  # (n, n_features)
    mags = torch.empty(n, n_features).exponential_(1.0, generator=gen) * on
    return offset + mags @ dirs + noise * torch.randn(n, d_in, generator=gen)


# -- training -------------------------------------------------------------------------------------
@dataclass
class _Step:
    """What one training step leaves for bookkeeping."""

    err: Tensor  # (batch, d_in) reconstruction minus input
    fired: Tensor  # (d_sae,) bool: latent active on some sample of the batch
    l0: float  # mean active latents per sample
    loss: float
    min_kept: float = math.nan  # smallest activation kept (batchtopk's threshold estimate)
    behaviour: float = math.nan  # the behaviour term of the loss (behaviour-keeping objectives)


Behaviour = Callable[[Tensor], tuple[float, Tensor]]
"""``behaviour(recon)``: a batch's behaviour term and its gradient w.r.t. the reconstruction
``recon`` (B, d_in), for the batch the step is training on."""


def _output_grad(
    err: Tensor, recon: Tensor, behaviour: Behaviour | None
) -> tuple[float, Tensor, float]:
    """(loss, dL/dx_hat (B, d_in), behaviour term) of the reconstruction error ``err`` and,
    with ``behaviour``, the objective's behaviour term: the one place every step gets them."""
    B = err.shape[0]
    loss = float(err.pow(2).sum()) / B
    gr = err * (2.0 / B)
    if behaviour is None:
        return loss, gr, math.nan
    extra, g = behaviour(recon)
    return loss + extra, gr.add_(g), extra


def _sparse_grads(
    sae: SparseAutoencoder,
    x: Tensor,
    xc: Tensor,
    rows: Tensor,
    cols: Tensor,
    vals: Tensor,
    offsets: Tensor,
    l1: float = 0.0,
    behaviour: Behaviour | None = None,
) -> _Step:
    """Loss and gradients when the active latents are given as a row-major sparse list.

    ``rows``/``cols``/``vals``: (nnz,) sample, latent, pre-activation (> 0) of each active latent,
    grouped by sample; ``offsets``: (batch,) start of each sample's group; ``l1``: coefficient of
    an L1 penalty on the latents (relu); ``behaviour``: the objective's behaviour term.
    """
    B, d_in = x.shape
    S = sae.config.d_sae
    W_dec, W_enc = sae.W_dec, sae.W_enc
    # Decode: sum of the chosen decoder rows weighted by their activations.
    recon = F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=vals)  # (B, d_in)
    recon += sae.b_dec
    err = recon - x
    loss, gr, extra = _output_grad(err, recon, behaviour)  # gr: dL/dx_hat (B, d_in)
    # dL/dz for active entries only: dot of the sample's gradient with the latent's decoder row.
    crow = torch.cat([offsets, offsets.new_tensor([cols.numel()])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(
            crow, cols, torch.zeros_like(vals), (B, S), check_invariants=False
        )
        g_z = torch.sparse.sampled_addmm(pattern, gr, W_dec.T, beta=0.0).values()  # (nnz,)
        if l1:
            loss += l1 * float(vals.sum()) / B
            g_z += l1 / B
        # Weight gradients: latent-major CSR (d_sae, B) matrices times dense (B, d_in). CSR runs
        # ~3x faster than COO here (measured at 2-4% density), and a stable sort of the latent
        # ids is all the transposition needs.
        perm = torch.argsort(cols, stable=True)
        counts = torch.bincount(cols, minlength=S)  # (d_sae,) samples each latent fired on
        crow_t = torch.zeros(S + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=crow_t[1:])
        rows_t = rows[perm]
        z_t = torch.sparse_csr_tensor(crow_t, rows_t, vals[perm], (S, B), check_invariants=False)
        g_t = torch.sparse_csr_tensor(crow_t, rows_t, g_z[perm], (S, B), check_invariants=False)
        W_dec.grad = z_t @ gr  # (d_sae, d_in)
        W_enc.grad = (g_t @ xc).T.contiguous()  # (d_in, d_sae)
    g_benc = torch.zeros(S).index_add_(0, cols, g_z)
    sae.b_enc.grad = g_benc
    sae.b_dec.grad = gr.sum(0) - W_enc @ g_benc  # b_dec enters the output and (negated) the input
    fired = counts > 0
    return _Step(err=err, fired=fired, l0=cols.numel() / B, loss=loss, behaviour=extra)


def _buffer(work: dict[str, Tensor] | None, name: str, shape: tuple[int, ...]) -> Tensor:
    """A reusable ``(batch, d_sae)`` scratch tensor from ``work`` (a fresh one without ``work``).

    Why: a 4096 x 2048 float32 tensor is 32 MiB, at glibc's largest mmap threshold, so each fresh
    one is mmapped and page-faulted in (~10 ms a tensor, measured); reused buffers skip that.
    """
    if work is None:
        return torch.empty(shape)
    buf = work.get(name)
    if buf is None or buf.shape != shape:
        buf = work[name] = torch.empty(shape)
    return buf


def _weight_grads(sae: SparseAutoencoder, xc: Tensor, z: Tensor, gr: Tensor, g_pre: Tensor) -> None:
    """Dense weight and bias gradients from latents ``z`` and the gradients ``gr`` (dL/dx_hat,
    (B, d_in)) and ``g_pre`` (dL/dpre, (B, d_sae))."""
    sae.W_dec.grad = z.T @ gr
    sae.W_enc.grad = xc.T @ g_pre
    g_benc = g_pre.sum(0)
    sae.b_enc.grad = g_benc
    sae.b_dec.grad = gr.sum(0) - sae.W_enc @ g_benc


def _entries(pre: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row-major (rows, cols, values, per-row offsets) of ``pre`` where ``mask``: (B, S) -> (nnz,)s."""
    B, S = pre.shape
    flat = mask.view(-1).nonzero().squeeze(1)  # (nnz,) sorted, so grouped by row
    rows = flat // S
    cols = flat - rows * S
    vals = pre.view(-1).index_select(0, flat)
    counts = torch.bincount(rows, minlength=B)
    return rows, cols, vals, counts.cumsum(0) - counts


# -- one trainer per architecture -----------------------------------------------------------------
StepFn = Callable[
    [SparseAutoencoder, Tensor, Tensor, Tensor, dict[str, Tensor] | None, Behaviour | None], _Step
]
"""``step(sae, x, xc, pre, work, behaviour)``: loss and gradients (left in ``.grad``) for a batch
``x`` (B, d_in), ``xc = x - b_dec`` and pre-activations ``pre`` (B, d_sae) (which it may
overwrite); the reconstruction's gradient comes from :func:`_output_grad` (which adds the
objective's ``behaviour`` term)."""


@dataclass(frozen=True)
class SAETrainer:
    """How one SAE architecture trains."""

    step: StepFn
    """The loss and hand-computed gradients of one batch."""
    resample_scale: float
    """Default norm of a resampled encoder column relative to the mean alive one."""
    threshold_from_cutoffs: bool = False
    """Set the inference threshold to the mean batch cutoff of the last steps (batchtopk)."""


SAE_TRAINERS: dict[str, SAETrainer] = {}
"""Architecture name (as in :data:`~policylens.agents.sae.SAE_ARCHITECTURES`) -> its trainer."""


def sae_trainer(
    arch: str, resample_scale: float, threshold_from_cutoffs: bool = False
) -> Callable[[StepFn], StepFn]:
    """Decorator registering a step function as the trainer of the SAE architecture ``arch``."""
    if arch not in SAE_ARCHITECTURES:
        raise ValueError(
            f"No SAE architecture {arch!r} to train; register it with @register_sae first."
        )

    def register(step: StepFn) -> StepFn:
        SAE_TRAINERS[arch] = SAETrainer(step, resample_scale, threshold_from_cutoffs)
        return step

    return register


def trainer_for(arch: str) -> SAETrainer:
    """The registered trainer of ``arch``, with one clear sentence when there is none."""
    if arch not in SAE_TRAINERS:
        raise ValueError(
            f"The SAE architecture {arch!r} has no trainer; register its step with "
            f"@sae_trainer({arch!r}, ...) in policylens.lenses.sae."
        )
    return SAE_TRAINERS[arch]


@sae_trainer("relu", resample_scale=0.2)
def _relu_step(
    sae: SparseAutoencoder,
    x: Tensor,
    xc: Tensor,
    pre: Tensor,
    work: dict[str, Tensor] | None,
    behaviour: Behaviour | None = None,
) -> _Step:
    """ReLU + L1: the sparse path below ``sparse_below`` density, else the dense one.

    The dense path makes no boolean masks: converting a (batch, d_sae) mask to float or summing it
    costs more than the elementwise work itself.
    """
    c = sae.config
    head = pre[:256]
    if int((head > 0).sum()) < c.sparse_below * head.numel():  # density estimate
        rows, cols, vals, offsets = _entries(pre, pre > 0)
        return _sparse_grads(sae, x, xc, rows, cols, vals, offsets, c.l1_coeff, behaviour)
    B = x.shape[0]
    g_pre = _buffer(work, "grad", tuple(pre.shape))
    z = pre.relu_()  # (B, d_sae)
    fired = z.amax(0) > 0
    l0 = float(torch.sign(z, out=g_pre).sum()) / B  # g_pre is free until the gradient
    recon = torch.addmm(sae.b_dec, z, sae.W_dec)  # (B, d_in)
    err = recon - x
    loss, gr, extra = _output_grad(err, recon, behaviour)  # gr: dL/dx_hat (B, d_in)
    sparsity = float(z.sum()) / B  # decoder rows are unit norm, so this is SAELens's L1
    loss += c.l1_coeff * sparsity
    # dL/dpre = (gr W_dec^T + l1 / B) where z > 0, else 0
    l1 = torch.full((c.d_sae,), c.l1_coeff / B)
    torch.addmm(l1, gr, sae.W_dec.T, out=g_pre)
    torch.ops.aten.threshold_backward.grad_input(g_pre, z, 0.0, grad_input=g_pre)
    _weight_grads(sae, xc, z, gr, g_pre)
    return _Step(err=err, fired=fired, l0=l0, loss=loss, behaviour=extra)


@sae_trainer("topk", resample_scale=1.0)
def _topk_step(
    sae: SparseAutoencoder,
    x: Tensor,
    xc: Tensor,
    pre: Tensor,
    work: dict[str, Tensor] | None,
    behaviour: Behaviour | None = None,
) -> _Step:
    """TopK: the k largest pre-activations of each sample, through the sparse path."""
    c = sae.config
    B = x.shape[0]
    vals, cols = pre.topk(c.k, dim=-1, sorted=False)  # (B, k)
    vals, cols = vals.reshape(-1), cols.reshape(-1)
    keep = vals > 0
    if bool(keep.all()):
        rows = torch.arange(B).repeat_interleave(c.k)
        offsets = torch.arange(0, B * c.k, c.k)
    else:  # drop non-positive top-k entries (their ReLU is 0)
        rows = torch.arange(B).repeat_interleave(c.k)[keep]
        vals, cols = vals[keep], cols[keep]
        offsets = torch.searchsorted(rows, torch.arange(B))
    return _sparse_grads(sae, x, xc, rows, cols, vals, offsets, behaviour=behaviour)


@sae_trainer("batchtopk", resample_scale=1.0, threshold_from_cutoffs=True)
def _batchtopk_step(
    sae: SparseAutoencoder,
    x: Tensor,
    xc: Tensor,
    pre: Tensor,
    work: dict[str, Tensor] | None,
    behaviour: Behaviour | None = None,
) -> _Step:
    """BatchTopK: the k * B largest pre-activations of the batch; reports the batch cutoff."""
    B = x.shape[0]
    kth = pre.reshape(-1).topk(B * sae.config.k, sorted=False).values.min()
    rows, cols, vals, offsets = _entries(pre, (pre >= kth) & (pre > 0))
    step = _sparse_grads(sae, x, xc, rows, cols, vals, offsets, behaviour=behaviour)
    if vals.numel():
        step.min_kept = float(vals.min())
    return step


def _threshold(sae: SparseAutoencoder) -> Tensor:
    """The per-latent ``threshold`` of a thresholded SAE (a parameter or a buffer).

    Not every architecture has one, so the base class does not declare it and ``nn.Module``
    types the attribute as ``Tensor | Module``.
    """
    threshold = sae.threshold
    assert isinstance(threshold, Tensor), f"{type(sae).__name__}.threshold is not a tensor"
    return threshold


@sae_trainer("jumprelu", resample_scale=0.2)
def _jumprelu_step(
    sae: SparseAutoencoder,
    x: Tensor,
    xc: Tensor,
    pre: Tensor,
    work: dict[str, Tensor] | None,
    behaviour: Behaviour | None = None,
) -> _Step:
    """JumpReLU: L0 penalty, thresholds trained with straight-through estimators (dense)."""
    c = sae.config
    B = x.shape[0]
    g_pre = _buffer(work, "grad", tuple(pre.shape))
    threshold = _threshold(sae)
    theta = threshold.detach()
    active = pre > theta
    z = pre * active
    n_active = active.sum(0)  # (d_sae,)
    fired, l0 = n_active > 0, float(n_active.sum()) / B
    recon = torch.addmm(sae.b_dec, z, sae.W_dec)  # (B, d_in)
    err = recon - x
    loss, gr, extra = _output_grad(err, recon, behaviour)  # gr: dL/dx_hat (B, d_in)
    g_z = torch.mm(gr, sae.W_dec.T, out=g_pre)  # (B, d_sae)
    loss += c.l0_coeff * l0
    # Straight-through estimators (Rajamanoharan et al.): rectangle kernel of width eps.
    eps = c.jumprelu_bandwidth
    near = ((pre - theta).abs() < eps / 2).to(pre.dtype)  # (B, d_sae)
    # d z / d theta = -(theta / eps) K;  d L0 / d theta = -(1 / eps) K
    g_theta = -(theta / eps) * (g_z * near).sum(0) - (c.l0_coeff / (B * eps)) * near.sum(0)
    threshold.grad = g_theta
    g_pre = g_z.mul_(active)
    _weight_grads(sae, xc, z, gr, g_pre)
    return _Step(err=err, fired=fired, l0=l0, loss=loss, behaviour=extra)


def _train_step(
    sae: SparseAutoencoder,
    x: Tensor,
    work: dict[str, Tensor] | None = None,
    behaviour: Behaviour | None = None,
) -> _Step:
    """Forward pass and hand-computed gradients (left in ``.grad``) for one batch ``x`` (B, d_in).

    ``work`` keeps scratch buffers between steps (see :func:`_buffer`); ``behaviour`` adds a
    behaviour-keeping objective's term for this batch.
    """
    B = x.shape[0]
    xc = x - sae.b_dec  # (B, d_in)
    pre = torch.addmm(sae.b_enc, xc, sae.W_enc, out=_buffer(work, "pre", (B, sae.config.d_sae)))
    return trainer_for(sae.config.arch).step(sae, x, xc, pre, work, behaviour)


# -- behaviour-keeping objectives -----------------------------------------------------------------
def median_gap(logits: Tensor) -> float:
    """Median gap between the largest and second-largest of each row of ``logits`` (N, A)."""
    top = logits.float().topk(2, dim=-1).values  # (N, 2)
    return float((top[:, 0] - top[:, 1]).median())


def behaviour_loss(objective: str, new: Tensor, orig: Tensor, temperature: float) -> Tensor:
    """The behaviour term of ``objective`` per observation, averaged: ``new`` and ``orig`` are the
    spliced and original agent's logits (batch, actions).

    ``kl``: KL(softmax(orig / T) || softmax(new / T)); ``logits``: squared error summed over
    actions (:class:`Downstream` divides it by the logits' variance).
    """
    if objective == "kl":
        lp_o = F.log_softmax(orig.float() / temperature, -1)
        lp_n = F.log_softmax(new.float() / temperature, -1)
        return (lp_o.exp() * (lp_o - lp_n)).sum(-1).mean()
    if objective == "logits":
        return (new.float() - orig.float()).pow(2).sum(-1).mean()
    raise ValueError(
        f"The SAE objective {objective!r} has no behaviour term; use one of "
        f"{', '.join(o for o in SAE_OBJECTIVES if o != 'mse')}."
    )


class Downstream:
    """The rest of an agent after a hook, for the behaviour-keeping objectives.

    ``obs`` (N, *obs_shape) are the observations the training vectors came from, in their order
    (observation i gave vectors ``i * positions`` to ``(i + 1) * positions - 1``), and ``logits``
    (N, actions) the unmodified agent's outputs on them. :meth:`loss_and_grad` runs the agent
    with a batch's reconstruction in place of the hook's activation.
    """

    def __init__(
        self,
        agent: HookedAgent,
        site: HookSite,
        obs: np.ndarray | Tensor,
        logits: Tensor,
        config: SAEConfig,
    ) -> None:
        if config.objective == "mse":
            raise ValueError("The mse objective needs no Downstream; train without one.")
        if len(obs) != len(logits) or len(obs) == 0:
            raise ValueError(
                f"Downstream needs one row of logits per observation, got {len(obs)} observations "
                f"and {len(logits)} rows of logits."
            )
        self.agent, self.site, self.obs = agent, site, obs
        self.logits = logits.detach().float().cpu()  # (N, actions)
        self.objective = config.objective
        is_q = getattr(agent, "output", None) == "q"
        temperature = config.temperature
        if temperature is None:  # a Q-network acts on gaps between Q-values: set T to their scale
            temperature = max(median_gap(self.logits), 1e-6) if is_q else 1.0
        self.temperature = float(temperature)
        # the logits objective compares errors with the logits' spread (total variance)
        self.scale = 1.0
        if self.objective == "logits":
            self.scale = 1.0 / max(float(self.logits.var(0).sum()), 1e-12)

    def __len__(self) -> int:
        return len(self.obs)

    def loss_and_grad(self, recon: Tensor, rows: Tensor, weight: float) -> tuple[float, Tensor]:
        """``weight`` x the behaviour term on observations ``rows`` whose reconstructed vectors
        are ``recon`` (len(rows) * positions, d_in), and its gradient w.r.t. ``recon``."""
        idx = rows.numpy()
        with torch.enable_grad():
            leaf = recon.detach().requires_grad_(True)
            act = self.site.from_vectors(leaf, len(idx))
            new, _ = self.agent.run_with_hooks(
                self.obs[idx], fwd_hooks=[(self.site.hook, lambda a, hook: act.to(a.dtype))]
            )
            loss = behaviour_loss(self.objective, new, self.logits[rows], self.temperature)
            loss = loss * (weight * self.scale)
            (grad,) = torch.autograd.grad(loss, leaf)
        return loss.item(), grad


def _batches(
    data: Tensor | Iterable[Tensor], config: SAEConfig, positions: int | None = None
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Training batches ``(x, rows)``: seeded shuffled epochs over a tensor, or an iterable's
    batches as given (``rows`` None).

    With ``positions`` (a behaviour-keeping objective), a batch holds every vector of
    ``batch_size // positions`` whole observations, and ``rows`` says which.
    """
    if isinstance(data, Tensor):
        if data.ndim != 2:
            raise ValueError(
                f"Activations must be a 2-D (samples, d_in) tensor, got shape {tuple(data.shape)}."
            )
        n = data.shape[0]
        if n == 0:
            raise ValueError("No activations to train on; pass a non-empty (samples, d_in) tensor.")
        gen = torch.Generator().manual_seed(config.seed + 1)
        if positions is None:
            bs = min(config.batch_size, n)
            while True:
                perm = torch.randperm(n, generator=gen)
                for i in range(0, n - bs + 1, bs):
                    yield data[perm[i : i + bs]], None
        n_obs = n // positions
        bo = max(1, min(config.batch_size // positions, n_obs))
        offsets = torch.arange(positions)
        while True:
            perm = torch.randperm(n_obs, generator=gen)
            for i in range(0, n_obs - bo + 1, bo):
                rows = perm[i : i + bo]
                yield data[(rows[:, None] * positions + offsets).reshape(-1)], rows
    else:
        for batch in data:
            batch = torch.as_tensor(batch)
            if batch.ndim != 2:
                raise ValueError(
                    f"Activation batches must be 2-D (batch, d_in), got shape {tuple(batch.shape)}."
                )
            yield batch, None


def _lr_at(config: SAEConfig, step: int, steps: int) -> float:
    decay_start = steps * (1.0 - config.lr_decay_frac)
    if config.lr_decay_frac <= 0 or step < decay_start:
        return config.lr
    return config.lr * max(0.0, (steps - step) / max(steps - decay_start, 1.0))


@torch.no_grad()
def _project_decoder_grad(sae: SparseAutoencoder) -> None:
    """Remove each decoder row's gradient component along the (unit) row itself."""
    W, g = sae.W_dec, sae.W_dec.grad
    assert g is not None  # the training step sets it before every optimizer step
    g -= (g * W).sum(1, keepdim=True) * W


@torch.no_grad()
def resample_dead(
    sae: SparseAutoencoder,
    x: Tensor,
    dead: Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
) -> int:
    """Re-initialise ``dead`` latents toward inputs of ``x`` (B, d_in) that reconstruct badly.

    Anthropic's recipe: draw one input per dead latent with probability proportional to its
    squared reconstruction loss; the decoder row becomes that input (minus ``b_dec``) at unit
    norm, the encoder column the same direction at ``resample_encoder_scale`` x the mean alive
    encoder norm, the encoder bias 0; Adam's moments for those weights are zeroed.
    Returns the number of latents resampled.
    """
    idx = dead.nonzero(as_tuple=True)[0]
    n = idx.numel()
    if n == 0:
        return 0
    c = sae.config
    x = sae._check(x)
    recon, _ = sae(x)
    weights = (recon - x).pow(2).sum(-1).pow(2)  # (B,) squared loss
    if not bool(weights.sum() > 0):
        weights = torch.ones_like(weights)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.multinomial(weights, n, replacement=n > x.shape[0], generator=gen)
    directions = x[pick] - sae.b_dec
    directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)  # (n, d_in)
    alive = ~dead
    enc_norms = sae.W_enc.norm(dim=0)
    mean_alive = float(enc_norms[alive].mean()) if bool(alive.any()) else 1.0
    scale = c.resample_encoder_scale
    if scale is None:
        scale = trainer_for(c.arch).resample_scale
    sae.W_dec[idx] = directions
    sae.W_enc[:, idx] = directions.T * (scale * mean_alive)
    sae.b_enc[idx] = 0.0
    if optimizer is not None:
        for p, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
            state = optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][sl] = 0.0
    return n


@torch.no_grad()
def _log_entry(entry: dict[str, float], x: Tensor, out: _Step, seconds: float) -> dict[str, float]:
    """A history entry: the step's bookkeeping plus loss, mse, explained variance and l0 of its
    batch (and the behaviour term of a behaviour-keeping objective)."""
    sq = out.err.pow(2).sum()
    var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    logged = {
        **entry,
        "loss": out.loss,
        "mse": float(sq) / x.numel(),
        "explained_variance": 1.0 - float(sq / var),
        "l0": out.l0,
        "seconds": seconds,
    }
    if not math.isnan(out.behaviour):
        logged["behaviour"] = out.behaviour
    return logged


def train_sae(
    activations: Tensor | Iterable[Tensor],
    config: SAEConfig,
    sae: SparseAutoencoder | None = None,
    progress: bool = False,
    downstream: Downstream | None = None,
) -> tuple[SparseAutoencoder, list[dict[str, float]]]:
    """Train an SAE on ``activations``: a (samples, d_in) tensor or an iterable of (batch, d_in).

    A tensor is read in seeded shuffled epochs of ``config.batch_size``; an iterable's batches are
    used as they come until ``config.samples`` or its end. ``sae`` continues training an existing
    SAE (same d_in, d_sae and arch; ``b_dec`` is then kept) instead of a fresh one. A
    behaviour-keeping ``config.objective`` needs ``downstream``: the agent and the observations
    the rows of ``activations`` (a tensor) came from; its term weighs ``behaviour_coeff`` x the
    activations' total variance per vector (measured on the first batch). Returns the SAE (in eval
    mode) and a history: one dict every ``log_every`` steps with step, samples, loss, mse,
    explained_variance and l0 (of that batch), behaviour (the behaviour term, if any),
    dead_fraction, resampled, lr and seconds.
    """
    positions = None
    if config.objective != "mse":
        if downstream is None:
            raise ValueError(
                f"The {config.objective!r} objective keeps the agent's behaviour, so it needs the "
                "agent: pass downstream=Downstream(agent, site, obs, logits, config), or use "
                "objective='mse'."
            )
        positions = downstream.site.positions
        if (
            not isinstance(activations, Tensor)
            or activations.shape[0] != len(downstream) * positions
        ):
            raise ValueError(
                f"With a behaviour-keeping objective the activations must be one tensor of "
                f"{len(downstream)} observations x {positions} positions, in the observations' "
                "order."
            )
    if sae is None:
        sae = build_sae(config)
        init_b_dec = config.init_b_dec_mean
    else:
        have = (sae.config.d_in, sae.config.d_sae, sae.config.arch)
        want = (config.d_in, config.d_sae, config.arch)
        if have != want:
            raise ValueError(
                f"Cannot continue training an SAE with (d_in, d_sae, arch)={have} under a config "
                f"with {want}; use a config with the SAE's shape and architecture."
            )
        sae.config = config
        init_b_dec = False
    trainer = trainer_for(config.arch)
    sae.train()
    c = config
    thr_sum, thr_n = 0.0, 0  # batchtopk: sum of late batches' cutoffs (smallest kept activation)
    last_cut = 0.0
    params = [p for p in sae.parameters()]
    optimizer = torch.optim.Adam(params, lr=c.lr, betas=c.adam_betas, fused=True)
    since_fired = torch.zeros(c.d_sae, dtype=torch.long)  # samples since each latent last fired
    work: dict[str, Tensor] = {}  # scratch buffers reused across steps
    steps = c.steps
    history: list[dict[str, float]] = []
    resampled = 0
    seen = 0
    last: tuple[dict[str, float], Tensor, _Step] | None = None
    t0 = time.perf_counter()
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("training SAE", total=steps)
    batches = _batches(activations, c, positions)
    weight = 0.0  # of the behaviour term: behaviour_coeff x the activations' variance per vector
    try:
        for step in range(steps):
            batch = next(batches, None)
            if batch is None:
                break
            x, rows = batch
            x = sae._check(x).contiguous()
            if step == 0 and init_b_dec:
                sae.b_dec.data.copy_(x.mean(0))
            if step == 0:
                weight = c.behaviour_coeff * float((x - x.mean(0)).pow(2).sum(1).mean())
            lr = _lr_at(c, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            behaviour = None
            if downstream is not None and rows is not None:
                behaviour = functools.partial(downstream.loss_and_grad, rows=rows, weight=weight)
            with torch.no_grad():
                out = _train_step(sae, x, work, behaviour)
                _project_decoder_grad(sae)
                optimizer.step()
                sae.apply_constraints()
            if not math.isnan(out.min_kept):
                last_cut = out.min_kept
                if step >= (1.0 - c.threshold_window) * steps - 1:
                    thr_sum += out.min_kept
                    thr_n += 1
            B = x.shape[0]
            seen += B
            since_fired += B
            since_fired[out.fired] = 0
            dead = since_fired >= c.dead_window
            if (
                c.resample_every
                and (step + 1) % c.resample_every == 0
                and step < c.resample_until * steps
            ):
                n = resample_dead(sae, x, dead, optimizer, seed=c.seed * 1_000_003 + step)
                if n:
                    resampled += n
                    since_fired[dead] = 0
            entry = {
                "step": step,
                "samples": seen,
                "resampled": resampled,
                "lr": lr,
                "dead_fraction": float(dead.float().mean()),
            }
            last = (entry, x, out)
            if step % c.log_every == 0 or step == steps - 1:
                history.append(_log_entry(*last, time.perf_counter() - t0))
                last = None
            if bar is not None:
                bar.update(task, advance=1)
    finally:
        if bar is not None:
            bar.stop()
    if last is not None:  # the data ran out between log steps: log the final step too
        history.append(_log_entry(*last, time.perf_counter() - t0))
    if trainer.threshold_from_cutoffs:
        # A per-sample threshold at the batch cutoff keeps k latents per sample on average.
        _threshold(sae).fill_(thr_sum / thr_n if thr_n else last_cut)
    return sae.eval(), history


@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder, activations: Tensor, batch_size: int = 8192
) -> dict[str, float]:
    """Reconstruction and sparsity of ``sae`` on (samples, d_in) ``activations``.

    mse: mean squared error per element; explained_variance: 1 - sum ||x - x_hat||^2 / sum ||x -
    mean||^2; l0: mean active latents per sample; l1: mean sum of latents; dead_fraction: latents
    never active on these samples.
    """
    x_all = sae._check(torch.as_tensor(activations))
    if x_all.ndim != 2 or x_all.shape[0] == 0:
        raise ValueError(
            f"evaluate_sae needs a non-empty (samples, d_in) tensor, got shape {tuple(x_all.shape)}."
        )
    mean = x_all.mean(0)
    sq = var = l0 = l1 = 0.0
    fired = torch.zeros(sae.config.d_sae, dtype=torch.bool)
    for x in x_all.split(batch_size):
        recon, z = sae(x)
        sq += float((recon - x).pow(2).sum())
        var += float((x - mean).pow(2).sum())
        active = z != 0
        l0 += float(active.sum())
        l1 += float(z.abs().sum())
        fired |= active.any(0)
    n = x_all.shape[0]
    return {
        "mse": sq / x_all.numel(),
        "explained_variance": 1.0 - sq / max(var, 1e-12),
        "l0": l0 / n,
        "l1": l1 / n,
        "dead_fraction": float((~fired).float().mean()),
    }


__all__ = [
    "SAE_TRAINERS",
    "Downstream",
    "SAETrainer",
    "behaviour_loss",
    "median_gap",
    "evaluate_sae",
    "resample_dead",
    "sae_trainer",
    "synthetic_activations",
    "train_sae",
    "trainer_for",
]
