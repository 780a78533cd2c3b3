"""SSIM with a separable Gaussian window: MONAI's formula at a fraction of its cost, for use as a training loss.

MONAI's `SSIMMetric`/`SSIMLoss` filter the five SSIM statistics (x, y, x², y², xy) with a full ``k×k×k`` Gaussian
kernel (1331 taps for k = 11). A Gaussian kernel is the outer product of three 1D Gaussians, so three 1D
"valid" convolutions give the same maps with ``3k`` taps: measured on 2 CPU cores, a batch of two 40×48×40
volumes took 1.0 s forward + backward with MONAI's loss, as long as the autoencoder's own step. Values equal
MONAI's to float rounding (tested); MONAI's metric stays the reference for reported numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1D Gaussian of odd `size` taps centred on 0 (MONAI's ``gaussian_1d``)."""
    d = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (d / sigma) ** 2)
    return g / g.sum()


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float, win_size: int = 11, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM map of ``(B, C, D, H, W)`` volumes over the valid positions of the window (no padding)."""
    if x.shape != y.shape or x.dim() != 5:
        raise ValueError(f"expected two (B, C, D, H, W) volumes of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    b, c = x.shape[:2]
    g = gaussian_window(win_size, sigma, x.dtype, x.device)
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5C, D, H, W)
    n = stats.shape[1]
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = win_size
        stats = F.conv3d(stats, g.view(1, 1, *shape).expand(n, 1, *shape), groups=n)
    mu_x, mu_y, xx, yy, xy = stats.split(c, dim=1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    sx, sy, sxy = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)) * ((2 * sxy + c2) / (sx + sy + c2))


def ssim_loss(x: torch.Tensor, y: torch.Tensor, data_range: float, win_size: int = 11,
              sigma: float = 1.5) -> torch.Tensor:
    """``1 − mean SSIM`` over the batch (MONAI's `SSIMLoss` value), differentiable in both inputs."""
    return 1 - ssim_map(x, y, data_range, win_size, sigma).mean()
