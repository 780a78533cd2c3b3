"""The trained autoencoder as one file: ``RUN/vae/model.safetensors``, weights plus the config that built them.

Later stages (encode, sample, evaluate) rebuild the network from the file's own config, so a changed
``vae.*`` setting after training cannot silently load weights into the wrong architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from neuroldm.config import VAEConfig
from neuroldm.errors import InputError
from neuroldm.io import load_weights, save_weights_atomic, verified_sha256
from neuroldm.runs import RunDir, model_record
from neuroldm.vae.network import build_vae


def export_vae(model: torch.nn.Module, cfg: VAEConfig, path: str | Path, meta: dict | None = None) -> Path:
    return save_weights_atomic(model, path, {"vae_config": cfg.model_dump_json(), "meta": json.dumps(meta or {})},
                               record=model_record(path))


def read_vae(path: str | Path, device: str | torch.device = "cpu", *,
             sha256: str | None = None) -> tuple[torch.nn.Module, VAEConfig, dict]:
    """``(model in eval mode, its VAEConfig, meta)`` of an autoencoder file; ``meta["sha256"]`` is the file's.
    `sha256`: the digest the caller has already checked (a bundle's manifest); without it the file is hashed and
    checked against its ``.sha256`` record."""
    path = Path(path)
    digest = sha256 or verified_sha256(path, model_record(path))  # a damaged file is refused before it is used
    state, metadata = load_weights(path, device, required_key="vae_config", what="autoencoder")
    cfg = VAEConfig.model_validate_json(metadata["vae_config"])
    model = build_vae(cfg)
    model.load_state_dict(state)  # strict: a key mismatch is an error, not a silently half-loaded model
    meta = json.loads(metadata.get("meta", "{}"))
    meta["sha256"] = digest
    return model.to(device).eval(), cfg, meta


def load_vae(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, VAEConfig, dict]:
    """``(model in eval mode, its VAEConfig, meta)`` from ``RUN/vae/model.safetensors``."""
    path = RunDir(run_dir).vae.model
    if not path.exists():
        raise InputError(path, "no trained autoencoder; run `neuroldm train-vae` first")
    return read_vae(path, device)
