"""The memorization audit flags a planted copy of a training volume and not fresh samples."""

import numpy as np
import pytest
from evaluation_phantoms import brain

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.data.manifest import read_manifest
from neuroldm.evaluate.memorization import (
    audit,
    data_copying_z,
    nearest_euclidean,
    nearest_training,
    standardised_vector,
)
from neuroldm.metrics.interval import wilson_interval


def test_standardised_vectors_give_pearson_correlation():
    a, b = brain(0, 0), brain(1, 1)
    r = float(standardised_vector(a) @ standardised_vector(b))
    assert r == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-5)
    assert float(standardised_vector(a, 2) @ standardised_vector(3.0 * a + 1.0, 2)) == pytest.approx(1.0, abs=1e-5)


def test_planted_copy_is_flagged_and_fresh_samples_are_not(cohort):
    train = read_manifest(cohort).query("split == 'train'")
    copy = load_prepared_volume(train["path"].iloc[5])
    # fresh samples and held-out 'real' volumes drawn like the training ones; a fresh sample falls below the 5th
    # percentile of the held-out distances with probability ~5 % by construction, so the check is on the share
    fresh = [brain(seed=200 + s, label=s % 2) for s in range(40)]
    heldout = [brain(seed=300 + s, label=s % 2) for s in range(60)]
    ids = ["copy"] + [f"fresh{s}" for s in range(40)]
    queries = np.stack([standardised_vector(v, 2) for v in [copy, *fresh, *heldout]])
    d, nn = nearest_training(queries, list(train["path"]), downsample=2, chunk=5, progress=False)
    assert d[0] == pytest.approx(0.0, abs=1e-5) and nn[0] == 5  # found across chunks
    assert d[1:41].min() > 1000 * max(d[0], 1e-6)  # fresh samples are far from copies
    res = audit(d[:41], nn[:41], d[41:], ids, list(train["subject"]), percentile=5.0)
    assert res["flagged"][0] == {"sample": "copy", "nearest_training": train["subject"].iloc[5],
                                 "distance": pytest.approx(0.0, abs=1e-5)}
    # the copy is twice as close as the closest held-out volume; no fresh sample is
    assert [c["sample"] for c in res["copies"]] == ["copy"] and res["n_copies"] == 1
    assert res["copy_threshold"] == pytest.approx(0.5 * d[41:].min())
    assert audit(d[:41], nn[:41], d[41:], ids, list(train["subject"]), copy_ratio=1.0)["n_copies"] >= 1
    fresh_flagged = [f["sample"] for f in res["flagged"][1:]]
    assert len(fresh_flagged) / 40 < 0.15 and res["n_heldout"] == 60 and res["n_synthetic"] == 41
    clean = audit(d[1:41], nn[1:41], d[41:], ids[1:], list(train["subject"]), percentile=5.0)
    assert "copy" not in [f["sample"] for f in clean["flagged"]] and clean["flagged_share"]["value"] < 0.15
    assert clean["n_copies"] == 0
    assert abs(clean["z_u"]) < 2.5 < abs(audit(np.zeros(40), nn[1:41], d[41:], ids[1:], [""] * 16)["z_u"])


def test_data_copying_z_sign():
    rng = np.random.default_rng(0)
    held = rng.uniform(0.2, 0.4, 50)
    assert data_copying_z(held, held * 0.5) < -5  # synthetic much closer: copying
    assert data_copying_z(held, held + 0.5) > 5  # much farther: under-fitting
    assert abs(data_copying_z(held, rng.uniform(0.2, 0.4, 50))) < 3


def test_nearest_euclidean():
    ref = np.array([[0.0, 0.0], [3.0, 4.0]])
    d, j = nearest_euclidean(np.array([[3.0, 3.0], [0.0, 1.0]]), ref)
    np.testing.assert_allclose(d, [1.0, 1.0])
    assert j.tolist() == [1, 0]


def test_wilson_interval_known_values():
    for k, bounds in ((0, [0.0, 0.2775]), (5, [0.2366, 0.7634])):
        ci = wilson_interval(k, 10)
        assert [ci.low, ci.high] == pytest.approx(bounds, abs=1e-4)
        assert (ci.value, ci.n, ci.method, ci.level) == (k / 10, 10, "wilson", 0.95)
    assert np.isnan(wilson_interval(0, 0).value) and wilson_interval(0, 0).n == 0
