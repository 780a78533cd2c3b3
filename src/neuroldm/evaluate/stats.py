"""The normal-approximation interval of a mean, reported with KID, MS-SSIM diversity and reconstruction means (the
Wilson interval of a share is `neuroldm.metrics.interval.wilson_interval`).

Both are `neuroldm.metrics.interval.Interval` at the 95 % level, with the normal quantile rounded to 1.96 as these
outputs have always used it.
"""

from __future__ import annotations

import math

import numpy as np

from neuroldm.metrics.interval import NORMAL, Z95, Interval


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

