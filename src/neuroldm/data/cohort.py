"""Read a cohort (a BIDS dataset or a CSV) into one table: one row per T1w image.

Columns: ``subject, session, source, raw_label, label, label_name`` plus the configured covariates, and
``reason`` / ``reason_path``: empty for a good row, else the problem and the file it concerns. Problems are
collected for the whole cohort, not raised at the first, so `prepare` can report every bad row at once.

A BIDS subject (or session) gives one image: among its ``anat/*_T1w.nii[.gz]`` files, those whose entities pass the
filters ``data.bids.{space,desc,acq,run,rec}`` (`BidsColumns`). A derivatives layout such as sMRIPrep's holds
several T1w images per subject (``sub-X_desc-preproc_T1w`` in native space and ``sub-X_space-<template>_desc-
preproc_T1w``); when more than one passes, the subject is refused in one line naming the files and the entity
that tells them apart, never silently taken twice or at random.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from neuroldm.config import BidsColumns, DataConfig
from neuroldm.errors import InputError

log = logging.getLogger(__name__)

COHORT_COLUMNS = ["subject", "session", "source", "raw_label", "label", "label_name", "reason", "reason_path"]
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
ENTITY_FILTERS = ("space", "desc", "acq", "run", "rec")  # the data.bids keys that select a T1w image


def read_table(path: Path, sep: str) -> pd.DataFrame:
    """A CSV or TSV table with every value as text; an unreadable one is an `InputError` naming it."""
    try:
        # every value as text: labels such as "0"/"1" or "n/a" must not become numbers or NaN
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False).rename(columns=str.strip)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a readable {'TSV' if sep == chr(9) else 'CSV'} table ({e})") from None


def require_columns(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    """Refuse a table that lacks any of `columns`, listing the ones it has."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
                               f"columns present: {', '.join(table.columns)}")


def bids_entities(name: str) -> tuple[dict[str, str], str]:
    """``({entity: label}, suffix)`` of a BIDS file name: ``sub-01_space-MNI_desc-preproc_T1w.nii.gz`` gives
    ``({"sub": "01", "space": "MNI", "desc": "preproc"}, "T1w")``. Parts without a ``-`` other than the suffix are
    not entities and are left out.

    A small parser rather than pybids: pybids is not a dependency, and indexing a whole dataset into its database
    is far more than reading the entities of the few files of one ``anat/`` folder.
    """
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    *parts, suffix = name.split("_")
    return dict(p.split("-", 1) for p in parts if "-" in p), suffix


def entity_matches(entities: dict[str, str], key: str, want: str | None) -> bool:
    """Whether a file's `entities` pass the filter ``key: want`` (`BidsColumns`: None any, "" absent, else equal;
    ``run`` as a number)."""
    have = entities.get(key)
    if want is None:
        return True
    if want == "" or have is None:
        return have is None and want == ""
    if key == "run" and have.isdigit() and want.isdigit():
        return int(have) == int(want)
    return have == want


def _filters(cfg: BidsColumns) -> dict[str, str | None]:
    return {k: getattr(cfg, k) for k in ENTITY_FILTERS if getattr(cfg, k) is not None}


def _describe(filters: dict[str, str | None]) -> str:
    return ", ".join(f"{k}={v!r}" if v else f"no {k}" for k, v in filters.items())


def _find_t1w(subject_dir: Path) -> dict[str, list[Path]]:
    """Session ("" for none) -> every ``*_T1w.nii[.gz]`` under ``sub-X/anat`` or ``sub-X/ses-*/anat``."""
    found = {"": sorted((subject_dir / "anat").glob("*_T1w.nii*"))}
    for ses in sorted(subject_dir.glob("ses-*")):
        found[ses.name] = sorted((ses / "anat").glob("*_T1w.nii*"))
    return {s: kept for s, paths in found.items() if (kept := [p for p in paths if p.name.endswith(NIFTI_EXTENSIONS)])}


def _ambiguous(who: str, paths: list[Path]) -> str:
    """One line: which images match and what would tell them apart."""
    entities = [bids_entities(p.name)[0] for p in paths]
    differ = sorted({k for e in entities for k in e if len({x.get(k) for x in entities}) > 1} - {"sub", "ses"})
    selectable = [k for k in differ if k in ENTITY_FILTERS]
    if selectable:
        hint = f"choose one with {' or '.join(f'data.bids.{k}' for k in selectable)}"
    elif differ:
        hint = f"data.bids selects by {', '.join(ENTITY_FILTERS)} only; list the images in a CSV cohort instead"
    else:
        hint = "remove all but one"
    names = ", ".join(p.name for p in paths)
    differ_text = f" (they differ in {', '.join(differ)})" if differ else ""
    return f"{who}: {len(paths)} T1w images match, {names}{differ_text}; {hint}"


def select_t1w(subject_dir: Path, cfg: BidsColumns) -> tuple[dict[str, Path], dict[str, tuple[Path, str]],
                                                               list[Path]]:
    """The T1w image of each session ("" for none) of a subject that passes `cfg`'s entity filters.

    Returns ``(session -> image, session -> (folder, one-line reason) where several images pass, every T1w image
    found)``; a session where none passes is left out.
    """
    filters = _filters(cfg)
    chosen, problems, found = {}, {}, []
    for session, paths in _find_t1w(subject_dir).items():
        found += paths
        hits = [p for p in paths if all(entity_matches(bids_entities(p.name)[0], k, v) for k, v in filters.items())]
        if len(hits) == 1:
            chosen[session] = hits[0]
        elif hits:
            problems[session] = (hits[0].parent, _ambiguous(" ".join(filter(None, (subject_dir.name, session))), hits))
    return chosen, problems, found


def read_bids(root: str | Path, cfg: DataConfig) -> pd.DataFrame:
    """Rows for the T1w image of every session of every participant in ``participants.tsv`` (`select_t1w`).

    A participant with no (selected) T1w image gets a row with an empty ``source`` and a reason naming the
    participant; a session with several gets one naming the images.
    """
    root = Path(root)
    tsv = root / "participants.tsv"
    table = read_table(tsv, "\t")
    label_col = cfg.bids.label_column
    require_columns(table, ["participant_id", label_col, *cfg.covariates], tsv)
    if table.empty:
        raise InputError(tsv, "no rows: the table has a header but lists no participant")
    filters = _filters(cfg.bids)
    rows = []
    for _, rec in table.iterrows():
        pid = rec["participant_id"].strip()
        if not pid.startswith("sub-"):
            pid = f"sub-{pid}"
        base = {"subject": pid, "raw_label": rec[label_col].strip(), "label_source": str(tsv),
                **{c: rec[c] for c in cfg.covariates}}
        images, problems, found = select_t1w(root / pid, cfg.bids)
        if not images and not problems:
            reason = f"participant {pid} has no T1w image under {pid}/[ses-*/]anat/"
            if found:
                reason = (f"participant {pid} has no T1w image with {_describe(filters)} (data.bids) under "
                          f"{pid}/[ses-*/]anat/; it has {', '.join(p.name for p in found)}")
            rows.append({**base, "session": "", "source": "", "reason_path": str(tsv), "reason": reason})
        for session, (folder, reason) in problems.items():
            rows.append({**base, "session": session, "source": "", "reason_path": str(folder), "reason": reason})
        for session, path in images.items():
            rows.append({**base, "session": session, "source": str(path.resolve())})
    listed = {r["subject"] for r in rows}
    unlisted = sorted(p.name for p in root.glob("sub-*") if p.is_dir() and p.name not in listed)
    if unlisted:
        log.warning("%s: %d subject folder(s) not in participants.tsv are ignored: %s", tsv, len(unlisted),
                    ", ".join(unlisted[:10]) + (" ..." if len(unlisted) > 10 else ""))
    return _finish(pd.DataFrame(rows), cfg)


def read_csv(path: str | Path, cfg: DataConfig) -> pd.DataFrame:
    """Rows of a cohort CSV (or TSV); relative image paths are relative to the table's folder."""
    path = Path(path)
    table = read_table(path, "\t" if path.suffix.lower() == ".tsv" else ",")
    c = cfg.csv
    require_columns(table, [c.path_column, c.subject_column, c.label_column, *cfg.covariates], path)
    if table.empty:
        raise InputError(path, "no rows: the table has a header but lists no image")
    rows = []
    for i, rec in table.iterrows():
        src = rec[c.path_column].strip()
        row = {"subject": rec[c.subject_column].strip(),
               "session": rec[c.session_column].strip() if c.session_column in table.columns else "",
               "source": str((path.parent / src).resolve()) if src else "",
               "raw_label": rec[c.label_column].strip(), "label_source": f"{path} row {i + 2}",
               "row": i + 2,  # 1-based line number in the file, header included
               **{k: rec[k] for k in cfg.covariates}}
        if not src:
            row.update(reason="empty path", reason_path=f"{path} row {i + 2}")
        elif not row["subject"]:
            row.update(reason="empty subject", reason_path=f"{path} row {i + 2}")
        rows.append(row)
    df = pd.DataFrame(rows)
    _flag_duplicates(df, path)
    _flag_label_conflicts(df, path)
    return _finish(df, cfg)


def _flag(df: pd.DataFrame, index, reason: str, where: str) -> None:
    if not df.at[index, "reason"]:
        df.at[index, "reason"] = reason
        df.at[index, "reason_path"] = where


def _ensure_reason_columns(df: pd.DataFrame) -> None:
    for col in ("reason", "reason_path"):
        if col not in df.columns:
            df[col] = ""
        df[col] = df[col].fillna("")


def _flag_duplicates(df: pd.DataFrame, table: Path) -> None:
    """The same image listed twice is an error on every row after the first."""
    _ensure_reason_columns(df)
    first: dict[str, int] = {}
    for i, src in df["source"].items():
        if not src:
            continue
        if src in first:
            j = first[src]
            _flag(df, i, f"duplicate row: row {df.at[i, 'row']} repeats the image of row {df.at[j, 'row']} "
                         f"(subject {df.at[j, 'subject']})", str(table))
        else:
            first[src] = i


def _flag_label_conflicts(df: pd.DataFrame, table: Path) -> None:
    """One subject must have one label, whatever the number of sessions."""
    _ensure_reason_columns(df)
    for subject, group in df.groupby("subject", sort=False):
        labels = sorted(set(group["raw_label"]))
        if len(labels) > 1:
            for i in group.index:
                _flag(df, i, f"subject {subject} has {len(labels)} different labels ({', '.join(labels)})",
                      str(table))


def _finish(df: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Map raw labels to classes; flag unknown values; put the columns in a stable order."""
    if df.empty:
        raise InputError("cohort", "no rows")
    _ensure_reason_columns(df)
    known = sorted(set(cfg.label_map) | set(cfg.classes))
    labels, names = [], []
    for i, rec in df.iterrows():
        idx = cfg.class_index(rec["raw_label"])
        labels.append(-1 if idx is None else idx)
        names.append("" if idx is None else cfg.classes[idx])
        if idx is None:
            _flag(df, i, f"subject {rec['subject']}: unknown label value {rec['raw_label']!r}; known values: "
                         f"{', '.join(known)} (set data.label_map to map it)", rec["label_source"])
    df["label"] = labels
    df["label_name"] = names
    extra = [c for c in cfg.covariates if c in df.columns]
    return df[COHORT_COLUMNS + extra].reset_index(drop=True)


def read_cohort(source: str | Path, cfg: DataConfig) -> pd.DataFrame:
    """A BIDS folder (with ``participants.tsv``) or a ``.csv``/``.tsv`` table."""
    source = Path(source)
    if source.is_dir():
        if not (source / "participants.tsv").exists():
            raise InputError(source, "a folder input must be a BIDS dataset with participants.tsv")
        return read_bids(source, cfg)
    if not source.exists():
        raise InputError(source, "file not found")
    if source.suffix.lower() not in (".csv", ".tsv"):
        raise InputError(source, "expected a BIDS folder or a .csv/.tsv cohort table")
    return read_csv(source, cfg)


def cohort_errors(df: pd.DataFrame) -> list[InputError]:
    return [InputError(r.reason_path or r.source, r.reason) for r in df.itertuples() if r.reason]
