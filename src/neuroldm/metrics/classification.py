"""Binary classification metrics with confidence intervals, and DeLong's test for AUCs.

Labels are 0/1 (1 = the positive class, e.g. TLE); scores are P(positive). Threshold metrics come from the
confusion matrix at ``threshold``; a metric whose denominator is zero is NaN (sklearn would return 0 with a
warning, which reads like a measured value).

AUC-ROC and its variance follow DeLong, DeLong & Clarke-Pearson (Biometrics 1988) with the midrank algorithm of
Sun & Xu (IEEE SPL 2014): the AUC is the mean of the positives' placement values, its variance
``var(V10)/m + var(V01)/n`` (m positives, n negatives), and two AUCs on the same subjects are compared with the
covariance of their placement values (the paired DeLong test). AUC-PR is average precision (sklearn), as the seed
reported it.

Reported intervals stay honest at the bounds, where the usual ones collapse to a point (at perfect separation
DeLong's variance is 0, so its interval was [1, 1] at any N):

- AUC-ROC: the score-type interval of `auc_score_interval` (Hanley & McNeil's variance with Newcombe's N*);
- accuracy, sensitivity, specificity, PPV, NPV — shares of a count: Wilson score intervals;
- balanced accuracy, the mean of sensitivity and specificity: their Wilson intervals combined by MOVER
  (`balanced_accuracy_interval`);
- F1, AUC-PR: percentile intervals of a stratified bootstrap (class counts fixed per resample); these can still
  collapse at 1.

Every CI is a `neuroldm.metrics.interval.Interval`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import optimize, stats
from sklearn.metrics import average_precision_score

from neuroldm.metrics.interval import AUC_SCORE, BOOTSTRAP, DELONG, MOVER_WILSON, NONE, Interval, wilson_interval

METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auc_roc", "auc_pr")


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def confusion(labels, scores, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """``(tp, fp, tn, fn)`` of ``score >= threshold``."""
    y, s = _check(labels, scores)
    pred = s >= threshold
    return (int(np.sum(pred & (y == 1))), int(np.sum(pred & (y == 0))), int(np.sum(~pred & (y == 0))),
            int(np.sum(~pred & (y == 1))))


# the threshold metrics that are a share of a count: (successes, trials) of the confusion matrix
SHARES: dict[str, Callable[[int, int, int, int], tuple[int, int]]] = {
    "accuracy": lambda tp, fp, tn, fn: (tp + tn, tp + fp + tn + fn),
    "sensitivity": lambda tp, fp, tn, fn: (tp, tp + fn),
    "specificity": lambda tp, fp, tn, fn: (tn, tn + fp),
    "ppv": lambda tp, fp, tn, fn: (tp, tp + fp),
    "npv": lambda tp, fp, tn, fn: (tn, tn + fn),
}


def threshold_metrics(labels, scores, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, balanced accuracy, sensitivity, specificity, PPV, NPV and F1 of ``score >= threshold``."""
    y, s = _check(labels, scores)
    tp, fp, tn, fn = confusion(y, s, threshold)
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {"accuracy": _ratio(tp + tn, y.size), "balanced_accuracy": (sens + spec) / 2, "sensitivity": sens,
            "specificity": spec, "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and the structural components: V10 per positive (share of negatives it outscores, ties 1/2) and V01
    per negative (share of positives that outscore it)."""
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        raise ValueError("AUC needs both classes")
    ranks = stats.rankdata(np.concatenate([pos, neg]))  # midranks
    v10 = (ranks[:m] - stats.rankdata(pos)) / n
    v01 = 1.0 - (ranks[m:] - stats.rankdata(neg)) / m
    return float(v10.mean()), v10, v01


def auc_roc(labels, scores) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic); NaN with one class only."""
    y, s = _check(labels, scores)
    if y.min() == y.max():
        return math.nan
    return _placements(y, s)[0]


def auc_pr(labels, scores) -> float:
    """Average precision (the step-wise area under the precision-recall curve); NaN without positives."""
    y, s = _check(labels, scores)
    return float(average_precision_score(y, s)) if y.any() else math.nan


def delong_variance(labels, scores) -> tuple[float, float]:
    """``(auc, variance)`` by DeLong's method."""
    y, s = _check(labels, scores)
    auc, v10, v01 = _placements(y, s)
    var = (v10.var(ddof=1) / v10.size if v10.size > 1 else 0.0) + (v01.var(ddof=1) / v01.size if v01.size > 1
                                                                    else 0.0)
    return auc, float(var)


def delong_ci(labels, scores, level: float = 0.95) -> Interval:
    """The AUC with the normal interval of DeLong's variance (DeLong et al. 1988), clipped to [0, 1]."""
    auc, var = delong_variance(labels, scores)
    half = stats.norm.ppf(0.5 + level / 2) * math.sqrt(var)
    return Interval(auc, max(0.0, auc - half), min(1.0, auc + half), np.size(labels), DELONG, level)


def balanced_accuracy_interval(tp: int, fp: int, tn: int, fn: int) -> Interval:
    """Balanced accuracy ``(Se + Sp) / 2`` with the MOVER interval of a sum of independent shares (Newcombe 1998's
    square-and-add, generalised by Zou & Donner, Stat Med 2008;27:1693–1702) built from the Wilson intervals of
    sensitivity and specificity: ``L = Σθ − sqrt(Σ(θ − l)²)``, ``U = Σθ + sqrt(Σ(u − θ)²)``, halved. It inherits
    Wilson's honesty at the bounds: 12/12 and 12/12 give [0.829, 1]."""
    se, sp = wilson_interval(tp, tp + fn), wilson_interval(tn, tn + fp)
    value = (se.value + sp.value) / 2
    low = value - math.hypot(se.value - se.low, sp.value - sp.low) / 2
    high = value + math.hypot(se.high - se.value, sp.high - sp.value) / 2
    return Interval(value, low, high, tp + fp + tn + fn, MOVER_WILSON)


def _hanley_mcneil_variance(theta: float, m: int, n: int) -> float:
    """Var(AUC) at a true AUC `theta` under Hanley & McNeil's (1982) exponential model, with m and n replaced by
    Newcombe's (2006) N* = (m + n) / 2 in the terms that carry them."""
    n_star = (m + n) / 2
    return theta * (1 - theta) / (m * n) * (1 + (n_star - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))


def auc_score_interval(labels, scores, level: float = 0.95) -> Interval:
    """The AUC with a score-type interval that stays honest at 0 and 1.

    The bounds are the two AUCs θ at which the observed AUC is ``z`` standard errors away, the standard error
    taken at θ itself: the roots of ``(θ − AUC)² = z² V(θ)`` with `V` the Hanley–McNeil variance using
    Newcombe's N* (Newcombe, Stat Med 2006;25:559–573, who found such intervals to keep their coverage near
    AUC = 1 where Wald and DeLong intervals do not). Because V(θ) > 0 inside (0, 1), an observed AUC of 1 gives a
    lower bound below 1: [0.832, 1] for 12 + 12 subjects. A score-test interval: every θ inside is one a z test
    at that θ would not reject.
    """
    y, s = _check(labels, scores)
    auc = _placements(y, s)[0]
    m, n = int(y.sum()), int((1 - y).sum())
    z = stats.norm.ppf(0.5 + level / 2)

    def excess(theta: float) -> float:  # <= 0 inside the interval
        return (theta - auc) ** 2 - z * z * _hanley_mcneil_variance(theta, m, n)

    inner = 1e-12  # just inside the observed AUC: at 0 or 1 the variance, hence excess, is exactly 0
    low = 0.0 if auc <= 0 else optimize.brentq(excess, 0.0, max(auc - inner, 0.0) if auc >= 1 else auc)
    high = 1.0 if auc >= 1 else optimize.brentq(excess, min(auc + inner, 1.0) if auc <= 0 else auc, 1.0)
    return Interval(auc, low, high, y.size, AUC_SCORE, level)


def paired_delong(labels, scores_a, scores_b) -> dict[str, float]:
    """DeLong's test of two correlated AUCs (two models scored on the same subjects).

    Returns ``auc_a``, ``auc_b``, ``diff`` (a − b), its ``se``, ``z`` and the two-sided ``p``.
    """
    y, a = _check(labels, scores_a)
    _, b = _check(labels, scores_b)
    if a.shape != b.shape:
        raise ValueError("paired scores must cover the same subjects")
    auc_a, v10a, v01a = _placements(y, a)
    auc_b, v10b, v01b = _placements(y, b)
    s10 = np.cov(np.stack([v10a, v10b])) / v10a.size
    s01 = np.cov(np.stack([v01a, v01b])) / v01a.size
    cov = s10 + s01
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = auc_a - auc_b
    if var <= 0:  # identical placements: no evidence either way
        z, p = 0.0, 1.0
    else:
        z = diff / math.sqrt(var)
        p = float(2 * stats.norm.sf(abs(z)))
    return {"auc_a": auc_a, "auc_b": auc_b, "diff": diff, "se": math.sqrt(max(var, 0.0)), "z": z, "p": p}


def bootstrap_ci(labels, scores, metric: Callable[[np.ndarray, np.ndarray], float | dict[str, float]],
                 n: int = 2000, level: float = 0.95, seed: int = 0) -> Interval | dict[str, Interval]:
    """Percentile bootstrap CI of `metric(labels, scores)` over `n` stratified resamples (NaN resamples dropped).

    `metric` may return one number (-> an `Interval` of its value on all the data) or a dict (-> ``{name:
    Interval}``); N is the number of subjects.
    """
    y, s = _check(labels, scores)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in (0, 1)]
    draws = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(g, g.size, replace=True) for g in groups if g.size])
        draws.append(metric(y[idx], s[idx]))
    q = ((1 - level) / 2 * 100, (1 + level) / 2 * 100)

    def interval(value: float, values) -> Interval:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        low, high = (math.nan, math.nan) if v.size == 0 else np.percentile(v, q)
        return Interval(value, low, high, y.size, BOOTSTRAP, level)

    full = metric(y, s)
    if isinstance(draws[0], dict):
        return {k: interval(full[k], [d[k] for d in draws]) for k in draws[0]}
    return interval(full, draws)


def classification_report(labels, scores, threshold: float = 0.5, n_bootstrap: int = 2000, level: float = 0.95,
                          seed: int = 0) -> dict:
    """Every metric of `METRICS` with its CI: ``{"n", "n_pos", "n_neg", "threshold", "level", metric:
    Interval.to_dict()}`` (``value``, ``low``, ``high``, ``n``, ``method``, ``level``).

    AUC-ROC: `auc_score_interval` (``auc-score``); the shares of `SHARES`: Wilson intervals (``wilson``, N = the
    share's denominator) at the 95 % level; balanced accuracy: `balanced_accuracy_interval` (``mover-wilson``);
    F1, AUC-PR: percentile bootstrap CIs (``bootstrap``; ``none`` without resamples)."""
    y, s = _check(labels, scores)
    values = threshold_metrics(y, s, threshold) | {"auc_roc": auc_roc(y, s), "auc_pr": auc_pr(y, s)}
    out: dict = {"n": int(y.size), "n_pos": int(y.sum()), "n_neg": int((1 - y).sum()), "threshold": threshold,
                 "level": level}
    both = 0 < y.sum() < y.size
    counts = confusion(y, s, threshold)
    boot: dict = {}
    if n_bootstrap > 0:
        boot = bootstrap_ci(y, s, lambda yy, ss: {"f1": threshold_metrics(yy, ss, threshold)["f1"],
                                                  "auc_pr": auc_pr(yy, ss)}, n=n_bootstrap, level=level, seed=seed)
    for name in METRICS:
        if name == "auc_roc" and both:
            ci = auc_score_interval(y, s, level)
        elif name in SHARES:
            ci = wilson_interval(*SHARES[name](*counts))
        elif name == "balanced_accuracy":
            ci = balanced_accuracy_interval(*counts)
        else:
            ci = boot.get(name) or Interval(values[name], math.nan, math.nan, y.size, BOOTSTRAP if boot else NONE,
                                            level)
        out[name] = ci.to_dict()
    return out
