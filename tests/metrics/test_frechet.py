"""The Fréchet distance against an independent scipy.linalg.sqrtm reference, and the streaming moments."""

import numpy as np
import pytest
from scipy import linalg

from neuroldm.metrics import GaussianMoments, frechet_distance
from neuroldm.metrics.frechet import _frechet_distance_from_samples, frechet_distance_from_moments


def _reference(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula (pytorch-fid's), with scipy's general matrix square root of the product."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("n,f,seed", [(200, 16, 0), (500, 64, 1), (80, 8, 2)])
def test_matches_scipy_sqrtm_reference(n, f, seed):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(f, f))
    a = rng.normal(size=(n, f)) @ mix
    b = rng.normal(0.3, 1.2, size=(n + 17, f)) @ (mix + 0.2 * rng.normal(size=(f, f)))
    assert frechet_distance(a, b) == pytest.approx(_reference(a, b), rel=1e-6)


def test_matches_reference_with_near_singular_covariances():
    # features living (almost) in a 5-dimensional subspace of 32 dimensions: eigenvalues down to ~1e-14
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(5, 32))
    a = rng.normal(size=(400, 5)) @ basis + 1e-7 * rng.normal(size=(400, 32))
    b = rng.normal(0.5, 1.0, size=(300, 5)) @ basis + 1e-7 * rng.normal(size=(300, 32))
    assert np.linalg.eigvalsh(np.cov(a, rowvar=False)).min() < 1e-12
    assert frechet_distance(a, b) == pytest.approx(_reference(a, b), rel=1e-6)


def test_rank_deficient_small_sample_is_finite_and_matches_reference():
    # fewer samples than dimensions, as for a per-slice FID with a few hundred volumes in 2048 dimensions
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(20, 50)), rng.normal(0.2, 1.0, size=(25, 50))
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d == pytest.approx(_reference(a, b), rel=1e-6)


def test_same_set_is_zero_and_grows_with_a_controlled_shift():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(300, 12))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    d = [frechet_distance(a, a + s) for s in (0.1, 0.5, 1.0)]
    # a pure mean shift s on every one of 12 features: d = 12 s² exactly
    assert d == pytest.approx([12 * 0.01, 12 * 0.25, 12 * 1.0], rel=1e-9)


def test_streaming_moments_equal_batch_statistics():
    rng = np.random.default_rng(6)
    x = rng.normal(3.0, 2.0, size=(257, 9)).astype(np.float32)
    acc = GaussianMoments(9)
    for chunk in np.array_split(x, [1, 40, 41, 200]):  # uneven batches, one of a single row
        acc.update(chunk)
    assert acc.n == 257
    np.testing.assert_allclose(acc.mean, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(acc.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)


def test_input_validation():
    with pytest.raises(ValueError, match="shape"):
        GaussianMoments(4).update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = GaussianMoments(4).update(np.zeros((1, 4))).cov
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance_from_moments(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@pytest.mark.parametrize("na,nb", [(30, 35), (300, 20), (150, 200)])
def test_sample_route_equals_moment_route(na, nb):
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(na, 40)), rng.normal(0.1, 0.9, size=(nb, 40))
    ma, mb = GaussianMoments(40).update(a), GaussianMoments(40).update(b)
    from_moments = frechet_distance_from_moments(ma.mean, ma.cov, mb.mean, mb.cov)
    assert _frechet_distance_from_samples(a, b) == pytest.approx(from_moments, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(from_moments, rel=1e-6)
