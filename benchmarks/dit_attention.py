"""Window vs global attention in the 3D DiT at the paper latent size: training-step time and peak memory.

    .venv/bin/python benchmarks/dit_attention.py [--models DiT-S/4:4,2,4 DiT-S/2:2,2,2] [--window 4 4 4]
                                                 [--batch 1] [--reps 3] [--threads 2] [--device cpu]

Each (model, attention) pair runs in a fresh subprocess: random weights, one warm-up step, then `--reps` timed
AdamW steps (forward, MSE backward, optimiser) on latents ``(B, 4, 28, 34, 28)``. Peak memory is the child's
``ru_maxrss`` on CPU (what the OS gave the process) or ``torch.cuda.max_memory_allocated`` on GPU. Window and
global variants have the same parameters (attention windows add none), so the comparison is at equal size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

LATENT = (4, 28, 34, 28)


def _child(spec: dict) -> None:
    import torch

    from neuroldm.diffusion.dit import build_dit

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    model = build_dit(spec["model"], LATENT[1:], LATENT[0], 2, patch=spec["patch"], window=spec["window"]).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(spec["batch"], *LATENT, device=dev)
    t = torch.randint(0, 1000, (spec["batch"],), device=dev)
    y = torch.randint(0, 2, (spec["batch"],), device=dev)

    def step():
        loss = (model(x, t, y) - x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(spec["reps"]):
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    attn = model.blocks[0].attn
    print(json.dumps({"seconds": sorted(times)[len(times) // 2], "peak_gb": peak,
                      "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                      "tokens": model.x_embedder.num_tokens, "keys_per_query": attn.keys_per_query}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["DiT-S/4:4,2,4", "DiT-S/2:2,2,2"],
                    help="MODEL:PATCH entries, PATCH as d,h,w")
    ap.add_argument("--window", nargs=3, type=int, default=[4, 4, 4])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    print(f"latent {'x'.join(map(str, LATENT))}, batch {args.batch}, {args.device}, {args.threads} threads, "
          f"median of {args.reps} AdamW steps")
    print("| model | patch | tokens | attention | keys/query | params (M) | s/step | s/sample | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for entry in args.models:
        name, patch = entry.split(":")
        patch = [int(p) for p in patch.split(",")]
        for window in (None, args.window):
            spec = {"model": name, "patch": patch, "window": window, "batch": args.batch, "reps": args.reps,
                    "threads": args.threads, "device": args.device}
            res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True)
            if res.returncode:
                print(f"| {name} | {patch} | | {'global' if window is None else window} | failed: "
                      f"{res.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            label = "global" if window is None else f"window {'x'.join(map(str, window))}, shifted"
            print(f"| {name} | {'x'.join(map(str, patch))} | {r['tokens']} | {label} | {r['keys_per_query']} | "
                  f"{r['params_m']:.2f} | {r['seconds']:.2f} | {r['seconds'] / args.batch:.2f} | "
                  f"{r['peak_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
