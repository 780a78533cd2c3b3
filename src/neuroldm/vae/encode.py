"""``neuroldm encode``: every prepared volume to its latent posterior, mean *and* standard deviation.

Storing the posterior (not one frozen sample) lets the diffusion stage draw a fresh ``z = mu + sigma * eps`` each
time it sees a volume; a single stored sample would put a floor under the diffusion loss.

The **scale factor** (Rombach et al. 2022, sec. 4.3 / Stable Diffusion's ``scaling_factor``) is ``1 / std`` of
the training-split latents, so scaled latents have unit variance as the diffusion noise schedule assumes. The
std is that of posterior *samples* over all training latent elements: ``var(z) = var(mu) + mean(sigma^2)``,
accumulated in float64. It is stored in ``latents.json`` and every later stage reads it from there, through
`neuroldm.vae.latent_space.LatentSpace`.

Layout: ``RUN/latents/volumes/<key>.safetensors`` (``mu``, ``sigma``; ``(C, d, h, w)`` float32) per volume,
keyed by the volume's content and the autoencoder's file hash so a re-run skips what is done; ``index.csv``
(one row per volume: subject, session, label, split, fold, file, and the manifest's covariate columns,
`data.covariates`, which `diffusion.conditions` read); ``latents.json``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.data.manifest import MANIFEST_COLUMNS, read_manifest, reference_affine, reference_frame_code
from neuroldm.errors import InputError
from neuroldm.io import atomic_path, write_json_atomic
from neuroldm.runs import PreparedDir, RunDir
from neuroldm.vae.decode import encode_volume
from neuroldm.vae.latent_space import LatentSpace
from neuroldm.vae.weights import load_vae

INDEX_COLUMNS = ["subject", "session", "label", "label_name", "split", "fold", "data_sha256", "file"]


def _key(data_sha256: str, vae_sha256: str) -> str:
    return hashlib.sha256(f"{data_sha256}{vae_sha256}".encode()).hexdigest()[:16]


def encode_cohort(run_dir: str | Path, prepared: str | Path, *, device: str = "cpu",
                  progress: bool = True) -> dict:
    """Encode every usable volume of `prepared` with the run's autoencoder; returns the ``latents.json`` dict."""
    run_dir, out = Path(run_dir), RunDir(run_dir).latents
    model, vae_cfg, meta = load_vae(run_dir, device)
    rows = read_manifest(prepared)
    files, done = [], 0
    with torch.no_grad():
        for row in tqdm(rows.itertuples(), total=len(rows), desc="encode", unit="vol", disable=not progress):
            rel = out.volume(_key(row.data_sha256, meta['sha256']))
            files.append(str(rel))
            if (out / rel).exists():
                done += 1
                continue
            x = torch.from_numpy(load_prepared_volume(row.path))[None, None].to(device)
            mu, sigma = encode_volume(model, x, vae_cfg)
            with atomic_path(out / rel) as tmp:
                save_file({"mu": mu[0].float().cpu().contiguous(), "sigma": sigma[0].float().cpu().contiguous()},
                          str(tmp))
    covariates = [c for c in rows.columns if c not in MANIFEST_COLUMNS]  # none: the index of before
    index = rows.assign(file=files)[INDEX_COLUMNS + covariates]
    with atomic_path(out.index) as tmp:
        index.to_csv(tmp, index=False)
    train = index[index["split"] == "train"]
    if train.empty:
        raise InputError(PreparedDir(prepared).manifest, "no training-split volumes to compute the scale factor")
    stats = _latent_stats([out / f for f in train["file"]])
    space = LatentSpace.from_std(stats["std"])
    info = {"scale_factor": space.scale_factor, "latent_shape": stats["shape"], "n": len(index),
            "n_train": len(train), "train_mean": stats["mean"], "train_std": stats["std"],
            "channel_mean": stats["channel_mean"], "channel_std": stats["channel_std"],
            "vae_sha256": meta["sha256"], "vae_arch": vae_cfg.arch, "prepared": str(Path(prepared).resolve()),
            "reference_affine": reference_affine(rows[rows["split"] == "train"]).tolist(),
            "reference_frame_code": reference_frame_code(rows[rows["split"] == "train"]),
            "reused": done}
    write_json_atomic(out.info, info)
    return info


def _latent_stats(paths: list[Path]) -> dict:
    """Mean and std of posterior samples over every element (and per channel), in float64."""
    n = 0
    s1 = s2 = None
    for p in paths:
        t = load_file(str(p))
        mu, var = t["mu"].double(), t["sigma"].double() ** 2
        c = mu.shape[0]
        flat_mu, flat_var = mu.reshape(c, -1), var.reshape(c, -1)
        # E[z] = E[mu]; E[z^2] = E[mu^2 + sigma^2]
        a, b = flat_mu.sum(1), (flat_mu ** 2 + flat_var).sum(1)
        s1, s2 = (a, b) if s1 is None else (s1 + a, s2 + b)
        n += flat_mu.shape[1]
        shape = list(mu.shape)
    ch_mean = s1 / n
    ch_var = s2 / n - ch_mean ** 2
    mean = float(s1.sum() / (n * len(s1)))
    var = float(s2.sum() / (n * len(s1)) - mean ** 2)
    return {"mean": mean, "std": float(np.sqrt(var)), "channel_mean": ch_mean.tolist(),
            "channel_std": ch_var.clamp_min(0).sqrt().tolist(), "shape": shape}


@dataclass
class LatentSet:
    """Encoded volumes of one or more splits: ``mu``/``sigma`` ``(N, C, d, h, w)``, labels ``(N,)``."""

    mu: torch.Tensor
    sigma: torch.Tensor
    labels: torch.Tensor
    index: pd.DataFrame
    scale_factor: float
    info: dict

    @property
    def space(self) -> LatentSpace:
        return LatentSpace(self.scale_factor)


def load_latents(run_dir: str | Path, splits: tuple[str, ...] | None = None) -> LatentSet:
    """The latents of `splits` (all when None), with the stored scale factor."""
    out = RunDir(run_dir).latents
    info = out.read_info()
    columns = pd.read_csv(out.index, nrows=0).columns
    # covariates as text, as the manifest holds them (a level "1" stays "1", not 1.0)
    index = pd.read_csv(out.index, dtype={"session": str, **{c: str for c in columns if c not in INDEX_COLUMNS}},
                        keep_default_na=False)
    if splits is not None:
        index = index[index["split"].isin(splits)].reset_index(drop=True)
    if index.empty:
        raise InputError(out.index, f"no latents in splits {splits}")
    tensors = [load_file(str(out / f)) for f in index["file"]]
    return LatentSet(mu=torch.stack([t["mu"] for t in tensors]), sigma=torch.stack([t["sigma"] for t in tensors]),
                     labels=torch.tensor(index["label"].to_numpy(dtype=np.int64)), index=index,
                     scale_factor=float(info["scale_factor"]), info=info)
