"""The trained diffusion model as one file: ``RUN/diffusion/model.safetensors`` (EMA weights + what built them).

The file carries the `DiffusionConfig` (with its `conditions`, against which `neuroldm sample` checks a request),
the latent shape and channel count, the class names and the latent scale factor, so `neuroldm sample` rebuilds
exactly the trained network and scales latents as training did (`neuroldm.vae.latent_space.LatentSpace.from_meta`).

It names no subject: the IDs of the training subjects stay in the run (``RUN/diffusion/train_subjects.json``,
`save_train_subjects`) and the file records their sha256 (``train_subjects_sha256``, `subjects_sha256`), so that
the file can leave the run (`neuroldm export`) and the list read back from the run is checked against it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from neuroldm.config import DiffusionConfig, move_old_keys
from neuroldm.diffusion.dit import DiT3D, build_dit
from neuroldm.errors import InputError
from neuroldm.io import load_weights, save_weights_atomic, verified_sha256, write_json_atomic
from neuroldm.runs import RunDir, model_record, read_json

# meta key of a model file written before the IDs left it; such a file is sampled from but never exported
LEGACY_SUBJECTS_KEY = "train_subjects"


def dit_from_config(cfg: DiffusionConfig, latent_shape, num_classes: int) -> DiT3D:
    """The DiT of `cfg` for latents of shape ``(C, d, h, w)``."""
    c, *spatial = (int(s) for s in latent_shape)
    return build_dit(cfg.model, spatial, c, num_classes, patch=cfg.patch, window=cfg.window,
                     shift_windows=cfg.shift_windows, global_every=cfg.global_every,
                     class_dropout=cfg.class_dropout, grad_checkpointing=cfg.train.grad_checkpointing,
                     conditions=[(c.name, len(c.levels or ())) for c in cfg.conditions])


def subjects_sha256(subjects: Iterable[str]) -> str:
    """sha256 of a set of subject IDs: of the sorted, distinct IDs, one per line (order and repeats do not count)."""
    return hashlib.sha256("\n".join(sorted({str(s) for s in subjects})).encode()).hexdigest()


def export_dit(model: torch.nn.Module, cfg: DiffusionConfig, path: str | Path, meta: dict) -> Path:
    for key in ("latent_shape", "classes", "scale_factor"):
        if key not in meta:
            raise ValueError(f"diffusion model metadata needs '{key}'")
    if LEGACY_SUBJECTS_KEY in meta:
        raise ValueError("a diffusion model file records the sha256 of its training subjects, never their IDs")
    return save_weights_atomic(model, path, {"diffusion_config": cfg.model_dump_json(), "meta": json.dumps(meta)},
                               record=model_record(path))


def read_dit(path: str | Path, device: str | torch.device = "cpu", *,
             sha256: str | None = None) -> tuple[DiT3D, DiffusionConfig, dict]:
    """``(model in eval mode, its DiffusionConfig, meta)`` of a diffusion model file; ``meta["sha256"]`` is the
    file's. `sha256`: the digest the caller has already checked (a bundle's manifest); without it the file is
    hashed and checked against its ``.sha256`` record."""
    path = Path(path)
    digest = sha256 or verified_sha256(path, model_record(path))  # a damaged file is refused before it is used
    state, metadata = load_weights(path, device, required_key="diffusion_config", what="diffusion model")
    cfg = DiffusionConfig.model_validate(move_old_keys(json.loads(metadata["diffusion_config"]), str(path),
                                                       ("diffusion",)))
    meta = json.loads(metadata.get("meta", "{}"))
    model = dit_from_config(cfg, meta["latent_shape"], len(meta["classes"]))
    model.load_state_dict(state)
    meta["sha256"] = digest
    return model.to(device).eval(), cfg, meta


def load_dit(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[DiT3D, DiffusionConfig, dict]:
    """``(model in eval mode, its DiffusionConfig, meta)`` from ``RUN/diffusion/model.safetensors``."""
    path = RunDir(run_dir).diffusion.model
    if not path.exists():
        raise InputError(path, "no trained diffusion model; run `neuroldm train-diffusion` first")
    return read_dit(path, device)


def save_train_subjects(run_dir: str | Path, subjects: Iterable[str]) -> str:
    """Write the run's list of the diffusion model's training subjects; returns its `subjects_sha256`."""
    ids = sorted({str(s) for s in subjects})
    write_json_atomic(RunDir(run_dir).diffusion.train_subjects, {"train_subjects": ids})
    return subjects_sha256(ids)


def load_train_subjects(run_dir: str | Path, meta: dict) -> list[str]:
    """The IDs of the subjects the run's diffusion model (`meta`, from `load_dit`) was trained on, read from the
    run and checked against the sha256 its model file records (from the file itself if it predates that)."""
    if LEGACY_SUBJECTS_KEY in meta:
        return list(meta[LEGACY_SUBJECTS_KEY])
    path = RunDir(run_dir).diffusion.train_subjects
    info = read_json(path)
    if info is None:
        raise InputError(path, "missing: the run does not say which subjects trained its diffusion model; run "
                               "`neuroldm train-diffusion` again (it resumes at its last step and re-exports)")
    subjects = list(info.get("train_subjects", []))
    if subjects_sha256(subjects) != meta.get("train_subjects_sha256"):
        raise InputError(path, f"these subjects are not the ones the diffusion model records (sha256 "
                               f"{str(meta.get('train_subjects_sha256'))[:12]}...); the file was changed or belongs "
                               f"to another training")
    return subjects
