import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from neuroldm.config import load_config
from neuroldm.data.preprocess import (crop_or_pad, foreground_mask, normalise, prepare_volume, resample, to_ras)

from phantoms import MARKER_MM, phantom


@pytest.fixture
def cfg():
    return load_config(None, None, ["prepare.spacing=[3,3,3]", "prepare.grid=[56,64,56]"]).prepare


def _las(data, affine):
    """The same image stored with the first voxel axis running right-to-left."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    return data[::-1].copy(), affine @ flip


def _permuted(data, affine):
    """The same image stored with voxel axes in (y, z, x) order."""
    perm = np.zeros((4, 4))
    perm[3, 3] = 1
    for new, old in enumerate((1, 2, 0)):
        perm[old, new] = 1
    return np.transpose(data, (1, 2, 0)).copy(), affine @ perm


def _world(affine, ijk):
    return np.asarray(ijk, float) @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("twin", [_las, _permuted])
def test_twins_prepare_to_the_same_ras_array(cfg, twin):
    data, affine = phantom()
    tdata, taffine = twin(data, affine)
    # the twin is the same image: each voxel sits at the same world position
    assert nib.aff2axcodes(taffine) != ("R", "A", "S")
    a, b = prepare_volume(data, affine, cfg), prepare_volume(tdata, taffine, cfg)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_allclose(a["affine"], b["affine"])
    assert nib.aff2axcodes(a["affine"]) == ("R", "A", "S")


def test_to_ras_is_exact_and_keeps_world_positions():
    data, affine = phantom(shape=(20, 24, 22))
    las, las_affine = _las(data, affine)
    out, out_affine = to_ras(las, las_affine)
    np.testing.assert_array_equal(out, data)
    np.testing.assert_allclose(out_affine, affine)


def test_output_affine_maps_the_marker_to_its_mm_position(cfg):
    data, affine = phantom()
    for d, a in [(data, affine), _las(data, affine), _permuted(data, affine)]:
        out = prepare_volume(d, a, cfg)
        peak = np.unravel_index(np.argmax(out["image"]), out["image"].shape)
        assert np.linalg.norm(_world(out["affine"], peak) - MARKER_MM) <= np.sqrt(3) * 3.0 / 2 + 1e-6
        assert out["image"].shape == cfg.grid
        np.testing.assert_allclose(np.linalg.norm(out["affine"][:3, :3], axis=0), cfg.spacing)


def test_resample_matches_nibabel_on_an_oblique_affine():
    data, affine = phantom(shape=(40, 48, 40), spacing=4.0, marker=False)
    theta = np.deg2rad(12)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0, 0], [np.sin(theta), np.cos(theta), 0, 0],
                    [0, 0, 1, 0], [0, 0, 0, 1]])
    oblique = rot @ affine
    out, out_affine = resample(data, oblique, (3.0, 3.0, 3.0), order=1)
    ref = resample_from_to(nib.Nifti1Image(data, oblique), (out.shape, out_affine), order=1, mode="constant",
                           cval=0.0)
    np.testing.assert_allclose(out, ref.get_fdata(), atol=1e-3)
    assert np.allclose(out_affine[:3, :3], np.diag([3.0, 3.0, 3.0]))


def test_resample_is_identity_on_the_target_grid():
    data, affine = phantom(shape=(20, 24, 20), spacing=3.0)
    out, out_affine = resample(data, affine, (3.0, 3.0, 3.0))
    np.testing.assert_array_equal(out, data)
    np.testing.assert_array_equal(out_affine, affine)


def test_crop_or_pad_keeps_world_positions():
    data = np.arange(10 * 12 * 8, dtype=np.float32).reshape(10, 12, 8)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, -12, -8]
    out, out_affine = crop_or_pad(data, affine, (6, 16, 8), center=np.array([3, 5.5, 3.5]), fill=-1)
    assert out.shape == (6, 16, 8)
    for ijk in np.argwhere(out >= 0):
        src = np.linalg.solve(affine, np.append(_world(out_affine, ijk), 1))[:3]
        assert data[tuple(np.round(src).astype(int))] == out[tuple(ijk)]
    assert (out == -1).sum() == 6 * 16 * 8 - 6 * 12 * 8  # padded rows on the second axis


def test_foreground_mask_is_the_head_without_background_noise():
    data, affine = phantom()
    mask = foreground_mask(data, 0.15)
    x, y, z = np.moveaxis(_world(affine, np.indices(data.shape).reshape(3, -1).T).T.reshape(3, *data.shape), 0, 0)
    truth = (x / 66) ** 2 + (y / 80) ** 2 + (z / 60) ** 2 < 1
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.98 and not mask[0, 0, 0]
    assert mask[20:60, 30:66, 30:50].all(), "the dark 'ventricle' is inside the head: holes are filled"


def test_normalise_zscore_and_percentile():
    rng = np.random.default_rng(0)
    data = rng.normal(50, 10, (20, 20, 20)).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    z = normalise(data, mask, "zscore")
    assert abs(z[mask].mean()) < 1e-5 and abs(z[mask].std() - 1) < 1e-5
    p = normalise(data, mask, "percentile", (1, 99))
    assert p.min() == 0 and p.max() == 1
    assert abs(np.mean(p[mask] == 1) - 0.01) < 0.005


def test_anti_alias_sigmas_follow_the_downsampling_factor():
    from neuroldm.data.preprocess import anti_alias_sigmas

    affine = np.diag([1.0, 2.0, 4.0, 1.0])
    np.testing.assert_allclose(anti_alias_sigmas(affine, np.array([4.0, 4.0, 4.0])), [1.5, 0.5, 0.0])
    swapped = np.array([[0, 2.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])  # input axis 0 points along y
    np.testing.assert_allclose(anti_alias_sigmas(swapped, np.array([3.0, 5.0, 1.0])), [2.0, 0.25, 0.0])


def test_downsampling_white_noise_averages_it_instead_of_aliasing():
    from neuroldm.data.preprocess import resample

    rng = np.random.default_rng(0)
    noise = rng.normal(size=(64, 64, 64)).astype(np.float32)
    affine = np.eye(4)
    plain, _ = resample(noise, affine, (4.0, 4.0, 4.0), anti_alias=False)
    smooth, out_affine = resample(noise, affine, (4.0, 4.0, 4.0))
    assert plain.shape == smooth.shape == (16, 16, 16) and np.allclose(np.diag(out_affine)[:3], 4.0)
    # point sampling keeps the noise whole (std ~1 at grid points); the prefilter averages it like a coarse voxel
    assert plain[2:-2, 2:-2, 2:-2].std() > 0.9
    assert smooth[2:-2, 2:-2, 2:-2].std() < 0.2
