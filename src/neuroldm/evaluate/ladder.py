"""The realism ladder: where between the real volumes and the samples realism is lost, and why.

FID says *how far* synthetic volumes are from real ones, not *which model* lost the realism. The ladder compares,
against the same reference volumes, through the same slice features (one intensity window, the same slice positions,
the same N), sets that bracket the diffusion model:

- ``real_baseline``: held-out real volumes (what real data scores);
- ``reconstruction``: the autoencoder's posterior-mean reconstructions of those held-out volumes: the ceiling
  that this autoencoder allows any latent model (`reconstruction_source`);
- ``synthetic``: the diffusion samples;
- ``vae_prior``: decoded Gaussian latents with the training latents' per-channel mean and std: the floor the
  diffusion model must beat (`prior_source`, the same draw as ``neuroldm vae-sample``).

Two readings say *why*:

- **equivalent blur** (`equivalent_blur`): held-out real volumes blurred by a Gaussian of σ voxels
  (`blurred_source`) are scored on the same FID for a few σ; the σ at which blurred real volumes score the
  synthetic (or reconstructed) FID is a number a reader understands without knowing FID;
- **sharpness** (`sharpness_ratio`): the mean gradient magnitude inside the brain of a set's volumes divided by
  that of the held-out real volumes (1 = as sharp as real; a bootstrap interval over volumes);
- **latent dispersion** (`latent_dispersion`): per channel, the std of the generated latents (recorded by
  ``neuroldm sample`` in each sidecar, before decoding, in the diffusion model's scaled units) over that of the real
  training latents (NeuroMF, 2026, found generated latents under-dispersed, std ≈ 0.75 of real).

No library computes these comparisons for a latent model's parts, so they are written here; the distances
themselves are `neuroldm.evaluate.slice_fid`'s and `neuroldm.evaluate.diversity`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.errors import InputError
from neuroldm.metrics.interval import Interval
from neuroldm.runs import RunDir
from neuroldm.vae.decode import decode_volume, encode_volume
from neuroldm.vae.weights import load_vae

# the rungs, in the order the report draws them (real at the top, the prior at the bottom)
RUNGS = ("real_baseline", "reconstruction", "synthetic", "vae_prior")
BOOTSTRAP = 1000


@dataclass(frozen=True)
class VolumeSource:
    """A set of volumes the ladder compares: ``keys`` (paths, or any key `load` understands), ``ids`` and
    ``labels`` (class indices; None for an unconditional set), and ``load(key)`` -> a ``(D, H, W)`` float32 array.
    Volumes are made when read (decoded, blurred), so a rung never holds more than one in memory."""

    keys: list
    ids: list[str]
    labels: np.ndarray | None
    load: Callable[[object], np.ndarray]

    def __len__(self) -> int:
        return len(self.keys)


def blurred_source(paths: Sequence[str], ids: Sequence[str], labels: Sequence[int], sigma: float) -> VolumeSource:
    """The volumes at `paths`, blurred by an isotropic Gaussian of `sigma` voxels (edges: nearest)."""
    def load(path) -> np.ndarray:
        return ndimage.gaussian_filter(load_prepared_volume(path), sigma, mode="nearest").astype(np.float32)

    return VolumeSource(list(paths), list(ids), np.asarray(labels, int), load)


class Autoencoder:
    """A run's autoencoder for the ladder: reconstructions of real volumes and decoded prior latents."""

    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu"):
        self.model, self.cfg, self.meta = load_vae(run_dir, device)
        self.device = torch.device(device)
        layout = RunDir(run_dir).latents
        info = layout.read_info()
        if info.get("vae_sha256") != self.meta["sha256"]:
            raise InputError(layout.info, "the autoencoder changed after the latents were encoded; re-run encode")
        self.latent_shape = tuple(info["latent_shape"])
        self.channel_mean = torch.tensor(info["channel_mean"], dtype=torch.float32)
        self.channel_std = torch.tensor(info["channel_std"], dtype=torch.float32)
        self.scale_factor = float(info["scale_factor"])

    @torch.no_grad()
    def reconstruct(self, volume: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(volume, np.float32))[None, None].to(self.device)
        mu, _ = encode_volume(self.model, x, self.cfg)
        return decode_volume(self.model, mu, self.cfg)[0, 0].float().cpu().numpy()

    def prior_latents(self, seed: int, n: int) -> list[torch.Tensor]:
        """The first `n` latents of `seed`'s draw: ``N(channel_mean, channel_std²)`` per channel, as
        ``neuroldm vae-sample`` draws them (one generator per seed, latents in order)."""
        g = torch.Generator().manual_seed(seed)
        std, mean = self.channel_std[:, None, None, None], self.channel_mean[:, None, None, None]
        return [torch.randn(self.latent_shape, generator=g) * std + mean for _ in range(n)]

    def prior_latent(self, seed: int, index: int) -> torch.Tensor:
        """The `index`-th latent of `seed`'s draw (`prior_latents`)."""
        return self.prior_latents(seed, index + 1)[index]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        return decode_volume(self.model, z[None].to(self.device), self.cfg)[0, 0].float().cpu().numpy()


CACHE_BYTES = 2 * 1024 ** 3  # decoded volumes kept for a rung's later reads (features, MS-SSIM pairs, sharpness)


def kept(load: Callable[[object], np.ndarray], max_bytes: int = CACHE_BYTES) -> Callable[[object], np.ndarray]:
    """`load`, with each volume it makes kept in memory (up to `max_bytes` in all; beyond, made again) and handed
    out as a copy: a decoded rung is read by the slice features, the MS-SSIM pairs, the sharpness measure and the
    figure, and decoding it again each time cost more than the rest of the ladder (the demo: ~4 decodes per
    volume). Decoding is deterministic, so a kept volume equals a new one."""
    store: dict = {}
    used = 0

    def load_kept(key) -> np.ndarray:
        nonlocal used
        if key in store:
            return store[key].copy()
        volume = load(key)
        if used + volume.nbytes <= max_bytes:
            store[key] = volume.copy()
            used += volume.nbytes
        return volume

    return load_kept


def reconstruction_source(vae: Autoencoder, paths: Sequence[str], ids: Sequence[str],
                          labels: Sequence[int]) -> VolumeSource:
    """The posterior-mean reconstructions of the volumes at `paths` (each decoded once: `kept`)."""
    return VolumeSource(list(paths), list(ids), np.asarray(labels, int),
                        kept(lambda path: vae.reconstruct(load_prepared_volume(path))))


def prior_source(vae: Autoencoder, n: int, seed: int) -> VolumeSource:
    """`n` decoded prior latents of `seed`'s draw (unconditional: no labels; each decoded once: `kept`)."""
    latents = vae.prior_latents(seed, n)
    return VolumeSource(list(range(n)), [f"prior_seed{seed}_{i:03d}" for i in range(n)], None,
                        kept(lambda i: vae.decode(latents[int(i)])))


# --------------------------------------------------------------------------------------------------------------
# Equivalent blur
# --------------------------------------------------------------------------------------------------------------

def equivalent_blur(sigmas: Sequence[float], fids: Sequence[float], baseline: float, target: float) -> dict:
    """The blur σ (voxels) at which blurred held-out real volumes score `target`, interpolated linearly between the
    measured points ``(0, baseline), (sigmas[i], fids[i])``.

    Returns ``{"sigma_voxels", "censored"}``: ``censored`` is ``"below"`` when `target` is at or under the baseline
    (σ = 0: as sharp as real), ``"above"`` when it exceeds every measured FID (σ is then the largest measured, a
    lower bound), else None. FID grows with σ in practice; where a measured curve is not monotone the first
    crossing counts.
    """
    xs = [0.0, *[float(s) for s in sigmas]]
    ys = [float(baseline), *[float(f) for f in fids]]
    if not all(math.isfinite(v) for v in (*ys, target)):
        return {"sigma_voxels": float("nan"), "censored": None}
    if target <= ys[0]:
        return {"sigma_voxels": 0.0, "censored": "below"}
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 < target <= y1:
            return {"sigma_voxels": x0 + (target - y0) / (y1 - y0) * (x1 - x0), "censored": None}
    return {"sigma_voxels": xs[-1], "censored": "above"}


# --------------------------------------------------------------------------------------------------------------
# Sharpness
# --------------------------------------------------------------------------------------------------------------

def brain_mask(reference_mean: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Voxels of the mean reference volume above the middle of the intensity window: the brain of a prepared
    volume (background sits at the window's low end), the same mask for every set."""
    lo, hi = window
    return reference_mean > lo + 0.5 * (hi - lo)


def gradient_magnitude(volume: np.ndarray, mask: np.ndarray) -> float:
    """Mean central-difference gradient magnitude (intensity per voxel) inside `mask`."""
    g = np.gradient(volume.astype(np.float64))
    return float(np.sqrt(sum(c ** 2 for c in g))[mask].mean())


def sharpness_ratio(values: np.ndarray, real: np.ndarray, seed: int = 0, n_boot: int = BOOTSTRAP,
                    level: float = 0.95) -> Interval:
    """``mean(values) / mean(real)`` of per-volume gradient magnitudes, with a percentile bootstrap interval that
    resamples both sets' volumes independently (``n`` = the set's volumes)."""
    values, real = np.asarray(values, float), np.asarray(real, float)
    value = float(values.mean() / real.mean())
    rng = np.random.default_rng(seed)
    boots = np.array([values[rng.integers(0, len(values), len(values))].mean()
                      / real[rng.integers(0, len(real), len(real))].mean() for _ in range(n_boot)])
    a = (1 - level) / 2
    low, high = np.quantile(boots, [a, 1 - a])
    return Interval(value, float(low), float(high), n=len(values), method="percentile-bootstrap", level=level)


# --------------------------------------------------------------------------------------------------------------
# Latent dispersion
# --------------------------------------------------------------------------------------------------------------

def pooled_channel_stats(means: np.ndarray, stds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the union of volumes, from each volume's ``(N, C)`` channel means and stds (all
    volumes the same latent size): ``var = mean(std² + mean²) − mean(mean)²``."""
    means, stds = np.asarray(means, float), np.asarray(stds, float)
    mu = means.mean(0)
    var = (stds ** 2 + means ** 2).mean(0) - mu ** 2
    return mu, np.sqrt(np.clip(var, 0, None))


def latent_dispersion(sidecars: Sequence[str | Path], latent_info: dict) -> dict:
    """Generated latents (``latent_mean``/``latent_std`` per channel in the sample sidecars, scaled units) against
    the real training latents (``latents.json``: posterior means, scaled by its ``scale_factor``).

    Returns per channel the generated and real mean and std and ``std_ratio`` (generated / real), and
    ``std_ratio`` overall (the ratio of the root-mean-square channel stds); or ``{"skipped": why}``.
    """
    means, stds = [], []
    for p in sidecars:
        if not Path(p).exists():
            return {"skipped": f"{Path(p).name} is missing: no latent statistics"}
        meta = json.loads(Path(p).read_text())
        if "latent_std" not in meta:
            return {"skipped": f"{Path(p).name} records no latent statistics (sampled before they were recorded: "
                               f"sample again)"}
        means.append(meta["latent_mean"])
        stds.append(meta["latent_std"])
    gen_mean, gen_std = pooled_channel_stats(np.array(means), np.array(stds))
    k = float(latent_info["scale_factor"])
    real_mean = np.asarray(latent_info["channel_mean"], float) * k
    real_std = np.asarray(latent_info["channel_std"], float) * k
    overall = float(np.sqrt(np.mean(gen_std ** 2)) / np.sqrt(np.mean(real_std ** 2)))
    return {"n_generated": len(means), "n_real": int(latent_info.get("n_train", latent_info.get("n", 0))),
            "units": "diffusion-model units (autoencoder latents x scale_factor)",
            "real": "posterior means of the training volumes (latents.json)",
            "channels": [{"channel": c, "generated_mean": float(gen_mean[c]), "generated_std": float(gen_std[c]),
                          "real_mean": float(real_mean[c]), "real_std": float(real_std[c]),
                          "std_ratio": float(gen_std[c] / real_std[c])} for c in range(len(gen_std))],
            "std_ratio": overall}
