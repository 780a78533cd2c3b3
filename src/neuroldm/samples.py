"""The sample manifest: how synthetic volumes travel from ``neuroldm sample`` to evaluation and classification.

A sample folder holds one NIfTI per synthetic volume, a JSON sidecar per volume, and two files written last,
atomically. A sidecar (``<sample>.json``) holds the volume's ``sample``, ``label``, ``label_name``, ``seed``, the
sampling settings, ``checkpoint_sha256``, ``vae_sha256``, ``run``, ``diffusion_config``, and two provenance keys:
``"synthetic": true`` (no subject was scanned: BIDS has no key for this, so the name says it plainly) and
``software_versions`` (`software_versions`: neuroldm, torch, monai, nibabel); a model with `diffusion.conditions`
adds ``conditions`` (``{name: value or null}``) and ``conditions_source`` (``given``, ``training-cohort``: drawn
from the training volumes of the class, or ``null``). The two folder files:

- ``manifest.csv`` — one row per volume, columns `SAMPLE_COLUMNS`:
  ``sample`` (unique id, also the file stem), ``path`` (relative to the folder), ``label`` (class index),
  ``label_name``, ``seed`` (of this volume), ``sampler``, ``steps``, ``guidance``; then, for a model with
  conditions, one column per condition (empty: null);
- ``samples.json`` — what made them: ``train_subjects`` (every subject the generator — VAE and diffusion model —
  was trained on; the classifier's leak guard reads it; empty when sampled from a bundle of `neuroldm export`,
  which names no subject), ``train_subjects_sha256`` (of those IDs, as the diffusion model records it),
  ``classes`` (index -> name), ``grid``, ``spacing``, ``affine``, ``prepared`` (the real cohort's prepared folder;
  empty from a bundle), ``checkpoint_sha256``, ``vae_sha256``, and ``run`` or ``bundle`` (the folder sampled from).

Synthetic volumes live on the prepared grid, with the prepared cohort's normalisation, so they go through the same
loading (`neuroldm.data.dataset.load_prepared_volume`) as real ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from neuroldm import __version__
from neuroldm.errors import InputError
from neuroldm.io import atomic_path, write_json_atomic
from neuroldm.runs import SampleDir

SAMPLE_COLUMNS = ["sample", "path", "label", "label_name", "seed", "sampler", "steps", "guidance"]
SIDECAR_PACKAGES = ("torch", "monai", "nibabel")  # the network, its building blocks, the NIfTI writer


def software_versions() -> dict[str, str]:
    """neuroldm's version and those of `SIDECAR_PACKAGES`, as installed (read from package metadata, so nothing
    is imported); a package without metadata is ``"unknown"``."""
    versions = {"neuroldm": __version__}
    for dist in SIDECAR_PACKAGES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


@dataclass
class SampleSet:
    """Synthetic volumes: `rows` has `SAMPLE_COLUMNS` with absolute ``path``; `info` is ``samples.json``."""

    folder: Path
    rows: pd.DataFrame
    info: dict = field(default_factory=dict)

    @property
    def train_subjects(self) -> list[str]:
        return list(self.info.get("train_subjects", []))


def write_sample_manifest(folder: str | Path, rows: pd.DataFrame, info: dict) -> None:
    """Write ``manifest.csv`` (paths relative to `folder`) and ``samples.json``, each atomically."""
    folder = Path(folder)
    missing = [c for c in SAMPLE_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"sample rows lack columns {missing}")
    if "train_subjects" not in info:
        raise ValueError("samples.json must list the generator's train_subjects (the classifier's leak guard)")
    out = rows.copy()
    out["path"] = [str(Path(p).resolve().relative_to(folder.resolve())) if Path(p).is_absolute() else str(p)
                   for p in out["path"]]
    extra = [c for c in out.columns if c not in SAMPLE_COLUMNS]
    layout = SampleDir(folder)
    write_json_atomic(layout.info, info)
    with atomic_path(layout.manifest) as tmp:
        out[SAMPLE_COLUMNS + extra].to_csv(tmp, index=False)


def read_sample_manifest(path: str | Path) -> SampleSet:
    """Read a sample folder (or its ``manifest.csv``); paths become absolute and every file must exist."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    layout = SampleDir(folder)
    csv = layout.manifest
    if not csv.exists():
        raise InputError(csv, "sample manifest not found; run `neuroldm sample` first")
    rows = pd.read_csv(csv, dtype={"sample": str, "label_name": str, "sampler": str}, keep_default_na=False)
    missing = [c for c in SAMPLE_COLUMNS if c not in rows.columns]
    if missing:
        raise InputError(csv, f"not a neuroldm sample manifest (missing columns {', '.join(missing)})")
    rows["label"] = rows["label"].astype(int)
    rows["path"] = [str((folder / p).resolve()) for p in rows["path"]]
    absent = [p for p in rows["path"] if not Path(p).exists()]
    if absent:
        raise InputError(absent[0], f"listed in {csv} but missing ({len(absent)} missing in all)")
    info_path = layout.info
    if not info_path.exists():
        raise InputError(info_path, "missing: the sample folder does not say which subjects trained its generator")
    return SampleSet(folder=folder, rows=rows, info=json.loads(info_path.read_text()))
