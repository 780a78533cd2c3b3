"""A bundle of `neuroldm export`: a run's generator in a folder of its own, to sample from without the run.

The folder (`neuroldm.runs.BundleDir`) holds the autoencoder and the diffusion model files as the run exported
them, the latent statistics sampling needs (scale factor, latent shape, reference affine, grid, spacing), the
run's config and a model card, and ``bundle.json``, written last, with the sha256 of each of them. `open_bundle`
checks every file against it before anything is read, so a damaged or replaced file is refused in one line.

No file of a bundle names a subject: the diffusion model records only the sha256 of its training subjects' IDs
(`neuroldm.diffusion.weights.subjects_sha256`), which stay in the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from neuroldm import __version__
from neuroldm.errors import InputError
from neuroldm.io import sha256_file, write_json_atomic
from neuroldm.runs import BundleDir

BUNDLE_FORMAT = 1  # the layout and manifest this code writes and reads


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: its folder and its manifest, every file of which was found as recorded."""

    folder: BundleDir
    manifest: dict

    def sha256(self, path: str | Path) -> str:
        """The recorded (and checked) sha256 of one of the bundle's files."""
        return self.manifest["files"][Path(path).name]

    def latent_info(self) -> dict:
        """The latent statistics (``latents.json``): scale factor, latent shape, reference affine, grid, ..."""
        return json.loads(self.folder.latents.read_text(encoding="utf-8"))


def write_manifest(folder: BundleDir, **fields) -> dict:
    """Record the sha256 of every file of `folder` in its ``bundle.json`` (with `fields`); returns the manifest."""
    manifest = {"format": BUNDLE_FORMAT, "neuroldm": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **fields, "files": {p.name: sha256_file(p) for p in folder.files()}}
    write_json_atomic(folder.manifest, manifest)
    return manifest


def open_bundle(path: str | Path) -> Bundle:
    """The bundle in `path`, every file checked against the sha256 its manifest records (`InputError` naming the
    file otherwise)."""
    folder = BundleDir(path)
    if not folder.root.is_dir():
        raise InputError(folder.root, "not found: give the folder `neuroldm export` wrote")
    if not folder.is_bundle():
        raise InputError(folder.root, f"not a neuroldm bundle (no {folder.manifest.name}); make one with "
                                      f"`neuroldm export RUN --out BUNDLE`")
    try:
        manifest = json.loads(folder.manifest.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError(folder.manifest, "not readable JSON: the bundle is damaged; copy it again or export the "
                                          "run again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(folder.manifest, f"bundle format {found!r}; neuroldm {__version__} reads format "
                                          f"{BUNDLE_FORMAT}: export the run again with this version")
    recorded = manifest.get("files") or {}
    for file in folder.files():
        if file.name not in recorded:
            raise InputError(folder.manifest, f"records no sha256 for {file.name}: the bundle is damaged; export "
                                              f"the run again")
        if not file.is_file():
            raise InputError(file, "missing from the bundle: copy the whole folder, or export the run again")
        digest = sha256_file(file)
        if digest != recorded[file.name]:
            raise InputError(file, f"damaged or replaced: its sha256 {digest[:12]}... differs from the "
                                   f"{str(recorded[file.name])[:12]}... recorded in {folder.manifest.name}; copy the "
                                   f"bundle again or export the run again")
    return Bundle(folder=folder, manifest=manifest)
