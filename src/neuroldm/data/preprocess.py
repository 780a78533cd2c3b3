"""Bring one volume onto the model grid: RAS orientation, target spacing, brain-centred crop/pad, intensity.

The steps, each a small function so that the synthetic volumes of later stages can go through exactly the
same normalisation as the real ones:

1. `to_ras` — reorder/flip voxel axes so they run left→Right, posterior→Anterior, inferior→Superior
   (nibabel's closest canonical orientation; exact, no interpolation).
2. `resample` — onto an axis-aligned grid with the target spacing covering the volume's field of view
   (trilinear or cubic B-spline through `scipy.ndimage.map_coordinates`; oblique inputs are de-rotated here),
   after a Gaussian anti-aliasing filter along every axis that is being downsampled (`anti_alias_sigmas`).
3. `foreground_mask` — brain (or head) mask by intensity threshold, largest connected component, holes filled.
4. `crop_or_pad` — the grid is centred on the mask's bounding box; voxels outside the volume are background.
5. `normalise` — z-score with the mask's mean/std, or percentile scaling to [0, 1].

The affine follows every step, so the output affine maps each output voxel to its true position in mm.
"""

from __future__ import annotations

import numpy as np
import nibabel as nib
from scipy import ndimage

from neuroldm.config import PrepareConfig


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest-canonical (RAS+) voxel order: only axis permutations and flips, so the data are unchanged."""
    ornt = nib.orientations.io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return data, affine
    out = nib.orientations.apply_orientation(data, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    return np.ascontiguousarray(out), new_affine


def _is_axis_aligned(affine: np.ndarray, tol: float = 1e-6) -> bool:
    m = affine[:3, :3]
    return bool(np.all(np.abs(m - np.diag(np.diag(m))) < tol) and np.all(np.diag(m) > 0))


def anti_alias_sigmas(affine: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Gaussian sigma (input voxels) per input axis before downsampling to `spacing` mm: ``max(0, (f − 1) / 2)``
    for a downsampling factor f, the convention of scikit-image's ``resize(anti_aliasing=True)``.

    Point-sampling a finer image on a coarser grid without it aliases detail finer than the new voxel into
    spurious high-frequency texture (a 2 mm image sampled at 4 mm keeps every other voxel's noise and edges
    unaveraged), which no scanner acquiring at the coarse resolution would produce. For an oblique input, each
    input axis is compared with the output spacing of the world axis it points along most.
    """
    cols = affine[:3, :3]
    voxel = np.linalg.norm(cols, axis=0)
    target = np.asarray(spacing, dtype=np.float64)[np.abs(cols).argmax(axis=0)]
    return np.maximum(0.0, (target / voxel - 1.0) / 2.0)


def resample(data: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float],
             order: int = 1, anti_alias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Resample an RAS volume onto an axis-aligned grid of `spacing` mm covering the same field of view.

    The output grid starts at the world position of the input's first voxel centre and extends over the
    input's bounding box, so twins that differ only in voxel order (RAS vs LAS) get the same grid. With
    `anti_alias`, axes that are downsampled are first smoothed (`anti_alias_sigmas`).
    """
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if _is_axis_aligned(affine) and np.allclose(np.diag(affine)[:3], spacing_arr, atol=1e-6):
        return data.astype(np.float32, copy=False), affine
    sigmas = anti_alias_sigmas(affine, spacing_arr) if anti_alias else np.zeros(3)
    if sigmas.max() > 0:
        data = ndimage.gaussian_filter(data.astype(np.float32, copy=False), sigmas, mode="nearest")
    # world bounding box of the voxel centres
    corners = np.array([[i, j, k] for i in (0, data.shape[0] - 1) for j in (0, data.shape[1] - 1)
                        for k in (0, data.shape[2] - 1)], dtype=np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    shape = tuple(int(n) for n in np.floor((hi - lo) / spacing_arr + 1e-6) + 1)
    out_affine = np.eye(4)
    out_affine[:3, :3] = np.diag(spacing_arr)
    out_affine[:3, 3] = lo
    # output voxel -> world -> input voxel, as one affine
    vox2vox = np.linalg.inv(affine) @ out_affine
    out = ndimage.affine_transform(data, vox2vox[:3, :3], offset=vox2vox[:3, 3], output_shape=shape,
                                   order=order, mode="constant", cval=0.0, prefilter=order > 1,
                                   output=np.float32)
    return out, out_affine


def foreground_mask(data: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels above `threshold` × the 99th percentile of positive intensities; largest component; holes filled."""
    positive = data[data > 0]
    if positive.size == 0:
        return np.zeros(data.shape, dtype=bool)
    mask = data > threshold * np.percentile(positive, 99)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive (start, stop-1) voxel indices of the mask's bounding box, or None for an empty mask."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    return idx.min(axis=0), idx.max(axis=0)


def crop_or_pad(data: np.ndarray, affine: np.ndarray, grid: tuple[int, int, int], center: np.ndarray,
                fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The `grid`-shaped window centred on voxel `center`; outside the input is `fill`. Affine shifted to match."""
    start = np.round(np.asarray(center, dtype=np.float64) - (np.asarray(grid) - 1) / 2).astype(int)
    out = np.full(grid, fill, dtype=data.dtype)
    src, dst = [], []
    for axis in range(3):
        s0 = max(start[axis], 0)
        s1 = min(start[axis] + grid[axis], data.shape[axis])
        if s1 <= s0:
            return out, _shifted(affine, start)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - start[axis], s1 - start[axis]))
    out[tuple(dst)] = data[tuple(src)]
    return out, _shifted(affine, start)


def _shifted(affine: np.ndarray, start: np.ndarray) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = start
    return affine @ shift


def normalise(data: np.ndarray, mask: np.ndarray, method: str,
              percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """``zscore``: (x − mean) / std over the mask. ``percentile``: the mask's percentiles map to [0, 1], clipped."""
    inside = data[mask] if mask.any() else data.ravel()
    if method == "zscore":
        std = float(inside.std())
        return ((data - float(inside.mean())) / (std if std > 0 else 1.0)).astype(np.float32)
    if method == "percentile":
        lo, hi = np.percentile(inside, percentiles)
        return np.clip((data - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown normalisation {method!r}")


def prepare_volume(data: np.ndarray, affine: np.ndarray, cfg: PrepareConfig) -> dict:
    """Run every step; returns ``{"image", "mask", "affine", "brain_extent_vox", "cropped_vox"}``.

    ``image`` is float32 on ``cfg.grid``; ``cropped_vox`` counts mask voxels that fell outside the grid
    (0 when the whole brain fits).
    """
    data, affine = to_ras(data, affine)
    order = 1 if cfg.interpolation == "linear" else 3
    data, affine = resample(data, affine, cfg.spacing, order=order, anti_alias=cfg.anti_alias)
    mask = foreground_mask(data, cfg.mask_threshold)
    box = bounding_box(mask)
    if box is None:
        raise ValueError("empty foreground mask")
    center = (box[0] + box[1]) / 2
    background = float(np.percentile(data[~mask], 50)) if (~mask).any() else 0.0
    image, out_affine = crop_or_pad(data, affine, cfg.grid, center, fill=background)
    out_mask, _ = crop_or_pad(mask, affine, cfg.grid, center, fill=False)
    image = normalise(image, out_mask, cfg.normalisation, cfg.percentiles)
    return {"image": image, "mask": out_mask, "affine": out_affine,
            "brain_extent_vox": tuple(int(n) for n in box[1] - box[0] + 1),
            "cropped_vox": int(mask.sum() - out_mask.sum())}
