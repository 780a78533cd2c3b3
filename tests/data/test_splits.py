import pandas as pd
import pytest

from neuroldm.config import SplitConfig
from neuroldm.data.splits import assign_splits, check_split_leakage, duplicate_groups, find_duplicates
from neuroldm.errors import NeuroLDMError


def _subjects(n_hc=30, n_tle=20):
    subjects = [f"sub-{i:03d}" for i in range(n_hc + n_tle)]
    return pd.DataFrame({"subject": subjects, "label": [0] * n_hc + [1] * n_tle, "group": subjects})


def test_splits_are_stratified_and_cover_everyone():
    subs = _subjects()
    out = assign_splits(subs, SplitConfig(seed=1, val_fraction=0.2, test_fraction=0.2, folds=5))
    assert set(out["subject"]) == set(subs["subject"])
    merged = out.merge(subs, on="subject")
    for split, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        part = merged[merged["split"] == split]
        assert abs(len(part) - frac * 50) <= 1
        assert abs(part["label"].mean() - 0.4) <= 0.1, f"{split} is not stratified"
    assert (merged.loc[merged["split"] == "test", "fold"] == -1).all()
    dev = merged[merged["split"] != "test"]
    assert sorted(dev["fold"].unique()) == [0, 1, 2, 3, 4]
    assert dev.groupby("fold")["label"].sum().between(2, 4).all(), "folds are not stratified"


def test_splits_are_deterministic_and_order_free():
    subs = _subjects()
    cfg = SplitConfig(seed=5)
    a = assign_splits(subs, cfg).set_index("subject").sort_index()
    b = assign_splits(subs.sample(frac=1, random_state=3), cfg).set_index("subject").sort_index()
    pd.testing.assert_frame_equal(a, b)
    c = assign_splits(subs, SplitConfig(seed=6)).set_index("subject").sort_index()
    assert not a.equals(c)


def test_duplicates_stay_in_one_split():
    subs = _subjects()
    hashes = pd.Series([f"h{i}" for i in range(50)])
    hashes[7] = hashes[41] = "same"  # an HC and a TLE subject with an identical image
    groups = duplicate_groups(subs["subject"], hashes)
    assert groups["sub-007"] == groups["sub-041"]
    assert find_duplicates(subs["subject"], hashes) == [["sub-007", "sub-041"]]
    subs["group"] = subs["subject"].map(groups)
    for seed in range(10):
        out = assign_splits(subs, SplitConfig(seed=seed)).set_index("subject")
        assert out.loc["sub-007", "split"] == out.loc["sub-041", "split"]
        assert out.loc["sub-007", "fold"] == out.loc["sub-041", "fold"]


def test_duplicate_groups_are_transitive():
    subjects = pd.Series(["a", "b", "c", "d"])
    hashes = pd.Series(["x", "x", "y", "z"])
    groups = duplicate_groups(pd.concat([subjects, pd.Series(["c"])]), pd.concat([hashes, pd.Series(["x"])]))
    assert groups["a"] == groups["b"] == groups["c"] != groups["d"]


def test_too_few_subjects_for_folds_is_a_clear_error():
    with pytest.raises(NeuroLDMError, match="cannot make 5 stratified folds: the smallest class has 3"):
        assign_splits(_subjects(10, 4), SplitConfig(val_fraction=0.1, test_fraction=0.1, folds=5))


def test_leakage_check():
    ok = pd.DataFrame({"subject": ["a", "a", "b"], "split": ["train", "train", "test"],
                       "data_sha256": ["1", "2", "3"]})
    check_split_leakage(ok)
    with pytest.raises(NeuroLDMError, match="subject a is in test, train"):
        check_split_leakage(ok.assign(split=["train", "test", "test"]))
    with pytest.raises(NeuroLDMError, match=r"identical image in several splits: a \(train\), b \(test\)"):
        check_split_leakage(ok.assign(data_sha256=["1", "2", "1"]))
