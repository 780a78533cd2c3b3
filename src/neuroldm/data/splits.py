"""Subject-level, label-stratified splits and the checks that keep them honest.

A *unit* of splitting is a subject, or several subjects whose images are identical (same content hash): such
duplicates are reported and kept in one split, because an identical scan on both sides of a split is a leak
however it is labelled. All sessions of a subject follow the subject.

``split`` is the hold-out design (train / val / test). ``fold`` assigns every non-test subject to one of k
stratified folds for cross-validation (test subjects get -1), so the test split is never used for selection.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from neuroldm.config import SplitConfig
from neuroldm.errors import NeuroLDMError


def duplicate_groups(subjects: pd.Series, hashes: pd.Series) -> dict[str, str]:
    """Map each subject to a group id: subjects sharing any image hash (transitively) share a group."""
    parent: dict[str, str] = {s: s for s in subjects}

    def find(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    first_owner: dict[str, str] = {}
    for s, h in zip(subjects, hashes):
        if not h:
            continue
        if h in first_owner:
            a, b = find(first_owner[h]), find(s)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first_owner[h] = s
    return {s: find(s) for s in parent}


def find_duplicates(subjects: pd.Series, hashes: pd.Series) -> list[list[str]]:
    """Groups (sorted) of two or more different subjects holding an identical image."""
    owners: dict[str, set[str]] = {}
    for s, h in zip(subjects, hashes):
        if h:
            owners.setdefault(h, set()).add(s)
    return sorted(sorted(o) for o in owners.values() if len(o) > 1)


def _stratified_split(units: np.ndarray, labels: np.ndarray, fraction: float, seed: int, what: str):
    if fraction <= 0:
        return units, units[:0]
    try:
        return train_test_split(units, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as e:
        counts = dict(zip(*np.unique(labels, return_counts=True)))
        raise NeuroLDMError(f"cannot make a stratified {what} split of {len(units)} subjects with class counts "
                            f"{ {int(k): int(v) for k, v in counts.items()} } ({e}); add subjects or lower "
                            f"split.{what}_fraction") from None


def assign_splits(subjects: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """``subjects`` has one row per subject with ``subject``, ``label`` and ``group`` (see `duplicate_groups`).

    Returns ``subject, split, fold``; deterministic for a given ``cfg.seed`` and subject set (input order does
    not matter).
    """
    units = (subjects.groupby("group", sort=True)["label"]
             .agg(lambda s: int(s.value_counts().idxmax())).reset_index())
    names, labels = units["group"].to_numpy(), units["label"].to_numpy()
    rest, test = _stratified_split(names, labels, cfg.test_fraction, cfg.seed, "test")
    rest_labels = units.set_index("group").loc[rest, "label"].to_numpy()
    val_fraction = cfg.val_fraction / (1 - cfg.test_fraction)
    train, val = _stratified_split(np.asarray(rest), rest_labels, val_fraction, cfg.seed + 1, "val")
    split_of = {**{g: "train" for g in train}, **{g: "val" for g in val}, **{g: "test" for g in test}}

    fold_of = {g: -1 for g in names}
    if cfg.folds >= 2:
        dev = np.sort(np.asarray(rest))
        dev_labels = units.set_index("group").loc[dev, "label"].to_numpy()
        smallest = int(np.bincount(dev_labels, minlength=int(labels.max()) + 1).min())
        if smallest < cfg.folds:
            raise NeuroLDMError(f"cannot make {cfg.folds} stratified folds: the smallest class has {smallest} "
                                f"non-test subjects; lower split.folds")
        skf = StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
        for k, (_, idx) in enumerate(skf.split(dev, dev_labels)):
            fold_of.update({g: k for g in dev[idx]})
    out = subjects[["subject", "group"]].copy()
    out["split"] = out["group"].map(split_of)
    out["fold"] = out["group"].map(fold_of).astype(int)
    return out[["subject", "split", "fold"]]


def check_split_leakage(manifest: pd.DataFrame) -> None:
    """Raise if a subject, or an identical image (``data_sha256``), appears in more than one split."""
    ok = manifest[manifest["split"].isin(["train", "val", "test"])]
    problems = []
    for subject, splits in ok.groupby("subject")["split"].unique().items():
        if len(splits) > 1:
            problems.append(f"subject {subject} is in {', '.join(sorted(splits))}")
    if "data_sha256" in ok.columns:
        for _, group in ok[ok["data_sha256"] != ""].groupby("data_sha256"):
            if group["split"].nunique() > 1:
                pairs = ", ".join(f"{s} ({sp})" for s, sp in zip(group["subject"], group["split"]))
                problems.append(f"identical image in several splits: {pairs}")
    if problems:
        raise NeuroLDMError("split leakage: " + "; ".join(problems))
