"""Intervals reported with every metric: a normal-approximation interval of a mean, a Wilson interval of a share.

Both are `neuroldm.metrics.interval.Interval` at the 95 % level, with the normal quantile rounded to 1.96 as these
outputs have always used it.
"""

from __future__ import annotations

import math

import numpy as np

from neuroldm.metrics.interval import NORMAL, WILSON, Interval

Z95 = 1.96


def sample_std(values) -> float:
    """The standard deviation with Bessel's correction (NaN below two values)."""
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def mean_ci(values) -> Interval:
    """The mean with its normal-approximation 95 % interval, mean ± 1.96 s/√n (treats the values as independent;
    NaN bounds below two values)."""
    v = np.asarray(values, np.float64)
    half = Z95 * sample_std(v) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return Interval(float(v.mean()), float(v.mean() - half), float(v.mean() + half), len(v), NORMAL)


def mean_summary(values) -> dict:
    """A mean as the outputs write it: `mean_ci`'s dict plus ``std``."""
    return mean_ci(values).to_dict(std=sample_std(values))


def wilson_interval(k: int, n: int) -> Interval:
    """The share k/n with its Wilson score 95 % interval (Wilson 1927); NaN throughout when n = 0."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, WILSON)
    z = Z95
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, WILSON)
