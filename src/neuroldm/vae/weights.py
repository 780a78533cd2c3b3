"""The trained autoencoder as one file: ``RUN/vae/model.safetensors``, weights plus the config that built them.

Later stages (encode, sample, evaluate) rebuild the network from the file's own config, so a changed
``vae.*`` setting after training cannot silently load weights into the wrong architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from neuroldm.config import VAEConfig
from neuroldm.errors import InputError
from neuroldm.io import atomic_path, sha256_file
from neuroldm.vae.network import build_vae

MODEL_FILE = Path("vae") / "model.safetensors"


def export_vae(model: torch.nn.Module, cfg: VAEConfig, path: str | Path, meta: dict | None = None) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"vae_config": cfg.model_dump_json(), "meta": json.dumps(meta or {})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def load_vae(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, VAEConfig, dict]:
    """``(model in eval mode, its VAEConfig, meta)`` from ``RUN/vae/model.safetensors``."""
    path = Path(run_dir) / MODEL_FILE
    if not path.exists():
        raise InputError(path, "no trained autoencoder; run `neuroldm train-vae` first")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "vae_config" not in metadata:
        raise InputError(path, "not a neuroldm autoencoder file (no vae_config metadata)")
    cfg = VAEConfig.model_validate_json(metadata["vae_config"])
    model = build_vae(cfg)
    model.load_state_dict(state)  # strict: a key mismatch is an error, not a silently half-loaded model
    meta = json.loads(metadata.get("meta", "{}"))
    meta["sha256"] = sha256_file(path)
    return model.to(device).eval(), cfg, meta
