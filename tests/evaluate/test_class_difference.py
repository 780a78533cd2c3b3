"""Class-difference agreement: a generator that copies the training groups' chance difference is told apart from
one that learned the effect."""

import numpy as np
import pytest

from neuroldm.evaluate.class_difference import class_difference, class_means
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic
from neuroldm.metrics.interval import Interval

GRID = (8, 10, 8)
CLASSES = ["HC", "TLE"]


def _write(folder, name, volume):
    path = folder / f"{name}.nii"
    save_nifti_atomic(volume.astype(np.float32), np.eye(4), path, what="test volume", frame=ALIGNED_ANAT)
    return str(path)


@pytest.fixture(scope="module")
def maps():
    rng = np.random.default_rng(0)
    effect = np.zeros(GRID)
    effect[2:5, 3:6, 2:5] = -1.0  # a local lesion
    chance = rng.normal(0, 1, GRID) * 0.6  # what the training groups differ in by chance: everywhere
    return effect, chance


def _set(tmp, name, n, diff, noise, rng):
    """n volumes per class; class 1 = class 0 + `diff`, each volume with its own noise."""
    paths, labels = [], []
    for i in range(2 * n):
        y = i % 2
        paths.append(_write(tmp, f"{name}{i}", 1.0 + y * diff + rng.normal(0, noise, GRID)))
        labels.append(y)
    return paths, labels


def test_a_copy_of_the_training_groups_is_told_apart_from_the_effect(tmp_path, maps):
    effect, chance = maps
    rng = np.random.default_rng(1)
    training = _set(tmp_path, "train", 10, effect + chance, 0.2, rng)
    heldout = _set(tmp_path, "held", 10, effect, 0.1, rng)
    copier = _set(tmp_path, "copy", 10, 2 * (effect + chance), 0.1, rng)  # guided: twice the training difference
    learner = _set(tmp_path, "learn", 10, 2 * effect, 0.1, rng)

    c = class_difference(training, heldout, copier, CLASSES)["contrasts"]["TLE-HC"]
    good = class_difference(training, heldout, learner, CLASSES)["contrasts"]["TLE-HC"]
    assert c["corr_training"] > 0.95 and c["corr_heldout"]["value"] < 0.6 < good["corr_heldout"]["value"]
    assert good["corr_heldout"]["value"] > 0.9 and good["corr_training"] < 0.6
    assert c["amplification"] == pytest.approx(2.0, rel=0.1)
    ci = Interval.from_dict(good["corr_heldout"])
    lo, hi = ci.low, ci.high
    assert lo <= ci.value <= hi and hi - lo > 0
    assert (ci.n, ci.method) == (20, "jackknife-fisher-z")  # N: the held-out volumes
    assert c["n"] == {"training": [10, 10], "heldout": [10, 10], "synthetic": [10, 10]}
    assert c["corr_training_heldout"] == pytest.approx(good["corr_training"], abs=0.1)


def test_correlations_and_means_match_numpy(tmp_path):
    rng = np.random.default_rng(2)
    sets = [_set(tmp_path, name, 3, rng.normal(0, 1, GRID), 0.5, rng) for name in ("a", "b", "c")]
    vols = [np.stack([_read(p) for p in paths]) for paths, _ in sets]
    diffs = [v[1::2].mean(0) - v[0::2].mean(0) for v in vols]
    res = class_difference(*sets, CLASSES)["contrasts"]["TLE-HC"]
    assert res["corr_training"] == pytest.approx(np.corrcoef(diffs[2].ravel(), diffs[0].ravel())[0, 1], abs=1e-6)
    corr_heldout = res["corr_heldout"]["value"]
    assert corr_heldout == pytest.approx(np.corrcoef(diffs[2].ravel(), diffs[1].ravel())[0, 1], abs=1e-6)
    means, counts = class_means(*sets[0], 2)
    np.testing.assert_allclose(means[1], vols[0][1::2].mean(0), atol=1e-6)
    assert counts.tolist() == [3, 3]


def test_a_missing_class_is_skipped_with_a_reason(tmp_path):
    rng = np.random.default_rng(3)
    training = _set(tmp_path, "t", 2, np.ones(GRID), 0.1, rng)
    only_hc = ([training[0][0]], [0])
    res = class_difference(training, training, only_hc, CLASSES)["contrasts"]["TLE-HC"]
    assert res == {"skipped": "no HC or TLE volumes in: synthetic"}


def _read(path):
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj, dtype=np.float32)
