"""Orthogonal-slice figures of RAS volumes (sagittal, coronal, axial through a chosen point), saved as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from neuroldm.io import atomic_path  # noqa: E402

VIEWS = ("sagittal", "coronal", "axial")


def orthogonal_slices(volume: np.ndarray, center: tuple[int, int, int] | None = None) -> list[np.ndarray]:
    """The three slices through `center` (default: the middle) of a (X, Y, Z) RAS volume, oriented for display
    (anterior right in sagittal, superior up everywhere)."""
    c = center or tuple(s // 2 for s in volume.shape)
    return [volume[c[0]].T, volume[:, c[1]].T, volume[:, :, c[2]].T]


def comparison_figure(rows: list[tuple[str, list[tuple[str, np.ndarray, dict]]]], path: str | Path,
                      title: str | None = None) -> Path:
    """One figure row per subject; each row holds named volumes drawn as three orthogonal slices each.

    ``rows = [(row_label, [(name, volume, imshow_kwargs), ...]), ...]``.
    """
    n_cols = 3 * max(len(vols) for _, vols in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.6 * n_cols, 1.9 * len(rows)), squeeze=False)
    for r, (label, vols) in enumerate(rows):
        for v, (name, volume, kwargs) in enumerate(vols):
            for k, sl in enumerate(orthogonal_slices(volume)):
                ax = axes[r, 3 * v + k]
                ax.imshow(sl, origin="lower", **({"cmap": "gray"} | kwargs))
                if r == 0:
                    ax.set_title(f"{name}\n{VIEWS[k]}", fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
