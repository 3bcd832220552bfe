"""Confidence intervals used by every analysis: no effect is reported without one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (good at 0 and 1, unlike the normal interval)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the ends: an interval of 0/n starts at 0 and one of n/n ends at 1
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def mean_ci(values: ArrayLike, z: float = Z95) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval: (mean, low, high)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size == 1:
        return (m, m, m)
    half = z * float(x.std(ddof=1)) / math.sqrt(x.size)
    return (m, m - half, m + half)


def proportion(flags: ArrayLike) -> dict[str, Any]:
    """A proportion with its count and Wilson interval, ready for JSON."""
    f = np.asarray(flags, dtype=bool)
    lo, hi = wilson(int(f.sum()), int(f.size))
    return {"rate": float(f.mean()) if f.size else math.nan, "n": int(f.size), "ci": [lo, hi]}


def mean(values: ArrayLike) -> dict[str, Any]:
    m, lo, hi = mean_ci(values)
    return {"mean": m, "n": int(np.size(values)), "ci": [lo, hi]}


def t_mean(values: ArrayLike) -> dict[str, Any]:
    """Mean with its Student-t 95% interval, for a few values such as one metric over seeds.

    Exact for normal values, and wider than :func:`mean`'s normal interval when there are few;
    with fewer than two values there is no interval (NaN ends).
    """
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        m = float(x.mean()) if x.size else math.nan
        return {"mean": m, "n": int(x.size), "ci": [math.nan, math.nan]}
    m = float(x.mean())
    half = float(t.ppf(0.975, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return {"mean": m, "n": int(x.size), "ci": [m - half, m + half]}


def welch_difference(a: ArrayLike, b: ArrayLike) -> dict[str, Any]:
    """Difference of two means (``mean(a) - mean(b)``, e.g. one metric over seeds at two
    settings) with Welch's 95% interval, and whether it excludes zero (``effect``)."""
    from scipy.stats import t

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    if x.size < 2 or y.size < 2:
        return {"diff": d, "ci": [math.nan, math.nan], "effect": False}
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    if se == 0:
        return {"diff": d, "ci": [d, d], "effect": d != 0}
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(t.ppf(0.975, dof)) * se
    return {"diff": d, "ci": [d - half, d + half], "effect": bool(d - half > 0 or d + half < 0)}


def difference(a: dict[str, Any], b: dict[str, Any], z: float = Z95) -> dict[str, Any]:
    """Difference of two proportions (``a - b``, as made by :func:`proportion`) with Newcombe's
    hybrid-score 95% interval, and whether that interval excludes zero (``effect``).
    """
    if not a["n"] or not b["n"]:
        return {"diff": math.nan, "ci": [math.nan, math.nan], "effect": False}
    p1, p2 = a["rate"], b["rate"]
    (l1, u1), (l2, u2) = (
        wilson(round(p1 * a["n"]), a["n"], z),
        wilson(round(p2 * b["n"]), b["n"], z),
    )
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return {"diff": d, "ci": [lo, hi], "effect": bool(lo > 0 or hi < 0)}
