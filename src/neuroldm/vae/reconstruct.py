"""``neuroldm reconstruct``: how well the trained autoencoder reproduces held-out volumes.

Each volume of the chosen split is encoded to its posterior mean and decoded (with the bounded-memory decoder
the config selects); PSNR, SSIM and MS-SSIM per volume and their means go to ``metrics.json`` with N, and a PNG
shows orthogonal slices of real vs reconstruction vs absolute error.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.data.manifest import read_manifest
from neuroldm.errors import InputError
from neuroldm.io import read_frame_code, save_nifti_atomic, write_json_atomic
from neuroldm.metrics.image import ms_ssim, psnr, ssim
from neuroldm.names import UniqueNames
from neuroldm.runs import PreparedDir, RunDir
from neuroldm.vae.decode import decode_volume, encode_volume
from neuroldm.vae.weights import load_vae
from neuroldm.viz.slices import comparison_figure


def volume_metrics(recon: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """PSNR, SSIM, MS-SSIM and L1 of one reconstruction ``(1, 1, D, H, W)`` against its real volume."""
    return {"psnr": float(psnr(recon, x).mean()), "ssim": float(ssim(recon, x).mean()),
            "ms_ssim": float(ms_ssim(recon, x).mean()), "l1": float((recon - x).abs().mean())}


def reconstruct(run_dir: str | Path, prepared: str | Path, *, split: str = "val", figure_subjects: int = 3,
                save_volumes: bool = False, device: str = "cpu", progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    out = RunDir(run_dir).vae.reconstruction
    model, vae_cfg, meta = load_vae(run_dir, device)
    rows = read_manifest(prepared)
    rows = rows[rows["split"] == split]
    if rows.empty:
        raise InputError(PreparedDir(prepared).manifest, f"no volumes in split '{split}'")
    per_volume, figure_rows = [], []
    names = UniqueNames()
    with torch.no_grad():
        for row in tqdm(rows.itertuples(), total=len(rows), desc="reconstruct", unit="vol", disable=not progress):
            x = torch.from_numpy(load_prepared_volume(row.path))[None, None].to(device)
            mu, _ = encode_volume(model, x, vae_cfg)
            recon = decode_volume(model, mu, vae_cfg)
            per_volume.append({"subject": row.subject, "session": row.session, **volume_metrics(recon, x)})
            real, rec = x[0, 0].cpu().numpy(), recon[0, 0].cpu().numpy()
            if save_volumes:
                affine = nib.load(row.path).affine
                stem = names.take("_".join(p for p in (row.subject, row.session) if p))
                save_nifti_atomic(rec.astype(np.float32), affine, out.volume(stem), what="VAE reconstruction",
                                  frame=read_frame_code(row.path))
            if len(figure_rows) < figure_subjects:
                lo, hi = np.percentile(real, [0.5, 99.5])
                err_max = float(np.percentile(np.abs(rec - real), 99.5)) or 1.0
                figure_rows.append((f"{row.subject} ({row.label_name})", [
                    ("real", real, {"vmin": lo, "vmax": hi}), ("reconstruction", rec, {"vmin": lo, "vmax": hi}),
                    ("|error|", np.abs(rec - real), {"vmin": 0, "vmax": err_max, "cmap": "magma"})]))
    keys = ("psnr", "ssim", "ms_ssim", "l1")
    result = {"split": split, "n": len(per_volume), "vae_sha256": meta["sha256"],
              "mean": {k: float(np.mean([v[k] for v in per_volume])) for k in keys},
              "std": {k: float(np.std([v[k] for v in per_volume], ddof=1)) if len(per_volume) > 1 else 0.0
                      for k in keys},
              "per_volume": per_volume}
    write_json_atomic(out.metrics, result)
    comparison_figure(figure_rows, out.figure,
                      title=f"{split} split: SSIM {result['mean']['ssim']:.3f}, PSNR {result['mean']['psnr']:.1f} dB "
                            f"(N={result['n']})")
    return result
