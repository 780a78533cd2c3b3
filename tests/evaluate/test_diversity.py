"""PRDC against hand-computed cases, KID against an explicit unbiased MMD², MS-SSIM pair diversity."""

import itertools

import numpy as np
import pytest
from evaluation_phantoms import brain

from neuroldm.evaluate.diversity import kid, ms_ssim_diversity, prdc, random_pairs
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic
from neuroldm.metrics.interval import Interval


def test_prdc_identical_sets():
    x = np.random.default_rng(0).normal(size=(30, 4))
    r = prdc(x, x.copy(), k=3)
    assert (r["precision"], r["recall"], r["coverage"]) == (1.0, 1.0, 1.0)
    assert r["density"] >= 1.0  # every sample lies in its own ball and, with k=3, in some neighbours' balls


def test_prdc_hand_computed_1d_case():
    # real 0, 1, 3, 6 with k=1 radii 1, 1, 2, 3; fake 0.5, 4.5, 20 with radii 4, 4, 15.5
    real, fake = np.array([[0.0], [1.0], [3.0], [6.0]]), np.array([[0.5], [4.5], [20.0]])
    r = prdc(real, fake, k=1)
    assert r["precision"] == pytest.approx(2 / 3)  # 0.5 (balls of 0 and 1) and 4.5 (balls of 3 and 6); not 20
    assert r["density"] == pytest.approx(4 / 3)  # (2 + 2 + 0) balls / (k=1 * 3 fakes)
    assert r["coverage"] == pytest.approx(1.0)  # every real ball holds 0.5 or 4.5
    assert r["recall"] == pytest.approx(1.0)  # 0, 1, 3 within 4 of 0.5; 6 within 4 of 4.5
    far = prdc(real, fake + 100, k=1)
    assert (far["precision"], far["density"], far["coverage"]) == (0.0, 0.0, 0.0)


def test_prdc_needs_more_than_k_samples():
    assert "skipped" in prdc(np.zeros((3, 2)), np.zeros((5, 2)), k=3)


def _explicit_mmd2(x, y):
    def k(a, b):
        return (a @ b / len(a) + 1) ** 3
    m = len(x)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 3)), rng.normal(0.5, 1.0, size=(9, 3))
    r = kid(x, y, subsets=1, subset_size=9)  # one subset holding every sample: no randomness left
    assert r["value"] == pytest.approx(_explicit_mmd2(x, y), rel=1e-10) and r["method"] == "normal"
    assert kid(x, y + 2.0, subsets=5, subset_size=6)["value"] > kid(x, y, subsets=5, subset_size=6)["value"]


def test_random_pairs_are_distinct_and_seeded():
    pairs = random_pairs(6, 10, np.random.default_rng(0))
    assert len(pairs) == 10 == len(set(pairs)) and all(i < j for i, j in pairs)
    assert pairs == random_pairs(6, 10, np.random.default_rng(0))
    assert len(random_pairs(4, 100, np.random.default_rng(0))) == 6  # all of them


def test_ms_ssim_diversity_of_copies_is_one_and_lower_for_different_volumes(tmp_path):
    paths = []
    for i, v in enumerate([brain(0, 0)] * 3 + [brain(1, 0), brain(2, 1)]):
        paths.append(str(tmp_path / f"v{i}.nii"))
        save_nifti_atomic(v, np.eye(4), paths[-1], what="test volume", frame=ALIGNED_ANAT)
    same = ms_ssim_diversity(paths[:3], n_pairs=10)
    assert same["value"] == pytest.approx(1.0, abs=1e-5) and same["n"] == 3
    mixed = Interval.from_dict(ms_ssim_diversity(paths, n_pairs=10))
    assert mixed.n == 10 and mixed.value < 0.99 and mixed.low <= mixed.value <= mixed.high
