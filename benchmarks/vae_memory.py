"""Time and peak memory of VAE encoding and decoding at the paper grid, whole-volume vs sliding windows.

    .venv/bin/python benchmarks/vae_memory.py [--arch paper] [--roi 16 20 16] [--overlap 0.25] [--threads 2]

Each measurement runs in a fresh subprocess (random weights, seed 0, one pass, no gradients) and reports the
child's peak resident memory (``ru_maxrss``: what the OS had to give the process, torch's allocator included;
``tracemalloc`` does not see torch's memory) and the same minus the peak before the timed call (model, input and
interpreter). Decoded volumes go through a temporary safetensors file, so the parent can compare each windowed
result with whole-volume decoding: "max err" is ``max |windowed − whole| / std(whole)``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = (112, 136, 112)


def _child(spec: dict) -> None:
    import torch
    from safetensors.torch import save_file

    from neuroldm.config import VAEConfig
    from neuroldm.vae.decode import sliding_window_decode, sliding_window_encode, window_starts
    from neuroldm.vae.network import build_vae, latent_shape

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cfg = VAEConfig(arch=spec["arch"])
    model = build_vae(cfg).eval()
    lat = latent_shape(GRID, cfg)
    x = torch.randn(1, 1, *GRID) if spec["op"] == "encode" else torch.randn(1, *lat)
    roi = spec.get("roi")
    windows = 1
    if roi:
        windows = 1
        for n, r in zip(lat[1:], roi):
            windows *= len(window_starts(n, min(r, n), spec["overlap"]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.no_grad():
        if spec["op"] == "encode":
            out = model.encode(x)[0] if not roi else sliding_window_encode(model, x, roi, spec["overlap"],
                                                                           norm_stats=spec["stats"])[0]
        else:
            out = model.decode(x) if not roi else sliding_window_decode(model, x, roi, spec["overlap"],
                                                                        norm_stats=spec["stats"])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    save_file({"out": out.contiguous()}, spec["out"])
    print(json.dumps({"seconds": seconds, "peak_gb": peak / 2**20, "delta_gb": (peak - before) / 2**20,
                      "windows": windows}))


def _run(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="paper", choices=["demo", "paper", "maisi"])
    ap.add_argument("--roi", type=int, nargs=3, default=[16, 20, 16], help="latent core window (d h w)")
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return

    from safetensors.torch import load_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plan = [("encode", None, "-"), ("encode", args.roi, "global"),
                ("decode", None, "-"), ("decode", args.roi, "global"), ("decode", args.roi, "window")]
        whole: dict[str, object] = {}
        for i, (op, roi, stats) in enumerate(plan):
            spec = {"arch": args.arch, "op": op, "roi": roi, "overlap": args.overlap, "stats": stats,
                    "threads": args.threads, "out": str(Path(tmp) / f"{i}.safetensors")}
            res = _run(spec)
            out = load_file(spec["out"])["out"]
            if roi is None:
                whole[op] = out
                err = "-"
            else:
                ref = whole[op]
                err = f"{((out - ref).abs().max() / ref.std()).item():.1e}"
            mode = "whole volume" if roi is None else f"windows {tuple(roi)}, {stats} GroupNorm stats"
            rows.append((op, mode, res["windows"], res["seconds"], res["peak_gb"], res["delta_gb"], err))
            print(f"  done: {op} {mode}: {res['seconds']:.1f} s", file=sys.stderr, flush=True)

    print(f"\nVAE '{args.arch}' at 1x1x{'x'.join(map(str, GRID))}, {args.threads} threads, random weights, "
          f"overlap {args.overlap}, no gradients\n")
    print("| op | mode | windows | time (s) | peak RSS (GB) | over setup (GB) | max err / std |")
    print("|---|---|---|---|---|---|---|")
    for op, mode, win, sec, peak, delta, err in rows:
        print(f"| {op} | {mode} | {win} | {sec:.1f} | {peak:.2f} | {delta:.2f} | {err} |")


if __name__ == "__main__":
    main()
