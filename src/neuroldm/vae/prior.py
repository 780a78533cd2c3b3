"""``neuroldm vae-sample``: decode random latents, a sanity baseline for the diffusion model.

A diffusion model that is no better than this is not learning the latent distribution. By default the latents
are drawn from a Gaussian with the training latents' per-channel mean and std (from ``latents.json``); the seed
decoded N(0, I), which for an autoencoder trained with a tiny KL weight lies off the data's latent scale —
``raw=True`` reproduces that.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from neuroldm.data.manifest import read_manifest, reference_affine, reference_frame_code
from neuroldm.errors import InputError
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic, write_json_atomic
from neuroldm.runs import RunDir, SampleDir
from neuroldm.vae.decode import decode_volume
from neuroldm.vae.network import latent_shape
from neuroldm.vae.weights import load_vae


def sample_prior(run_dir: str | Path, n: int, out: str | Path, *, seed: int = 0, raw: bool = False,
                 prepared: str | Path | None = None, device: str = "cpu", progress: bool = True) -> list[Path]:
    run_dir, out = Path(run_dir), SampleDir(out)
    model, vae_cfg, meta = load_vae(run_dir, device)
    info_path = RunDir(run_dir).latents.info
    info = json.loads(info_path.read_text()) if info_path.exists() else None
    if info is None and not raw:
        raise InputError(info_path, "matched-prior sampling needs the latent statistics; run `neuroldm encode` "
                                    "first, or pass --raw to decode N(0, I)")
    if info is not None:
        shape = tuple(info["latent_shape"])
        affine = np.asarray(info["reference_affine"])
        frame = int(info.get("reference_frame_code", ALIGNED_ANAT))  # latents encoded before it was recorded
    else:
        if prepared is None:
            raise InputError(run_dir, "no latents.json and no --prepared cohort to take the grid from")
        rows = read_manifest(prepared)
        affine = reference_affine(rows[rows["split"] == "train"])
        frame = reference_frame_code(rows[rows["split"] == "train"])
        shape = latent_shape(meta["grid"], vae_cfg)
    mean = torch.zeros(shape[0]) if raw else torch.tensor(info["channel_mean"])
    std = torch.ones(shape[0]) if raw else torch.tensor(info["channel_std"])
    g = torch.Generator().manual_seed(seed)
    paths = []
    with torch.no_grad():
        for i in tqdm(range(n), desc="vae-sample", unit="vol", disable=not progress):
            z = torch.randn(shape, generator=g) * std[:, None, None, None] + mean[:, None, None, None]
            vol = decode_volume(model, z[None].to(device), vae_cfg)[0, 0].cpu().numpy().astype(np.float32)
            path = out.prior_volume(seed, i)
            save_nifti_atomic(vol, affine, path, what="VAE prior sample (synthetic)", frame=frame)
            paths.append(path)
    write_json_atomic(out.prior_info, {"n": n, "seed": seed, "raw": raw, "vae_sha256": meta["sha256"],
                                               "files": [p.name for p in paths]})
    return paths
