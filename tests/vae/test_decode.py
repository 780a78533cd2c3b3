import math
from itertools import pairwise

import pytest
import torch

from neuroldm.config import VAEConfig
from neuroldm.vae.decode import (_ramp, decode_volume, encode_volume, receptive_radius, sliding_window_decode,
                                 sliding_window_encode, window_starts)
from neuroldm.vae.network import build_vae


@pytest.fixture(scope="module")
def demo_vae():
    torch.manual_seed(0)
    return build_vae(VAEConfig(arch="demo")).eval()


@pytest.mark.parametrize("n,roi,overlap", [(28, 16, 0.25), (34, 20, 0.25), (12, 4, 0.5), (10, 10, 0.25),
                                           (9, 4, 0.0), (5, 8, 0.25)])
def test_window_starts_cover_the_axis_with_at_least_the_requested_overlap(n, roi, overlap):
    starts = window_starts(n, roi, overlap)
    roi = min(roi, n)
    assert starts[0] == 0 and starts[-1] + roi == n
    covered = set().union(*(range(s, s + roi) for s in starts))
    assert covered == set(range(n))
    for a, b in pairwise(starts):
        assert a + roi - b >= math.ceil(overlap * roi)


def test_blend_weights_of_two_neighbours_sum_to_one():
    # windows [0, 10) and [6, 16) on a coarse axis, 4 fine voxels per coarse voxel: overlap 4 coarse voxels
    left, right = _ramp(10, 0, 4, 4), _ramp(10, 4, 0, 4)
    total = torch.zeros(64, dtype=torch.float64)
    total[:40] += left
    total[24:] += right
    torch.testing.assert_close(total, torch.ones(64, dtype=torch.float64))
    assert (left[:24] == 1).all() and (left[24:] < 1).all() and (left[24:].diff() < 0).all(), "smooth fall"


def test_receptive_radius_of_a_known_stack():
    # two 3x3x3 convs at the coarse resolution (reach 2) and one at twice it (reach 1/2): ceil(2.5) = 3
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 1, 3, padding=1), torch.nn.Conv3d(1, 1, 3, padding=1),
                              torch.nn.Upsample(scale_factor=2), torch.nn.Conv3d(1, 1, 3, padding=1))
    assert receptive_radius(net, net, torch.zeros(1, 1, 2, 2, 2), coarse=2) == 3


def test_one_window_covering_everything_is_whole_volume_decoding(demo_vae):
    z = torch.randn(1, 4, 5, 6, 4)
    with torch.no_grad():
        full = demo_vae.decode(z)
    for mode in ("global", "window"):
        torch.testing.assert_close(sliding_window_decode(demo_vae, z, (8, 8, 8), norm_stats=mode), full,
                                   rtol=0, atol=1e-5)


def test_real_windows_reproduce_whole_volume_decoding(demo_vae):
    """With whole-volume GroupNorm statistics and receptive-field context the windows are exact; with each window's
    own statistics (MAISI's way) they are not: that gap is why "global" is the default."""
    torch.manual_seed(1)
    z = torch.randn(2, 4, 14, 6, 5)
    with torch.no_grad():
        full = demo_vae.decode(z)
    scale = full.std().item()
    exact = sliding_window_decode(demo_vae, z, (4, 6, 5), overlap=0.25)
    err_global = (exact - full).abs().max().item() / scale
    local = sliding_window_decode(demo_vae, z, (4, 6, 5), overlap=0.25, norm_stats="window")
    err_window = (local - full).abs().max().item() / scale
    print(f"seam error (max |diff| / std): global statistics {err_global:.2e}, window statistics {err_window:.2e}")
    assert err_global < 1e-4
    assert err_window > 10 * err_global
    # too little context lets zero padding in, even with the right statistics
    short = sliding_window_decode(demo_vae, z, (4, 6, 5), overlap=0.25, context=2)
    assert (short - full).abs().max().item() / scale > 1e-3


def test_windowed_encoding_reproduces_whole_volume_encoding(demo_vae):
    torch.manual_seed(2)
    x = torch.randn(1, 1, 56, 24, 20)
    with torch.no_grad():
        mu, sigma = demo_vae.encode(x)
    mu_w, sigma_w = sliding_window_encode(demo_vae, x, (5, 6, 5))
    torch.testing.assert_close(mu_w, mu, rtol=0, atol=1e-4 * mu.std().item())
    torch.testing.assert_close(sigma_w, sigma, rtol=1e-4, atol=1e-4 * sigma.std().item())


def test_decode_volume_follows_the_config(demo_vae):
    z = torch.randn(1, 4, 10, 4, 4)
    with torch.no_grad():
        full = demo_vae.decode(z)
    assert torch.equal(decode_volume(demo_vae, z, VAEConfig(arch="demo")), full)
    windowed = decode_volume(demo_vae, z, VAEConfig(arch="demo", decode_roi=(4, 4, 4), decode_overlap=0.5))
    assert windowed.shape == full.shape
    torch.testing.assert_close(windowed, full, rtol=0, atol=1e-4 * full.std().item())
    x = torch.randn(1, 1, 40, 16, 16)
    mu, _ = encode_volume(demo_vae, x, VAEConfig(arch="demo", decode_roi=(4, 4, 4)))
    with torch.no_grad():
        torch.testing.assert_close(mu, demo_vae.encode(x)[0], rtol=0, atol=1e-4)
