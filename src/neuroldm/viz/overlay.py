"""Attribution and difference maps over the scan they explain (nilearn's stat-map plot), saved as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from nilearn import plotting  # noqa: E402

from neuroldm.io import atomic_path  # noqa: E402


def overlay_figure(attribution: np.ndarray, background: np.ndarray, affine: np.ndarray, path: Path, title: str,
                   roi: np.ndarray | None = None, signed: bool = False) -> Path:
    """|attribution| above its 99th percentile over the scan (nilearn), with the ROI outlined, as a PNG.

    With `signed` (a difference map), the map keeps its sign on a diverging scale (blue darker, red brighter), shown
    where |map| is above its 99th percentile."""
    a = np.abs(attribution).astype(np.float32)
    thr = float(np.percentile(a, 99))
    cut = None
    if roi is not None and (roi > 0).any():  # through the ROI label (e.g. hippocampus side) with the most mass
        labels = [v for v in np.unique(roi) if v > 0]
        best = max(labels, key=lambda v: float(a[roi == v].sum()))
        cut = nib.affines.apply_affine(affine, np.argwhere(roi == best).mean(0))
    shown = attribution.astype(np.float32) if signed else a
    display = plotting.plot_stat_map(nib.Nifti1Image(shown, affine), bg_img=nib.Nifti1Image(background, affine),
                                     threshold=thr, display_mode="ortho", cut_coords=cut,
                                     cmap="cold_hot" if signed else "hot", symmetric_cbar=signed, draw_cross=False,
                                     title=title, annotate=True)
    if roi is not None and (roi > 0).any():
        display.add_contours(nib.Nifti1Image((roi > 0).astype(np.float32), affine), levels=[0.5], colors="c",
                             linewidths=0.8)
    with atomic_path(path) as tmp:
        display.savefig(str(tmp), dpi=100)
    display.close()
    return path
