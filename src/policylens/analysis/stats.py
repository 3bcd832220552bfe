"""Confidence intervals used by every analysis: no effect is reported without one."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (good at 0 and 1, unlike the normal interval)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values, z: float = Z95) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval: (mean, low, high)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size == 1:
        return (m, m, m)
    half = z * float(x.std(ddof=1)) / math.sqrt(x.size)
    return (m, m - half, m + half)


def proportion(flags) -> dict[str, float]:
    """A proportion with its count and Wilson interval, ready for JSON."""
    f = np.asarray(flags, dtype=bool)
    lo, hi = wilson(int(f.sum()), int(f.size))
    return {"rate": float(f.mean()) if f.size else math.nan, "n": int(f.size), "ci": [lo, hi]}


def mean(values) -> dict[str, float]:
    m, lo, hi = mean_ci(values)
    return {"mean": m, "n": int(np.size(values)), "ci": [lo, hi]}
