"""Training-step time, inference time and peak memory of the classifier networks on one grid, on this machine.

    .venv/bin/python benchmarks/classifier_step.py [--arch efficientnetv2-tiny] [--grid 52 64 56] [--batch 4]
                                                   [--threads 1] [--steps 6]

Random weights and inputs (seed 0), AdamW, cross-entropy; the first step is a warm-up and is not counted. Peak
memory is the process's ``ru_maxrss`` (interpreter, torch and the model included).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from neuroldm.classify.network import build_classifier, count_parameters
from neuroldm.config import ClassifierConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="efficientnetv2-tiny")
    p.add_argument("--grid", type=int, nargs=3, default=(52, 64, 56))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch=args.arch), num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.randn(args.batch, 1, *args.grid), torch.randint(0, 2, (args.batch,))
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(x)
        infer = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.arch}: {count_parameters(model) / 1e6:.2f} M parameters; grid {'x'.join(map(str, args.grid))}, "
          f"batch {args.batch}, {args.threads} thread(s): train step median {statistics.median(times[1:]):.3f} s "
          f"(min {min(times[1:]):.3f}), inference {infer:.3f} s per batch, peak RSS {rss:.2f} GB")


if __name__ == "__main__":
    main()
