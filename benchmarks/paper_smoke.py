"""The paper smoke run: `neuroldm run --preset paper` at the full 112×136×112 grid, every stage, on this machine.

    .venv/bin/python benchmarks/paper_smoke.py [--out DIR] [--device cpu] [--threads N] [--set KEY=VALUE ...]

What it runs: ``neuroldm run --preset paper --config benchmarks/paper_smoke.yaml`` on 16 demo-cohort subjects
written at 1.5 mm (`neuroldm demo`'s generator, so no data are needed), with the preset's own networks: the paper
autoencoder with the 2.5D perceptual term on, DiT-S/2 with shifted 4×4×4-token windows on 4×28×34×28 latents,
EfficientNetV2-S on whole volumes. Every training stage takes 2 optimiser steps; sample, classify-grid (real and
synthetic), evaluate (with the realism ladder), saliency, counterfactual and report all run. The perceptual term
needs a VGG16 file; a randomly initialised one is written first (torchvision's parameter names, safetensors), since
nothing may be downloaded. It is the same network, so the cost is the real one.

What it checks and prints: every stage ``done``; the prepared volumes, the latents and the samples at the paper's
shapes; per stage its seconds, seconds per optimiser step and peak memory as ``pipeline.json`` records them
(`neuroldm.memory.PeakMemory`: RSS on the CPU, ``max_memory_allocated`` on CUDA), and that the report shows them.
Writes ``paper_smoke.md`` and ``paper_smoke.json`` beside the run folder in `--out`. Exit status 1 when a check fails.

Too slow for the test suite on 2 CPU cores (README, "The paper preset at full size"); a GPU takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMOKE_CONFIG = HERE / "paper_smoke.yaml"
GRID, LATENT = (112, 136, 112), (4, 28, 34, 28)


def write_random_vgg16(path: Path) -> Path:
    """A randomly initialised VGG16 feature stack under torchvision's parameter names, as safetensors."""
    import torch
    from safetensors.torch import save_file

    from neuroldm.vae.perceptual import VGG16Features

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in VGG16Features().state_dict().items()}, str(path))
    return path


def check_run(run: Path) -> list[str]:
    """What is wrong with the finished run (empty: nothing)."""
    import nibabel as nib
    from safetensors import safe_open

    from neuroldm.runs import RunDir

    problems = []
    layout = RunDir(run)
    stages = layout.read_pipeline()["stages"]
    problems += [f"{name}: {s.get('state')}" for name, s in stages.items() if s.get("state") != "done"]
    prepared = sorted((run / "prepared" / "volumes").glob("*.nii*"))
    if not prepared or nib.load(prepared[0]).shape != GRID:
        problems.append(f"prepared volumes: {nib.load(prepared[0]).shape if prepared else 'none'}, expected {GRID}")
    latents = sorted((run / "latents" / "volumes").glob("*.safetensors"))
    if latents:
        with safe_open(str(latents[0]), "pt") as f:
            shapes = {tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safetensors handle)
        if not any(s[-4:] == LATENT for s in shapes):
            problems.append(f"latents: {sorted(shapes)}, expected ...x{'x'.join(map(str, LATENT))}")
    else:
        problems.append("no latent file")
    samples = sorted((run / "samples").glob("*.nii*"))
    if not samples or nib.load(samples[0]).shape != GRID:
        problems.append(f"samples: {nib.load(samples[0]).shape if samples else 'none'}, expected {GRID}")
    html = (run / "report.html").read_text() if (run / "report.html").exists() else ""
    for name in ("train-vae", "train-diffusion"):
        if stages.get(name, {}).get("memory") is None or "seconds_per_step" not in stages[name].get("summary", {}):
            problems.append(f"{name}: pipeline.json lacks its peak memory or s/step")
    if "GB RSS" not in html and "GB CUDA" not in html:
        problems.append("report.html shows no stage memory")
    return problems


def table(stages: dict) -> list[str]:
    lines = ["| stage | seconds | s/step | peak memory |", "|---|---|---|---|"]
    for name, s in stages.items():
        mem = s.get("memory") or {}
        parts = [f"{mem['peak_rss_gb']:.2f} GB RSS" if mem.get("peak_rss_gb") is not None else "",
                 f"{mem['peak_cuda_gb']:.2f} GB CUDA" if mem.get("peak_cuda_gb") is not None else ""]
        sps = (s.get("summary") or {}).get("seconds_per_step")
        lines.append(f"| {name} | {s.get('seconds', float('nan')):.0f} | {'' if sps is None else f'{sps:.2f}'} | "
                     f"{', '.join(p for p in parts if p) or '–'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="folder for the run and the summary (default: a new temporary one)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="paper-smoke-"))
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    weights = write_random_vgg16(out / "vgg16-random.safetensors")
    cmd = [sys.executable, "-m", "neuroldm", "run", "--preset", "paper", "--config", str(SMOKE_CONFIG),
           "--set", "pipeline.input=demo-cohort", "--set", f"vae.perceptual_weights_path={weights}",
           *(x for o in args.overrides for x in ("--set", o)),
           *(["--device", args.device] if args.device else []), "--out", str(run), "--no-progress"]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    rc = subprocess.call(cmd, env=env)
    wall = time.perf_counter() - start
    if rc != 0:
        print(f"neuroldm run exited {rc} after {wall:.0f} s", file=sys.stderr)
        return 1
    from neuroldm.runs import RunDir

    stages = RunDir(run).read_pipeline()["stages"]
    order = RunDir(run).stage_order()
    stages = {k: stages[k] for k in order if k in stages}
    problems = check_run(run)
    where = f"{os.cpu_count()} CPU cores (device {args.device or 'default'})"
    lines = [f"# Paper smoke run: {'passed' if not problems else 'FAILED'}", "",
             (f"`neuroldm run --preset paper` at 112×136×112, 1.5 mm, every stage, 2 steps per training stage, on "
              f"{where}: {wall:.0f} s ({wall / 60:.1f} min) in all."), "",
             *table(stages), ""]
    lines += [f"- problem: {p}" for p in problems]
    (out / "paper_smoke.md").write_text("\n".join(lines) + "\n")
    (out / "paper_smoke.json").write_text(json.dumps({"passed": not problems, "problems": problems,
                                                      "wall_seconds": round(wall, 1), "stages": stages},
                                                     indent=2) + "\n")
    print("\n".join(lines))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
