"""The classifier's data regimes, drawn from one prepared cohort and (optionally) one synthetic sample set.

- ``real``: the real training split.
- ``synthetic``: synthetic volumes only, ``synthetic_ratio`` × the real training count, with the real class
  proportions (train on synthetic, test on real).
- ``mixed`` at ratio r: the real training split plus round(r × real count) synthetic volumes with the real class
  proportions (the seed's design: ratios 0.25 / 0.5 / 0.75 / 1.0 of the real count).
- ``subset`` at fraction f: a class-stratified subset of the real training *subjects* (a learning curve).

Validation and test are always real. Splits come from the manifest: ``fold=None`` uses its train/val split; fold
k validates on the non-test subjects of fold k and trains on the other non-test subjects. The test split is
held out of every fold.

**Leak guard.** A synthetic set carries the subjects its generator was trained on (``samples.json``). If any of
them is in the classifier's validation or test split, the synthetic volumes carry information about those
subjects and the validation or test score would be optimistic, so `check_leak` stops with an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuroldm.errors import NeuroLDMError
from neuroldm.runs import SampleDir
from neuroldm.samples import SampleSet

REGIME_COLUMNS = ["subject", "path", "label", "source"]


class LeakError(NeuroLDMError):
    """The generator of a synthetic set saw subjects of the classifier's validation or test split."""


@dataclass(frozen=True)
class Regime:
    """One training-data regime: ``kind`` with its ratio (mixed/synthetic) or fraction (subset)."""

    kind: str
    value: float | None = None

    @property
    def name(self) -> str:
        return self.kind if self.value is None else f"{self.kind}-{self.value:.2f}"

    @property
    def needs_synthetic(self) -> bool:
        return self.kind in ("synthetic", "mixed")

    @classmethod
    def parse(cls, name: str) -> Regime:
        """``"real"``, ``"synthetic"``, ``"synthetic-1.00"``, ``"mixed-0.50"``, ``"subset-0.25"``."""
        kind, _, value = name.partition("-")
        if kind not in ("real", "synthetic", "mixed", "subset") or (kind == "real" and value) or \
                (kind in ("mixed", "subset") and not value):
            raise NeuroLDMError(f"unknown regime {name!r}; use real, synthetic[-R], mixed-R or subset-F")
        try:
            return cls(kind, float(value) if value else (1.0 if kind == "synthetic" else None))
        except ValueError:
            raise NeuroLDMError(f"regime {name!r}: {value!r} is not a number") from None


def grid_regimes(kinds: list[str], mix_ratios: list[float], subset_fractions: list[float],
                 synthetic_ratio: float) -> list[Regime]:
    """The regimes of a grid, real-only first (the reference of the paired tests)."""
    out = [Regime("real")]
    for kind in kinds:
        if kind == "synthetic":
            out.append(Regime("synthetic", synthetic_ratio))
        elif kind == "mixed":
            out += [Regime("mixed", r) for r in mix_ratios]
        elif kind == "subset":
            out += [Regime("subset", f) for f in subset_fractions if f < 1]
    return list(dict.fromkeys(out))


def fold_split(rows: pd.DataFrame, fold: int | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(train, val, test)`` real rows for `fold` (None: the manifest's own train/val split)."""
    test = rows[rows["split"] == "test"]
    if fold is None:
        train, val = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    else:
        pool = rows[rows["split"] != "test"]
        if fold not in set(pool["fold"]):
            raise NeuroLDMError(f"fold {fold} is not in the manifest (folds: {sorted(set(pool['fold']))}); "
                                f"re-run `neuroldm prepare` with split.folds set")
        train, val = pool[pool["fold"] != fold], pool[pool["fold"] == fold]
    return (train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True))


def check_leak(samples: SampleSet, val: pd.DataFrame, test: pd.DataFrame) -> None:
    """Stop if any subject the generator was trained on is in `val` or `test`."""
    trained = set(samples.train_subjects)
    if not trained:
        raise LeakError(f"{SampleDir(samples.folder).info}: lists no train_subjects, so the leak guard cannot "
                        f"check the generator against the classifier's validation and test subjects")
    for split, rows in (("validation", val), ("test", test)):
        leaked = sorted(trained & set(rows["subject"]))
        if leaked:
            shown = ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
            raise LeakError(f"{SampleDir(samples.folder).info}: the generator was trained on {len(leaked)} "
                            f"subject(s) of the classifier's {split} split ({shown}); synthetic data would leak "
                            f"them. Train the generator without them or classify on a split that holds them out")


def class_counts(total: int, proportions: np.ndarray) -> np.ndarray:
    """Integer counts summing to `total` in the given proportions (largest remainder)."""
    raw = proportions / proportions.sum() * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts


def _as_regime_rows(rows: pd.DataFrame, source: str, subject_column: str) -> pd.DataFrame:
    return pd.DataFrame({"subject": rows[subject_column].astype(str).to_numpy(), "path": rows["path"].to_numpy(),
                         "label": rows["label"].astype(int).to_numpy(), "source": source})


def real_subset(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A class-stratified subset of `fraction` of the training subjects (all images of a chosen subject)."""
    rng = np.random.default_rng(seed)
    subjects = train.groupby("subject")["label"].first()
    keep: list[str] = []
    for label in sorted(subjects.unique()):
        pool = np.sort(subjects[subjects == label].index.to_numpy())
        k = max(1, round(fraction * pool.size))
        keep += list(rng.choice(pool, k, replace=False))
    return train[train["subject"].isin(keep)].reset_index(drop=True)


def draw_synthetic(samples: SampleSet, n: int, proportions: np.ndarray, seed: int) -> pd.DataFrame:
    """`n` synthetic rows, without replacement, with class counts in `proportions` (indexed by label)."""
    counts = class_counts(n, proportions)
    rng = np.random.default_rng(seed)
    picked = []
    for label, k in enumerate(counts):
        pool = samples.rows[samples.rows["label"] == label]
        if k > len(pool):
            raise NeuroLDMError(f"{samples.folder}: {k} synthetic volumes of class {label} are needed but only "
                                f"{len(pool)} exist; sample more with `neuroldm sample`")
        picked.append(pool.iloc[np.sort(rng.choice(len(pool), k, replace=False))])
    return pd.concat(picked, ignore_index=True)


def regime_rows(regime: Regime, train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame,
                samples: SampleSet | None, n_classes: int, seed: int) -> pd.DataFrame:
    """The training rows of `regime`: columns `REGIME_COLUMNS` (``source`` is real or synthetic)."""
    if regime.kind == "subset":
        return _as_regime_rows(real_subset(train, regime.value, seed), "real", "subject")
    real = _as_regime_rows(train, "real", "subject")
    if regime.kind == "real":
        return real
    if samples is None:
        raise NeuroLDMError(f"regime {regime.name} needs synthetic volumes; pass --samples FOLDER "
                            f"(the output of `neuroldm sample`)")
    check_leak(samples, val, test)
    proportions = np.bincount(real["label"], minlength=n_classes).astype(np.float64)
    synthetic = _as_regime_rows(draw_synthetic(samples, round(regime.value * len(real)), proportions, seed),
                                "synthetic", "sample")
    return synthetic if regime.kind == "synthetic" else pd.concat([real, synthetic], ignore_index=True)
