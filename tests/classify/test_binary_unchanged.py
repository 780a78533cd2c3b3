"""The binary path gives the numbers and keys it gave before K-class support (golden values recorded on commit
c6d3639, before any K-class change): the classifier report, the grid's pooled analysis, metrics.json's classifier
keys and the report's classifier section."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from report_run import make_fake_run

from neuroldm.classify.grid import pooled_comparison
from neuroldm.metrics.classification import classification_report
from neuroldm.report.headline import collect_metrics
from neuroldm.report.sections import Figure, classifier_blocks
from neuroldm.runs import RunDir

Y = np.array([0] * 9 + [1] * 7)
S = np.array([0.375, 0.435, 0.32, 0.197, 0.284, 0.177, 0.387, 0.643, 0.277, 0.501, 0.723, 0.696, 0.646, 0.439,
              0.619, 0.764])
S2 = np.array([0.173, 0.366, 0.035, 0.004, 0.008, 0.142, 0.197, 0.684, 0.301, 0.473, 0.345, 0.615, 0.639, 0.456,
               0.389, 0.692])

REPORT = {  # classification_report(Y, S, 0.5, 200, seed=3): (value, low, high, n, method)
    "accuracy": (0.875, 0.6397666856325173, 0.9650232506629428, 16, "wilson"),
    "balanced_accuracy": (0.873015873015873, 0.6270416051322345, 0.9472653694010713, 16, "mover-wilson"),
    "sensitivity": (0.8571428571428571, 0.48686549668097007, 0.9743210440510253, 7, "wilson"),
    "specificity": (0.8888888888888888, 0.5649937852319399, 0.9801096286728695, 9, "wilson"),
    "ppv": (0.8571428571428571, 0.48686549668097007, 0.9743210440510253, 7, "wilson"),
    "npv": (0.8888888888888888, 0.5649937852319399, 0.9801096286728695, 9, "wilson"),
    "f1": (0.8571428571428571, 0.6650000000000003, 1.0, 16, "bootstrap"),
    "auc_roc": (0.9523809523809523, 0.6820334820247933, 0.9937643482044782, 16, "auc-score"),
    "auc_pr": (0.9379251700680272, 0.8004535147392289, 1.0, 16, "bootstrap"),
}

METRICS_JSON = {  # collect_metrics of the report tests' fake run, its classifier keys
    "classifier.real.auc": 1.0, "classifier.real.auc.low": 0.800213612881115, "classifier.real.auc.high": 1.0,
    "classifier.real.auc.n": 20, "classifier.real.balanced_accuracy": 0.875, "classifier.synthetic.auc": 0.82,
    "classifier.synthetic.auc.low": 0.5631924839313002, "classifier.synthetic.auc.high": 0.9362349915822872,
    "classifier.synthetic.auc.n": 20, "classifier.synthetic.balanced_accuracy": 0.675,
    "classifier.synthetic.auc_ratio": 0.82, "synthetic.class_fidelity": 0.5,
    "synthetic.class_fidelity.low": 0.15003570882017148, "synthetic.class_fidelity.high": 0.8499642911798285,
    "synthetic.class_fidelity.n": 4}

# sha256 of the repr of the report's classifier blocks (figures left out) for the fake run
SECTION_SHA = "bf469665f95c39aee5b3965a48bbb57b606609b4cac82431b63e1e8b6804cd7e"


def test_binary_classification_report_is_unchanged():
    rep = classification_report(Y, S, 0.5, 200, seed=3)
    assert set(rep) == {"n", "n_pos", "n_neg", "threshold", "level", *REPORT}
    assert (rep["n"], rep["n_pos"], rep["n_neg"]) == (16, 7, 9)
    for name, (value, low, high, n, method) in REPORT.items():
        got = rep[name]
        assert (got["value"], got["low"], got["high"]) == pytest.approx((value, low, high), abs=1e-12), name
        assert (got["n"], got["method"]) == (n, method), name


def test_binary_pooled_comparison_is_unchanged():
    rows = []
    for regime, scores in (("real", S), ("synthetic-1.0", S2)):
        for i, (label, score) in enumerate(zip(Y, scores)):
            rows.append({"split": "test", "subject": f"sub-{i:02d}", "session": "", "label": int(label),
                         "p_HC": 1 - score, "p_TLE": score, "score": score, "prediction": int(score >= 0.5),
                         "regime": regime, "seed": 0, "fold": -1})
    pooled = pooled_comparison(pd.DataFrame(rows), "test").set_index("regime")
    assert list(pooled.columns) == ["split", "n", "auc", "auc_low", "auc_high", "diff_vs_real", "p_vs_real",
                                    "n_paired"]
    real, syn = pooled.loc["real"], pooled.loc["synthetic-1.0"]
    assert (real["auc"], real["auc_low"], real["auc_high"]) == pytest.approx(
        (0.9523809523809523, 0.6820334820247933, 0.9937643482044782), abs=1e-12)
    assert np.isnan(real["p_vs_real"])
    assert (syn["auc"], syn["auc_low"], syn["auc_high"], syn["diff_vs_real"], syn["p_vs_real"], syn["n_paired"]) == \
        pytest.approx((0.8888888888888887, 0.6023086721982139, 0.9737921856387715, -0.0634920634920636,
                       0.2777810506336691, 16), abs=1e-12)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("golden") / "run"
    make_fake_run(run)
    return run


def test_binary_metrics_json_classifier_keys_are_unchanged(fake_run):
    m = collect_metrics(fake_run)
    got = {k: v for k, v in m.items() if k.startswith(("classifier.", "synthetic.class_fidelity"))}
    assert set(got) == set(METRICS_JSON)
    for k, v in METRICS_JSON.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_binary_report_classifier_section_is_unchanged(fake_run):
    blocks = [b for b in classifier_blocks(RunDir(fake_run)) if not isinstance(b, Figure)]
    assert hashlib.sha256(repr(blocks).encode()).hexdigest() == SECTION_SHA
