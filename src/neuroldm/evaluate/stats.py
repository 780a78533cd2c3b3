"""Intervals reported with every metric: a normal-approximation interval of a mean, a Wilson interval of a share."""

from __future__ import annotations

import math

import numpy as np


def mean_ci(values) -> dict:
    """Mean, std, N and a normal-approximation 95 % interval of the mean (treats the values as independent)."""
    v = np.asarray(values, np.float64)
    sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    half = 1.96 * sd / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "std": sd, "n": len(v),
            "ci95": [float(v.mean() - half), float(v.mean() + half)]}


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score 95 % interval of a proportion k/n (Wilson 1927)."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]
