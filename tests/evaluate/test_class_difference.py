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


# --------------------------------------------------------------------------------------------------------------
# The verdict: each set's class difference is the effect plus the chance difference of its own subjects
# --------------------------------------------------------------------------------------------------------------

SUBJECT_SD = 0.6  # each subject's own deviation, voxel by voxel: its set's chance class difference comes from it


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, maps):
    """Training, held-out and validation (baseline) sets of 10 + 10 subjects of one population, and a training set
    whose TLE group differs from its HC group by a planted chance pattern too."""
    effect, chance = maps
    tmp, rng = tmp_path_factory.mktemp("verdict"), np.random.default_rng(4)
    return {name: _set(tmp, name, 10, effect + (chance * 0.7 if name == "planted" else 0), SUBJECT_SD, rng)
            for name in ("training", "heldout", "baseline", "planted")}


def _verdict(tmp_path, cohort, training, diff=None, synthetic=None, heldout=None):
    synthetic = synthetic or _set(tmp_path, "syn", 10, diff, 0.1, np.random.default_rng(5))
    res = class_difference(cohort[training], heldout or cohort["heldout"], synthetic, CLASSES,
                           baseline=cohort["baseline"])
    return res, res["contrasts"]["TLE-HC"]


def test_a_copier_of_the_training_subjects_overfits_its_training_groups(tmp_path, cohort):
    res, c = _verdict(tmp_path, cohort, "training", synthetic=cohort["training"])
    excess = Interval.from_dict(c["excess_training_agreement"])
    assert excess.low > 0.3 and (excess.n, excess.method) == (40, "jackknife")  # N: held-out + baseline volumes
    assert c["corr_training"] == pytest.approx(1.0)
    assert excess.value == pytest.approx((c["corr_training"] - c["corr_heldout"]["value"])
                                         - (c["corr_baseline_training"] - c["corr_baseline_heldout"]))
    assert (res["verdict"], c["verdict"]) == ("overfits-training-groups", "overfits-training-groups")
    assert res["why"].startswith("the generator learned chance differences between its training groups")
    assert "lower guidance" in res["why"] and c["n"]["baseline"] == [10, 10]


def test_a_learner_of_the_effect_is_ok(tmp_path, cohort, maps):
    res, c = _verdict(tmp_path, cohort, "training", diff=2 * maps[0])
    excess = Interval.from_dict(c["excess_training_agreement"])
    assert excess.low < 0 < excess.high and abs(excess.value) < 0.1
    assert res["verdict"] == "ok"


def test_a_generator_that_amplifies_a_planted_chance_difference_is_flagged(tmp_path, cohort, maps):
    effect, chance = maps
    res, c = _verdict(tmp_path, cohort, "planted", diff=2 * (effect + chance * 0.7))
    assert c["amplification"] > 1.5 and Interval.from_dict(c["excess_training_agreement"]).low > 0
    assert res["verdict"] == "overfits-training-groups"
    assert f"guidance amplifies them (amplification {c['amplification']:.1f})" in res["why"]
    # the same training set, a generator that learned only the effect: not flagged
    assert _verdict(tmp_path, cohort, "planted", diff=2 * effect)[0]["verdict"] == "ok"


def test_a_strong_difference_new_subjects_do_not_share_is_amplifies(tmp_path, cohort):
    unrelated = np.random.default_rng(6).normal(0, 1, GRID)  # in neither training nor held-out subjects
    res, c = _verdict(tmp_path, cohort, "training", diff=2 * unrelated)
    assert c["amplification"] > 1.5 and c["corr_heldout"]["high"] < c["corr_baseline_heldout"]
    assert res["verdict"] == "amplifies" and res["why"].startswith("guidance amplifies a class difference")


def test_too_few_real_volumes_or_no_baseline_is_inconclusive(tmp_path, cohort):
    heldout = cohort["heldout"]
    tiny = (heldout[0][:4], heldout[1][:4])  # two per class: a CI, but not one to judge by
    res, c = _verdict(tmp_path, cohort, "training", synthetic=cohort["training"], heldout=tiny)
    assert res["verdict"] == c["verdict"] == "inconclusive"
    assert "too few real volumes per class (held-out 2" in res["why"]
    res = class_difference(cohort["training"], heldout, cohort["training"], CLASSES)
    assert res["verdict"] == "inconclusive" and res["why"].startswith("no real baseline subjects")
    assert "excess_training_agreement" not in res["contrasts"]["TLE-HC"]
