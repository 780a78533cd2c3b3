"""The prepared-cohort manifest: one CSV row per input image, written atomically beside the cached volumes.

Columns (``status == "ok"`` rows are usable; ``invalid`` rows say why in ``reason``):

- ``subject``, ``session``, ``label`` (class index), ``label_name``, ``raw_label``, covariates
- ``split`` (train / val / test), ``fold`` (0..k-1 for non-test subjects, -1 otherwise)
- ``path``: prepared volume, relative to the manifest's folder (NIfTI, float32, uncompressed so it memory-maps)
- ``roi_path``: the subject's ROI label mask on the same grid, when the input had one (demo cohort)
- ``shape``, ``spacing``: of the prepared grid, e.g. ``112x136x112`` and ``1.5x1.5x1.5``
- ``source``, ``source_sha256``: the input file (relative to the manifest's folder when both share a parent folder, as
  a run's cohort/ and prepared/ do) and its content hash; ``prep_hash``: hash of the preparation
  settings; together they decide whether a cached volume is up to date
- ``data_sha256``: hash of the prepared array, used to find identical images under different subjects
- ``cropped_vox``: foreground voxels that fell outside the grid (0 when the whole brain fits)
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from neuroldm.data.splits import check_split_leakage
from neuroldm.errors import InputError
from neuroldm.io import ALIGNED_ANAT, atomic_path, read_frame_code
from neuroldm.runs import PreparedDir

MANIFEST_COLUMNS = ["subject", "session", "label", "label_name", "raw_label", "split", "fold", "path", "roi_path",
                    "shape", "spacing", "source", "source_sha256", "prep_hash", "data_sha256", "cropped_vox",
                    "status", "reason"]


def volume_affine(path: str | Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).affine, dtype=np.float64)


def reference_affine(rows: pd.DataFrame) -> np.ndarray:
    """The affine for volumes that belong to no subject (synthetic ones): the mean of the rows' affines.

    Prepared volumes share spacing and axes (RAS, axis-aligned) and differ only by where the grid was centred
    on each brain, so the mean is a valid affine placing the grid where the cohort's brains are on average.
    """
    if rows.empty:
        raise InputError("manifest", "no volumes to take a reference affine from")
    return np.mean([volume_affine(p) for p in rows["path"]], axis=0)


def reference_frame_code(rows: pd.DataFrame) -> int:
    """The NIfTI frame code (`neuroldm.io`) of `reference_affine`: the one the rows' volumes share, else
    `ALIGNED_ANAT` (volumes from inputs in different worlds have no common one to name)."""
    codes = {read_frame_code(p) for p in rows["path"]}
    return codes.pop() if len(codes) == 1 else ALIGNED_ANAT


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    with atomic_path(path) as tmp:
        df[MANIFEST_COLUMNS + extra].to_csv(tmp, index=False)


def read_manifest(path: str | Path, *, usable_only: bool = True) -> pd.DataFrame:
    """Read a manifest (a file, or the folder holding ``manifest.csv``); paths become absolute.

    With `usable_only`, only ``status == "ok"`` rows are returned, and the splits are checked for leakage.
    """
    path = Path(path)
    if path.is_dir():
        path = PreparedDir(path).manifest
    if not path.exists():
        raise InputError(path, "manifest not found; run `neuroldm prepare` first")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, f"not a neuroldm manifest (missing columns {', '.join(missing)})")
    df["label"] = df["label"].astype(int)
    df["fold"] = df["fold"].replace("", "-1").astype(int)
    for col in ("path", "roi_path"):
        df[col] = [str((path.parent / p).resolve()) if p else "" for p in df[col]]
    if usable_only:
        df = df[df["status"] == "ok"].reset_index(drop=True)
        check_split_leakage(df)
    return df
