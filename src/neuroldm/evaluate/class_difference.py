"""Class-difference agreement: is the difference a generator puts between its classes the one that holds in new
subjects, or the one its training subjects happen to have?

A class-conditional generator learns everything that separates its training groups: the disease effect, and also
whatever differs between them by chance (a few per cent of head size or position between 36 and 36 subjects).
Guidance then pushes the classes further apart along all of it. A classifier trained on such samples learns the
chance difference, which does not hold on new subjects, and fails the train-on-synthetic test while the synthetic
volumes look right one by one. This check looks for that without training a classifier.

For each class k > 0, the class-difference map of a set of volumes is ``mean(class k) - mean(class 0)``, voxel by
voxel, over the whole grid (volumes are normalised as prepared). Reported per contrast:

- ``corr_training``: Pearson correlation between the synthetic map and the map of the generator's training volumes;
- ``corr_heldout``: the same against held-out real volumes, with a 95 % CI (delete-one jackknife over the held-out
  and synthetic volumes, on Fisher's z scale), as ``{"value", "low", "high", "n", "method", "level"}``
  (`neuroldm.metrics.interval.Interval`; N = held-out volumes);
- ``corr_training_heldout``: the real baseline, training map against held-out map: how much of the training
  groups' difference is the effect rather than chance (a generator that reproduces its training groups exactly
  scores about this as ``corr_heldout``);
- ``amplification``: RMS of the synthetic map over RMS of the training map (guidance makes it > 1).

How to read them: the training map is the effect plus the training groups' chance difference, and
``corr_training_heldout`` says how much of it is effect. A generator that copies its training groups scores
``corr_training`` near 1 and a ``corr_heldout`` no better than that baseline; one that learned the effect beats the
baseline on ``corr_heldout``. With few held-out volumes the CI is wide: on the demo (12 + 12 held-out) about
+-0.45; there a failing generator scored -0.11 [-0.43, 0.23] against a baseline of 0.02, a good one 0.28
[-0.28, 0.70] against 0.19 (README, "What the demo gives").

Why by hand: no library computes it (it is a few means and correlations).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.evaluate.stats import Z95
from neuroldm.metrics.interval import JACKKNIFE_FISHER_Z, Interval


def class_means(paths: Sequence[str], labels: Sequence[int], n_classes: int, progress: bool = False,
                desc: str = "class means") -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean volume ``(n_classes, *grid)`` (float64, streamed: one volume in memory) and counts."""
    sums, counts = None, np.zeros(n_classes, np.int64)
    for p, y in tqdm(list(zip(paths, labels, strict=True)), desc=desc, disable=not progress, leave=False):
        v = load_prepared_volume(p).astype(np.float64)
        if sums is None:
            sums = np.zeros((n_classes, *v.shape))
        sums[int(y)] += v
        counts[int(y)] += 1
    if sums is None:
        raise ValueError("no volumes")
    return sums / np.maximum(counts, 1).reshape(-1, *([1] * (sums.ndim - 1))), counts


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _rms(d: np.ndarray) -> float:
    return float(np.sqrt(np.mean(d * d)))


def _stack(paths: Sequence[str]) -> np.ndarray:
    return np.stack([load_prepared_volume(p).ravel() for p in paths])


def _jackknife_ci(full: float, groups: list[np.ndarray], stat, n: int) -> Interval:
    """The correlation `full` with its 95 % CI: delete-one jackknife over every volume of every group, on Fisher's
    z scale (jackknife variance: Tukey 1958; z = artanh r: Fisher 1915); `n` is the N reported with it.

    `groups` are the volumes ``(n, V)`` of each group; ``stat(g, mean)`` is the correlation with group `g`'s mean
    replaced by `mean` (its mean without one volume). The bootstrap is not used: resampling with replacement adds
    noise to the class means, which biases a correlation of means downward, so its percentile interval can miss
    the estimate itself.
    """
    var = 0.0
    for g, x in enumerate(groups):
        size = len(x)
        if size < 2:
            return Interval(full, float("nan"), float("nan"), n, JACKKNIFE_FISHER_Z)
        total = x.sum(0)
        z = np.array([np.arctanh(np.clip(stat(g, (total - x[i]) / (size - 1)), -0.999999, 0.999999))
                      for i in range(size)])
        var += (size - 1) / size * float(((z - z.mean()) ** 2).sum())
    z0, half = np.arctanh(np.clip(full, -0.999999, 0.999999)), Z95 * np.sqrt(var)
    return Interval(full, float(np.tanh(z0 - half)), float(np.tanh(z0 + half)), n, JACKKNIFE_FISHER_Z)


def class_difference(training: tuple[Sequence[str], Sequence[int]], heldout: tuple[Sequence[str], Sequence[int]],
                     synthetic: tuple[Sequence[str], Sequence[int]], classes: Sequence[str], *,
                     progress: bool = False) -> dict:
    """Agreement of synthetic, training and held-out class-difference maps; see the module docstring.

    Each argument is ``(paths, labels)``. Returns ``{"contrasts": {"<class k>-<class 0>": {...}}, "ci"}``, each
    contrast with ``corr_training``, ``corr_heldout`` (an `Interval` dict), ``corr_training_heldout``,
    ``amplification``, ``rms`` and ``n`` (class counts per set) and ``voxels``; a contrast lacking a class in some
    set is ``{"skipped": reason}``.
    """
    k = len(classes)
    train_mean, n_train = class_means(*training, k, progress, "class means: training")
    held_x, syn_x = _stack(heldout[0]), _stack(synthetic[0])
    held_y, syn_y = np.asarray(heldout[1], int), np.asarray(synthetic[1], int)
    out: dict = {"contrasts": {}, "ci": "delete-one jackknife over held-out and synthetic volumes, Fisher z"}
    grid = train_mean.shape[1:]
    for c in range(1, k):
        name = f"{classes[c]}-{classes[0]}"
        sets = {"training": n_train, "heldout": np.bincount(held_y, minlength=k),
                "synthetic": np.bincount(syn_y, minlength=k)}
        short = [s for s, n in sets.items() if n[0] < 1 or n[c] < 1]
        if short:
            out["contrasts"][name] = {"skipped": f"no {classes[0]} or {classes[c]} volumes in: {', '.join(short)}"}
            continue
        # the four groups the held-out correlation depends on: held-out class 0 / c, synthetic class 0 / c
        groups = [held_x[held_y == 0], held_x[held_y == c], syn_x[syn_y == 0], syn_x[syn_y == c]]
        means = [g.mean(0) for g in groups]
        d_train = (train_mean[c] - train_mean[0]).ravel()
        d_held, d_syn = means[1] - means[0], means[3] - means[2]

        def corr_without(g: int, mean_g: np.ndarray, means=means) -> float:
            m = list(means)
            m[g] = mean_g
            return _corr(m[3] - m[2], m[1] - m[0])

        corr_heldout = _jackknife_ci(_corr(d_syn, d_held), groups, corr_without, len(groups[0]) + len(groups[1]))
        out["contrasts"][name] = {
            "corr_training": _corr(d_syn, d_train),
            "corr_heldout": corr_heldout.to_dict(),
            "corr_training_heldout": _corr(d_train, d_held),
            "amplification": _rms(d_syn) / _rms(d_train) if _rms(d_train) > 0 else float("nan"),
            "rms": {"synthetic": _rms(d_syn), "training": _rms(d_train), "heldout": _rms(d_held)},
            "n": {"training": [int(n_train[0]), int(n_train[c])], "heldout": [len(groups[0]), len(groups[1])],
                  "synthetic": [len(groups[2]), len(groups[3])]},
            "voxels": int(np.prod(grid)),
        }
    return out
