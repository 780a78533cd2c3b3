"""``neuroldm export RUN --out BUNDLE``: a run's generator in a folder of its own, to sample from on another machine.

The bundle (`neuroldm.runs.BundleDir`, opened by `neuroldm.bundle.open_bundle`) holds the autoencoder and the
diffusion model files byte for byte (their sha256 stay those the run's samples record), the latent statistics
sampling needs, the run's config, and ``MODEL_CARD.md`` (`neuroldm.report.model_card`); ``bundle.json``, written
last, records the sha256 of each. A half-written bundle has no manifest and is refused when opened.

No file names a subject: the diffusion model records only the sha256 of its training subjects' IDs (which stay in
``RUN/diffusion/train_subjects.json``), the latent statistics are a fixed list of aggregate keys (not the prepared
cohort's location), and the card gives counts. A model file written before the IDs left it is refused here. Nor
does a local path leave the machine: the bundle's config is the run's with its file settings (`LOCAL_PATHS`: the
cohort, the weights files) emptied, and the autoencoder file names its checkpoint relative to itself.
A model trained with `diffusion.conditions` is sampled from a bundle with the covariates given (or null): the
training cohort's covariate rows, which sampling from a run draws from by default, do not leave the run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from neuroldm.bundle import write_manifest
from neuroldm.config import Config, load_config
from neuroldm.diffusion.weights import LEGACY_SUBJECTS_KEY
from neuroldm.errors import InputError
from neuroldm.io import atomic_path, verified_sha256, write_json_atomic, write_text_atomic
from neuroldm.report.model_card import model_card
from neuroldm.runs import BundleDir, RunDir, model_record

# the keys of latents.json a bundle keeps: what sampling and the card need, aggregates only
LATENT_KEYS = ("scale_factor", "latent_shape", "reference_affine", "n", "n_train", "train_mean", "train_std",
               "channel_mean", "channel_std", "vae_sha256", "vae_arch")
# the config's settings that name files of this machine: emptied in a bundle's config (sampling needs none)
LOCAL_PATHS = (("pipeline", "input"), ("vae", "perceptual_weights_path"), ("evaluate", "inception_path"),
               ("evaluate", "medicalnet_path"))


def shareable_config(path: Path) -> str:
    """The run's config at `path` as a bundle keeps it: every `LOCAL_PATHS` setting null, said in a first line."""
    cfg = load_config(None, path).to_dict()
    emptied = []
    for section, key in LOCAL_PATHS:
        if cfg.get(section, {}).get(key) is not None:
            cfg[section][key] = None
            emptied.append(f"{section}.{key}")
    note = (f"# the run's config; local file settings emptied by neuroldm export: {', '.join(emptied)}\n"
            if emptied else "# the run's config\n")
    return note + Config.model_validate(cfg).to_yaml()


def export_run(run: str | Path, out: str | Path) -> dict:
    """Write the bundle of `run`'s generator to `out` (new, empty, or an earlier bundle, which is replaced);
    returns ``{"folder", "files": {name: bytes}, "classes"}``."""
    run, bundle = RunDir(run), BundleDir(out)
    if not run.root.is_dir():
        raise InputError(run.root, "run directory not found")
    _check_target(bundle)
    vae_file, dit_file = run.vae.model, run.diffusion.model
    for path, stage in ((vae_file, "train-vae"), (dit_file, "train-diffusion")):
        if not path.is_file():
            raise InputError(path, f"missing: the run has no trained model to export; run `neuroldm {stage}` first")
    vae_sha256 = verified_sha256(vae_file, model_record(vae_file))  # a damaged model is not exported
    dit_sha256 = verified_sha256(dit_file, model_record(dit_file))
    vae_meta = json.loads(run.vae.read_model_header()[0].get("meta", "{}"))
    dit_header = run.diffusion.read_model_header()[0]
    dit_meta = json.loads(dit_header.get("meta", "{}"))
    # the covariates the model takes (the model file holds them too); a model without conditions records none
    conditions = json.loads(dit_header.get("diffusion_config", "{}")).get("conditions") or []
    if LEGACY_SUBJECTS_KEY in dit_meta:
        raise InputError(dit_file, "lists its training subjects' IDs (written before they were kept out of model "
                                   "files), so it cannot leave the run; run `neuroldm train-diffusion` on the run "
                                   "again (it resumes at its last step and rewrites the file), then export")
    latents = run.latents.read_info()
    if latents.get("vae_sha256") != vae_sha256 or dit_meta.get("vae_sha256", vae_sha256) != vae_sha256:
        raise InputError(vae_file, "the autoencoder changed after the latents were encoded or the diffusion model "
                                   "trained; re-run encode and train-diffusion, then export")
    if not run.config.is_file():
        raise InputError(run.config, "missing: the run records no configuration")

    bundle.manifest.unlink(missing_ok=True)  # until the new one is written last, the folder is no bundle
    for source, target in ((vae_file, bundle.vae), (dit_file, bundle.diffusion)):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    write_json_atomic(bundle.latents, {**{k: latents[k] for k in LATENT_KEYS if k in latents},
                                       "grid": vae_meta.get("grid"), "spacing": vae_meta.get("spacing")})
    write_text_atomic(bundle.config, shareable_config(run.config))
    write_text_atomic(bundle.model_card, model_card(run, vae_sha256=vae_sha256, dit_sha256=dit_sha256))
    manifest = write_manifest(bundle, classes=list(dit_meta["classes"]),
                              train_subjects_sha256=dit_meta.get("train_subjects_sha256", ""),
                              **({"conditions": conditions} if conditions else {}))
    copied = manifest["files"]
    if (copied[bundle.vae.name], copied[bundle.diffusion.name]) != (vae_sha256, dit_sha256):
        bundle.manifest.unlink()
        raise InputError(run.root, "a model file changed while it was copied; export again when no command writes "
                                   "the run")
    return {"folder": str(bundle.root), "files": {p.name: p.stat().st_size for p in bundle.files()},
            "classes": manifest["classes"]}


def _check_target(bundle: BundleDir) -> None:
    """`out` is a new or empty folder, or an earlier bundle; a user's folder of other files is refused."""
    if bundle.root.exists() and not bundle.root.is_dir():
        raise InputError(bundle.root, "not a folder; give a new or empty folder, or an earlier bundle")
    if bundle.root.is_dir() and not bundle.is_bundle() and any(bundle.root.iterdir()):
        raise InputError(bundle.root, f"not empty and not a neuroldm bundle (no {bundle.manifest.name}); give a new "
                                      f"or empty folder, or an earlier bundle; nothing was written")
