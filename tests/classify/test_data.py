"""Data regimes: mixing counts and class proportions, real subsets, folds, and the leak guard."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroldm.classify.data import (LeakError, Regime, check_leak, class_counts, fold_split, grid_regimes,
                                    regime_rows)
from neuroldm.errors import NeuroLDMError
from neuroldm.samples import SampleSet


def _manifest(n_hc=30, n_tle=42):
    """Real rows: 72 subjects (HC:TLE = 30:42, the seed's 0.42/0.58), split and folds assigned round-robin."""
    rows = []
    for k in range(n_hc + n_tle):
        label = 0 if k < n_hc else 1
        split = "test" if k % 5 == 0 else ("val" if k % 5 == 1 else "train")
        rows.append({"subject": f"sub-{k:03d}", "label": label, "split": split,
                     "fold": -1 if split == "test" else k % 3, "path": f"/v/{k}.nii"})
    return pd.DataFrame(rows)


def _samples(n_per_class=200, train_subjects=("sub-002",)):
    rows = pd.DataFrame([{"sample": f"s{c}-{i}", "path": f"/s/{c}-{i}.nii", "label": c} for c in (0, 1)
                         for i in range(n_per_class)])
    return SampleSet(folder=Path("/samples"), rows=rows, info={"train_subjects": list(train_subjects)})


def test_regime_names_parse_round_trip_and_grid_order():
    for name in ("real", "synthetic-1.00", "mixed-0.25", "subset-0.50"):
        assert Regime.parse(name).name == name
    assert Regime.parse("synthetic") == Regime("synthetic", 1.0)
    with pytest.raises(NeuroLDMError, match="unknown regime"):
        Regime.parse("mixed")
    names = [r.name for r in grid_regimes(["synthetic", "mixed", "subset"], [0.25, 0.5, 0.75, 1.0], [0.25, 1.0],
                                          2.0)]
    assert names == ["real", "synthetic-2.00", "mixed-0.25", "mixed-0.50", "mixed-0.75", "mixed-1.00",
                     "subset-0.25"]


@pytest.mark.parametrize("total", [0, 1, 7, 10, 101])
def test_class_counts_sum_exactly_and_follow_proportions(total):
    counts = class_counts(total, np.array([30.0, 42.0]))
    assert counts.sum() == total
    assert abs(counts[0] - total * 30 / 72) < 1


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 1.0])
def test_mixing_gives_the_requested_count_with_real_class_proportions(ratio):
    train, val, test = fold_split(_manifest(), None)
    rows = regime_rows(Regime("mixed", ratio), train, val, test, _samples(), 2, seed=0)
    real, syn = rows[rows["source"] == "real"], rows[rows["source"] == "synthetic"]
    assert len(real) == len(train) and len(syn) == round(ratio * len(train))
    want = class_counts(len(syn), np.bincount(train["label"]).astype(float))
    assert np.bincount(syn["label"], minlength=2).tolist() == want.tolist()
    assert syn["subject"].is_unique  # drawn without replacement
    again = regime_rows(Regime("mixed", ratio), train, val, test, _samples(), 2, seed=0)
    assert again.equals(rows)  # seeded


def test_synthetic_only_has_no_real_rows():
    train, val, test = fold_split(_manifest(), None)
    rows = regime_rows(Regime("synthetic", 2.0), train, val, test, _samples(), 2, seed=3)
    assert (rows["source"] == "synthetic").all() and len(rows) == 2 * len(train)


def test_too_few_synthetic_volumes_is_an_error():
    train, val, test = fold_split(_manifest(), None)
    with pytest.raises(NeuroLDMError, match="only 5 exist"):
        regime_rows(Regime("mixed", 1.0), train, val, test, _samples(n_per_class=5), 2, seed=0)


def test_real_subset_is_stratified_by_subject():
    train, val, test = fold_split(_manifest(), None)
    rows = regime_rows(Regime("subset", 0.5), train, val, test, None, 2, seed=0)
    per_class = train.groupby("label")["subject"].nunique()
    got = rows.groupby("label")["subject"].nunique()
    assert got.tolist() == [round(0.5 * n) for n in per_class] and set(rows["subject"]) <= set(train["subject"])


def test_folds_hold_out_the_test_split_and_one_fold():
    m = _manifest()
    train, val, test = fold_split(m, 1)
    assert (val["fold"] == 1).all() and not (train["fold"] == 1).any()
    assert set(test["subject"]) == set(m.loc[m["split"] == "test", "subject"])
    assert not set(test["subject"]) & (set(train["subject"]) | set(val["subject"]))
    with pytest.raises(NeuroLDMError, match="fold 7"):
        fold_split(m, 7)


def test_leak_guard_fires_for_validation_and_test_subjects():
    train, val, test = fold_split(_manifest(), None)
    safe = _samples(train_subjects=train["subject"])
    check_leak(safe, val, test)  # the generator saw only the training split: fine
    with pytest.raises(LeakError, match=r"1 subject\(s\) of the classifier's validation split \(sub-001\)"):
        check_leak(_samples(train_subjects=[*train["subject"], "sub-001"]), val, test)
    with pytest.raises(LeakError, match="test split"):
        regime_rows(Regime("mixed", 0.5), train, val, test, _samples(train_subjects=["sub-000"]), 2, seed=0)
    with pytest.raises(LeakError, match="no train_subjects"):
        check_leak(_samples(train_subjects=[]), val, test)
    # under cross-validation a generator trained on the train split has seen the other folds' subjects
    _, val1, test1 = fold_split(_manifest(), 0)
    with pytest.raises(LeakError):
        check_leak(safe, val1, test1)
