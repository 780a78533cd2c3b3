"""One confidence-interval type for every stage output: an estimate, its bounds, its N and how they were found.

Every interval a stage writes to JSON is ``Interval.to_dict()``: ``{"value", "low", "high", "n", "method",
"level"}``, plus whatever the stage puts beside it (``std`` of a mean, ``per_class`` ...). Bounds that cannot be
computed (one value, one class) are NaN and are written as every other float of the outputs is
(`neuroldm.io.write_json_atomic`: ``NaN``); `from_dict` also reads ``null`` as NaN.

`method` names how the bounds were found:

- ``normal``: mean ± 1.96 s/√n, the normal approximation of a mean (KID subsets, MS-SSIM pairs);
- ``t``: mean ± t(n−1) s/√n, Student's t-interval of a mean (a classifier metric over runs);
- ``wilson``: the Wilson score interval of a proportion (Wilson 1927);
- ``delong``: AUC ± z √var with DeLong's variance (DeLong, DeLong & Clarke-Pearson 1988);
- ``bootstrap``: a percentile bootstrap interval;
- ``jackknife-fisher-z``: a delete-one jackknife variance on Fisher's z scale, transformed back;
- ``jackknife``: a delete-one jackknife variance, value ± 1.96 √var (a difference of correlations);
- ``auc-score``: the score-type interval of an AUC (`neuroldm.metrics.classification.auc_score_interval`);
- ``mover-wilson``: Wilson intervals of shares combined for their mean by MOVER (Zou & Donner 2008);
- ``none``: not computed (the bounds are NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NORMAL = "normal"
T = "t"
WILSON = "wilson"
DELONG = "delong"
BOOTSTRAP = "bootstrap"
JACKKNIFE_FISHER_Z = "jackknife-fisher-z"
JACKKNIFE = "jackknife"
AUC_SCORE = "auc-score"
MOVER_WILSON = "mover-wilson"
NONE = "none"

Z95 = 1.96  # the normal quantile of a 95 % interval, rounded as every output of neuroldm has used it

FIELDS = ("value", "low", "high", "n", "method", "level")


def _number(x: object) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True)
class Interval:
    """``value`` with its ``level`` (e.g. 0.95) confidence interval ``[low, high]`` over ``n`` observations."""

    value: float
    low: float
    high: float
    n: int
    method: str
    level: float = 0.95

    def __post_init__(self) -> None:
        # plain Python numbers, so that numpy scalars never reach the JSON writer (which would quote an np.int64)
        for name in ("value", "low", "high", "level"):
            object.__setattr__(self, name, _number(getattr(self, name)))
        object.__setattr__(self, "n", int(self.n))

    @property
    def bounded(self) -> bool:
        """Both bounds are finite numbers."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    def to_dict(self, **extra: object) -> dict:
        """``{"value", "low", "high", "n", "method", "level", **extra}``: the one shape of an interval in JSON."""
        clash = set(extra) & set(FIELDS)
        if clash:
            raise ValueError(f"extra keys {sorted(clash)} would overwrite the interval's own")
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "method": self.method,
                "level": self.level, **extra}

    @classmethod
    def from_dict(cls, d: dict) -> Interval:
        """The interval of a `to_dict` dict (extra keys are ignored; ``null`` numbers read as NaN)."""
        missing = [k for k in FIELDS[:5] if k not in d]
        if missing:
            raise KeyError(f"not an interval: no {', '.join(missing)} in {sorted(d)}")
        return cls(d["value"], d["low"], d["high"], d["n"], d["method"], d.get("level", 0.95))

    def text(self, spec: str = ".3f", unit: str = "", with_n: bool = True) -> str:
        """``0.972 [0.858, 0.995] (N=36)``: every number formatted with `spec`, `unit` after the value."""
        out = f"{self.value:{spec}}{unit} [{self.low:{spec}}, {self.high:{spec}}]"
        return f"{out} (N={self.n})" if with_n else out

    def __str__(self) -> str:
        return self.text()


def wilson_interval(k: int, n: int) -> Interval:
    """The share k/n with its Wilson score 95 % interval (Wilson 1927); NaN throughout when n = 0.

    Unlike the Wald interval it does not collapse to a point at 0 or n successes: 12 of 12 gives [0.757, 1]."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, WILSON)
    z = Z95
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, WILSON)
