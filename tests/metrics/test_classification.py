"""Classification metrics against scikit-learn; DeLong against its definition and a bootstrap."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from neuroldm.metrics.classification import (METRICS, auc_pr, auc_roc, bootstrap_ci, classification_report,
                                             delong_ci, delong_variance, paired_delong, threshold_metrics)
from neuroldm.metrics.interval import Interval


def _data(n=120, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = 1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(0, 1, n))))
    return y, (np.round(s, 1) if ties else s)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_every_metric_equals_sklearn(ties, threshold):
    y, s = _data(ties=ties)
    pred = (s >= threshold).astype(int)
    got = threshold_metrics(y, s, threshold)
    want = {"accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
            "sensitivity": skm.recall_score(y, pred), "specificity": skm.recall_score(y, pred, pos_label=0),
            "ppv": skm.precision_score(y, pred), "npv": skm.precision_score(y, pred, pos_label=0),
            "f1": skm.f1_score(y, pred)}
    assert got == pytest.approx(want, abs=1e-12)
    assert auc_roc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert auc_pr(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_undefined_metrics_are_nan_not_zero():
    got = threshold_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], threshold=0.9)  # nothing predicted positive
    assert math.isnan(got["ppv"]) and got["sensitivity"] == 0 and got["specificity"] == 1
    assert math.isnan(auc_roc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="0 or 1"):
        threshold_metrics([0, 2], [0.1, 0.2])


def _delong_by_definition(y, s):
    """O(m·n) structural components straight from DeLong et al. (1988), eq. (5)-(6)."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return psi.mean(), v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size, v10, v01


@pytest.mark.parametrize("ties", [False, True])
def test_delong_variance_equals_its_definition(ties):
    y, s = _data(n=90, seed=3, ties=ties)
    auc, var = delong_variance(y, s)
    auc_def, var_def, _, _ = _delong_by_definition(y, s)
    assert auc == pytest.approx(auc_def, abs=1e-12) and var == pytest.approx(var_def, rel=1e-10)


def test_delong_variance_agrees_with_a_bootstrap():
    y, s = _data(n=300, seed=5)
    _, var = delong_variance(y, s)
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boot = []
    for _ in range(1000):  # auc_roc itself is checked against sklearn above
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        boot.append(auc_roc(y[idx], s[idx]))
    assert np.var(boot) == pytest.approx(var, rel=0.15)
    ci = delong_ci(y, s)
    auc, lo, hi = ci.value, ci.low, ci.high
    assert lo < auc < hi and hi - lo == pytest.approx(2 * 1.959964 * math.sqrt(var), rel=1e-6)
    assert (ci.value, ci.n, ci.method, ci.level) == (auc_roc(y, s), y.size, "delong", 0.95)


def test_paired_delong_matches_the_definition_and_is_calibrated():
    y, a = _data(n=150, seed=1)
    rng = np.random.default_rng(2)
    b = a + rng.normal(0, 0.3, a.size)
    got = paired_delong(y, a, b)
    _, _, v10a, v01a = _delong_by_definition(y, a)
    _, _, v10b, v01b = _delong_by_definition(y, b)
    var = (np.var(v10a - v10b, ddof=1) / v10a.size + np.var(v01a - v01b, ddof=1) / v01a.size)
    assert got["diff"] == pytest.approx(auc_roc(y, a) - auc_roc(y, b), abs=1e-12)
    assert got["se"] == pytest.approx(math.sqrt(var), rel=1e-10)
    assert paired_delong(y, a, a)["p"] == 1.0
    # under the null (two equally good scorers) p-values are roughly uniform: ~5% below 0.05
    ps = []
    for k in range(200):
        r = np.random.default_rng(100 + k)
        yy = (r.random(80) < 0.5).astype(int)
        sig = yy + r.normal(0, 1, 80)
        ps.append(paired_delong(yy, sig + r.normal(0, 1, 80), sig + r.normal(0, 1, 80))["p"])
    assert 0.0 <= np.mean(np.array(ps) < 0.05) <= 0.12


def test_bootstrap_ci_covers_the_estimate_and_is_reproducible():
    y, s = _data()
    ci = bootstrap_ci(y, s, lambda yy, ss: threshold_metrics(yy, ss)["accuracy"], n=300, seed=1)
    lo, hi = ci.low, ci.high
    acc = threshold_metrics(y, s)["accuracy"]
    assert lo < acc < hi and hi - lo < 0.25
    assert ci == bootstrap_ci(y, s, lambda yy, ss: threshold_metrics(yy, ss)["accuracy"], n=300, seed=1)
    assert (ci.value, ci.n, ci.method) == (acc, y.size, "bootstrap")


def test_report_has_every_metric_with_n_and_ci():
    y, s = _data()
    rep = classification_report(y, s, n_bootstrap=200, seed=0)
    assert rep["n"] == y.size and rep["n_pos"] == y.sum() and rep["n_neg"] == (1 - y).sum()
    for name in METRICS:
        m = Interval.from_dict(rep[name])
        assert m.low <= m.value <= m.high and m.n == y.size, name
    assert rep["auc_roc"]["method"] == "delong" and rep["accuracy"]["method"] == "bootstrap"
    assert rep["accuracy"]["value"] == threshold_metrics(y, s)["accuracy"]
    without = classification_report(y, s, n_bootstrap=0)
    assert without["accuracy"]["method"] == "none" and math.isnan(without["accuracy"]["low"])
