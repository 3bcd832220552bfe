"""Representation similarity and intrinsic dimension: how alike two layers (or two agents, or two
checkpoints) represent the same observations, and how many dimensions a layer's activations fill.

* **CKA** (centred kernel alignment, Kornblith et al. 2019):
  ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` on the Gram matrices ``K``, ``L`` of two
  representations of the same ``n`` inputs. ``kernel="linear"`` (``K = X X^T``) or ``"rbf"``
  (``exp(-d^2 / (2 sigma^2))`` with ``sigma = rbf_fraction x`` the median pairwise distance, as in
  Kornblith's code, which takes the median of all ``n^2`` squared distances). HSIC is the biased
  estimator ``tr(HKH HLH) / (n-1)^2`` by default; ``unbiased=True`` uses the unbiased one (Song et
  al. 2012, as used for CKA by Nguyen et al. 2021): the U-centred Gram matrices (diagonal zeroed,
  centred with ``n-2`` and ``(n-1)(n-2)`` as divisors), whose inner product over ``n(n-3)`` is the
  unbiased HSIC. The biased estimate of two independent representations is positive (about
  ``sqrt(p q) / n`` for linear CKA of ``p`` and ``q`` features); the unbiased one is about 0.
  Linear biased CKA equals ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on centred data
  (tdhook's ``CkaEstimator``).
* **TwoNN** intrinsic dimension (Facco et al. 2017): ``mu = r2 / r1`` (second over first
  nearest-neighbour distance) is Pareto with exponent ``d``; the fit is tdhook's
  (``TwoNnDimensionEstimator``): distances ``<= eps`` are duplicates and skipped, ``mu`` sorted,
  empirical CDF ``F_i = i / N``, the largest ``mu`` (``F = 1``) dropped, and ``d`` the slope of a
  least-squares line through the origin of ``-log(1 - F)`` against ``log(mu)``.
  ``discard_fraction`` drops the largest ``mu`` values too (Facco et al. drop 10%); ``0`` is
  tdhook's convention.

Speed: a matrix of CKA between many representations (layers x checkpoints x agents) computes
each one's centred Gram matrix once (in float64, from the centred features), keeps its upper
triangle (off-diagonal entries weighted by sqrt 2) normalised, and gets every pair at once as one
matrix product; the same Gram matrix gives the pairwise distances for TwoNN. Work in blocks
bounds the memory (``max_bytes``). One pair of representations with fewer features than rows
uses the feature-space formula instead (cheaper than two ``n x n`` Gram matrices).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from policylens.errors import check_known

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent

Kernel = Literal["linear", "rbf"]
KERNELS = ("linear", "rbf")
RBF_FRACTION = 0.8
"""Default RBF bandwidth as a fraction of the median distance (Kornblith et al. use 0.2-0.8)."""
TWONN_EPS = 1e-5
"""Distances at or below this are duplicates (tdhook's default)."""
MAX_BYTES = 1 << 30
"""Memory for the Gram matrices of :func:`cka_matrix` held at once (1 GiB)."""

Array = np.ndarray | torch.Tensor


def check_cka_settings(kernel: str, rbf_fraction: float) -> None:
    """Refuse an unknown kernel or a bandwidth that is not a positive number."""
    check_known([kernel], KERNELS, "kernel")
    if not (isinstance(rbf_fraction, int | float) and math.isfinite(rbf_fraction)) or not (
        rbf_fraction > 0
    ):
        raise ValueError(f"rbf_fraction must be a positive number, got {rbf_fraction!r}.")


def _as_rows(x: Array, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``x`` as a ``(n, features)`` tensor of ``dtype``; ``(n,)`` becomes ``(n, 1)``."""
    t = torch.as_tensor(x).detach().cpu()
    if t.ndim == 0:
        raise ValueError("A representation needs one row per input; got a scalar.")
    t = t.reshape(len(t), -1) if t.ndim != 1 else t.reshape(-1, 1)
    return t.to(dtype)


def _centred_linear_gram(x: Array) -> torch.Tensor:
    """``Xc Xc^T`` (float64) of the column-centred features (NumPy's BLAS: on this machine's
    CPUs its float64 product runs about twice as fast as torch's)."""
    t = _as_rows(x)
    a = (t - t.mean(dim=0, keepdim=True)).numpy()
    return torch.from_numpy(a @ a.T)


def _double_centre(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11^T / n``."""
    row = k.mean(dim=0, keepdim=True)
    return k - row - row.T + row.mean()


def _u_centre(k: torch.Tensor) -> torch.Tensor:
    """The U-centred Gram matrix (Szekely and Rizzo; Kornblith's ``center_gram(unbiased=True)``)."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"The unbiased HSIC needs at least 4 inputs, got {n}.")
    k = k.clone()
    k.fill_diagonal_(0)
    means = k.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    k = k - means[:, None] - means[None, :]
    k.fill_diagonal_(0)
    return k


def _sq_distances(gram: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances from a Gram matrix of (centred) features, clipped at 0."""
    sq = torch.diagonal(gram)
    return (sq[:, None] + sq[None, :] - 2 * gram).clamp_(min=0)


def _rbf(linear_gram: torch.Tensor, rbf_fraction: float) -> torch.Tensor:
    """RBF kernel with ``sigma^2 = rbf_fraction^2 x median squared distance`` (Kornblith)."""
    d2 = _sq_distances(linear_gram)
    median = float(np.median(d2.cpu().numpy()))
    if median <= 0:
        return torch.ones_like(d2)  # more than half the pairs coincide: no scale to measure
    return torch.exp(-d2 / (2 * rbf_fraction**2 * median))


def centred_gram(
    x: Array,
    kernel: Kernel = "linear",
    unbiased: bool = False,
    rbf_fraction: float = RBF_FRACTION,
    linear_gram: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``(n, n)`` float64 Gram matrix of ``x`` centred for HSIC: ``HKH`` (biased) or
    U-centred (``unbiased``). ``linear_gram`` (``Xc Xc^T``) saves recomputing it."""
    check_cka_settings(kernel, rbf_fraction)
    g = _centred_linear_gram(x) if linear_gram is None else linear_gram
    if kernel == "rbf":
        g = _rbf(g, rbf_fraction)
        return _u_centre(g) if unbiased else _double_centre(g)
    # The features are centred, so Xc Xc^T is already double-centred.
    return _u_centre(g) if unbiased else g


def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> float:  # noqa: E741
    """HSIC of two Gram matrices already centred by :func:`centred_gram` (same ``unbiased``)."""
    n = k.shape[0]
    scale = n * (n - 3) if unbiased else (n - 1) ** 2
    return float((k * l).sum()) / scale


def _feature_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    cross = float((y.T @ x).square().sum())
    norm = math.sqrt(float((x.T @ x).square().sum()) * float((y.T @ y).square().sum()))
    return cross / norm if norm > 0 else math.nan


def cka(
    x: Array,
    y: Array,
    kernel: Kernel = "linear",
    unbiased: bool = False,
    rbf_fraction: float = RBF_FRACTION,
) -> float:
    """CKA between two representations ``(n, ...)`` of the same ``n`` inputs (float64).

    NaN where a representation is constant (its HSIC with itself is 0; with ``unbiased``, also
    where it is not positive, which happens by chance on tiny samples).
    """
    check_cka_settings(kernel, rbf_fraction)
    a, b = _as_rows(x), _as_rows(y)
    if len(a) != len(b):
        raise ValueError(f"CKA compares representations of the same inputs; got {len(a)} and "
                         f"{len(b)} rows.")  # fmt: skip
    n, p, q = len(a), a.shape[1], b.shape[1]
    if kernel == "linear" and not unbiased and p * q + p * p + q * q < n * (p + q + 3):
        return _feature_cka(a, b)
    k = centred_gram(a, kernel, unbiased, rbf_fraction)
    l = centred_gram(b, kernel, unbiased, rbf_fraction)  # noqa: E741
    kk, ll = float((k * k).sum()), float((l * l).sum())
    if kk <= 0 or ll <= 0:
        return math.nan
    return float((k * l).sum()) / math.sqrt(kk * ll)


# ---------------------------------------------------------------------------------- many pairs
def _triu(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.triu_indices(n, n, device=device)
    weight = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(torch.float64)
    return rows * n + cols, weight


def _unit_vectors(
    reps: Sequence[Array],
    kernel: Kernel,
    unbiased: bool,
    rbf_fraction: float,
    index: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Rows: each representation's centred Gram matrix as a unit vector whose dot products are
    the Frobenius inner products (upper triangle, off-diagonal weighted sqrt 2); NaN rows for
    constant representations."""
    flat, weight = index
    out = torch.empty((len(reps), len(flat)), dtype=torch.float64)
    for i, x in enumerate(reps):
        g = centred_gram(x, kernel, unbiased, rbf_fraction).reshape(-1)
        v = g[flat] * weight
        norm = float(v.square().sum())
        out[i] = v / math.sqrt(norm) if norm > 0 else math.nan
    return out


def _blocks(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def cka_matrix(
    reps: Sequence[Array],
    others: Sequence[Array] | None = None,
    kernel: Kernel = "linear",
    unbiased: bool = False,
    rbf_fraction: float = RBF_FRACTION,
    max_bytes: int = MAX_BYTES,
) -> np.ndarray:
    """CKA between every pair of ``reps`` (``(len(reps), len(reps))``, symmetric, 1 on the
    diagonal), or between every one of ``reps`` and every one of ``others``
    (``(len(reps), len(others))``). All representations hold the same ``n`` inputs (rows) in the
    same order; any float dtype (bf16 included) is computed in float64."""
    check_cka_settings(kernel, rbf_fraction)
    reps = list(reps)
    cols = reps if others is None else list(others)
    if not reps or not cols:
        return np.zeros((len(reps), len(cols)))
    n = len(reps[0])
    for r in (*reps, *cols):
        if len(r) != n:
            raise ValueError(
                f"CKA compares representations of the same inputs; got {n} and {len(r)} rows."
            )
    if n < 2:
        raise ValueError(f"CKA needs at least 2 inputs, got {n}.")
    index = _triu(n, torch.device("cpu"))
    per_rep = len(index[0]) * 8
    block = max(1, int(max_bytes // (2 * per_rep)))
    out = np.full((len(reps), len(cols)), np.nan)
    settings = (kernel, unbiased, rbf_fraction, index)
    if others is None and len(reps) <= 2 * block:  # everything fits: one product
        v = _unit_vectors(reps, *settings)
        out[:] = (v @ v.T).numpy()
    else:
        cached: dict[int, torch.Tensor] = {}
        for rows in _blocks(len(reps), block):
            a = _unit_vectors(reps[rows], *settings)
            for cs in _blocks(len(cols), block):
                if others is None and cs.start < rows.start:
                    continue  # the symmetric half is filled from the other side
                if others is None and cs == rows:
                    b = a
                elif cs.start in cached:
                    b = cached[cs.start]
                else:
                    b = _unit_vectors(cols[cs], *settings)
                    if len(cols) <= block:
                        cached[cs.start] = b
                out[rows, cs] = (a @ b.T).numpy()
                if others is None:
                    out[cs, rows] = out[rows, cs].T
    if others is None:
        ok = ~np.isnan(np.diag(out))
        out[np.diag_indices_from(out)] = np.where(ok, 1.0, np.nan)
    return out


# ---------------------------------------------------------------------------------- dimension
def _twonn_fit(d2: torch.Tensor, discard_fraction: float, eps: float) -> float:
    """TwoNN on squared distances (tdhook's fit; see the module docstring)."""
    if not 0 <= discard_fraction < 1:
        raise ValueError(f"discard_fraction must lie in [0, 1), got {discard_fraction}.")
    d = d2.sqrt()
    d.fill_diagonal_(math.inf)
    d = torch.where(d > eps, d, math.inf)
    nearest = torch.topk(d, 2, dim=1, largest=False).values
    r1, r2 = nearest[:, 0], nearest[:, 1]
    valid = torch.isfinite(r1) & torch.isfinite(r2)
    n = int(valid.sum())
    if n < 3:
        raise ValueError(
            f"TwoNN needs at least 3 points with two distinct neighbours, got {n} (the rest are "
            "duplicates)."
        )
    mu = torch.sort((r2 / r1)[valid]).values
    keep = min(n - 1, int(n * (1 - discard_fraction)))
    if keep < 2:
        raise ValueError(f"discard_fraction {discard_fraction} leaves fewer than 2 points.")
    x = torch.log(mu[:keep])
    y = -torch.log(1 - torch.arange(1, keep + 1, dtype=torch.float64) / n)
    xx = float(x.square().sum())
    return float((x * y).sum()) / xx if xx > 0 else 0.0  # all ratios 1: least squares' 0


def twonn_dimension(x: Array, discard_fraction: float = 0.0, eps: float = TWONN_EPS) -> float:
    """TwoNN intrinsic dimension of the points ``x`` ``(n, ...)`` (Facco et al. 2017) with
    tdhook's fit; ``discard_fraction`` also drops the largest ratios (Facco et al.: 0.1)."""
    if len(x) < 3:
        raise ValueError(f"TwoNN needs at least 3 points, got {len(x)}.")
    return _twonn_fit(_sq_distances(_centred_linear_gram(x)), discard_fraction, eps)


# ---------------------------------------------------------------------------------- agents
def flat_activations(
    agent: HookedAgent, obs: np.ndarray, hooks: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{hook: (n, features)}`` float32 activations of ``agent`` on ``obs`` (through
    :func:`policylens.lenses.probes.agent_activations`)."""
    from policylens.lenses.probes import agent_activations

    acts = agent_activations(agent, obs, hooks)
    return {h: a.reshape(len(a), -1) for h, a in acts.items()}


def layer_cka(
    agent: HookedAgent,
    obs: np.ndarray,
    hooks: Sequence[str],
    other: HookedAgent | None = None,
    other_hooks: Sequence[str] | None = None,
    kernel: Kernel = "linear",
    unbiased: bool = False,
    rbf_fraction: float = RBF_FRACTION,
) -> np.ndarray:
    """CKA between every pair of ``hooks`` of ``agent`` on ``obs`` (``(len(hooks),)*2``), or,
    given ``other`` (another agent or checkpoint), between ``agent``'s ``hooks`` (rows) and
    ``other``'s ``other_hooks`` (columns; default: the same hooks)."""
    mine = flat_activations(agent, obs, hooks)
    if other is None:
        return cka_matrix([mine[h] for h in hooks], None, kernel, unbiased, rbf_fraction)
    theirs_hooks = list(other_hooks or hooks)
    theirs = flat_activations(other, obs, theirs_hooks)
    return cka_matrix([mine[h] for h in hooks], [theirs[h] for h in theirs_hooks], kernel,
                      unbiased, rbf_fraction)  # fmt: skip


class RepresentationSet:
    """Many representations of the same inputs, each prepared once: CKA between all of them
    (:meth:`cka`) and the TwoNN dimension of each (:meth:`twonn`) from one Gram matrix each.

    ``add`` computes the centred linear Gram matrix of a representation right away and keeps
    only what the settings need (the unit vector of its centred kernel matrix, its dimension),
    so the activations can be dropped after each checkpoint. Each representation keeps
    ``n (n + 1) / 2`` float64 values (4 MB for 1,000 inputs).
    """

    def __init__(
        self,
        n: int,
        kernel: Kernel = "linear",
        unbiased: bool = False,
        rbf_fraction: float = RBF_FRACTION,
        discard_fraction: float = 0.0,
        dimension: bool = True,
    ) -> None:
        check_cka_settings(kernel, rbf_fraction)
        if not 0 <= discard_fraction < 1:
            raise ValueError(f"discard_fraction must lie in [0, 1), got {discard_fraction}.")
        self.n, self.kernel, self.unbiased = n, kernel, unbiased
        self.rbf_fraction, self.discard_fraction = rbf_fraction, discard_fraction
        self.dimension = dimension
        self.index = _triu(n, torch.device("cpu"))
        self.names: list[Any] = []
        self.vectors: list[torch.Tensor] = []
        self.dimensions: list[float] = []

    def add(self, name: Any, x: Array) -> None:
        if len(x) != self.n:
            raise ValueError(f"This set compares {self.n} inputs; got {len(x)} rows for {name}.")
        g = _centred_linear_gram(x)
        if self.dimension:
            try:
                dim = _twonn_fit(_sq_distances(g), self.discard_fraction, TWONN_EPS)
            except ValueError:
                dim = math.nan
            self.dimensions.append(dim)
        k = centred_gram(x, self.kernel, self.unbiased, self.rbf_fraction, linear_gram=g)
        flat, weight = self.index
        v = k.reshape(-1)[flat] * weight
        norm = float(v.square().sum())
        self.vectors.append(v / math.sqrt(norm) if norm > 0 else torch.full_like(v, math.nan))
        self.names.append(name)

    def cka(
        self, rows: Sequence[int] | None = None, cols: Sequence[int] | None = None
    ) -> np.ndarray:
        """CKA between the representations ``rows`` and ``cols`` (indices; default: all)."""
        r = list(range(len(self.vectors))) if rows is None else list(rows)
        c = r if cols is None else list(cols)
        a = torch.stack([self.vectors[i] for i in r])
        b = a if cols is None else torch.stack([self.vectors[i] for i in c])
        out = (a @ b.T).numpy()
        for i, ri in enumerate(r):
            for j, cj in enumerate(c):
                if ri == cj and not np.isnan(out[i, j]):
                    out[i, j] = 1.0
        return out


__all__ = [
    "KERNELS",
    "RBF_FRACTION",
    "Kernel",
    "RepresentationSet",
    "centred_gram",
    "check_cka_settings",
    "cka",
    "cka_matrix",
    "flat_activations",
    "hsic",
    "layer_cka",
    "twonn_dimension",
]
