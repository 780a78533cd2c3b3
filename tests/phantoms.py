"""Small synthetic head phantoms written as NIfTI, and BIDS cohorts made of them.

The phantom is asymmetric on purpose (a dark 'ventricle' on the left, a bright marker at a known world
position) so a flipped or permuted axis cannot go unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

MARKER_MM = np.array([20.0, -12.0, 8.0])  # world position of the bright marker


def phantom(shape=(80, 96, 80), spacing=2.0, seed=0, scale=1.0, marker=True):
    """(data, affine): an ellipsoidal 'head' centred on the world origin, RAS axes, `spacing` mm voxels."""
    rng = np.random.default_rng(seed)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    xyz = (ijk @ affine[:3, :3].T + affine[:3, 3]).T.reshape(3, *shape)
    x, y, z = xyz
    data = np.zeros(shape, np.float32)
    data[(x / 66) ** 2 + (y / 80) ** 2 + (z / 60) ** 2 < 1] = 100.0
    data[((x + 15) / 10) ** 2 + ((y - 5) / 25) ** 2 + (z / 12) ** 2 < 1] = 30.0  # left 'ventricle'
    if marker:
        data[np.linalg.norm(xyz - MARKER_MM[:, None, None, None], axis=0) < 3.0] = 200.0
    data += rng.normal(0, 2.0, shape).astype(np.float32)
    return (np.abs(data) * scale).astype(np.float32), affine


def save(path: Path, data, affine) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def write_bids(root: Path, groups: dict[str, str], sessions: dict[str, list[str]] | None = None,
               extra_columns: dict[str, dict[str, str]] | None = None) -> Path:
    """A BIDS folder: participants.tsv with `group` and one phantom T1w per subject (and session)."""
    root.mkdir(parents=True, exist_ok=True)
    cols = ["participant_id", "group", *(extra_columns or {})]
    lines = ["\t".join(cols)]
    for k, (sub, group) in enumerate(sorted(groups.items())):
        lines.append("\t".join([sub, group, *[(extra_columns or {})[c][sub] for c in (extra_columns or {})]]))
        for ses in (sessions or {}).get(sub, [""]):
            folder = root / sub / ses / "anat" if ses else root / sub / "anat"
            name = f"{sub}_{ses}_T1w.nii.gz" if ses else f"{sub}_T1w.nii.gz"
            save(folder / name, *phantom(seed=k * 10 + len(ses), scale=1.0 + 0.05 * k))
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return root
