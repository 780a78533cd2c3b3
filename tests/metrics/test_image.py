import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d

from neuroldm.metrics.image import MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_settings, psnr, ssim


# ---- an independent reference: 3D Gaussian SSIM / MS-SSIM in numpy + scipy (Wang et al. 2004, 2003) -----------

def _gauss(k, sigma=1.5):
    d = np.arange(k) - (k - 1) / 2
    g = np.exp(-0.5 * (d / sigma) ** 2)
    return g / g.sum()


def _filter_valid(a, k):
    """Separable Gaussian filter, kept only where the whole window lies inside the volume."""
    g, r = _gauss(k), k // 2
    for axis in range(3):
        a = correlate1d(a, g, axis=axis, mode="constant")
    return a[r:a.shape[0] - r, r:a.shape[1] - r, r:a.shape[2] - r]


def _ssim_maps(x, y, k, data_range):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _filter_valid(x, k), _filter_valid(y, k)
    vx = _filter_valid(x * x, k) - mx ** 2
    vy = _filter_valid(y * y, k) - my ** 2
    cxy = _filter_valid(x * y, k) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    return (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs, cs


def _ref_ssim(x, y, k=11):
    return _ssim_maps(x, y, k, y.max() - y.min())[0].mean()


def _ref_ms_ssim(x, y, k, weights):
    rng = y.max() - y.min()
    values = []
    for i in range(len(weights)):
        s, cs = _ssim_maps(x, y, k, rng)
        values.append(max(s.mean() if i == len(weights) - 1 else cs.mean(), 0.0))
        # 2x2x2 average pooling, odd remainders dropped (as avg_pool3d with kernel 2)
        x, y = (a[:a.shape[0] // 2 * 2, :a.shape[1] // 2 * 2, :a.shape[2] // 2 * 2]
                .reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean((1, 3, 5)) for a in (x, y))
    return float(np.prod([v ** w for v, w in zip(values, weights)]))


def _smooth_pair(shape, noise, seed=0):
    """A smooth 'anatomy' (blurred noise) and a noisy copy, float64 numpy."""
    rng = np.random.default_rng(seed)
    real = rng.normal(size=shape)
    for axis in range(3):
        real = correlate1d(real, _gauss(9, 2.0), axis=axis, mode="nearest")
    real = 3.0 * real + 1.0
    return real + noise * real.std() * rng.normal(size=shape), real


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a)).float()[None, None]


# ---- tests ---------------------------------------------------------------------------------------------------

def test_psnr_matches_the_formula_with_the_real_volumes_range():
    x, real = _smooth_pair((12, 14, 10), noise=0.2)
    mse = np.mean((x.astype(np.float32) - real.astype(np.float32)) ** 2)
    expected = 10 * np.log10((real.max() - real.min()) ** 2 / mse)
    assert psnr(_t(x), _t(real)).item() == pytest.approx(expected, abs=1e-3)
    assert psnr(_t(real), _t(real)).item() == float("inf")


def test_ssim_matches_an_independent_implementation():
    x, real = _smooth_pair((20, 24, 22), noise=0.3)
    ours = ssim(_t(x), _t(real)).item()
    assert ours == pytest.approx(_ref_ssim(x, real), abs=1e-4)
    assert 0.2 < ours < 0.99
    assert ssim(_t(real), _t(real)).item() == pytest.approx(1.0, abs=1e-6)


def test_values_are_per_volume_with_each_volumes_own_range():
    x, real = _smooth_pair((16, 16, 16), noise=0.2)
    xb = torch.cat([_t(x), 10 * _t(x)])
    rb = torch.cat([_t(real), 10 * _t(real)])
    for metric in (psnr, ssim, ms_ssim):
        values = metric(xb, rb)
        assert values.shape == (2,)
        # scaling a volume and its reference together changes nothing: the range is the reference's own
        assert values[0].item() == pytest.approx(values[1].item(), rel=1e-4)


def test_ms_ssim_settings_rule():
    assert ms_ssim_settings((52, 64, 56)) == (11, pytest.approx(tuple(w / sum(MS_SSIM_WEIGHTS[:3])
                                                                      for w in MS_SSIM_WEIGHTS[:3])))
    k, w = ms_ssim_settings((112, 136, 112))
    assert k == 7 and w == pytest.approx(tuple(v / sum(MS_SSIM_WEIGHTS) for v in MS_SSIM_WEIGHTS))
    assert ms_ssim_settings((16, 16, 16))[0] == 7 and len(ms_ssim_settings((16, 16, 16))[1]) == 2
    for shape in [(52, 64, 56), (112, 136, 112), (32, 40, 36), (16, 20, 18)]:
        k, w = ms_ssim_settings(shape)
        assert min(shape) // 2 ** (len(w) - 1) >= k >= 7, "the coarsest scale holds the kernel"
    with pytest.raises(ValueError, match="too small for MS-SSIM"):
        ms_ssim_settings((12, 40, 40))


def test_ms_ssim_matches_an_independent_implementation():
    x, real = _smooth_pair((32, 40, 36), noise=0.3)
    k, w = ms_ssim_settings(real.shape)
    assert ms_ssim(_t(x), _t(real)).item() == pytest.approx(_ref_ms_ssim(x, real, k, w), abs=1e-4)


@pytest.mark.parametrize("shape", [(52, 64, 56), (112, 136, 112)])
def test_ms_ssim_works_on_the_demo_and_paper_grids(shape):
    torch.manual_seed(0)
    real = torch.rand(1, 1, *shape)
    assert ms_ssim(real, real.clone()).item() == pytest.approx(1.0, abs=1e-5)
    if shape[0] < 100:  # keep the test short: one noisy comparison on the small grid
        slight, strong = (ms_ssim(real + s * torch.randn_like(real), real).item() for s in (0.05, 0.3))
        assert 1.0 > slight > strong


def test_shape_mismatch_and_constant_reference_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        psnr(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 9))
    with pytest.raises(ValueError, match="constant"):
        ssim(torch.rand(1, 1, 16, 16, 16), torch.ones(1, 1, 16, 16, 16))
