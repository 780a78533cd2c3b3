"""Classification metrics against scikit-learn; DeLong against its definition and a bootstrap."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from scipy import stats

from neuroldm.metrics.classification import (METRICS, auc_pr, auc_roc, auc_score_interval, bootstrap_ci,
                                             classification_report, confusion, delong_ci, delong_variance,
                                             paired_delong, threshold_metrics)
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
    tp, fp, tn, fn = confusion(y, s)
    denominators = {"accuracy": y.size, "sensitivity": tp + fn, "specificity": tn + fp, "ppv": tp + fp,
                    "npv": tn + fn}
    for name in METRICS:
        m = Interval.from_dict(rep[name])
        assert m.low <= m.value <= m.high and m.n == denominators.get(name, y.size), name
    methods = {name: rep[name]["method"] for name in METRICS}
    assert methods == {"accuracy": "wilson", "sensitivity": "wilson", "specificity": "wilson", "ppv": "wilson",
                       "npv": "wilson", "balanced_accuracy": "mover-wilson", "auc_roc": "auc-score",
                       "f1": "bootstrap", "auc_pr": "bootstrap"}
    assert rep["accuracy"]["value"] == threshold_metrics(y, s)["accuracy"]
    without = classification_report(y, s, n_bootstrap=0)
    assert without["f1"]["method"] == "none" and math.isnan(without["f1"]["low"])
    assert without["accuracy"] == rep["accuracy"]  # Wilson needs no resamples


# --------------------------------------------------------------------------------------------------------------
# Intervals that stay honest at the bounds
# --------------------------------------------------------------------------------------------------------------

PERFECT = (np.array([1] * 12 + [0] * 12), np.r_[np.linspace(0.6, 0.9, 12), np.linspace(0.1, 0.4, 12)])


def _score_interval_by_grid(auc, m, n, z=1.959963984540054):
    """The same interval by brute force: every θ on a fine grid where |θ − AUC| <= z sd(θ), with the
    Hanley–McNeil (1982) variance written out from its Q1, Q2 and Newcombe's N* = (m + n) / 2."""
    theta = np.linspace(0, 1, 200001)
    q1, q2 = theta / (2 - theta), 2 * theta ** 2 / (1 + theta)
    k = (m + n) / 2 - 1
    var = (theta * (1 - theta) + k * (q1 - theta ** 2) + k * (q2 - theta ** 2)) / (m * n)
    inside = theta[(theta - auc) ** 2 <= z * z * var]
    return inside.min(), inside.max()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_score_interval_matches_a_brute_force_search(seed):
    y, s = _data(n=30, seed=seed)
    ci = auc_score_interval(y, s)
    lo, hi = _score_interval_by_grid(ci.value, int(y.sum()), int((1 - y).sum()))
    assert ci.low == pytest.approx(lo, abs=2e-5) and ci.high == pytest.approx(hi, abs=2e-5)
    assert (ci.method, ci.n) == ("auc-score", y.size)


def test_intervals_do_not_collapse_at_perfect_separation():
    y, s = PERFECT
    assert (delong_ci(y, s).low, delong_ci(y, s).high) == (1.0, 1.0)  # the collapse this replaces
    auc = auc_score_interval(y, s)
    assert auc.value == 1.0 and auc.high == 1.0 and auc.low == pytest.approx(_score_interval_by_grid(1.0, 12, 12)[0],
                                                                              abs=2e-5)
    assert 0.80 < auc.low < 0.86  # 0.832
    assert auc_score_interval(y, 1 - s).high == pytest.approx(1 - auc.low) and auc_score_interval(y, 1 - s).low == 0
    rep = classification_report(y, s, n_bootstrap=200)
    assert rep["sensitivity"]["low"] == pytest.approx(12 / (12 + 1.96 ** 2))  # Wilson at k = n: n / (n + z²)
    assert rep["accuracy"]["low"] == pytest.approx(24 / (24 + 1.96 ** 2))
    half_width = math.hypot(1 - 12 / (12 + 1.96 ** 2), 1 - 12 / (12 + 1.96 ** 2)) / 2
    assert rep["balanced_accuracy"]["low"] == pytest.approx(1 - half_width)  # MOVER of the two Wilson bounds
    for name in ("auc_roc", "accuracy", "sensitivity", "specificity", "balanced_accuracy"):
        assert rep[name]["value"] == 1.0 and rep[name]["low"] < 0.9, name


@pytest.mark.parametrize("d", [1.0, 3.0])
def test_auc_score_interval_keeps_its_coverage_where_delong_does_not(d):
    """Simulation reference: binormal scores with true AUC Φ(d/√2) (0.760 and 0.983), 12 + 12 subjects, 2000
    draws. Measured: score interval 0.957 and 0.970, DeLong 0.901 and 0.601."""
    rng = np.random.default_rng(0)
    m = 12
    truth = float(stats.norm.cdf(d / math.sqrt(2)))
    y = np.array([1] * m + [0] * m)
    hits = {"score": 0, "delong": 0}
    draws = 2000
    for _ in range(draws):
        s = np.r_[rng.normal(d, 1, m), rng.normal(0, 1, m)]
        for name, ci in (("score", auc_score_interval(y, s)), ("delong", delong_ci(y, s))):
            hits[name] += ci.low <= truth <= ci.high
    coverage = {k: v / draws for k, v in hits.items()}
    assert 0.93 <= coverage["score"] <= 0.99  # nominal 0.95, and not wide for nothing
    assert coverage["delong"] < coverage["score"]
    if d == 3.0:  # near AUC 1 DeLong's [1, 1] misses whenever a draw separates the classes
        assert coverage["delong"] < 0.8
