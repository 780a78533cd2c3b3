"""Intervals of a mean over subjects: the normal approximation, reported with KID, MS-SSIM diversity and
reconstruction means, and the percentile bootstrap, for skewed per-subject numbers such as ROI enrichments (the
Wilson interval of a share is `neuroldm.metrics.interval.wilson_interval`).

Each is a `neuroldm.metrics.interval.Interval` at the 95 % level, the normal quantile rounded to 1.96 as these
outputs have always used it.
"""

from __future__ import annotations

import math

import numpy as np

from neuroldm.metrics.classification import bootstrap_ci
from neuroldm.metrics.interval import BOOTSTRAP, NORMAL, Z95, Interval


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



def bootstrap_mean_ci(values, seed: int = 0, n: int = 2000) -> Interval:
    """The mean of the finite `values` with a percentile-bootstrap 95 % interval over `n` resamples (NaN bounds
    below two values; N counts the finite values)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, BOOTSTRAP)
    if v.size == 1:
        return Interval(float(v[0]), math.nan, math.nan, 1, BOOTSTRAP)
    # one stratum: the labels of bootstrap_ci are irrelevant to a mean
    return bootstrap_ci(np.zeros(v.size, int), v, lambda _, s: float(s.mean()), n=n, seed=seed)
