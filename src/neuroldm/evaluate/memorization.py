"""Memorization audit: is a synthetic volume closer to a training volume than real unseen volumes are?

For every query volume, the nearest *training* volume and its distance ``d = 1 − r``, r the normalised (Pearson)
correlation of the two volumes' voxels after average-pooling by ``evaluate.memorization_downsample`` (an exact copy
gives d = 0 at any pooling). Queries are the synthetic volumes and, as the reference, the held-out real volumes
(which the generator never saw). Optionally the same in latent space (Euclidean distance between posterior means).

Reported (Meehan, Chaudhuri & Dasgupta, AISTATS 2020, "A non-parametric test to detect data-copying"):

- ``z_u``: the Mann–Whitney U of synthetic vs held-out nearest-training distances as a z-score,
  ``(U − mn/2) / √(mn(m+n+1)/12)`` with U counting pairs where the synthetic distance is the larger. ``z_u ≪ 0``:
  synthetic volumes sit closer to the training set than new real data does (data copying); ``≫ 0``: farther
  (under-fitting). This is Meehan's statistic on a single cell; their C_T averages it over k-means cells of the
  training set, which needs more held-out volumes per cell than a small cohort has.
- ``flagged_share``: the share of synthetic volumes closer to their nearest training volume than the
  `percentile`-th percentile of the held-out real ones, as a Wilson 95 % interval (Wilson 1927) ``{"value", "low",
  "high", "n", "method", "level"}`` (`neuroldm.metrics.interval.Interval`, N = synthetic volumes); by construction
  about percentile/100 for a generator that copies nothing.
- ``n_copies``: synthetic volumes flagged as *copies*: nearer to a training volume than ``copy_ratio`` times the
  nearest-training distance of the closest held-out real volume (``copy_threshold``). With ratio 1 this is
  NeuroLDM-3D's "closer than the closest real sample", which an honest generator still meets by chance for about
  m/(n+1) of m samples against n held-out volumes; the default ratio 0.5 asks for twice as close as any unseen scan,
  which a copy (distance ~0) meets and fresh samples practically never do. Duplicates between training and
  held-out data make the threshold 0 and hide copies: `neuroldm prepare` keeps identical images in one split.
- the flagged volumes, the distinct training volumes hit, and a figure of the closest pairs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu
from tqdm.auto import tqdm

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.metrics.interval import wilson_interval
from neuroldm.viz.slices import comparison_figure


def standardised_vector(volume: np.ndarray, downsample: int = 1) -> np.ndarray:
    """A volume average-pooled by `downsample`, flattened, centred and scaled to unit norm (float32).

    The dot product of two such vectors is their Pearson correlation.
    """
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    if downsample > 1:
        x = F.avg_pool3d(x, downsample, ceil_mode=True)
    v = x.flatten().double()
    v = v - v.mean()
    norm = v.norm()
    return (v / norm if norm > 0 else v).float().numpy()


def nearest_training(queries: np.ndarray, train_paths: list[str], downsample: int = 1, chunk: int = 16,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(distance, index)`` of each query's nearest training volume, ``d = 1 − r``; training volumes streamed."""
    best_d = np.full(len(queries), np.inf)
    best_i = np.full(len(queries), -1, dtype=np.int64)
    for s in tqdm(range(0, len(train_paths), chunk), desc="nearest training volume", unit="chunk",
                  disable=not progress):
        t = np.stack([standardised_vector(load_prepared_volume(p), downsample) for p in train_paths[s:s + chunk]])
        d = 1.0 - (queries.astype(np.float64) @ t.T.astype(np.float64))
        j = d.argmin(1)
        better = d[np.arange(len(d)), j] < best_d
        best_d[better] = d[np.arange(len(d)), j][better]
        best_i[better] = j[better] + s
    return np.maximum(best_d, 0.0), best_i


def nearest_euclidean(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distance, index)`` of each query's nearest reference row (e.g. latent means), Euclidean."""
    q, r = queries.reshape(len(queries), -1).astype(np.float64), reference.reshape(len(reference), -1)
    d2 = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2 * q @ r.T.astype(np.float64)
    j = d2.argmin(1)
    return np.sqrt(np.maximum(d2[np.arange(len(q)), j], 0)), j


def data_copying_z(d_heldout: np.ndarray, d_synthetic: np.ndarray) -> float:
    """Meehan et al.'s Z_U: Mann–Whitney U (synthetic > held-out) as a z-score; negative means copying."""
    m, n = len(d_synthetic), len(d_heldout)
    u = mannwhitneyu(d_synthetic, d_heldout, alternative="two-sided").statistic
    return float((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))


def audit(d_synthetic: np.ndarray, nn_synthetic: np.ndarray, d_heldout: np.ndarray, synthetic_ids: list[str],
          train_ids: list[str], percentile: float = 5.0, copy_ratio: float = 0.5) -> dict:
    """The memorization summary of nearest-training distances of synthetic and held-out real volumes.

    Keys (see the module docstring): ``threshold``, ``percentile``, ``copy_threshold``, ``copy_ratio``,
    ``n_copies``, ``copies``, ``flagged_share`` (an `Interval` dict: the share with its Wilson 95 % bounds),
    ``n_synthetic``, ``n_heldout``, ``z_u``, ``median_synthetic``, ``median_heldout``, ``median_ratio``,
    ``distinct_training_neighbours``, ``flagged``, ``closest``; or ``{"skipped": reason}``.
    """
    if len(d_heldout) < 2 or len(d_synthetic) < 1:
        return {"skipped": f"needs >= 2 held-out and >= 1 synthetic volumes, have {len(d_heldout)} and "
                           f"{len(d_synthetic)}"}
    threshold = float(np.percentile(d_heldout, percentile))
    flagged = d_synthetic < threshold
    copy_threshold = copy_ratio * float(np.min(d_heldout))
    copies = d_synthetic < copy_threshold
    order = np.argsort(d_synthetic)
    return {
        "threshold": threshold, "percentile": percentile,
        "copy_threshold": copy_threshold, "copy_ratio": copy_ratio, "n_copies": int(copies.sum()),
        "copies": [{"sample": synthetic_ids[i], "nearest_training": train_ids[nn_synthetic[i]],
                    "distance": float(d_synthetic[i])} for i in order if copies[i]],
        "flagged_share": wilson_interval(int(flagged.sum()), len(flagged)).to_dict(),
        "n_synthetic": len(d_synthetic), "n_heldout": len(d_heldout),
        "z_u": data_copying_z(d_heldout, d_synthetic),
        "median_synthetic": float(np.median(d_synthetic)), "median_heldout": float(np.median(d_heldout)),
        "median_ratio": float(np.median(d_synthetic) / np.median(d_heldout)) if np.median(d_heldout) > 0 else None,
        "distinct_training_neighbours": len(set(nn_synthetic.tolist())),
        "flagged": [{"sample": synthetic_ids[i], "nearest_training": train_ids[nn_synthetic[i]],
                     "distance": float(d_synthetic[i])} for i in order if flagged[i]],
        "closest": [{"sample": synthetic_ids[i], "nearest_training": train_ids[nn_synthetic[i]],
                     "distance": float(d_synthetic[i])} for i in order[:10]],
    }


def closest_pairs_figure(pairs: list[tuple[str, str, str, str, float]], path: str | Path) -> Path:
    """Rows of (synthetic, nearest training) volumes: ``pairs = [(sample_id, sample_path, train_id, train_path,
    distance), ...]``, closest first."""
    rows = []
    for sample, sample_path, train, train_path, d in pairs:
        rows.append((f"{sample}\nd={d:.4f}", [("synthetic", load_prepared_volume(sample_path), {}),
                                              (f"nearest training: {train}", load_prepared_volume(train_path), {})]))
    return comparison_figure(rows, path, title="closest synthetic/training pairs (d = 1 - correlation)")
