"""Sampler speed against quality on a trained run: every sampler of the table at its default steps (DDPM: every
training timestep, DDIM-50, DPM-Solver++-25), and DPM-Solver++ also at 20 and 10 steps.

    .venv/bin/python benchmarks/samplers.py --run RUN [--n 32] [--dims 8] [--batch 16] [--device cpu]

For each sampler, `--n` latents (half per class, seeds 0..n-1, the same for every sampler) are drawn with the
run's EMA diffusion model; "s/volume" is the sampling time per latent (decoding, the same for every sampler, is
timed once separately). Quality is a Fréchet distance to the real latents (posterior means of every encoded
volume, times the scale factor) in a PCA space of `--dims` components fitted on the real latents: an FID-style
distance without an image network. The last columns compare each sampler with DDPM over every training timestep
(speed-up, and distance relative to DDPM's); the issue's goal is ≥ 40× faster within 10 % of DDPM's distance.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from neuroldm.config import SampleConfig
from neuroldm.diffusion.sample import Generator
from neuroldm.diffusion.samplers import SAMPLERS, get_sampler
from neuroldm.metrics import frechet_distance
from neuroldm.vae.encode import load_latents

# NAME[:STEPS]; without STEPS, the sampler's default (DDPM: every training timestep)
RUNS = [s.name if s.default_steps is None else f"{s.name}:{s.default_steps}" for s in SAMPLERS.values()] + \
    ["dpm++:20", "dpm++:10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--dims", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samplers", nargs="+", default=RUNS, help="NAME[:STEPS] ...")
    args = ap.parse_args()

    gen = Generator(args.run, args.device)
    real = load_latents(args.run)
    real_flat = real.space.scale(real.mu).flatten(1).double().numpy()
    mean = real_flat.mean(0)
    _, _, vt = np.linalg.svd(real_flat - mean, full_matrices=False)
    basis = vt[: args.dims].T
    real_feat = (real_flat - mean) @ basis
    labels = [i % len(gen.classes) for i in range(args.n)]
    seeds = list(range(args.n))
    with torch.no_grad():
        z = gen.latents(labels[:1], seeds[:1], SampleConfig(sampler="ddim", steps=2))
        start = time.perf_counter()
        gen.decode(z)
        decode_s = time.perf_counter() - start
    print(f"run {args.run}: {len(real_flat)} real latents {'x'.join(map(str, gen.latent_shape))}, N={args.n} "
          f"samples per sampler, PCA {args.dims}, guidance {args.guidance}; decoding {decode_s:.2f} s/volume")
    print("| sampler | steps | s/volume | Fréchet (PCA) | speed-up vs DDPM | distance vs DDPM |")
    print("|---|---|---|---|---|---|")
    ref = None
    for entry in args.samplers:
        sampler, _, steps = entry.partition(":")
        spec = get_sampler(sampler)
        steps = spec.steps_for(gen.cfg, int(steps) if steps else spec.default_steps or gen.cfg.num_train_timesteps)
        scfg = SampleConfig(sampler=sampler, steps=steps, guidance=args.guidance)
        out, start = [], time.perf_counter()
        for b in range(0, args.n, args.batch):
            zs = gen.latents(labels[b:b + args.batch], seeds[b:b + args.batch], scfg)
            out.append(gen.space.scale(zs).flatten(1).double().cpu().numpy())
        per_volume = (time.perf_counter() - start) / args.n
        feat = (np.concatenate(out) - mean) @ basis
        fd = frechet_distance(real_feat, feat)
        if ref is None and spec.every_timestep:
            ref = (per_volume, fd)
        speed = f"{ref[0] / per_volume:.0f}x" if ref else "-"
        rel = f"{fd / ref[1]:.2f}" if ref else "-"
        print(f"| {sampler} | {steps} | {per_volume:.3f} | {fd:.3f} | {speed} | {rel} |", flush=True)


if __name__ == "__main__":
    main()
