"""Metrics of K ≥ 3 classes with confidence intervals, and a paired test of two classifiers on the same subjects.

Labels are class indices ``0..K-1``; probabilities are ``(N, K)`` (rows sum to 1); the prediction is the most
probable class. Two classes keep `neuroldm.metrics.classification` (threshold metrics on P(class 1)); nothing here
is used for them, so the binary numbers do not depend on this module.

- **One-vs-rest AUC per class**: the AUC of P(c) separating class c from all others, with DeLong's variance and
  normal interval (DeLong, DeLong & Clarke-Pearson 1988) — `neuroldm.metrics.classification.delong_ci` on the
  one-vs-rest labels. Like every DeLong interval it collapses to [1, 1] at perfect separation.
- **Macro AUC**: the unweighted mean of the K one-vs-rest AUCs (sklearn's ``roc_auc_score(multi_class="ovr",
  average="macro")``). Its CI is a percentile **stratified subject bootstrap** (subjects resampled with
  replacement within each true class, class counts fixed), since the K one-vs-rest AUCs share subjects and their
  covariance is not DeLong's (each uses a different split into positives and negatives). With very few subjects
  in a class (one or two test subjects) a stratified bootstrap barely varies that class, so the interval and the
  paired test below are too narrow: read them at realistic N only.
- **Balanced accuracy**: the mean per-class recall, with the MOVER interval of a mean of independent shares (Zou &
  Donner 2008) built from the K recalls' Wilson intervals — the K-class form of
  `neuroldm.metrics.classification.balanced_accuracy_interval`.
- **Accuracy**, and per class **recall** (a row of the confusion matrix) and **precision** (a column): Wilson.
- **Confusion matrix**: counts, rows the true class, columns the predicted one.
- **Paired test** of two classifiers on the same subjects (`paired_macro_auc_test`): the macro-AUC difference with
  the standard error of a **paired stratified bootstrap** (the same resampled subjects score both classifiers),
  z = diff / se and a two-sided normal p; per class, DeLong's paired test of the one-vs-rest AUCs
  (`neuroldm.metrics.classification.paired_delong`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from neuroldm.metrics.classification import _placements, delong_ci, paired_delong
from neuroldm.metrics.interval import BOOTSTRAP, MOVER_WILSON, NONE, Interval, wilson_interval


def check_multiclass(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """``(y (N,), p (N, K))`` validated: integer labels in ``[0, K)``, one probability row per label."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"probabilities must be (N, K) with N = {y.size} labels, got {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be class indices 0..{p.shape[1] - 1}")
    return y, p


def one_vs_rest_delong(labels, probs) -> list[tuple[float, float]]:
    """Per class c: ``(AUC, DeLong variance)`` of P(c) separating class c from the rest; ``(nan, nan)`` for a class
    absent from `labels` (or the only one present)."""
    y, p = check_multiclass(labels, probs)
    out = []
    for c in range(p.shape[1]):
        pos = y == c
        if pos.all() or not pos.any():
            out.append((math.nan, math.nan))
            continue
        auc, v10, v01 = _placements(pos.astype(int), p[:, c])
        var = (v10.var(ddof=1) / v10.size if v10.size > 1 else 0.0) + (v01.var(ddof=1) / v01.size
                                                                        if v01.size > 1 else 0.0)
        out.append((auc, float(var)))
    return out


def macro_auc(labels, probs) -> float:
    """The mean of the K one-vs-rest AUCs; NaN when a class is absent (its AUC is undefined)."""
    y, p = check_multiclass(labels, probs)
    aucs = []
    for c in range(p.shape[1]):
        pos = y == c
        if pos.all() or not pos.any():
            return math.nan
        aucs.append(_placements(pos.astype(int), p[:, c])[0])
    return float(np.mean(aucs))


def confusion_matrix(labels, probs) -> np.ndarray:
    """``(K, K)`` counts of (true class, most probable class)."""
    y, p = check_multiclass(labels, probs)
    k = p.shape[1]
    return np.bincount(y * k + p.argmax(1), minlength=k * k).reshape(k, k)


def mean_of_shares_interval(shares: list[Interval]) -> Interval:
    """The mean of K independent shares with the MOVER interval (Zou & Donner, Stat Med 2008;27:1693–1702) from
    their own intervals: ``L = mean − sqrt(Σ(θ − l)²) / K``, ``U = mean + sqrt(Σ(u − θ)²) / K``."""
    theta = np.array([s.value for s in shares])
    low = np.array([s.low for s in shares])
    high = np.array([s.high for s in shares])
    value = float(theta.mean())
    k = len(shares)
    return Interval(value, value - math.sqrt(float(((theta - low) ** 2).sum())) / k,
                    value + math.sqrt(float(((high - theta) ** 2).sum())) / k, sum(s.n for s in shares), MOVER_WILSON)


def stratified_resamples(labels: np.ndarray, n: int, seed: int = 0):
    """`n` index arrays, each resampling the subjects with replacement within each class (class counts fixed)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(n):
        yield np.concatenate([rng.choice(g, g.size, replace=True) for g in groups])


def _percentile_interval(value: float, draws, n: int, level: float) -> Interval:
    v = np.asarray(draws, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(value, math.nan, math.nan, n, NONE, level)
    low, high = np.percentile(v, ((1 - level) / 2 * 100, (1 + level) / 2 * 100))
    return Interval(value, low, high, n, BOOTSTRAP, level)


def macro_auc_interval(labels, probs, n_bootstrap: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Macro AUC with the percentile interval of a stratified subject bootstrap (`stratified_resamples`)."""
    y, p = check_multiclass(labels, probs)
    value = macro_auc(y, p)
    if not math.isfinite(value) or n_bootstrap <= 0:
        return Interval(value, math.nan, math.nan, y.size, NONE, level)
    draws = [macro_auc(y[idx], p[idx]) for idx in stratified_resamples(y, n_bootstrap, seed)]
    return _percentile_interval(value, draws, y.size, level)


def multiclass_report(labels, probs, classes: list[str], n_bootstrap: int = 2000, level: float = 0.95,
                      seed: int = 0) -> dict:
    """Every K-class metric with its CI (each an `Interval.to_dict()`)::

        {"n", "n_per_class", "classes", "level",
         "accuracy" (wilson), "balanced_accuracy" (mover-wilson), "auc_roc" (macro one-vs-rest; bootstrap),
         "per_class": {class: {"auc_roc" (one-vs-rest; delong), "recall" (wilson), "precision" (wilson)}},
         "confusion": [[count]] (rows true, columns predicted)}
    """
    y, p = check_multiclass(labels, probs)
    if len(classes) != p.shape[1]:
        raise ValueError(f"{len(classes)} class names for {p.shape[1]} probability columns")
    cm = confusion_matrix(y, p)
    recalls = [wilson_interval(int(cm[c, c]), int(cm[c].sum())) for c in range(len(classes))]
    per_class = {}
    for c, name in enumerate(classes):
        pos = (y == c).astype(int)
        auc = (delong_ci(pos, p[:, c], level) if 0 < pos.sum() < pos.size
               else Interval(math.nan, math.nan, math.nan, y.size, NONE, level))
        per_class[name] = {"auc_roc": auc.to_dict(), "recall": recalls[c].to_dict(),
                           "precision": wilson_interval(int(cm[c, c]), int(cm[:, c].sum())).to_dict()}
    present = [r for r in recalls if r.n]
    balanced = (mean_of_shares_interval(present) if present
                else Interval(math.nan, math.nan, math.nan, 0, NONE, level))
    return {"n": int(y.size), "n_per_class": cm.sum(1).tolist(), "classes": list(classes), "level": level,
            "accuracy": wilson_interval(int(np.trace(cm)), int(y.size)).to_dict(),
            "balanced_accuracy": balanced.to_dict(),
            "auc_roc": macro_auc_interval(y, p, n_bootstrap, level, seed).to_dict(),
            "per_class": per_class, "confusion": cm.tolist()}


def paired_macro_auc_test(labels, probs_a, probs_b, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """Two classifiers scored on the same subjects: ``auc_a``, ``auc_b`` (macro), ``diff`` (a − b), its paired
    stratified bootstrap ``se``, ``z`` and two-sided normal ``p`` (1 when the bootstrap differences do not vary),
    and ``per_class``: DeLong's paired test of each one-vs-rest AUC (`paired_delong`; None for a class with fewer
    than two subjects in it or outside it)."""
    y, a = check_multiclass(labels, probs_a)
    _, b = check_multiclass(labels, probs_b)
    if a.shape != b.shape:
        raise ValueError("paired probabilities must cover the same subjects and classes")
    auc_a, auc_b = macro_auc(y, a), macro_auc(y, b)
    diff = auc_a - auc_b
    draws = np.array([macro_auc(y[i], a[i]) - macro_auc(y[i], b[i]) for i in stratified_resamples(y, n_bootstrap,
                                                                                                      seed)])
    draws = draws[np.isfinite(draws)]
    se = float(draws.std(ddof=1)) if draws.size > 1 else math.nan
    if not math.isfinite(diff) or not math.isfinite(se):
        z, p = math.nan, math.nan
    elif se <= 0:
        z, p = 0.0, 1.0
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    per_class = []
    for c in range(a.shape[1]):
        pos = (y == c).astype(int)
        # DeLong's covariance needs two subjects on each side (a sample covariance of placement values)
        per_class.append(paired_delong(pos, a[:, c], b[:, c]) if 2 <= pos.sum() <= pos.size - 2 else None)
    return {"auc_a": auc_a, "auc_b": auc_b, "diff": diff, "se": se, "z": z, "p": p, "n_bootstrap": int(draws.size),
            "per_class": per_class}

