"""The trained diffusion model as one file: ``RUN/diffusion/model.safetensors`` (EMA weights + what built them).

The file carries the `DiffusionConfig`, the latent shape and channel count, the class names and the latent scale
factor, so `neuroldm sample` rebuilds exactly the trained network and scales latents as training did
(`neuroldm.vae.latent_space.LatentSpace.from_meta`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from neuroldm.config import DiffusionConfig, move_old_keys
from neuroldm.diffusion.dit import DiT3D, build_dit
from neuroldm.errors import InputError
from neuroldm.io import load_weights, save_weights_atomic, verified_sha256
from neuroldm.runs import RunDir, model_record


def dit_from_config(cfg: DiffusionConfig, latent_shape, num_classes: int) -> DiT3D:
    """The DiT of `cfg` for latents of shape ``(C, d, h, w)``."""
    c, *spatial = (int(s) for s in latent_shape)
    return build_dit(cfg.model, spatial, c, num_classes, patch=cfg.patch, window=cfg.window,
                     shift_windows=cfg.shift_windows, global_every=cfg.global_every,
                     class_dropout=cfg.class_dropout, grad_checkpointing=cfg.train.grad_checkpointing)


def export_dit(model: torch.nn.Module, cfg: DiffusionConfig, path: str | Path, meta: dict) -> Path:
    for key in ("latent_shape", "classes", "scale_factor"):
        if key not in meta:
            raise ValueError(f"diffusion model metadata needs '{key}'")
    return save_weights_atomic(model, path, {"diffusion_config": cfg.model_dump_json(), "meta": json.dumps(meta)},
                               record=model_record(path))


def load_dit(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[DiT3D, DiffusionConfig, dict]:
    """``(model in eval mode, its DiffusionConfig, meta)`` from ``RUN/diffusion/model.safetensors``."""
    path = RunDir(run_dir).diffusion.model
    if not path.exists():
        raise InputError(path, "no trained diffusion model; run `neuroldm train-diffusion` first")
    digest = verified_sha256(path, model_record(path))  # a damaged file is refused before it is used
    state, metadata = load_weights(path, device, required_key="diffusion_config", what="diffusion model")
    cfg = DiffusionConfig.model_validate(move_old_keys(json.loads(metadata["diffusion_config"]), str(path),
                                                       ("diffusion",)))
    meta = json.loads(metadata.get("meta", "{}"))
    model = dit_from_config(cfg, meta["latent_shape"], len(meta["classes"]))
    model.load_state_dict(state)
    meta["sha256"] = digest
    return model.to(device).eval(), cfg, meta
