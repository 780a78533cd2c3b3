"""What one counterfactual changed, measured against the input's reconstruction (the no-change reference).

All maps are ``(D, H, W)`` arrays on one grid. The ROI is a label mask as the demo cohort writes it (0 outside,
`SIDES`: 1 left, 2 right hippocampus); the side measures need both labels and are NaN otherwise.

- ``enrichment``: the ROI enrichment of the difference map, exactly as saliency's of an attribution map
  (`neuroldm.classify.saliency.roi_enrichment`): the share of |difference| mass in the top 1 % voxels that falls in
  the ROI, divided by the ROI's share of the grid (1 = chance).
- ``ssim_outside_roi`` / ``psnr_outside_roi``: SSIM (Gaussian window, sigma 1.5, as `neuroldm.metrics.image.ssim`)
  averaged over the windows centred outside the ROI, and PSNR over the voxels outside it; both with the
  reconstruction's data range. What the edit did to the rest of the brain.
- ``lateralisation``: the share of the |difference| mass inside the ROI that lies in the side holding more of it
  (0.5: both sides alike; 1: one side only). A unilateral lesion made where there was none should be one-sided.
- ``lesion_change`` / ``contralateral_change``: the mean signed difference in the lesion-side (and the other)
  hippocampus. On a TLE subject edited to HC, a positive lesion change brightens the sclerotic, darker
  hippocampus: the lesion signal is reduced.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from neuroldm.classify.saliency import roi_enrichment
from neuroldm.metrics.image import SSIM_SIGMA
from neuroldm.metrics.ssim_fast import ssim_map

SIDES = {"left": 1, "right": 2}  # ROI mask labels
SSIM_WINDOW = 11  # voxels, as neuroldm.metrics.image.ssim (cut to the largest odd size the grid holds)


def _window(shape) -> int:
    k = min(SSIM_WINDOW, *shape)
    return k if k % 2 else k - 1


def ssim_outside_roi(x: np.ndarray, reference: np.ndarray, roi: np.ndarray | None) -> float:
    """Mean SSIM of `x` against `reference` over the windows whose centre is outside `roi` (all without one)."""
    k = _window(x.shape)
    a, b = (torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None, None] for v in (x, reference))
    data_range = float(reference.max() - reference.min())
    if data_range <= 0:
        raise ValueError("the reference volume is constant: its data range is 0")
    m = ssim_map(a, b, data_range, win_size=k, sigma=SSIM_SIGMA)[0, 0].numpy()  # valid window centres only
    if roi is None:
        return float(m.mean())
    r = (k - 1) // 2
    centres = np.asarray(roi)[r:r + m.shape[0], r:r + m.shape[1], r:r + m.shape[2]] > 0
    return float(m[~centres].mean())


def psnr_outside_roi(x: np.ndarray, reference: np.ndarray, roi: np.ndarray | None) -> float:
    """PSNR (dB) of `x` against `reference` over the voxels outside `roi`, with the reference's data range."""
    outside = np.ones(x.shape, bool) if roi is None else np.asarray(roi) == 0
    mse = float(np.mean((np.asarray(x, np.float64)[outside] - np.asarray(reference, np.float64)[outside]) ** 2))
    peak = float(reference.max() - reference.min())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def lateralisation(difference: np.ndarray, roi: np.ndarray) -> float:
    """The share of the ROI's |difference| mass on its heavier side (NaN without both sides or any change)."""
    mass = [float(np.abs(difference[roi == label]).sum()) for label in SIDES.values()]
    if min((roi == label).sum() for label in SIDES.values()) == 0 or sum(mass) == 0:
        return math.nan
    return max(mass) / sum(mass)


def lesion_label(roi: np.ndarray, side: str = "") -> tuple[int | None, str]:
    """The ROI label of the lesion side and how it was found: the subject's recorded ``side`` (``left`` or
    ``right``, e.g. a manifest covariate), else the smaller hippocampus (unilateral sclerosis shrinks it: the
    demo's atrophy removes 45-60 % of it). ``(None, reason)`` without both labels."""
    counts = {label: int((roi == label).sum()) for label in SIDES.values()}
    if min(counts.values()) == 0:
        return None, "the ROI mask does not hold both sides"
    if side.strip().lower() in SIDES:
        return SIDES[side.strip().lower()], "side column"
    return min(counts, key=counts.get), "smaller hippocampus"


def measure(counterfactual: np.ndarray, reconstruction: np.ndarray, roi: np.ndarray | None, *,
            top_fraction: float = 0.01, side: str = "") -> dict[str, float | str]:
    """Every measure of the module docstring for one counterfactual (NaN where the ROI cannot give it)."""
    difference = counterfactual - reconstruction
    out: dict[str, float | str] = {
        "ssim_outside_roi": ssim_outside_roi(counterfactual, reconstruction, roi),
        "psnr_outside_roi": psnr_outside_roi(counterfactual, reconstruction, roi),
        "mean_abs_difference": float(np.abs(difference).mean())}
    if roi is None or not (roi > 0).any():
        return out
    roi = np.asarray(roi).astype(np.int64)
    out["enrichment"] = roi_enrichment(difference, roi, top_fraction)["enrichment"]
    out["lateralisation"] = lateralisation(difference, roi)
    label, how = lesion_label(roi, side)
    if label is not None:
        other = next(v for v in SIDES.values() if v != label)
        out.update(lesion_change=float(difference[roi == label].mean()),
                   contralateral_change=float(difference[roi == other].mean()), lesion_side_from=how)
    return out
