"""Full-reference image quality of 3D volumes: PSNR, SSIM and MS-SSIM, via MONAI's metrics.

All functions take a test volume `x` and the real (reference) volume `real`, both ``(B, 1, D, H, W)``, and
return one value per volume, shape ``(B,)``.

Data range: each volume's ``max − min`` of the *real* volume (z-scored MRI has no fixed range, and the range of
the reference is what the errors are measured against). It sets PSNR's peak and SSIM's constants
``C1 = (0.01·range)²``, ``C2 = (0.03·range)²`` (Wang et al. 2004).

SSIM: Gaussian window, sigma 1.5 voxels, 11 voxels wide (cut to the largest odd size the volume holds), only
where the window fits inside the volume (MONAI's valid convolution).

MS-SSIM (Wang, Simoncelli & Bovik 2003): the standard 5 scales with an 11-voxel window need 16·11 = 176 voxels
per axis; 3D brain grids are smaller. Rule (`ms_ssim_settings`): take the most scales n ≤ 5 for which a window
of at least 7 voxels (±2 sigma) still fits in the coarsest scale (``min_axis // 2^(n−1) ≥ k``, and MONAI's own
check ``min_axis // (n−1)² > k − 1``), then the largest odd window k ≤ 11 that does; the weights are the first n of
Wang's five (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), renormalised to sum to 1. This gives 3 scales with k = 11
on the demo grid 52×64×56 and 5 scales with k = 7 on the paper grid 112×136×112.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first
SSIM_SIGMA = 1.5
MIN_MS_SSIM_KERNEL = 7


def _check(x: torch.Tensor, real: torch.Tensor) -> None:
    if x.shape != real.shape or x.dim() != 5:
        raise ValueError(f"expected two (B, C, D, H, W) volumes of one shape, got {tuple(x.shape)} and "
                         f"{tuple(real.shape)}")


def data_range(real: torch.Tensor) -> torch.Tensor:
    """``max − min`` of each real volume, ``(B,)``; a constant volume has no range and is refused."""
    flat = real.detach().flatten(1).float()
    rng = flat.amax(1) - flat.amin(1)
    if (rng <= 0).any():
        raise ValueError("a reference volume is constant: its data range is 0")
    return rng


def psnr(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10·log10(range² / MSE)``, per volume ``(B,)``; inf when equal."""
    _check(x, real)
    rng = data_range(real)
    return torch.cat([PSNRMetric(max_val=float(r))(x[i:i + 1].float(), real[i:i + 1].float()).flatten()
                      for i, r in enumerate(rng)])


def _largest_odd_at_most(n: int) -> int:
    return n if n % 2 else n - 1


def ssim(x: torch.Tensor, real: torch.Tensor, win_size: int = 11) -> torch.Tensor:
    """Mean structural similarity per volume ``(B,)`` with a Gaussian window (sigma 1.5); 1 when equal."""
    _check(x, real)
    rng = data_range(real)
    k = max(1, _largest_odd_at_most(min(win_size, *x.shape[2:])))
    return torch.cat([SSIMMetric(spatial_dims=3, data_range=float(r), win_size=k, kernel_sigma=SSIM_SIGMA)(
        x[i:i + 1].float(), real[i:i + 1].float()).flatten() for i, r in enumerate(rng)])


def ms_ssim_settings(shape: Sequence[int]) -> tuple[int, tuple[float, ...]]:
    """``(kernel_size, weights)`` of MS-SSIM for a volume of spatial `shape` (see the module docstring)."""
    m = min(int(s) for s in shape)
    for n in range(len(MS_SSIM_WEIGHTS), 1, -1):
        # largest window allowed by the coarsest scale's size and by MONAI's size check (which divides by (n-1)²)
        limit = min(11, m // 2 ** (n - 1), m // (n - 1) ** 2)
        k = _largest_odd_at_most(limit)
        if k >= MIN_MS_SSIM_KERNEL:
            w = MS_SSIM_WEIGHTS[:n]
            return k, tuple(v / sum(w) for v in w)
    raise ValueError(f"volume {tuple(shape)} is too small for MS-SSIM: it needs at least "
                     f"{2 * MIN_MS_SSIM_KERNEL} voxels per axis for two scales")


def ms_ssim(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM per volume ``(B,)`` with the grid-dependent kernel and weights of `ms_ssim_settings`."""
    _check(x, real)
    rng = data_range(real)
    k, weights = ms_ssim_settings(x.shape[2:])
    return torch.cat([MultiScaleSSIMMetric(spatial_dims=3, data_range=float(r), kernel_size=k,
                                           kernel_sigma=SSIM_SIGMA, weights=weights)(
        x[i:i + 1].float(), real[i:i + 1].float()).flatten() for i, r in enumerate(rng)])
