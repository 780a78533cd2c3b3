"""K-class metrics against independent computations: sklearn for the AUCs, the DeLong variance written out from
its definition (explicit loops over positive-negative pairs), and the bootstrap variance of the AUC."""

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix as sk_confusion, roc_auc_score

from neuroldm.metrics.classification import balanced_accuracy_interval, confusion
from neuroldm.metrics.interval import wilson_interval
from neuroldm.metrics.multiclass import (confusion_matrix, macro_auc, macro_auc_interval, mean_of_shares_interval,
                                         multiclass_report, one_vs_rest_delong, paired_macro_auc_test)

CLASSES = ["HC", "TLE-L", "TLE-R"]


def _cohort(n_per_class=10, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    logits = rng.normal(0, 1, (y.size, 3)) + signal * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def _delong_by_definition(pos_scores, neg_scores):
    """DeLong et al. 1988, eq. for V10, V01 and S10/m + S01/n, with psi written out pair by pair."""
    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0
    m, n = len(pos_scores), len(neg_scores)
    v10 = [sum(psi(x, yy) for yy in neg_scores) / n for x in pos_scores]
    v01 = [sum(psi(x, yy) for x in pos_scores) / m for yy in neg_scores]
    auc = sum(v10) / m
    s10 = sum((v - auc) ** 2 for v in v10) / (m - 1)
    s01 = sum((v - auc) ** 2 for v in v01) / (n - 1)
    return auc, s10 / m + s01 / n


def test_one_vs_rest_auc_matches_sklearn_and_delong_variance_its_definition():
    y, p = _cohort(seed=1)
    assert macro_auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    p[3, 0] = p[13, 0]  # a tie across classes: midranks must count it 1/2
    for c, (auc, var) in enumerate(one_vs_rest_delong(y, p)):
        assert auc == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)
        ref_auc, ref_var = _delong_by_definition(p[y == c, c], p[y != c, c])
        assert (auc, var) == pytest.approx((ref_auc, ref_var), abs=1e-12)


def test_hand_computed_small_case():
    # class 0 vs rest: positives 0.9, 0.4; negatives 0.5, 0.1 -> pairs won 1,1 / 0,1 -> AUC 3/4
    # V10 = (1, 1/2), V01 = (1/2, 1): S10 = S01 = 1/8, var = 1/8/2 + 1/8/2 = 1/8
    y = np.array([0, 0, 1, 2])
    p0 = np.array([0.9, 0.4, 0.5, 0.1])
    p = np.stack([p0, (1 - p0) / 2, (1 - p0) / 2], 1)
    auc, var = one_vs_rest_delong(y, p)[0]
    assert (auc, var) == pytest.approx((0.75, 0.125))


def test_delong_variance_agrees_with_the_bootstrap_variance():
    y, p = _cohort(n_per_class=80, signal=1.0, seed=2)
    rng = np.random.default_rng(0)
    for c, (auc, var) in enumerate(one_vs_rest_delong(y, p)):
        boot = []
        for _ in range(400):
            idx = np.concatenate([rng.choice(np.flatnonzero(y == k), 80) for k in range(3)])
            boot.append(roc_auc_score(y[idx] == c, p[idx, c]))
        assert 0.75 < var / np.var(boot, ddof=1) < 1.33


def test_report_counts_and_intervals():
    y, p = _cohort(seed=3)
    rep = multiclass_report(y, p, CLASSES, n_bootstrap=300, seed=0)
    cm = np.array(rep["confusion"])
    assert (cm == sk_confusion(y, p.argmax(1))).all() and (cm == confusion_matrix(y, p)).all()
    assert rep["n"] == 30 and rep["n_per_class"] == [10, 10, 10]
    assert rep["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    assert rep["accuracy"]["value"] == pytest.approx((p.argmax(1) == y).mean())
    macro = rep["auc_roc"]
    assert macro["method"] == "bootstrap" and macro["low"] < macro["value"] < macro["high"]
    for c, name in enumerate(CLASSES):
        d = rep["per_class"][name]
        assert d["auc_roc"]["method"] == "delong" and d["auc_roc"]["low"] <= d["auc_roc"]["value"] <= d["auc_roc"]["high"]
        assert d["recall"]["value"] == pytest.approx(cm[c, c] / cm[c].sum())
        assert d["precision"]["value"] == pytest.approx(cm[c, c] / cm[:, c].sum())
    with pytest.raises(ValueError, match="2 class names for 3"):
        multiclass_report(y, p, CLASSES[:2])


def test_mover_mean_of_two_shares_is_the_binary_balanced_accuracy_interval():
    tp, fp, tn, fn = 7, 2, 9, 3
    two = mean_of_shares_interval([wilson_interval(tp, tp + fn), wilson_interval(tn, tn + fp)])
    ref = balanced_accuracy_interval(tp, fp, tn, fn)
    assert (two.value, two.low, two.high) == pytest.approx((ref.value, ref.low, ref.high), abs=1e-12)
    assert confusion([1, 0], [0.9, 0.1]) == (1, 0, 1, 0)


def test_macro_interval_is_nan_with_a_class_missing():
    y, p = _cohort(seed=4)
    keep = y != 2
    ci = macro_auc_interval(y[keep], p[keep], n_bootstrap=10)
    assert math.isnan(ci.value) and ci.method == "none"


def test_paired_test_finds_a_real_difference_and_not_a_null_one():
    y, good = _cohort(n_per_class=30, signal=3.0, seed=5)
    _, bad = _cohort(n_per_class=30, signal=0.0, seed=6)
    diff = paired_macro_auc_test(y, good, bad, n_bootstrap=500)
    assert diff["diff"] > 0.3 and diff["p"] < 1e-3
    assert all(t["p"] < 0.01 for t in diff["per_class"])
    same = paired_macro_auc_test(y, good, good, n_bootstrap=100)
    assert same["diff"] == 0 and same["p"] == 1.0
