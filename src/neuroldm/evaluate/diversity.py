"""Diversity and coverage: MS-SSIM over random pairs, KID (a polynomial-kernel MMD), precision/recall/density/coverage.

- **MS-SSIM diversity** (Odena et al. 2017; Pinaya et al. 2022 for 3D brains): the mean MS-SSIM of random pairs
  of distinct volumes *within* one set. Lower is more diverse; the target is the real set's value, not 0. Uses
  `neuroldm.metrics.image.ms_ssim` (MONAI, with its grid-dependent kernel rule).
- **KID** (Bińkowski et al. 2018): the unbiased estimate of MMD² (Gretton et al. 2012) with the cubic polynomial
  kernel ``k(x, y) = (xᵀy / F + 1)³`` on features, averaged over random subsets; unlike FID it is unbiased at
  small N. MONAI's ``MMDMetric`` has only the linear kernel (a difference of means), so the kernel is written here.
- **Precision / recall** (Kynkäänniemi et al. 2019) and **density / coverage** (Naeem et al. 2020) on features,
  with k-nearest-neighbour balls: real sample i's radius ``r_i`` is the distance to its k-th nearest other real
  sample (fake radii likewise for recall).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.evaluate.stats import mean_summary
from neuroldm.metrics.image import ms_ssim


def random_pairs(n: int, n_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to `n_pairs` distinct unordered pairs ``i < j`` of ``range(n)`` (all of them when there are fewer)."""
    total = n * (n - 1) // 2
    if total == 0:
        return []
    chosen = rng.choice(total, size=min(n_pairs, total), replace=False)
    rows = np.triu_indices(n, k=1)
    return [(int(rows[0][c]), int(rows[1][c])) for c in sorted(chosen)]


def ms_ssim_diversity(paths: list, n_pairs: int, seed: int = 0, progress: bool = False,
                      desc: str = "MS-SSIM pairs", load: Callable[[object], np.ndarray] = load_prepared_volume) -> dict:
    """Mean MS-SSIM of random pairs of distinct volumes of `paths`: `mean_summary` (value, normal 95 % interval,
    N pairs, std) plus ``n_volumes``. `load` reads one entry of `paths` (a prepared NIfTI by default)."""
    pairs = random_pairs(len(paths), n_pairs, np.random.default_rng(seed))
    if not pairs:
        return {"skipped": f"needs at least 2 volumes, have {len(paths)}"}
    cache: dict[int, torch.Tensor] = {}

    def vol(i: int) -> torch.Tensor:
        if i not in cache:
            cache[i] = torch.from_numpy(load(paths[i]))[None, None]
        return cache[i]

    values = [float(ms_ssim(vol(i), vol(j))[0]) for i, j in tqdm(pairs, desc=desc, unit="pair", disable=not progress)]
    return mean_summary(values) | {"n_volumes": len(paths)}


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> dict:
    """Kernel inception distance: unbiased MMD² (cubic kernel) over random subsets; `mean_summary` of the subsets
    (value, normal 95 % interval, N subsets, std) plus ``subset_size``, ``n_a``, ``n_b``."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        return {"skipped": f"needs at least 2 samples per set, have {len(a)} and {len(b)}"}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        # Gretton et al. 2012, Eq. 3: off-diagonal means of k(x, x') and k(y, y') minus twice the mean of k(x, y)
        values.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return mean_summary(values) | {"subset_size": m, "n_a": len(a), "n_b": len(b)}


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(np.maximum(_sq_dist(x, x), 0))
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _sq_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Precision, recall (Kynkäänniemi 2019), density and coverage (Naeem 2020) of `fake` against `real` features.

    ``precision``: share of fake samples inside at least one real k-NN ball; ``recall``: share of real samples
    inside at least one fake k-NN ball; ``density``: mean number of real balls holding a fake sample, divided by
    k; ``coverage``: share of real balls holding at least one fake sample. Needs more than k samples per set.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if min(len(real), len(fake)) <= k:
        return {"skipped": f"needs more than k={k} samples per set, have {len(real)} real and {len(fake)} fake"}
    r_real, r_fake = _kth_neighbour_radius(real, k), _kth_neighbour_radius(fake, k)
    d = np.sqrt(np.maximum(_sq_dist(real, fake), 0))  # (N_real, N_fake)
    inside_real = d <= r_real[:, None]  # fake j within real i's ball
    inside_fake = d <= r_fake[None, :]  # real i within fake j's ball
    return {"precision": float(inside_real.any(0).mean()), "recall": float(inside_fake.any(1).mean()),
            "density": float(inside_real.sum(0).mean() / k), "coverage": float(inside_real.any(1).mean()),
            "k": k, "n_real": len(real), "n_fake": len(fake)}
