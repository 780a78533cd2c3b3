"""Per-slice FID: one value per position per axis, Ns, identical input mapping of real and synthetic volumes."""

import numpy as np
import pytest
import torch
from evaluation_phantoms import GRID, brain

from neuroldm.evaluate.inception import load_inception
from neuroldm.evaluate.slice_fid import (
    AXES,
    _pooled_fid,
    extract_slice_features,
    per_slice_fid,
    slice_positions,
    to_network_input,
)
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic
from neuroldm.metrics.frechet import frechet_distance


def _write(folder, vols):
    paths = []
    for i, v in enumerate(vols):
        p = folder / f"v{i}.nii"
        save_nifti_atomic(v, np.eye(4), p, what="test volume", frame=ALIGNED_ANAT)
        paths.append(str(p))
    return paths


def test_positions_are_centred_strided():
    pos = slice_positions((20, 24, 20), stride=4)
    assert [p.tolist() for p in pos] == [[2, 6, 10, 14, 18], [2, 6, 10, 14, 18, 22], [2, 6, 10, 14, 18]]
    assert [len(p) for p in slice_positions(GRID)] == list(GRID)
    assert [p.tolist() for p in slice_positions(GRID, stride=100)] == [[10], [12], [10]]


def test_network_input_window_quantisation_and_aspect():
    s = torch.tensor([[[-10.0, 0.0, 0.5, 10.0]] * 2])  # (1, 2, 4): a wide slice
    x = to_network_input(s, (0.0, 1.0), size=8)
    assert x.shape == (1, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    assert x.min() == -1.0 and x.max() == pytest.approx(255 / 128 - 1)  # below lo -> 0, above hi -> 255
    # padded to a square with the window's low end: the top and bottom rows are background
    assert torch.all(x[0, 0, 0] == -1.0) and torch.all(x[0, 0, -1] == -1.0)
    levels = to_network_input(torch.full((1, 4, 4), 0.5), (0.0, 1.0), size=4)
    assert torch.allclose(levels, torch.tensor(128 / 128 - 1.0))  # round(0.5 * 255) = 128


def test_same_volumes_as_real_and_synthetic_give_zero_at_every_position(tmp_path, tiny_script):
    net = load_inception(*tiny_script)
    vols = [brain(seed=s, label=s % 2) for s in range(6)]
    real = _write(tmp_path / "real", vols)
    synthetic = _write(tmp_path / "syn", vols)  # same data, other files: must map to identical network inputs
    pos = slice_positions(GRID, stride=5)
    a = extract_slice_features(real, list("abcdef"), net, (-2.0, 2.0), pos, batch_size=4, progress=False)
    b = extract_slice_features(synthetic, list("uvwxyz"), net, (-2.0, 2.0), pos, batch_size=5, progress=False)
    for k in range(3):
        np.testing.assert_array_equal(a.features[k], b.features[k])
    res = per_slice_fid(a, np.arange(6), b, np.arange(6))
    for axis, p in zip(AXES, pos, strict=True):
        r = res["axes"][axis]
        assert r["positions"] == p.tolist() and len(r["fid"]) == len(p)  # one FID per position
        assert max(r["fid"]) == pytest.approx(0, abs=1e-9) and r["pooled"] == pytest.approx(0, abs=1e-9)
        assert r["n_slices_a"] == 6 * len(p)
    assert (res["n_a"], res["n_b"]) == (6, 6)


def test_fid_grows_with_an_intensity_shift(tmp_path, tiny_script):
    net = load_inception(*tiny_script)
    base = [brain(seed=s, label=0) for s in range(6)]
    ref = extract_slice_features(_write(tmp_path / "r", base), list(range(6)), net, (-2.0, 2.0),
                                 slice_positions(GRID, 7), progress=False)
    means = []
    for shift in (0.0, 0.3, 1.0):
        other = [brain(seed=100 + s, label=0, shift=shift) for s in range(6)]
        f = extract_slice_features(_write(tmp_path / f"s{shift}", other), list(range(6)), net, (-2.0, 2.0),
                                   slice_positions(GRID, 7), progress=False)
        means.append(per_slice_fid(ref, np.arange(6), f, np.arange(6))["mean"])
    assert means[0] < means[1] < means[2]


def test_pooled_fid_streamed_equals_direct():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7, 4)), rng.normal(0.3, 1.0, size=(6, 7, 4))  # 35 and 42 slices > 4 dims
    assert _pooled_fid(a, b) == pytest.approx(frechet_distance(a.reshape(-1, 4), b.reshape(-1, 4)), rel=1e-9)


def test_selection_and_size_checks(tmp_path, tiny_script):
    net = load_inception(*tiny_script)
    f = extract_slice_features(_write(tmp_path, [brain(s, 0) for s in range(3)]), list("abc"), net, (-2.0, 2.0),
                               slice_positions(GRID, 8), progress=False)
    with pytest.raises(ValueError, match="at least 2 volumes"):
        per_slice_fid(f, np.arange(1), f, np.arange(3))
    res = per_slice_fid(f, np.array([0, 1]), f, np.array([1, 2]))
    assert (res["n_a"], res["n_b"]) == (2, 2) and res["mean"] > 0
