"""``neuroldm prepare``: validate every input, bring it onto the model grid, cache it, split by subject.

The run is safe to interrupt and to repeat:
- cached volumes are named by a key of (input content, preparation settings), so a new run never overwrites a
  file that an existing manifest points to, and an up-to-date volume is reused, not recomputed;
- the manifest is written atomically at the end, and only then are cached files that no manifest row uses
  deleted; a run that stops on bad input leaves the previous manifest and its files as they were.
Bad inputs are collected over the whole cohort and reported together, one line each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from neuroldm.config import Config, PrepareConfig, save_config
from neuroldm.data.cohort import NIFTI_EXTENSIONS, bids_entities, read_cohort
from neuroldm.data.manifest import MANIFEST_COLUMNS, write_manifest
from neuroldm.data.preprocess import prepare_volume
from neuroldm.data.splits import assign_splits, check_split_leakage, duplicate_groups, find_duplicates
from neuroldm.data.volume import load_volume
from neuroldm.errors import InputError, InputErrors
from neuroldm.io import read_frame_code, save_nifti_atomic, sha256_array, sha256_file, write_json_atomic
from neuroldm.names import safe_name
from neuroldm.runs import PreparedDir

log = logging.getLogger(__name__)

# bump when the preparation code changes what it writes, so caches from older code are recomputed
PREPARE_VERSION = 2  # 2: NIfTI headers with units, the input's frame code and a descrip


def prepare_hash(cfg: PrepareConfig) -> str:
    payload = json.dumps({"version": PREPARE_VERSION, **cfg.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _fmt(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def check_field_of_view(shape, affine: np.ndarray, cfg: PrepareConfig, path: str) -> None:
    """Refuse a volume whose field of view is too small to hold a brain on the target grid."""
    extent = np.asarray(shape) * np.linalg.norm(affine[:3, :3], axis=0)  # mm along the voxel axes
    needed = np.sort(np.asarray(cfg.grid) * np.asarray(cfg.spacing) * cfg.min_fov_fraction)
    if np.any(np.sort(extent) < needed):
        raise InputError(path, f"field of view {_fmt(np.round(extent, 1).tolist())} mm is too small to hold a "
                               f"brain on the {_fmt(list(cfg.grid))} grid at {_fmt(list(cfg.spacing))} mm "
                               f"(needs at least {_fmt(np.round(needed, 1).tolist())} mm)")


ROI_SUFFIXES = ("dseg", "mask")  # BIDS derivatives: a discrete segmentation, or a binary mask


def _is_roi(name: str, roi: str, space: str | None) -> bool:
    """Whether a file name is a NIfTI ``*_dseg``/``*_mask`` of desc or label `roi` in `space` (None: no space)."""
    if not name.endswith(NIFTI_EXTENSIONS):
        return False
    entities, suffix = bids_entities(name)
    named = roi in (entities.get("desc"), entities.get("label"))
    return suffix in ROI_SUFFIXES and named and entities.get("space") == space


def find_roi(bids_root: Path, subject: str, session: str, image: str, roi: str | None) -> Path | None:
    """The subject's ROI label image under ``derivatives/*/<subject>/[<session>/]anat/``, if the dataset has one: a
    ``*_dseg`` or ``*_mask`` NIfTI whose ``desc`` or ``label`` entity is `roi` (``data.bids.roi``; None: no ROI) and
    whose ``space`` is that of the T1w `image` (both absent counts: a native-space mask for a native image).

    Several such files are an `InputError` naming them: which one is the ROI is not ours to guess.
    """
    base = bids_root / "derivatives"
    if roi is None or not base.is_dir():
        return None
    space = bids_entities(Path(image).name)[0].get("space")
    parts = [subject, session, "anat"] if session else [subject, "anat"]
    candidates = sorted(p for d in base.iterdir() if d.is_dir() for p in d.joinpath(*parts).glob(f"{subject}_*"))
    hits = [p for p in candidates if _is_roi(p.name, roi, space)]
    if len(hits) > 1:
        who = " ".join(filter(None, (subject, session)))
        raise InputError(base, f"{who}: {len(hits)} ROI images match data.bids.roi={roi!r}, "
                               f"{', '.join(str(h.relative_to(base)) for h in hits)}; keep one, or set data.bids.roi "
                               f"to the desc or label of the one to use")
    return hits[0] if hits else None


def _roi_on_grid(path: Path, out_affine: np.ndarray, grid) -> np.ndarray:
    """Nearest-neighbour resampling of a label mask onto the prepared grid, through world coordinates."""
    data, affine = load_volume(path)
    vox2vox = np.linalg.inv(affine) @ out_affine
    return ndimage.affine_transform(data, vox2vox[:3, :3], offset=vox2vox[:3, 3], output_shape=tuple(grid),
                                    order=0, mode="constant", cval=0).astype(np.uint8)


def prepare_file(path: str | Path, cfg: PrepareConfig) -> dict:
    """One image file on the model grid (`prepare_volume`'s dict); a file that cannot be read, whose field of view
    cannot hold the grid, or that has no foreground is an `InputError` naming it."""
    data, affine = load_volume(path)
    check_field_of_view(data.shape, affine, cfg, str(path))
    try:
        return prepare_volume(data, affine, cfg)
    except ValueError as e:  # e.g. no foreground after resampling
        raise InputError(path, f"cannot prepare: {e}") from None


def _process(task: dict) -> dict:
    """Prepare one image; returns the manifest fields to set (or a ``reason``). Runs in a worker process."""
    cfg = PrepareConfig.model_validate(task["prepare"])
    source, out_dir = task["source"], Path(task["out_dir"])
    try:
        result = prepare_file(source, cfg)
        frame = read_frame_code(source)  # the prepared volume lies in the input's world, resampled
    except InputError as e:
        return {"reason": e.problem, "reason_path": e.path}
    key = hashlib.sha256(f"{task['source_sha256']}{task['prep_hash']}".encode()).hexdigest()[:10]
    stem = safe_name("_".join(p for p in (task["subject"], task["session"]) if p))
    layout = PreparedDir(out_dir)
    rel = layout.volume(f"{stem}_{key}")
    save_nifti_atomic(result["image"], result["affine"], out_dir / rel, what="prepared T1w", frame=frame)
    fields = {"path": str(rel), "data_sha256": sha256_array(result["image"]), "cropped_vox": str(result["cropped_vox"])}
    if task.get("roi_source"):
        try:
            roi = _roi_on_grid(Path(task["roi_source"]), result["affine"], cfg.grid)
        except InputError as e:
            return {"reason": f"ROI mask: {e.problem}", "reason_path": e.path}
        roi_rel = layout.roi(f"{stem}_{key}")
        save_nifti_atomic(roi, result["affine"], out_dir / roi_rel, what="prepared ROI labels", frame=frame,
                          labels=True)
        fields["roi_path"] = str(roi_rel)
    return fields


def _previous(out_dir: Path) -> dict[str, dict]:
    """Rows of an existing manifest, by source path, for the up-to-date check."""
    manifest = PreparedDir(out_dir).manifest
    if not manifest.exists():
        return {}
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}
    if not set(MANIFEST_COLUMNS) <= set(df.columns):
        return {}
    return {str((out_dir / r["source"]).resolve()): r for r in df.to_dict("records") if r["status"] == "ok"}


def _portable_source(source: str, out_dir: Path) -> str:
    """`source` relative to the prepared folder when both lie in one folder (a run's cohort/ and prepared/), so a
    copied or moved run reuses its volumes; an input elsewhere keeps its absolute path."""
    if not source:
        return source
    home = out_dir.resolve().parent
    path = Path(source)
    return os.path.relpath(path, out_dir.resolve()) if path.is_relative_to(home) else source


def prepare_cohort(source: str | Path, out_dir: str | Path, cfg: Config, *, skip_invalid: bool = False,
                   workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Prepare a cohort into `out_dir`; returns the manifest (all rows, invalid ones included).

    Raises `InputErrors` listing every bad input (unless `skip_invalid`), before anything in `out_dir` that an
    earlier run wrote is touched.
    """
    t0 = time.perf_counter()
    source, out_dir = Path(source), Path(out_dir)
    df = read_cohort(source, cfg.data)
    prep_hash = prepare_hash(cfg.prepare)
    previous = _previous(out_dir)
    bids_root = source if source.is_dir() else None
    for col, default in (("path", ""), ("roi_path", ""), ("source_sha256", ""), ("data_sha256", ""),
                         ("cropped_vox", ""), ("prep_hash", prep_hash)):
        df[col] = default

    tasks, reused = [], 0
    for i, row in df.iterrows():
        if row["reason"]:
            continue
        if not os.path.isfile(row["source"]):
            df.loc[i, ["reason", "reason_path"]] = ["file not found", row["source"]]
            continue
        df.at[i, "source_sha256"] = digest = sha256_file(row["source"])
        old = previous.get(row["source"])
        try:
            roi = find_roi(bids_root, row["subject"], row["session"], row["source"], cfg.data.bids.roi) \
                if bids_root else None
        except InputError as e:
            df.loc[i, ["reason", "reason_path"]] = [e.problem, e.path]
            continue
        if (old and old["source_sha256"] == digest and old["prep_hash"] == prep_hash
                and (out_dir / old["path"]).is_file() and (not old["roi_path"] or (out_dir / old["roi_path"]).is_file())
                and bool(old["roi_path"]) == bool(roi)):
            for col in ("path", "roi_path", "data_sha256", "cropped_vox"):
                df.at[i, col] = old[col]
            reused += 1
            continue
        tasks.append((i, {"source": row["source"], "subject": row["subject"], "session": row["session"],
                          "source_sha256": digest, "prep_hash": prep_hash, "out_dir": str(out_dir),
                          "prepare": cfg.prepare.model_dump(mode="json"),
                          "roi_source": str(roi) if roi else ""}))

    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(tasks), desc="prepare", unit="vol", disable=not progress or not tasks)
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for (i, _), fields in zip(tasks, pool.map(_process, [t for _, t in tasks])):
                _apply(df, i, fields)
                bar.update()
    else:
        for i, task in tasks:
            _apply(df, i, _process(task))
            bar.update()
    bar.close()

    bad = df[df["reason"] != ""]
    if len(bad) and not skip_invalid:
        raise InputErrors([InputError(r.reason_path or r.source, r.reason) for r in bad.itertuples()],
                          context="invalid input")
    for r in bad.itertuples():
        log.warning("skipped: %s: %s", r.reason_path or r.source, r.reason)

    df["status"] = np.where(df["reason"] == "", "ok", "invalid")
    ok = df["status"] == "ok"
    if not ok.any():
        raise InputErrors([InputError(source, "no usable image left")], context="invalid input")
    for group in find_duplicates(df.loc[ok, "subject"], df.loc[ok, "data_sha256"]):
        log.warning("identical images under different subjects (kept in one split): %s", ", ".join(group))
    groups = duplicate_groups(df.loc[ok, "subject"], df.loc[ok, "data_sha256"])
    subjects = df.loc[ok].groupby("subject", sort=True)["label"].first().reset_index()
    subjects["group"] = subjects["subject"].map(groups)
    splits = assign_splits(subjects, cfg.split).set_index("subject")
    df["split"] = df["subject"].map(splits["split"]).where(ok, "")
    df["fold"] = df["subject"].map(splits["fold"]).where(ok, -1).astype(int)
    df["shape"] = np.where(ok, _fmt(list(cfg.prepare.grid)), "")
    df["spacing"] = np.where(ok, _fmt(list(cfg.prepare.spacing)), "")
    check_split_leakage(df[ok])

    layout = PreparedDir(out_dir)
    write_manifest(df.drop(columns=["reason_path"]).assign(source=[_portable_source(v, out_dir) for v in df["source"]]),
                   layout.manifest)
    save_config(cfg, layout.config)
    _remove_unused(out_dir, set(df.loc[ok, "path"]) | set(df.loc[ok, "roi_path"]))
    summary = _summary(df, reused, len(tasks), time.perf_counter() - t0)
    write_json_atomic(layout.summary, summary)
    log.info("prepared %d images (%d reused, %d invalid) in %.1f s -> %s", summary["usable"], reused,
             summary["invalid"], summary["seconds"], layout.manifest)
    return df.drop(columns=["reason_path"])


def _apply(df: pd.DataFrame, i, fields: dict) -> None:
    for k, v in fields.items():
        df.at[i, k] = v


def _remove_unused(out_dir: Path, used: set[str]) -> None:
    for f in PreparedDir(out_dir).cached_files():
        if str(f.relative_to(out_dir)) not in used:
            f.unlink()


def _summary(df: pd.DataFrame, reused: int, computed: int, seconds: float) -> dict:
    ok = df[df["status"] == "ok"]
    counts = ok.groupby(["split", "label_name"])["subject"].nunique().unstack(fill_value=0)
    return {"usable": int(len(ok)), "subjects": int(ok["subject"].nunique()),
            "invalid": int((df["status"] != "ok").sum()), "reused": reused, "computed": computed,
            "seconds": round(seconds, 2), "subjects_per_split_and_class": {
                s: {c: int(n) for c, n in row.items()} for s, row in counts.iterrows()}}
