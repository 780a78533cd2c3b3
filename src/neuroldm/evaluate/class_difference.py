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

**The verdict.** With real baseline subjects V (the validation split: in neither the training set T nor the
held-out set H), each contrast also reports ``corr_baseline_training`` r(V,T), ``corr_baseline_heldout`` r(V,H) and

    excess_training_agreement = [r(S,T) - r(S,H)] - [r(V,T) - r(V,H)]

where S is the synthetic map: how much more the synthetic map agrees with the training subjects than with the
held-out ones, beyond what real new subjects show. The real gap is the reference because r(·,T) - r(·,H) is not 0
for a generator that learned only the effect: the training and held-out maps differ in how noisy they are. A
copier scores r(S,T) near 1 and r(S,H) near r(T,H), and its excess is large; a learner's gap is the real one.
Its 95 % CI is a delete-one jackknife over every held-out, synthetic and baseline volume (as for
``corr_heldout``, T held fixed: the question is about these training subjects), value +- 1.96 sqrt(var) on the
raw scale; it is deterministic, so no seed. The bootstrap is not used, for the reason `_jackknife_ci` gives and
because it would need every resample's class means of full volumes. Under the null the excess is about
(f_S - f_V)(f_T - f_H), with f the correlation of a set's map with the true effect: near 0 when the synthetic
and baseline maps are about as noisy, or the training and held-out maps are. ``verdict`` (`contrast_verdict`):

- ``overfits-training-groups``: the excess CI lies above 0;
- ``amplifies``: amplification >= 1.5 and the upper bound of ``corr_heldout`` below r(V,H): guidance strengthens a
  difference that new subjects do not show;
- ``inconclusive``: no baseline subjects, or fewer than 5 held-out or baseline volumes of a class;
- ``ok``: none of these at this N (the excess CI says how much could still hide).

``why`` names the likely cause and the remedy in one line. The top-level ``verdict`` is the worst contrast's.

Why by hand: no library computes it (it is a few means and correlations).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.evaluate.stats import Z95
from neuroldm.metrics.interval import JACKKNIFE, JACKKNIFE_FISHER_Z, Interval


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


def _fisher_z(r: float) -> float:
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


def _jackknife_var(groups: list[np.ndarray], stat, transform=_fisher_z) -> float:
    """Delete-one jackknife variance of ``transform(stat)``, summed over the groups (each group's volumes deleted
    one at a time; Tukey 1958); NaN when a group has fewer than two volumes."""
    var = 0.0
    for g, x in enumerate(groups):
        size = len(x)
        if size < 2:
            return float("nan")
        total = x.sum(0)
        z = np.array([transform(stat(g, (total - x[i]) / (size - 1))) for i in range(size)])
        var += (size - 1) / size * float(((z - z.mean()) ** 2).sum())
    return var


def _jackknife_ci(full: float, groups: list[np.ndarray], stat, n: int) -> Interval:
    """The correlation `full` with its 95 % CI: delete-one jackknife over every volume of every group, on Fisher's
    z scale (jackknife variance: Tukey 1958; z = artanh r: Fisher 1915); `n` is the N reported with it.

    `groups` are the volumes ``(n, V)`` of each group; ``stat(g, mean)`` is the correlation with group `g`'s mean
    replaced by `mean` (its mean without one volume). The bootstrap is not used: resampling with replacement adds
    noise to the class means, which biases a correlation of means downward, so its percentile interval can miss
    the estimate itself.
    """
    var = _jackknife_var(groups, stat)
    if not np.isfinite(var):
        return Interval(full, float("nan"), float("nan"), n, JACKKNIFE_FISHER_Z)
    z0, half = _fisher_z(full), Z95 * np.sqrt(var)
    return Interval(full, float(np.tanh(z0 - half)), float(np.tanh(z0 + half)), n, JACKKNIFE_FISHER_Z)


def _excess(d_syn: np.ndarray, d_base: np.ndarray, d_train: np.ndarray, d_held: np.ndarray) -> float:
    """``(r(S,T) - r(S,H)) - (r(V,T) - r(V,H))``: see `excess_training_agreement`."""
    return (_corr(d_syn, d_train) - _corr(d_syn, d_held)) - (_corr(d_base, d_train) - _corr(d_base, d_held))


def excess_training_agreement(d_train: np.ndarray, groups: list[np.ndarray]) -> Interval:
    """How much better the synthetic class-difference map agrees with the training map than with the held-out map,
    beyond what a real set of new subjects shows: ``(r(S,T) - r(S,H)) - (r(V,T) - r(V,H))``.

    `d_train` is the training map ``(V,)`` (held fixed: the question is about these training subjects); `groups`
    are the volumes ``(n, V)`` of held-out class 0 / c, synthetic class 0 / c and baseline class 0 / c, in that
    order. 95 % CI: delete-one jackknife over every held-out, synthetic and baseline volume (the stratified
    jackknife of `_jackknife_ci`, on the raw scale: a difference of correlations is not one correlation), normal
    interval; N: the held-out and baseline volumes.
    """
    means = [g.mean(0) for g in groups]

    def stat(means: list[np.ndarray]) -> float:
        return _excess(means[3] - means[2], means[5] - means[4], d_train, means[1] - means[0])

    def without(g: int, mean_g: np.ndarray) -> float:
        m = list(means)
        m[g] = mean_g
        return stat(m)

    full = stat(means)
    half = Z95 * np.sqrt(_jackknife_var(groups, without, transform=float))
    n = sum(len(groups[g]) for g in (0, 1, 4, 5))
    return Interval(full, full - half, full + half, n, JACKKNIFE)


def class_difference(training: tuple[Sequence[str], Sequence[int]], heldout: tuple[Sequence[str], Sequence[int]],
                     synthetic: tuple[Sequence[str], Sequence[int]], classes: Sequence[str], *,
                     baseline: tuple[Sequence[str], Sequence[int]] | None = None, progress: bool = False) -> dict:
    """Agreement of synthetic, training and held-out class-difference maps, and the verdict; see the module
    docstring.

    Each argument is ``(paths, labels)``; `baseline`: real subjects in neither the training nor the held-out set
    (the validation split), without which the verdict is ``inconclusive``. Returns ``{"contrasts": {"<class
    k>-<class 0>": {...}}, "ci", "verdict", "why"}``, each contrast with ``corr_training``, ``corr_heldout`` (an
    `Interval` dict), ``corr_training_heldout``, ``amplification``, ``rms`` and ``n`` (class counts per set) and
    ``voxels``, and with a baseline ``corr_baseline_training``, ``corr_baseline_heldout`` and
    ``excess_training_agreement`` (an `Interval` dict); every contrast has ``verdict`` and ``why``. A contrast
    lacking a class in some set is ``{"skipped": reason}``. The top-level verdict is the worst contrast's.
    """
    k = len(classes)
    train_mean, n_train = class_means(*training, k, progress, "class means: training")
    held_x, syn_x = _stack(heldout[0]), _stack(synthetic[0])
    held_y, syn_y = np.asarray(heldout[1], int), np.asarray(synthetic[1], int)
    has_base = baseline is not None and len(baseline[0]) > 0
    base_x = _stack(baseline[0]) if has_base else None
    base_y = np.asarray(baseline[1], int) if has_base else None
    out: dict = {"contrasts": {}, "ci": "delete-one jackknife over held-out and synthetic volumes, Fisher z",
                 "excess_ci": "delete-one jackknife over held-out, baseline and synthetic volumes, normal interval"}
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
        c_out = out["contrasts"][name]
        if has_base and min(np.bincount(base_y, minlength=k)[[0, c]]) >= 1:
            base = [base_x[base_y == 0], base_x[base_y == c]]
            d_base = base[1].mean(0) - base[0].mean(0)
            c_out["corr_baseline_training"] = _corr(d_base, d_train)
            c_out["corr_baseline_heldout"] = _corr(d_base, d_held)
            c_out["excess_training_agreement"] = excess_training_agreement(d_train, groups + base).to_dict()
            c_out["n"]["baseline"] = [len(base[0]), len(base[1])]
        c_out["verdict"], c_out["why"] = contrast_verdict(c_out)
    judged = [c for c in out["contrasts"].values() if "verdict" in c]
    worst = max(judged, key=lambda c: VERDICTS.index(c["verdict"]), default=None)
    out["verdict"], out["why"] = ((worst["verdict"], worst["why"]) if worst is not None
                                  else ("inconclusive", "no contrast has every class in every set"))
    return out


# --------------------------------------------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------------------------------------------

VERDICTS = ("ok", "inconclusive", "amplifies", "overfits-training-groups")  # from best to worst
MIN_PER_CLASS = 5  # held-out and baseline volumes per class below which the verdict is inconclusive
AMPLIFIED = 1.5  # amplification from which a poor held-out agreement is called amplified

_REMEDY = ("lower guidance, condition on nuisance factors (head size, position), or select the checkpoint and "
           "guidance on validation subjects")


def contrast_verdict(c: dict) -> tuple[str, str]:
    """``(verdict, why)`` of one contrast of `class_difference` (see the module docstring), ``why`` in one line.

    - ``inconclusive``: no baseline, fewer than `MIN_PER_CLASS` held-out or baseline volumes of a class, or no
      finite CI;
    - ``overfits-training-groups``: the CI of ``excess_training_agreement`` lies above 0;
    - ``amplifies``: ``amplification`` >= `AMPLIFIED` and the upper bound of ``corr_heldout`` below
      ``corr_baseline_heldout``: the generator strengthens a class difference new subjects do not show;
    - ``ok``: neither (at this N; the excess CI says how large a training bias could still hide).
    """
    if "excess_training_agreement" not in c:
        return "inconclusive", ("no real baseline subjects (a split besides training and held-out, e.g. 'val'): "
                                "the excess over real data cannot be measured")
    n = {s: min(c["n"][s]) for s in ("heldout", "baseline")}
    excess = Interval.from_dict(c["excess_training_agreement"])
    if min(n.values()) < MIN_PER_CLASS or not excess.bounded:
        return "inconclusive", (f"too few real volumes per class (held-out {n['heldout']}, baseline "
                                f"{n['baseline']}; at least {MIN_PER_CLASS} each) for a CI of the excess")
    amp, held = c["amplification"], Interval.from_dict(c["corr_heldout"])
    amplified = f"; guidance amplifies them (amplification {amp:.1f})" if amp >= AMPLIFIED else ""
    if excess.low > 0:
        return "overfits-training-groups", (
            f"the generator learned chance differences between its training groups{amplified} (excess agreement "
            f"with training {excess.text('.2f', with_n=False)}): {_REMEDY}")
    if amp >= AMPLIFIED and held.high < c["corr_baseline_heldout"]:
        return "amplifies", (
            f"guidance amplifies a class difference held-out subjects do not share (amplification {amp:.1f}; "
            f"agreement with held-out {held.text('.2f', with_n=False)} vs {c['corr_baseline_heldout']:.2f} for "
            f"real subjects): {_REMEDY}")
    return "ok", (f"the synthetic class difference favours the training subjects no more than real subjects' does "
                  f"(excess {excess.text('.2f', with_n=False)})")
