"""Load one T1 volume and check it is usable; every problem is an `InputError` naming the file.

Checks, in order: the file exists; it is a NIfTI image (not another format nibabel reads, not garbage); its
data reads completely (a truncated ``.nii.gz`` fails here, not halfway through training); it is 3D (a 4D file
with a single volume is accepted and squeezed); its affine is finite and invertible; no voxel is NaN/Inf; it is
not constant.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from neuroldm.errors import InputError

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, ImageFileError, HeaderDataError)


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(data, affine)``: float32 array ``(X, Y, Z)`` and the 4×4 voxel→mm (RAS+) affine."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a NIfTI file")
    try:
        img = nib.load(path)
    except _READ_ERRORS as e:
        raise InputError(path, f"not a readable NIfTI image ({_short(e)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI image (read as {type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        kind = {2: "a 2D image", 4: f"a 4D image with {shape[-1] if len(shape) == 4 else '?'} volumes"}.get(
            len(shape), f"a {len(shape)}D image")
        raise InputError(path, f"{kind} (shape {'x'.join(map(str, img.shape))}); a single 3D volume is expected")
    if min(shape) < 2:
        raise InputError(path, f"degenerate shape {'x'.join(map(str, shape))}; a 3D volume is expected")
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(affine, path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except _READ_ERRORS as e:
        raise InputError(path, f"unreadable or truncated image data ({_short(e)})") from None
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InputError(path, f"{bad} voxel{'s' if bad > 1 else ''} are NaN or Inf")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(path, f"constant image (every voxel is {lo:g})")
    return data, affine


def _check_affine(affine: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(affine)):
        raise InputError(path, "degenerate affine (non-finite values)")
    m = affine[:3, :3]
    zooms = np.linalg.norm(m, axis=0)
    if np.any(zooms < 1e-6) or abs(np.linalg.det(m)) < 1e-6 * float(np.prod(zooms)):
        raise InputError(path, "degenerate affine (not invertible: zero or collinear axes)")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."
